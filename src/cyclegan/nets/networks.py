"""Generators and discriminators.

Module trees mirror the reference implementation layer for layer, so its ``state_dict`` keys (for example
``model.10.conv_block.1.weight``) are ours and its checkpoints load with strict key checking.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from cyclegan.config import GENERATORS, ModelConfig
from cyclegan.errors import CycleGANError


def norm_layer(norm: str, channels: int) -> nn.Module:
    """Instance norm has no affine parameters and no running statistics, as in CycleGAN."""
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    if norm == "batch":
        return nn.BatchNorm2d(channels, affine=True, track_running_stats=True)
    if norm == "none":
        return nn.Identity()
    raise CycleGANError(f"unknown norm {norm!r}")


class Checkpointed(nn.Module):
    """A network that can trade compute for memory: with ``checkpoint_activations`` set (a plain attribute,
    so module trees and ``state_dict`` keys stay the reference's), training forwards keep only the inputs of
    their segments and recompute the rest in the backward pass. Gradients are the same; set it with
    :func:`set_checkpointing`."""

    checkpoint_activations = False

    def checkpointing(self) -> bool:
        return self.checkpoint_activations and self.training and torch.is_grad_enabled()


def set_checkpointing(net: nn.Module, on: bool) -> None:
    """Turn activation checkpointing on or off in every part of ``net`` that supports it."""
    for module in net.modules():
        if isinstance(module, Checkpointed):
            module.checkpoint_activations = on


def run_checkpointed(modules: Iterable[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """``modules`` applied in turn, keeping only ``x`` for the backward pass (the rest is recomputed there).

    Leading in-place activations run outside the checkpoint: they change ``x`` itself, so replaying them on
    it would apply them twice. Dropout replays the same mask (the RNG state is restored for the recompute),
    autocast is replayed as it was, and batch-norm running statistics are not updated a second time.
    """
    layers = list(modules)
    start = 0
    while start < len(layers) and getattr(layers[start], "inplace", False):
        x = layers[start](x)
        start += 1
    segment = layers[start:]
    if not segment:
        return x
    stats = [b for layer in segment for b in layer.buffers()]
    if not stats or torch.compiler.is_compiling():  # a compiled graph's recomputation updates nothing
        return checkpoint(_chain, segment, x, use_reentrant=False)
    return checkpoint(
        _chain, segment, x, use_reentrant=False, context_fn=lambda: (contextlib.nullcontext(), _kept(stats))
    )


def _chain(layers: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    for layer in layers:
        x = layer(x)
    return x


@contextlib.contextmanager
def _kept(buffers: list[torch.Tensor]) -> Iterator[None]:
    """Restores the buffers (running statistics) a recomputation would update again."""
    saved = [b.clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(buffers, saved, strict=True):
                buffer.copy_(value)


def uses_bias(norm: str) -> bool:
    """Convs before a norm carry a bias only with instance norm (batch norm has its own shift).

    With ``norm='none'`` the reference also leaves the bias out; we keep that so its checkpoints load.
    """
    return norm == "instance"


class ResnetBlock(nn.Module):
    """Two 3x3 convs with a skip connection."""

    def __init__(self, dim: int, padding: str, norm: str, use_dropout: bool) -> None:
        super().__init__()
        bias = uses_bias(norm)
        layers: list[nn.Module] = []
        for i in range(2):
            pad = 0
            if padding == "reflect":
                layers.append(nn.ReflectionPad2d(1))
            elif padding == "replicate":
                layers.append(nn.ReplicationPad2d(1))
            else:
                pad = 1
            layers += [nn.Conv2d(dim, dim, 3, padding=pad, bias=bias), norm_layer(norm, dim)]
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.checkpointing():
            return self.model(x)
        blocks = [i for i, layer in enumerate(self.model) if isinstance(layer, ResnetBlock)]
        x = run_checkpointed(self.model[: blocks[0]], x)
        for i in blocks:
            x = run_checkpointed([self.model[i]], x)
        return run_checkpointed(self.model[blocks[-1] + 1 :], x)


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class NLayerDiscriminator(Checkpointed):
    """PatchGAN: classifies overlapping patches as real or fake; 3 layers see 70x70 patches.

    Checkpointed, it keeps only its input: recomputing it costs a few percent of a generator's forward.
    """

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3, norm: str = "instance") -> None:
        super().__init__()
        bias = uses_bias(norm)
        layers: list[nn.Module] = [nn.Conv2d(input_nc, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=bias),
                norm_layer(norm, ndf * mult),
                nn.LeakyReLU(0.2, True),
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


def init_weights(net: nn.Module, init_type: str = "normal", gain: float = 0.02) -> None:
    """Conv weights from the chosen distribution, biases zero; batch-norm scales from N(1, gain)."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            if init_type == "normal":
                nn.init.normal_(m.weight, 0.0, gain)
            elif init_type == "xavier":
                nn.init.xavier_normal_(m.weight, gain=gain)
            elif init_type == "kaiming":
                nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
            elif init_type == "orthogonal":
                nn.init.orthogonal_(m.weight, gain=gain)
            else:
                raise CycleGANError(f"unknown init type {init_type!r}")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)


def build_generator(cfg: ModelConfig, input_nc: int | None = None, output_nc: int | None = None) -> nn.Module:
    """A freshly initialised generator; channel counts default to A->B."""
    in_nc = cfg.input_nc if input_nc is None else input_nc
    out_nc = cfg.output_nc if output_nc is None else output_nc
    net: nn.Module
    if cfg.netG.startswith("resnet_"):
        blocks = int(cfg.netG.removeprefix("resnet_").removesuffix("blocks"))
        net = ResnetGenerator(in_nc, out_nc, cfg.ngf, cfg.norm, cfg.dropout, blocks, cfg.padding)
    elif cfg.netG in ("unet_128", "unet_256"):
        net = UnetGenerator(in_nc, out_nc, 7 if cfg.netG == "unet_128" else 8, cfg.ngf, cfg.norm, cfg.dropout)
    else:
        raise CycleGANError(f"unknown generator {cfg.netG!r}")
    init_weights(net, cfg.init_type, cfg.init_gain)
    return net


