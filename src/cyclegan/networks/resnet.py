"""The ResNet generator: encoder, residual blocks at a quarter of the resolution, decoder.

Module trees mirror the reference implementation layer for layer, so its ``state_dict`` keys (for example
``model.10.conv_block.1.weight``) are ours and its checkpoints load with strict key checking.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Sequence

import torch
from torch import nn

from cyclegan.config import NetConfig
from cyclegan.networks.antialias import Downsample, Upsample
from cyclegan.networks.checkpointing import Checkpointed, run_checkpointed
from cyclegan.networks.layers import PADDINGS, choose, norm_layer, uses_bias
from cyclegan.networks.registry import register_generator
from cyclegan.networks.structure import Chain, Residual


class ResnetBlock(nn.Module):
    """Two 3x3 convs with a skip connection."""

    def __init__(self, dim: int, padding: str, norm: str, use_dropout: bool) -> None:
        super().__init__()
        bias = uses_bias(norm)
        layers: list[nn.Module] = []
        pad_layer = choose(PADDINGS, padding, "--padding")
        for i in range(2):
            if pad_layer is not None:
                layers.append(pad_layer(1))  # type: ignore[operator]
            layers += [
                nn.Conv2d(dim, dim, 3, padding=0 if pad_layer else 1, bias=bias),
                norm_layer(norm, dim),
            ]
            if i == 0:
                layers.append(nn.ReLU(True))
                if use_dropout:
                    layers.append(nn.Dropout(0.5))
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)

    def structure(self) -> Residual:
        return Residual(self.conv_block)


class ResnetGenerator(Checkpointed):
    """Encoder (7x7 conv, two stride-2 convs), ``n_blocks`` residual blocks, decoder (two transposed convs,
    7x7 conv, tanh). Works on any size divisible by 4. CUT's layout (``antialias``, ``antialias_up``) replaces
    each strided conv by a stride-1 conv followed by a blur ``Downsample``, and each transposed conv by a
    fixed-filter ``Upsample`` followed by a conv; its PatchNCE loss reads ``features``.

    Checkpointed, it keeps the input of the encoder, of each block and of the decoder: about one
    quarter-resolution map per block instead of every full-resolution one.
    """

    def __init__(
        self,
        input_nc: int = 3,
        output_nc: int = 3,
        ngf: int = 64,
        norm: str = "instance",
        use_dropout: bool = False,
        n_blocks: int = 9,
        padding: str = "reflect",
        antialias: bool = False,
        antialias_up: bool = False,
    ) -> None:
        super().__init__()
        bias = uses_bias(norm)
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(input_nc, ngf, 7, bias=bias),
            norm_layer(norm, ngf),
            nn.ReLU(True),
        ]
        for mult in (1, 2):
            c = ngf * mult * 2
            if antialias:
                layers += [
                    nn.Conv2d(ngf * mult, c, 3, padding=1, bias=bias),
                    norm_layer(norm, c),
                    nn.ReLU(True),
                    Downsample(c),
                ]
            else:
                layers += [
                    nn.Conv2d(ngf * mult, c, 3, stride=2, padding=1, bias=bias),
                    norm_layer(norm, c),
                    nn.ReLU(True),
                ]
        layers += [ResnetBlock(ngf * 4, padding, norm, use_dropout) for _ in range(n_blocks)]
        for mult in (4, 2):
            c = ngf * mult // 2
            if antialias_up:
                up = [Upsample(ngf * mult), nn.Conv2d(ngf * mult, c, 3, padding=1, bias=bias)]
            else:
                up = [nn.ConvTranspose2d(ngf * mult, c, 3, stride=2, padding=1, output_padding=1, bias=bias)]
            layers += [*up, norm_layer(norm, c), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        self.size_multiple = 4  # two stride-2 down-samplings

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.checkpointing():
            return self.model(x)
        for segment in self._segments(len(self.model)):
            x = run_checkpointed(self.model[segment.start : segment.stop], x)
        return x

    def structure(self) -> Chain:
        return Chain(self.model)

    def features(self, x: torch.Tensor, layers: Sequence[int]) -> list[torch.Tensor]:
        """The outputs of the layers ``layers`` (indices into ``self.model``, ascending), as CUT's PatchNCE
        loss compares them; the layers after the last of them are not run."""
        n = len(self.model)
        if not layers or list(layers) != sorted(set(layers)) or not 0 <= layers[0] <= layers[-1] < n:
            raise ValueError(f"feature layers must be ascending layer numbers 0-{n - 1}, got {list(layers)}")
        wanted, features = set(layers), list[torch.Tensor]()
        for segment in self._segments(layers[-1] + 1, wanted):
            modules = self.model[segment.start : segment.stop]
            x = run_checkpointed(modules, x) if self.checkpointing() else modules(x)
            if segment.stop - 1 in wanted:
                features.append(x)
        return features

    def _segments(self, end: int, cuts: Collection[int] = ()) -> list[range]:
        """Layers 0 to ``end`` - 1 in runs: each residual block alone, the layers between blocks together,
        and a run ending at each index in ``cuts``. Checkpointed, a forward keeps only each run's input."""
        bounds = {0, end} | {c + 1 for c in cuts if c < end}
        for i, layer in enumerate(self.model[:end]):
            if isinstance(layer, ResnetBlock):
                bounds |= {i, i + 1}
        edges = sorted(bounds)
        return [range(a, b) for a, b in itertools.pairwise(edges)]


@register_generator("resnet_9blocks", "resnet_6blocks")
def _resnet(cfg: NetConfig, input_nc: int, output_nc: int) -> ResnetGenerator:
    blocks = int(cfg.netG.removeprefix("resnet_").removesuffix("blocks"))
    return ResnetGenerator(
        input_nc, output_nc, cfg.ngf, cfg.norm, cfg.dropout, blocks, cfg.padding,
        antialias=cfg.antialias, antialias_up=cfg.antialias_up,
    )  # fmt: skip
