"""How the training step runs, not what it computes: mixed precision, memory layout, compilation, Adam.

``fp32`` is the reference's arithmetic. ``bf16`` and ``fp16`` run the networks' convolutions under
autocast while everything that accumulates stays float32: instance (and batch) norm statistics, the
losses, the weights and the optimizer. fp16 also scales the loss (``torch.amp.GradScaler``) so small
gradients do not flush to zero; bf16 has float32's range and needs no scaling.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cyclegan.config import PRECISIONS, check_choice
from cyclegan.errors import CycleGANError, first_line

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(name: str, device: torch.device) -> str:
    """The arithmetic ``--precision NAME`` means on ``device``, or a one-line refusal.

    ``auto`` is fp32 on every device: the reference's arithmetic. On CUDA fp32 convolutions already run on
    tensor cores as TF32 (PyTorch's cuDNN default), and bf16 has not yet been measured against it for speed
    and quality on these models, so ``auto`` does not switch to it; ``benchmarks/gpu_check.sh`` collects
    that evidence.
    """
    if name == "auto":
        return "fp32"
    check_choice("--precision", name, PRECISIONS)
    if name == "fp16" and device.type != "cuda":
        raise CycleGANError("--precision fp16 needs a CUDA device; on CPU use --precision bf16")
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise CycleGANError("--precision bf16: this GPU has no bfloat16 support; use --precision fp16")
    return name


@dataclass(frozen=True)
class Precision:
    """The arithmetic of one run: ``name`` is fp32, bf16 or fp16 (already resolved)."""

    name: str = "fp32"
    device_type: str = "cpu"

    @property
    def mixed(self) -> bool:
        return self.name != "fp32"

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Autocast for the networks' forward passes; nothing at all in fp32 (the reference's ops)."""
        if not self.mixed:
            yield
            return
        with torch.autocast(self.device_type, dtype=DTYPES[self.name]):
            yield

    @classmethod
    def on(cls, name: str, device: torch.device) -> Precision:
        """``--precision NAME`` resolved for ``device`` (see :func:`resolve_precision`)."""
        return cls(resolve_precision(name, device), device.type)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Enabled for fp16 only; disabled, its ``scale`` and ``step`` are plain pass-throughs."""
        return torch.amp.GradScaler(self.device_type, enabled=self.name == "fp16")


class Autocast(nn.Module):
    """Runs a network under its precision's autocast and returns float32, so callers see no change."""

    def __init__(self, network: nn.Module, precision: Precision) -> None:
        super().__init__()
        self.network, self.precision = network, precision

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.precision.autocast():
            return self.network(x).float()


def keep_norms_float32(model: nn.Module) -> None:
    """Make every norm layer compute in float32 under autocast.

    Autocast lists no instance norm: it would run in the dtype of its input, the conv output in bf16/fp16,
    and compute each image's mean and variance at that precision. Casting the input up keeps the statistics
    in float32; the next convolution casts back down by itself.
    """
    for module in model.modules():
        if isinstance(module, (nn.InstanceNorm2d, nn.BatchNorm2d)):
            module.register_forward_pre_hook(_inputs_to_float32)


def _inputs_to_float32(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(a.float() if isinstance(a, torch.Tensor) else a for a in args)


def adam_options(precision: Precision) -> dict[str, bool]:
    """Fused Adam (one kernel for all parameters, on CPU and CUDA) on the mixed-precision paths; fp32 keeps
    PyTorch's default implementation, the one the reference's trajectory was recorded with."""
    return {"fused": True} if precision.mixed else {}


def pick_conv_algorithms(device: torch.device, fixed_size: bool) -> None:
    """On CUDA, let cuDNN time its convolution algorithms for each input shape and keep the fastest, as the
    reference does whenever all training images share one size (with varying sizes it would re-time)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = fixed_size


def check_compiler(device: torch.device) -> None:
    """Refuse ``--compile`` in one line where torch.compile cannot build kernels (no C++ compiler,
    no Triton), before any data is loaded; this costs a few seconds only when compiling was asked for."""
    try:
        probe = torch.compile(lambda x: torch.relu(x) * 2 + 1, dynamic=False)
        probe(torch.ones(8, device=device))
    except Exception as err:  # inductor raises many kinds: missing compiler, Triton, Python headers
        raise CycleGANError(f"--compile: torch.compile does not work here ({first_line(err)})") from None


def to_channels_last(model: nn.Module) -> None:
    model.to(memory_format=torch.channels_last)


def match_param_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give loaded optimizer state the memory layout of its parameter (a checkpoint stores contiguous
    tensors; fused kernels expect the state laid out like the channels-last weights)."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if isinstance(value, torch.Tensor) and value.shape == param.shape:
                    optimizer.state[param][key] = torch.empty_like(param).copy_(value)
