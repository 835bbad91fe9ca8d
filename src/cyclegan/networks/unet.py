"""The U-Net generator: each level halves the resolution and is skip-connected to its mirror level.

Module trees and ``state_dict`` keys are the reference implementation's.
"""

from __future__ import annotations

import torch
from torch import nn

from cyclegan.config import NetConfig
from cyclegan.networks.checkpointing import Checkpointed, run_checkpointed
from cyclegan.networks.layers import norm_layer, uses_bias
from cyclegan.networks.registry import register_generator
from cyclegan.networks.structure import Chain, Concat


class UnetSkipConnectionBlock(Checkpointed):
    """One U-Net level: downsample, the inner levels, upsample, and concatenate the input (skip).

    Checkpointed, an inner level keeps only the inputs of its down and up stages (the outermost level's
    stages are single convolutions, with nothing to save).
    """

    def __init__(
        self,
        outer_nc: int,
        inner_nc: int,
        input_nc: int | None = None,
        submodule: nn.Module | None = None,
        outermost: bool = False,
        innermost: bool = False,
        norm: str = "instance",
        use_dropout: bool = False,
    ) -> None:
        super().__init__()
        self.outermost = outermost
        bias = uses_bias(norm)
        down_conv = nn.Conv2d(input_nc or outer_nc, inner_nc, 4, stride=2, padding=1, bias=bias)
        up_in = inner_nc if innermost else inner_nc * 2
        layers: list[nn.Module]
        if not innermost and submodule is None:
            raise ValueError("only the innermost U-Net level has no submodule")
        if outermost:
            assert submodule is not None
            up_conv = nn.ConvTranspose2d(up_in, outer_nc, 4, stride=2, padding=1)
            layers = [down_conv, submodule, nn.ReLU(True), up_conv, nn.Tanh()]
        else:
            up_conv = nn.ConvTranspose2d(up_in, outer_nc, 4, stride=2, padding=1, bias=bias)
            down = [nn.LeakyReLU(0.2, True), down_conv]
            up = [nn.ReLU(True), up_conv, norm_layer(norm, outer_nc)]
            if innermost:
                layers = down + up
            else:
                assert submodule is not None
                layers = [*down, norm_layer(norm, inner_nc), submodule, *up]
                if use_dropout:
                    layers.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self._inner(x) if self.checkpointing() else self.model(x)], 1)

    def structure(self) -> Chain | Concat:
        return Chain(self.model) if self.outermost else Concat(self.model)

    def _inner(self, x: torch.Tensor) -> torch.Tensor:
        subs = [i for i, layer in enumerate(self.model) if isinstance(layer, UnetSkipConnectionBlock)]
        if not subs:
            return run_checkpointed(self.model, x)
        sub = subs[0]
        x = self.model[sub](run_checkpointed(self.model[:sub], x))
        return run_checkpointed(self.model[sub + 1 :], x)


class UnetGenerator(nn.Module):
    """U-Net with ``num_downs`` halvings: 7 for 128x128 images, 8 for 256x256."""

    def __init__(
        self,
        input_nc: int = 3,
        output_nc: int = 3,
        num_downs: int = 8,
        ngf: int = 64,
        norm: str = "instance",
        use_dropout: bool = False,
    ) -> None:
        super().__init__()
        block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, innermost=True, norm=norm)
        for _ in range(num_downs - 5):
            block = UnetSkipConnectionBlock(
                ngf * 8, ngf * 8, submodule=block, norm=norm, use_dropout=use_dropout
            )
        for mult in (4, 2, 1):
            block = UnetSkipConnectionBlock(ngf * mult, ngf * mult * 2, submodule=block, norm=norm)
        self.model = UnetSkipConnectionBlock(output_nc, ngf, input_nc, block, outermost=True, norm=norm)
        self.size_multiple = 2**num_downs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def structure(self) -> Chain:
        return Chain([self.model])


@register_generator("unet_128", "unet_256")
def _unet(cfg: NetConfig, input_nc: int, output_nc: int) -> UnetGenerator:
    levels = {"unet_128": 7, "unet_256": 8}[cfg.netG]
    return UnetGenerator(input_nc, output_nc, levels, cfg.ngf, cfg.norm, cfg.dropout)
