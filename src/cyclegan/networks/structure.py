"""How a network's composite blocks compute, for tools that run a network piece by piece (exact tiles).

Each composite block says what it is, ``block.structure()``, in this small vocabulary; plain PyTorch layers
(convolutions, padding, norms, activations, dropout) are understood as they are. A new generator built from
these shapes can be translated in exact tiles without any change to the tiler.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import nn


@dataclass(frozen=True)
class FixedConv:
    """A depthwise convolution (or transposed convolution) with a fixed filter, one per channel, no bias:
    an anti-aliasing layer's blur."""

    filt: torch.Tensor
    stride: int
    padding: int
    transposed: bool = False


@dataclass(frozen=True)
class Chain:
    """Layers run one after another."""

    layers: Iterable[nn.Module | FixedConv]


@dataclass(frozen=True)
class Residual:
    """``x + body(x)``."""

    body: nn.Sequential


@dataclass(frozen=True)
class Concat:
    """``torch.cat([x, body(x)], dim=1)``: a U-Net's skip connection."""

    body: nn.Sequential


Structure = Chain | Residual | Concat


@runtime_checkable
class Structured(Protocol):
    """A block that says how it computes."""

    def structure(self) -> Structure: ...
