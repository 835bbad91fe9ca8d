"""The ResNet generator: encoder, residual blocks at a quarter of the resolution, decoder.

Module trees mirror the reference implementation layer for layer, so its ``state_dict`` keys (for example
``model.10.conv_block.1.weight``) are ours and its checkpoints load with strict key checking.
"""

from __future__ import annotations

import torch
from torch import nn

from cyclegan.config import NetConfig
from cyclegan.nets.checkpointing import Checkpointed, run_checkpointed
from cyclegan.nets.layers import PADDINGS, choose, norm_layer, uses_bias
from cyclegan.nets.registry import register_generator


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


class ResnetGenerator(Checkpointed):
    """Encoder (7x7 conv, two stride-2 convs), ``n_blocks`` residual blocks, decoder (two transposed convs,
    7x7 conv, tanh). Works on any size divisible by 4.

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
            layers += [
                nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1, bias=bias),
                norm_layer(norm, ngf * mult * 2),
                nn.ReLU(True),
            ]
        layers += [ResnetBlock(ngf * 4, padding, norm, use_dropout) for _ in range(n_blocks)]
        for mult in (4, 2):
            layers += [
                nn.ConvTranspose2d(
                    ngf * mult, ngf * mult // 2, 3, stride=2, padding=1, output_padding=1, bias=bias
                ),
                norm_layer(norm, ngf * mult // 2),
                nn.ReLU(True),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        self.size_multiple = 4  # two stride-2 convs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.checkpointing():
            return self.model(x)
        blocks = [i for i, layer in enumerate(self.model) if isinstance(layer, ResnetBlock)]
        x = run_checkpointed(self.model[: blocks[0]], x)
        for i in blocks:
            x = run_checkpointed([self.model[i]], x)
        return run_checkpointed(self.model[blocks[-1] + 1 :], x)


@register_generator("resnet_9blocks", "resnet_6blocks")
def _resnet(cfg: NetConfig, input_nc: int, output_nc: int) -> ResnetGenerator:
    blocks = int(cfg.netG.removeprefix("resnet_").removesuffix("blocks"))
    return ResnetGenerator(input_nc, output_nc, cfg.ngf, cfg.norm, cfg.dropout, blocks, cfg.padding)
