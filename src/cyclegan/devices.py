"""Choosing the device a command runs on, with one-line errors for devices that are not there."""

from __future__ import annotations

import re

import torch

from cyclegan.errors import CycleGANError


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CycleGANError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CycleGANError(f"--device {name}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CycleGANError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type != "cpu":
        raise CycleGANError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
    return device


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is a device running out of memory: CUDA's OutOfMemoryError, or the CPU allocator's
    plain RuntimeError ("DefaultCPUAllocator: can't allocate memory")."""
    return isinstance(err, torch.cuda.OutOfMemoryError) or "can't allocate memory" in str(err)


def parse_memory(text: str) -> int:
    """``12GB``, ``12G``, ``800MiB``, ``1.5T`` or plain bytes; units are binary (GB = GiB = 2**30 bytes, as
    nvidia-smi counts)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", text, re.IGNORECASE)
    if not match or float(match[1]) <= 0:
        raise CycleGANError(f"a memory size looks like 12GB or 800MB, got {text!r}")
    return int(float(match[1]) * 1024 ** " kmgt".index(match[2].lower() or " "))


def device_from_gpu_ids(gpu_ids: str) -> str:
    """The reference's ``--gpu_ids``: -1 for the CPU, N for cuda:N (one GPU; several need torchrun)."""
    ids = [i.strip() for i in gpu_ids.split(",") if i.strip()]
    if ids == ["-1"]:
        return "cpu"
    if len(ids) == 1 and ids[0].isdigit():
        return f"cuda:{ids[0]}"
    raise CycleGANError(f"--gpu_ids takes -1 (CPU) or one GPU id, got {gpu_ids!r}")
