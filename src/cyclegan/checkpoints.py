"""Checkpoints: safetensors weights that carry their own architecture, and atomic writes.

A checkpoint ``NAME.safetensors`` holds the four networks under the prefixes ``G_A.``, ``G_B.``, ``D_A.``,
``D_B.`` (the reference's naming: G_A maps A->B, D_A judges domain B) and, in its metadata, the
``ModelConfig`` as JSON, so nothing else is needed to rebuild the networks. The resumable training state
(optimizers, scheduler, image pools, RNG states) lives beside it in ``NAME.state.pt``. Loading never
unpickles code: safetensors, or ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from cyclegan.config import ModelConfig, model_config_from_dict
from cyclegan.errors import CycleGANError
from cyclegan.networks import build_generator, generator_config_from_state_dict, load_weights

FORMAT = "cyclegan/1"
NETWORKS = ("G_A", "G_B", "D_A", "D_B")


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through ``write(tmp)`` to a temporary file beside ``path``, fsync, then rename over it.

    A crash at any point leaves either the old file or the new one, never a truncated file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process umask (mkstemp makes private 0600 files; results should get the usual permissions)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def save_weights(
    path: Path, networks: Mapping[str, nn.Module], model_config: ModelConfig, info: Mapping[str, Any]
) -> None:
    """Save networks (name -> module) with the architecture and ``info`` (epoch, step…) as metadata."""
    tensors = {
        f"{name}.{key}": value.detach().cpu().contiguous()
        for name, net in networks.items()
        for key, value in net.state_dict().items()
    }
    metadata = {
        "format": FORMAT,
        "model_config": json.dumps(model_config.__dict__),
        "info": json.dumps(dict(info)),
    }
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def read_weights(path: Path) -> tuple[dict[str, dict[str, torch.Tensor]], ModelConfig, dict[str, Any]]:
    """Return ({network name: state_dict}, architecture, info) of one of our checkpoints."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise CycleGANError(f"{path} is a safetensors file but not a cyclegan checkpoint")
            states: dict[str, dict[str, torch.Tensor]] = {}
            for key in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                name, _, rest = key.partition(".")
                states.setdefault(name, {})[rest] = f.get_tensor(key)
    except (SafetensorError, OSError) as err:
        raise CycleGANError(f"cannot read checkpoint {path}: {err}") from None
    model_config = model_config_from_dict(json.loads(metadata["model_config"]))
    return states, model_config, json.loads(metadata.get("info", "{}"))


def save_state(path: Path, state: Mapping[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(dict(state), tmp))


def load_state(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CycleGANError(f"no training state at {path}") from None
    except Exception as err:
        raise CycleGANError(f"cannot read training state {path}: {err}".splitlines()[0]) from None


def resolve_checkpoint(path: Path) -> Path:
    """A run folder means its latest checkpoint; a file is taken as it is."""
    path = Path(path)
    if path.is_dir():
        candidate = path / "checkpoints" / "latest.safetensors"
        if not candidate.is_file():
            raise CycleGANError(f"{path} is a folder without checkpoints/latest.safetensors")
        return candidate
    if not path.is_file():
        raise CycleGANError(f"checkpoint not found: {path}")
    return path


def load_generator(checkpoint: Path, direction: str = "AtoB") -> tuple[nn.Module, ModelConfig]:
    """The generator for ``direction`` from a run folder, one of our checkpoints or a reference ``.pth``.

    A reference file holds one generator (``latest_net_G_A.pth``, a released ``NAME.pth``); its kind, width,
    block count and channels are read from the weights, and ``direction`` is not used.
    """
    path = resolve_checkpoint(checkpoint)
    if direction not in ("AtoB", "BtoA"):
        raise CycleGANError(f"--direction must be AtoB or BtoA, got {direction!r}")
    if path.suffix == ".safetensors":
        states, model_config, _ = read_weights(path)
        name = "G_A" if direction == "AtoB" else "G_B"
        if name not in states:
            raise CycleGANError(f"{path} holds no generator {name}")
        in_nc, out_nc = model_config.input_nc, model_config.output_nc
        if direction == "BtoA":
            in_nc, out_nc = out_nc, in_nc
        net = build_generator(model_config, in_nc, out_nc)
        load_weights(net, states[name])
        return net.eval(), model_config
    state = _torch_state_dict(path)
    model_config = generator_config_from_state_dict(state)
    net = build_generator(model_config)
    load_weights(net, state)
    return net.eval(), model_config


def _torch_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CycleGANError(f"cannot read {path} as PyTorch weights: {first_line}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CycleGANError(f"{path} is not a state dict of tensors")
    return state
