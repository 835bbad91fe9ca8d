"""Several processes training one run, started by torchrun: the process group and what ranks share.

``torchrun --nproc_per_node N -m cyclegan train ...`` starts N copies of one command and sets RANK,
WORLD_SIZE and LOCAL_RANK. Each process trains on its own slice of every global batch and DDP averages the
gradients, so the weights stay identical everywhere; rank 0 alone writes the run folder. Without torchrun
the world is one process and nothing here talks to anyone.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from cyclegan.devices import resolve_device
from cyclegan.errors import CycleGANError, first_line

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the processes of a run; ``distributed`` when they form a process group
    (under torchrun, even a group of one: the code path is then the same as on many GPUs)."""

    rank: int = 0
    size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    distributed: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, module: nn.Module) -> nn.Module:
        """DDP around ``module`` when there are several processes: its gradients are averaged over them."""
        if not self.distributed or not any(p.requires_grad for p in module.parameters()):
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids)

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of ``tensor`` over all processes (the same tensor when there is one)."""
        if self.distributed:
            dist.all_reduce(tensor)
            tensor /= self.size
        return tensor

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every process's ``tensor`` (equal shapes) concatenated along dim 0, in rank order."""
        if not self.distributed:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def any(self, flag: bool) -> bool:
        """True on every process when it is true on any: all stop after the same step."""
        if not self.distributed:
            return flag
        value = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def union(self, items: set[str]) -> set[str]:
        """The union of every process's ``items`` (say, the files each could not read), on every process."""
        if not self.distributed:
            return items
        parts: list[Any] = [None] * self.size
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
        dist.broadcast_object_list(box, src=0)
        if failure is not None:
            raise failure
        ok, value = box[0]
        if not ok:
            raise CycleGANError(value)
        return value


def check_global_batch(batch_size: int) -> None:
    """``--batch_size`` is the global batch (the images of one step over all processes): each process
    takes an equal share, so it must divide by the number of processes torchrun started."""
    size = world_size()
    if batch_size % size:
        raise CycleGANError(
            f"--batch_size {batch_size} is the global batch and must be divisible by the {size} processes"
        )


def launched() -> bool:
    """Whether this process is one of a process group: started by torchrun, or in the caller's group."""
    return "WORLD_SIZE" in os.environ or (dist.is_available() and dist.is_initialized())


def world_size() -> int:
    """The number of training processes: the caller's process group, else torchrun's WORLD_SIZE."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return _env_int("WORLD_SIZE", 1)


def is_main_process() -> bool:
    """Whether this process writes files and prints notes (rank 0, or the only process)."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


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
    seconds for a peer that died or hangs. A process group the caller made is used and left to them."""
    if not launched():
        yield World(device=resolve_device(device_name))
        return
    own = not (dist.is_available() and dist.is_initialized())  # else the caller's group, theirs to end
    device = rank_device(device_name, _env_int("LOCAL_RANK", 0))
    if own:
        _join(device, timeout_s)
    finished = False
    try:
        yield World(dist.get_rank(), dist.get_world_size(), device, distributed=True)
        finished = True
    finally:
        if finished:
            dist.barrier()  # rank 0 may still be saving the last checkpoint or writing the report
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


def rank_device(device_name: str, local_rank: int) -> torch.device:
    """Each process of a node takes the GPU of its local rank; ``--device cpu`` keeps all on the CPU."""
    if device_name == "cpu" or (device_name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if device_name not in ("auto", "cuda"):
        raise CycleGANError(
            f"--device {device_name}: with several processes each takes the GPU of its local rank;"
            " use --device cuda (and CUDA_VISIBLE_DEVICES to choose GPUs)"
        )
    if not torch.cuda.is_available():
        raise CycleGANError("--device cuda: CUDA is not available on this machine")
    if local_rank >= torch.cuda.device_count():
        raise CycleGANError(
            f"local rank {local_rank} has no GPU: only {torch.cuda.device_count()} here;"
            " start at most that many processes per node"
        )
    return torch.device("cuda", local_rank)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise CycleGANError(f"the environment variable {name} must be an integer, got {value!r}") from None


def is_collective_failure(err: RuntimeError) -> bool:
    """Errors of gloo and NCCL collectives (a peer that died, or a timeout), not this process's own."""
    text = str(err).lower()
    return isinstance(err, getattr(dist, "DistError", ())) or any(
        word in text for word in ("gloo", "nccl", "connection closed", "connection reset", "timed out")
    )