def build_discriminator(cfg: ModelConfig, input_nc: int) -> nn.Module:
    """A freshly initialised discriminator for images of ``input_nc`` channels."""
    net: nn.Module
    if cfg.netD == "basic":
        net = NLayerDiscriminator(input_nc, cfg.ndf, 3, cfg.norm)
    elif cfg.netD == "n_layers":
        net = NLayerDiscriminator(input_nc, cfg.ndf, cfg.n_layers_D, cfg.norm)
    elif cfg.netD == "pixel":
        net = PixelDiscriminator(input_nc, cfg.ndf, cfg.norm)
    else:
        raise CycleGANError(f"unknown discriminator {cfg.netD!r}")
    init_weights(net, cfg.init_type, cfg.init_gain)
    return net


def clean_state_dict(
    state: Mapping[str, torch.Tensor], net: nn.Module | None = None
) -> dict[str, torch.Tensor]:
    """Strip a DataParallel ``module.`` prefix and the InstanceNorm running-stat keys old PyTorch saved."""
    stripped = {key.removeprefix("module."): value for key, value in state.items()}
    modules = dict(net.named_modules()) if net is not None else {}
    out: dict[str, torch.Tensor] = {}
    for key, value in stripped.items():
        owner, _, leaf = key.rpartition(".")
        if leaf in ("running_mean", "running_var", "num_batches_tracked"):
            module = modules.get(owner)
            if (net is None and f"{owner}.weight" not in stripped) or isinstance(module, nn.InstanceNorm2d):
                continue
        out[key] = value
    return out


def check_weights(net: nn.Module, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The cleaned ``state`` if its keys and shapes fit ``net`` exactly, else a one-line error.

    Works on a shape-only (meta) network too, so weights can be vetted before memory is allocated.
    """
    state = clean_state_dict(state, net)
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys (e.g. {unexpected[0]})")
        raise CycleGANError("weights do not fit the network: " + ", ".join(parts))
    for key, value in state.items():
        if not isinstance(value, torch.Tensor) or value.shape != own[key].shape:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise CycleGANError(
                f"weights do not fit the network: {key} has shape {shape}, expected {tuple(own[key].shape)}"
            )
    return state


def load_weights(net: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Strict load that names the mismatch in one line instead of PyTorch's multi-line report."""
    net.load_state_dict(check_weights(net, state), strict=True)


_RESNET_BLOCK = re.compile(r"^model\.(\d+)\.conv_block\.")


def generator_config_from_state_dict(state: Mapping[str, torch.Tensor]) -> ModelConfig:
    """Read kind, width, block count, channels and norm of a generator from its weights alone."""
    try:
        return _generator_config(clean_state_dict(state))
    except (IndexError, KeyError, ValueError, AttributeError):
        raise CycleGANError("these weights are not a CycleGAN generator (ResNet or U-Net)") from None


def _generator_config(state: Mapping[str, torch.Tensor]) -> ModelConfig:
    norm = _norm_from_state(state)
    if "model.1.weight" in state and any(_RESNET_BLOCK.match(k) for k in state):
        first = state["model.1.weight"]
        blocks = len({m.group(1) for k in state if (m := _RESNET_BLOCK.match(k))})
        last_key = max(
            (k for k in state if k.endswith(".weight") and _RESNET_BLOCK.match(k) is None),
            key=lambda k: int(k.split(".")[1]),
        )
        padding = "reflect" if any(k.endswith("conv_block.1.weight") for k in state) else "zero"
        cfg = ModelConfig(
            input_nc=first.shape[1],
            output_nc=state[last_key].shape[0],
            ngf=first.shape[0],
            netG=f"resnet_{blocks}blocks",
            norm=norm,
            padding=padding,
        )
        if blocks not in (6, 9):
            raise CycleGANError(f"ResNet generators have 6 or 9 blocks; these weights have {blocks}")
        return cfg
    if "model.model.0.weight" in state:
        first = state["model.model.0.weight"]
        depth = max(k.count("model.") for k in state if k.startswith("model.model.")) - 1
        cfg = ModelConfig(
            input_nc=first.shape[1],
            output_nc=state["model.model.3.weight"].shape[1],
            ngf=first.shape[0],
            netG={7: "unet_128", 8: "unet_256"}.get(depth, f"unet_depth{depth}"),
            norm=norm,
        )
        if cfg.netG not in GENERATORS:
            raise CycleGANError(f"U-Net generators have 7 or 8 levels; these weights have {depth}")
        return cfg
    raise CycleGANError("these weights are not a CycleGAN generator (ResNet or U-Net)")


def _norm_from_state(state: Mapping[str, torch.Tensor]) -> str:
    if any(k.endswith("running_mean") for k in state):
        return "batch"
    first_conv = "model.1" if "model.1.weight" in state else "model.model.1.model.1"
    return "instance" if f"{first_conv}.bias" in state else "none"


MIN_SIZE = 8  # the smallest side to translate: a ResNet's bottleneck must be 2x2 for its reflection padding


def size_multiple(cfg: ModelConfig) -> int:
    """Sizes a generator maps back to themselves: ResNets halve twice, U-Nets 7 or 8 times."""
    return {"unet_128": 2**7, "unet_256": 2**8}.get(cfg.netG, 4)


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
