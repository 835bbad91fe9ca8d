"""Choosing the device a command runs on, with one-line errors for devices that are not there."""

from __future__ import annotations

import re
from fractions import Fraction

import torch

from cyclegan.errors import CycleGANError

MAX_MEMORY = 2**60
"""The largest memory size taken (1 EiB): beyond any machine, and far from integer overflow."""


def resolve_device(name: str | torch.device, local_rank: int | None = None) -> torch.device:
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.

    With ``local_rank`` (from :class:`cyclegan.distributed.TorchrunEnv`), a GPU named without an index
    (``cuda``, or ``auto`` on a GPU machine) is the local rank's, so that each process torchrun starts on a
    node gets a GPU of its own; an explicit ``cuda:N`` is kept.
    """
    name = str(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CycleGANError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CycleGANError(f"--device {name}: CUDA is not available on this machine")
        count = torch.cuda.device_count()
        if device.index is None and local_rank is not None:
            if local_rank >= count:
                raise CycleGANError(
                    f"LOCAL_RANK {local_rank} has no GPU: only {count} on this machine;"
                    " start at most that many processes per node"
                )
            device = torch.device("cuda", local_rank)
        if device.index is not None and device.index >= count:
            raise CycleGANError(f"--device {name}: only {count} CUDA device(s) here")
    elif device.type != "cpu":
        raise CycleGANError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
    return device


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is a device running out of memory: CUDA's OutOfMemoryError, or the CPU allocator's
    plain RuntimeError ("DefaultCPUAllocator: can't allocate memory")."""
    return isinstance(err, torch.cuda.OutOfMemoryError) or "can't allocate memory" in str(err)


def parse_memory(text: str) -> int:
    """``12GB``, ``12G``, ``800MiB``, ``1.5T`` or plain bytes; units are binary (GB = GiB = 2**30 bytes, as
    nvidia-smi counts). Sizes are exact (no float rounding) and at most ``MAX_MEMORY``."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", text, re.IGNORECASE)
    shown = repr(text) if len(text) <= 40 else f"{text[:40]!r}..."
    if not match:
        raise CycleGANError(f"a memory size looks like 12GB or 800MB, got {shown}")
    size = int(Fraction(match[1]) * 1024 ** " kmgt".index(match[2].lower() or " "))
    if not 1 <= size <= MAX_MEMORY:
        raise CycleGANError(
            f"a memory size must be between 1 byte and {MAX_MEMORY // 2**60} EiB, got {shown}"
        )
    return size


def device_from_gpu_ids(gpu_ids: str) -> str:
    """The reference's ``--gpu_ids``: -1 for the CPU, N for cuda:N (one GPU; several need torchrun)."""
    ids = [i.strip() for i in gpu_ids.split(",") if i.strip()]
    if ids == ["-1"]:
        return "cpu"
    if len(ids) == 1 and ids[0].isdigit():
        return f"cuda:{ids[0]}"
    raise CycleGANError(f"--gpu_ids takes -1 (CPU) or one GPU id, got {gpu_ids!r}")
