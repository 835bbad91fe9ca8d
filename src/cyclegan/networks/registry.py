"""Where generators and discriminators are registered by name: one registration per architecture.

A generator builder takes the architecture config and the channels in and out; the network it returns
states the sizes it maps back to themselves as ``size_multiple``. A discriminator builder takes the
architecture config and its input channels. ``--netG`` and ``--netD`` pick from these tables.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from cyclegan.config import NetConfig, check_choice
from cyclegan.networks.layers import init_weights

GeneratorBuilder = Callable[[NetConfig, int, int], nn.Module]
DiscriminatorBuilder = Callable[[NetConfig, int], nn.Module]

GENERATORS: dict[str, GeneratorBuilder] = {}
DISCRIMINATORS: dict[str, DiscriminatorBuilder] = {}

MIN_SIZE = 8  # the smallest side to translate: a ResNet's bottleneck must be 2x2 for its reflection padding


def register_generator(*names: str) -> Callable[[GeneratorBuilder], GeneratorBuilder]:
    def add(builder: GeneratorBuilder) -> GeneratorBuilder:
        for name in names:
            GENERATORS[name] = builder
        return builder

    return add


def register_discriminator(*names: str) -> Callable[[DiscriminatorBuilder], DiscriminatorBuilder]:
    def add(builder: DiscriminatorBuilder) -> DiscriminatorBuilder:
        for name in names:
            DISCRIMINATORS[name] = builder
        return builder

    return add


def _lookup(table: dict, name: str, flag: str) -> Callable:
    check_choice(flag, name, table)
    return table[name]


def build_generator(cfg: NetConfig, input_nc: int | None = None, output_nc: int | None = None) -> nn.Module:
    """A freshly initialised generator (on the current default device); channels default to A->B."""
    in_nc = cfg.input_nc if input_nc is None else input_nc
    out_nc = cfg.output_nc if output_nc is None else output_nc
    net = _lookup(GENERATORS, cfg.netG, "--netG")(cfg, in_nc, out_nc)
    init_weights(net, cfg.init_type, cfg.init_gain)
    return net


def build_discriminator(cfg: NetConfig, input_nc: int) -> nn.Module:
    """A freshly initialised discriminator for images of ``input_nc`` channels."""
    net = _lookup(DISCRIMINATORS, cfg.netD, "--netD")(cfg, input_nc)
    init_weights(net, cfg.init_type, cfg.init_gain)
    return net


def size_multiple(cfg: NetConfig) -> int:
    """Image sides the generator maps back to themselves are multiples of this (it says so itself)."""
    with torch.device("meta"):
        return int(_lookup(GENERATORS, cfg.netG, "--netG")(cfg, cfg.input_nc, cfg.output_nc).size_multiple)


def input_channels(generator: nn.Module) -> int:
    """The channels of the images a network takes, from its first convolution (wrappers included)."""
    return next(m for m in generator.modules() if isinstance(m, nn.Conv2d)).in_channels
