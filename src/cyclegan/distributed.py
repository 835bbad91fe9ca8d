"""Several processes training one run, started by torchrun: the process group and what ranks share.

``torchrun --nproc_per_node N -m cyclegan train ...`` starts N copies of one command and sets RANK,
WORLD_SIZE and LOCAL_RANK. Each process trains on its own slice of every global batch and DDP averages the
gradients, so the weights stay identical everywhere; rank 0 alone writes the run folder. Without torchrun
the world is one process and nothing here talks to anyone.
"""

from __future__ import annotations

import os
import threading
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

from cyclegan.devices import resolve_device
from cyclegan.errors import CycleGANError, first_line

T = TypeVar("T")

TORCHRUN_VARIABLES = (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"))


@dataclass(frozen=True)
class TorchrunEnv:
    """What torchrun tells each process it starts (RANK, WORLD_SIZE, LOCAL_RANK), read and checked in this
    one place; without torchrun, the one process of a world of one. ``launched``: WORLD_SIZE is set."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launched: bool = False

    @classmethod
    def read(cls, environ: Mapping[str, str] | None = None) -> TorchrunEnv:
        env = os.environ if environ is None else environ
        found = ", ".join(f"{name}={env[name]!r}" for name, _ in TORCHRUN_VARIABLES if name in env)
        try:
            rank, size, local = (int(env.get(name, default)) for name, default in TORCHRUN_VARIABLES)
        except ValueError:
            raise CycleGANError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers, got {found}") from None
        if not (size >= 1 and 0 <= rank < size and local >= 0):
            raise CycleGANError(
                "WORLD_SIZE must be at least 1, RANK in 0..WORLD_SIZE-1 and LOCAL_RANK at least 0,"
                f" got {found}"
            )
        return cls(rank, size, local, "WORLD_SIZE" in env)

    @property
    def label(self) -> str:
        """How this process names itself in messages when it is one of several."""
        return f"rank {self.rank}/{self.world_size}" if self.world_size > 1 else ""


@dataclass(frozen=True)
class World:
    """This process's place among the processes of a run; ``distributed`` when they form a process group
    (under torchrun, even a group of one: the code path is then the same as on many GPUs)."""

    rank: int = 0
    size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    distributed: bool = False
    failed: threading.Event = field(default_factory=threading.Event, compare=False, repr=False)
    """Set when a collective of this world failed: gloo reports a dead or silent peer as a plain
    RuntimeError, so the failure is known by where it happened, not by its text."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, module: nn.Module) -> nn.Module:
        """DDP around ``module`` when there are several processes: its gradients are averaged over them
        (by torch's own all-reduce hook, watched for failures)."""
        if not self.distributed or not any(p.requires_grad for p in module.parameters()):
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        with self.collective():  # DDP starts by broadcasting rank 0's weights
            ddp = nn.parallel.DistributedDataParallel(module, device_ids=ids)
        # DDP checks a hook's annotations by value, and this module's are strings: hence the lambda
        ddp.register_comm_hook(self, lambda world, bucket: _watched_allreduce(world, bucket))
        return ddp

    @contextmanager
    def collective(self) -> Iterator[None]:
        """Marks the world ``failed`` when the collective inside raises."""
        try:
            yield
        except RuntimeError:
            self.failed.set()
            raise

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of ``tensor`` over all processes (the same tensor when there is one)."""
        if self.distributed:
            with self.collective():
                dist.all_reduce(tensor)
            tensor /= self.size
        return tensor

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every process's ``tensor`` (equal shapes) concatenated along dim 0, in rank order."""
        if not self.distributed:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.size)]
        with self.collective():
            dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def any(self, flag: bool) -> bool:
        """True on every process when it is true on any: all stop after the same step."""
        if not self.distributed:
            return flag
        value = torch.tensor([float(flag)], device=self.device)
        with self.collective():
            dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def union(self, items: set[str]) -> set[str]:
        """The union of every process's ``items`` (say, the files each could not read), on every process."""
        if not self.distributed:
            return items
        parts: list[Any] = [None] * self.size
        with self.collective():
            dist.all_gather_object(parts, sorted(items))
        return set().union(*parts)

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 only and hand its result, or its one-line error, to every process."""
        if not self.distributed:
            return fn()
        box: list[Any] = [None]
        failure: BaseException | None = None
        if self.is_main:
            try:
                box[0] = (True, fn())
            except CycleGANError as err:
                box[0] = (False, str(err))
            except BaseException as err:  # passed on so the other ranks do not wait for a result forever
                box[0], failure = (False, f"rank 0 failed: {first_line(err)}"), err
        with self.collective():
            dist.broadcast_object_list(box, src=0)
        if failure is not None:
            raise failure
        ok, value = box[0]
        if not ok:
            raise CycleGANError(value)
        return value

    def barrier(self) -> None:
        if self.distributed:
            with self.collective():
                dist.barrier()

    def collective_failed(self, err: BaseException) -> bool:
        """Whether ``err`` is a failed collective: one of torch's error types for them (NCCL's, the
        store's), a RuntimeError out of a collective of this world, or one raised by DDP's own code (its
        forward rebuilds the gradient buckets and broadcasts buffers, collectives too)."""
        return (
            isinstance(err, getattr(dist, "DistError", ()))
            or self.failed.is_set()
            or _raised_in(err, nn.parallel.distributed.__name__)
        )


def _raised_in(err: BaseException, module: str) -> bool:
    """Whether the innermost Python frame of ``err``'s traceback is code of ``module``."""
    innermost = deque(traceback.walk_tb(err.__traceback__), maxlen=1)
    return bool(innermost) and innermost[0][0].f_globals.get("__name__") == module


