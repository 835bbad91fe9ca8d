"""Loading weights: strict checks with one-line errors, reference quirks, and a generator's architecture
read from its weights alone (for reference ``.pth`` files, which carry none)."""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import nn

from cyclegan.config import NetConfig
from cyclegan.errors import CycleGANError
from cyclegan.networks.registry import GENERATORS


def clean_state_dict(
    state: Mapping[str, torch.Tensor], net: nn.Module | None = None
) -> dict[str, torch.Tensor]:
    """Strip a DataParallel ``module.`` prefix and the InstanceNorm running-stat keys old PyTorch saved, and
    give batch norms the step counter PyTorch before 0.4.1 did not save (as PyTorch's own loading does)."""
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
    for name, module in modules.items():
        counter = f"{name}.num_batches_tracked"
        if isinstance(module, nn.BatchNorm2d) and f"{name}.running_mean" in out and counter not in out:
            out[counter] = torch.tensor(0, dtype=torch.long)
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
_FILTER = re.compile(r"^model\.(\d+)\.filt$")


def generator_config_from_state_dict(state: Mapping[str, torch.Tensor]) -> NetConfig:
    """Read kind, width, block count, channels, norm and anti-aliasing of a generator from its weights
    alone."""
    try:
        return _generator_config(clean_state_dict(state))
    except (IndexError, KeyError, ValueError, AttributeError):
        raise CycleGANError("these weights are not a CycleGAN generator (ResNet or U-Net)") from None


def _generator_config(state: Mapping[str, torch.Tensor]) -> NetConfig:
    norm = _norm_from_state(state)
    if "model.1.weight" in state and any(_RESNET_BLOCK.match(k) for k in state):
        first = state["model.1.weight"]
        blocks = len({m.group(1) for k in state if (m := _RESNET_BLOCK.match(k))})
        last_key = max(
            (k for k in state if k.endswith(".weight") and _RESNET_BLOCK.match(k) is None),
            key=lambda k: int(k.split(".")[1]),
        )
        padding = "reflect" if any(k.endswith("conv_block.1.weight") for k in state) else "zero"
        block_ids = [int(m.group(1)) for k in state if (m := _RESNET_BLOCK.match(k))]
        filters = [int(m.group(1)) for k in state if (m := _FILTER.match(k))]  # anti-aliasing (CUT)
        cfg = NetConfig(
            input_nc=first.shape[1],
            output_nc=state[last_key].shape[0],
            ngf=first.shape[0],
            netG=f"resnet_{blocks}blocks",
            norm=norm,
            padding=padding,
            antialias=any(i < min(block_ids) for i in filters),
            antialias_up=any(i > max(block_ids) for i in filters),
        )
        if blocks not in (6, 9):
            raise CycleGANError(f"ResNet generators have 6 or 9 blocks; these weights have {blocks}")
        return cfg
    if "model.model.0.weight" in state:
        first = state["model.model.0.weight"]
        depth = max(k.count("model.") for k in state if k.startswith("model.model.")) - 1
        cfg = NetConfig(
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
