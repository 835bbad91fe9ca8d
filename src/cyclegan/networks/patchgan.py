"""PatchGAN discriminators: they classify overlapping patches (or single pixels) as real or fake."""

from __future__ import annotations

import torch
from torch import nn

from cyclegan.config import NetConfig
from cyclegan.networks.antialias import Downsample
from cyclegan.networks.checkpointing import Checkpointed, run_checkpointed
from cyclegan.networks.layers import norm_layer, uses_bias
from cyclegan.networks.registry import register_discriminator


class NLayerDiscriminator(Checkpointed):
    """PatchGAN: classifies overlapping patches as real or fake; 3 layers see 70x70 patches. With
    ``antialias`` (CUT's layout) each strided conv becomes a stride-1 conv followed by a blur ``Downsample``.

    Checkpointed, it keeps only its input: recomputing it costs a few percent of a generator's forward.
    """

    def __init__(
        self,
        input_nc: int = 3,
        ndf: int = 64,
        n_layers: int = 3,
        norm: str = "instance",
        antialias: bool = False,
    ) -> None:
        super().__init__()
        bias = uses_bias(norm)
        layers: list[nn.Module] = [
            nn.Conv2d(input_nc, ndf, 4, stride=1 if antialias else 2, padding=1),
            nn.LeakyReLU(0.2, True),
            *([Downsample(ndf)] if antialias else []),
        ]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            down = n < n_layers
            stride = 2 if down and not antialias else 1
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=bias),
                norm_layer(norm, ndf * mult),
                nn.LeakyReLU(0.2, True),
                *([Downsample(ndf * mult)] if down and antialias else []),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_checkpointed(self.model, x) if self.checkpointing() else self.model(x)


class PixelDiscriminator(Checkpointed):
    """1x1 PatchGAN: judges each pixel's colour alone (checkpointed, it keeps only its input)."""

    def __init__(self, input_nc: int = 3, ndf: int = 64, norm: str = "instance") -> None:
        super().__init__()
        bias = uses_bias(norm)
        self.net = nn.Sequential(
            nn.Conv2d(input_nc, ndf, 1),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf, ndf * 2, 1, bias=bias),
            norm_layer(norm, ndf * 2),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * 2, 1, 1, bias=bias),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_checkpointed(self.net, x) if self.checkpointing() else self.net(x)


@register_discriminator("basic", "n_layers")
def _n_layers(cfg: NetConfig, input_nc: int) -> NLayerDiscriminator:
    n_layers = 3 if cfg.netD == "basic" else cfg.n_layers_D
    return NLayerDiscriminator(input_nc, cfg.ndf, n_layers, cfg.norm, cfg.antialias)


@register_discriminator("pixel")
def _pixel(cfg: NetConfig, input_nc: int) -> PixelDiscriminator:
    return PixelDiscriminator(input_nc, cfg.ndf, cfg.norm)