def _watched_allreduce(world: World, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP's default gradient averaging, noting a failure on ``world`` before it surfaces from backward()."""

    def check(done: torch.futures.Future[torch.Tensor]) -> torch.Tensor:
        try:
            return done.value()
        except RuntimeError:
            world.failed.set()
            raise

    return allreduce_hook(None, bucket).then(check)  # type: ignore[arg-type]


def check_global_batch(batch_size: int) -> None:
    """``--batch_size`` is the global batch (the images of one step over all processes): each process
    takes an equal share, so it must divide by the number of processes torchrun started."""
    size = world_size()
    if batch_size % size:
        raise CycleGANError(
            f"--batch_size {batch_size} is the global batch and must be divisible by the {size} processes"
        )


def world_size() -> int:
    """The number of training processes: the caller's process group, else torchrun's WORLD_SIZE."""
    return dist.get_world_size() if _in_group() else TorchrunEnv.read().world_size


def _in_group() -> bool:
    return dist.is_available() and dist.is_initialized()


def is_main_process() -> bool:
    """Whether this process writes files and prints notes (rank 0, or the only process)."""
    return not _in_group() or dist.get_rank() == 0


def stopped_peer_error(err: BaseException, timeout_s: int) -> CycleGANError:
    """The one line a process prints when a collective failed: a peer died or stopped answering."""
    return CycleGANError(
        "another training process stopped or did not answer within"
        f" --dist_timeout {timeout_s} s, so this one stops too ({first_line(err)})"
    )


@contextmanager
def session(device_name: str, timeout_s: int) -> Iterator[World]:
    """The world of this process. Started by torchrun (WORLD_SIZE is set), it joins the process group
    (NCCL on CUDA, gloo on CPU) and leaves it at the end; a collective then waits at most ``timeout_s``
    seconds for a peer that died or hangs, and its failure ends the session with one line. A process group
    the caller made is used and left to them."""
    env = TorchrunEnv.read()
    if not (env.launched or _in_group()):
        yield World(device=resolve_device(device_name))
        return
    if device_name not in ("auto", "cuda", "cpu"):
        raise CycleGANError(
            f"--device {device_name}: with several processes each takes the GPU of its local rank;"
            " use --device cuda (and CUDA_VISIBLE_DEVICES to choose GPUs)"
        )
    device = resolve_device(device_name, env.local_rank)
    own = not _in_group()  # else the caller's group, theirs to end
    if own:
        _join(device, timeout_s)
    world = World(dist.get_rank(), dist.get_world_size(), device, distributed=True)
    try:
        yield world
        world.barrier()  # rank 0 may still be saving the last checkpoint or writing the report
    except RuntimeError as err:
        if not world.collective_failed(err):
            raise
        raise stopped_peer_error(err, timeout_s) from None
    finally:
        if own:
            dist.destroy_process_group()


def _join(device: torch.device, timeout_s: int) -> None:
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_available() or (backend == "nccl" and not dist.is_nccl_available()):
        raise CycleGANError(f"this PyTorch build has no {backend.upper()} backend for several processes")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError) as err:
        raise CycleGANError(f"cannot join the other training processes: {first_line(err)}") from None
