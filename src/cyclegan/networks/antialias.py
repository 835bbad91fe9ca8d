"""Anti-aliased resampling (Zhang, "Making Convolutional Networks Shift-Invariant Again", ICML 2019), as
CUT's networks use it: a fixed binomial blur around every change of resolution, so that a shift of the input
shifts the features instead of aliasing them.

Both layers are the reference implementation's, down to their ``filt`` buffers (part of ``state_dict``, so
reference checkpoints load with strict key checking) and the order of their padding, convolution and crop.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cyclegan.networks.structure import Chain, FixedConv


def binomial_filter(size: int) -> torch.Tensor:
    """The size x size outer product of a row of Pascal's triangle, summing to 1 (exact in float32)."""
    row = torch.tensor([math.comb(size - 1, k) for k in range(size)], dtype=torch.float64)
    kernel = row[:, None] * row[None, :]
    return (kernel / kernel.sum()).float()


class Downsample(nn.Module):
    """Blur with a 3x3 binomial filter, then keep every second pixel: reflection padding 1, a depthwise
    stride-2 convolution. Follows a stride-1 convolution where a plain network has a strided one."""

    filt: torch.Tensor

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("filt", binomial_filter(3)[None, None].repeat(channels, 1, 1, 1))
        self.pad = nn.ReflectionPad2d(1)
        self.stride = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.pad(x), self.filt, stride=self.stride, groups=self.filt.shape[0])

    def structure(self) -> Chain:
        return Chain([self.pad, FixedConv(self.filt, self.stride, padding=0)])


class Upsample(nn.Module):
    """Double the resolution by a depthwise transposed convolution with a fixed 4x4 binomial filter (times 4,
    the stride squared, so a flat image stays flat): replication padding 1, the transposed convolution
    (stride 2, padding 2), then one row and column cropped from each side. A stride-1 convolution follows
    where a plain network has a transposed one."""

    filt: torch.Tensor

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("filt", (binomial_filter(4) * 4)[None, None].repeat(channels, 1, 1, 1))
        self.pad = nn.ReplicationPad2d(1)
        self.stride, self.padding, self.crop = 2, 2, 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.crop
        # Compiled, the padding is built by concatenation: torch.compile (2.14) declares other strides for
        # replication padding's backward than its CPU kernel returns at batch size 1, and fails at run time.
        padded = _replicate_edges(x) if torch.compiler.is_compiling() else self.pad(x)
        y = F.conv_transpose2d(
            padded, self.filt, stride=self.stride, padding=self.padding, groups=self.filt.shape[0]
        )
        return y[:, :, c:-c, c:-c]

    def structure(self) -> Chain:
        """The crop after the transposed convolution is more of that convolution's padding."""
        padding = self.padding + self.crop
        return Chain([self.pad, FixedConv(self.filt, self.stride, padding, transposed=True)])


def _replicate_edges(x: torch.Tensor) -> torch.Tensor:
    """``nn.ReplicationPad2d(1)(x)``, the same values, from slices and concatenation."""
    x = torch.cat((x[:, :, :1], x, x[:, :, -1:]), dim=2)
    return torch.cat((x[:, :, :, :1], x, x[:, :, :, -1:]), dim=3)
