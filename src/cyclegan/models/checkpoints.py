"""Checkpoints: safetensors files that carry their own architecture, and resumable training state.

A checkpoint ``NAME.safetensors`` holds the four networks under the prefixes ``G_A.``, ``G_B.``, ``D_A.``,
``D_B.`` (the reference's naming: G_A maps A->B, D_A judges domain B) and, in its metadata, the
``ModelConfig`` as JSON, so nothing else is needed to rebuild the networks. A *resumable* checkpoint also
holds the training state (optimizers, schedulers, image pools, RNG states, hook states) in the same file:
tensors under ``state/``, the structure around them as JSON metadata. One file is one commit point, written
atomically, so a kill at any instant leaves a complete checkpoint. Loading never unpickles anything.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from cyclegan.config import DIRECTIONS, ModelConfig, model_config_from_dict
from cyclegan.errors import CycleGANError, first_line
from cyclegan.files import TEMP_SUFFIX, atomic_write, fsync_folder
from cyclegan.nets.networks import (
    build_generator,
    check_weights,
    generator_config_from_state_dict,
    load_weights,
)

FORMAT = "cyclegan/1"
NETWORKS = ("G_A", "G_B", "D_A", "D_B")
LATEST, PREVIOUS = "latest.safetensors", "previous.safetensors"
STATE_PREFIX = "state/"
LFS_POINTER = b"version https://git-lfs.github.com/spec/"


def save_weights(
    path: Path,
    networks: Mapping[str, nn.Module],
    model_config: ModelConfig,
    info: Mapping[str, Any],
    state: Mapping[str, Any] | None = None,
) -> None:
    """Save networks (name -> module), the architecture and ``info`` (epoch, step…) in one atomic write.

    With ``state`` (nested dicts and lists of tensors and JSON values) the file is resumable.
    """
    tensors = {
        f"{name}.{key}": value.detach().cpu().contiguous()
        for name, net in networks.items()
        for key, value in net.state_dict().items()
    }
    metadata = {
        "format": FORMAT,
        "model_config": json.dumps(dataclasses.asdict(model_config)),
        "info": json.dumps(dict(info)),
    }
    if state is not None:
        metadata["training_state"] = json.dumps(_flatten(state, tensors))
    atomic_write(path, lambda tmp: _save_file(tensors, tmp, metadata))


def _save_file(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """safetensors reports I/O failures (a full disk) as its own error type; make them OSErrors again so
    they get the same one-line message as every other failed write."""
    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as err:
        code = re.search(r"os error (\d+)", str(err))
        raise OSError(int(code.group(1)) if code else errno.EIO, first_line(err)) from None


def commit_resumable(folder: Path, save: Any) -> Path:
    """Make a new ``latest`` checkpoint and keep the one before it as ``previous``.

    ``save(path)`` writes the new file (atomically). Old latest is renamed to previous first, so at every
    instant at least one complete resumable checkpoint exists, whatever kills the process.
    """
    latest = folder / LATEST
    staged = folder / f".{LATEST}.staged{TEMP_SUFFIX}"
    save(staged)
    if latest.exists():
        os.replace(latest, folder / PREVIOUS)
    os.replace(staged, latest)
    fsync_folder(folder)
    return latest


def read_weights(
    path: Path, networks: Collection[str] = NETWORKS
) -> tuple[dict[str, dict[str, torch.Tensor]], ModelConfig, dict[str, Any]]:
    """Return ({network name: state_dict}, architecture, info) of one of our checkpoints, reading the
    tensors of ``networks`` only (a generator for translation leaves the rest on disk).

    The architecture is validated and checked against the file's tensor shapes before anything is built.
    """
    with _open(path) as f:
        model_config, info = _read_metadata(path, f.metadata() or {})
        return _networks(f, networks), model_config, info


def read_info(path: Path) -> dict[str, Any]:
    """The ``info`` of a checkpoint (step, epoch…), from its header alone; raises for a damaged file."""
    with _open(path) as f:
        return _read_metadata(path, f.metadata() or {})[1]


def read_state(path: Path) -> dict[str, Any]:
    """The training state of a resumable checkpoint, rebuilt from its tensors and JSON structure."""
    with _open(path) as f:
        metadata = f.metadata() or {}
        _read_metadata(path, metadata)
        return _training_state(path, f, metadata)


def read_resumable(path: Path) -> tuple[dict[str, dict[str, torch.Tensor]], ModelConfig, dict[str, Any]]:
    """The networks' weights, the architecture and the training state of a resumable checkpoint, read in
    one opening of the file (so all three come from the same commit)."""
    with _open(path) as f:
        metadata = f.metadata() or {}
        model_config, _ = _read_metadata(path, metadata)
        return _networks(f), model_config, _training_state(path, f, metadata)


def _networks(f: Any, networks: Collection[str] = NETWORKS) -> dict[str, dict[str, torch.Tensor]]:
    states: dict[str, dict[str, torch.Tensor]] = {}
    for key in f.keys():  # noqa: SIM118 - safe_open has no __iter__
        name, _, rest = key.partition(".")
        if name in networks:
            states.setdefault(name, {})[rest] = f.get_tensor(key)
    return states


def _training_state(path: Path, f: Any, metadata: dict[str, str]) -> dict[str, Any]:
    if "training_state" not in metadata:
        raise CycleGANError(f"{path} holds weights only, no training state to resume from")
    tensors = {k: f.get_tensor(k) for k in f.keys() if k.startswith(STATE_PREFIX)}  # noqa: SIM118
    try:
        return _unflatten(json.loads(metadata["training_state"]), tensors)
    except (ValueError, KeyError, TypeError) as err:
        raise CycleGANError(f"{path}: damaged training state ({first_line(err)})") from None


def newest_resumable(folder: Path) -> tuple[Path, dict[str, Any], list[str]]:
    """The newest complete resumable checkpoint in ``folder``, its info, and why others were passed over."""
    found, passed = [], []
    for name in (LATEST, PREVIOUS):
        path = folder / name
        if not path.exists():
            continue
        try:
            with _open(path) as f:
                metadata = f.metadata() or {}
                info = _read_metadata(path, metadata)[1]
            if "training_state" not in metadata or not isinstance(info.get("step"), int):
                raise CycleGANError(f"{path} holds no training state")
            found.append((info["step"], path, info))
        except CycleGANError as err:
            passed.append(str(err))
    if not found:
        raise CycleGANError(f"no complete checkpoint to resume from in {folder}" + _why(passed))
    _, path, info = max(found, key=lambda item: item[0])
    return path, info, passed


def _why(passed: list[str]) -> str:
    return f" ({'; '.join(passed)})" if passed else ""


def resolve_checkpoint(path: Path) -> Path:
    """A run folder means its newest complete checkpoint; a file is taken as it is."""
    path = Path(path)
    if path.is_dir():
        folder = path / "checkpoints"
        for candidate in (folder / LATEST, folder / PREVIOUS):
            if candidate.is_file():
                return candidate
        raise CycleGANError(f"{path} is a folder without checkpoints/{LATEST}")
    if not path.is_file():
        raise CycleGANError(f"checkpoint not found: {path}")
    return path


def load_generator(checkpoint: Path, direction: str = "AtoB") -> tuple[nn.Module, ModelConfig]:
    """The generator for ``direction`` from a run folder, one of our checkpoints or a reference ``.pth``.

    A reference file holds one generator (``latest_net_G_A.pth``, a released ``NAME.pth``); its kind, width,
    block count and channels are read from the weights, and ``direction`` is not used.
    """
    path = resolve_checkpoint(checkpoint)
    if direction not in DIRECTIONS:
        raise CycleGANError(f"--direction must be AtoB or BtoA, got {direction!r}")
    _refuse_lfs_pointer(path)
    if path.suffix == ".safetensors" or _is_safetensors(path):
        name = "G_A" if direction == "AtoB" else "G_B"
        states, model_config, _ = read_weights(path, (name,))
        if name not in states:
            raise CycleGANError(f"{path} holds no generator {name}")
        in_nc, out_nc = model_config.input_nc, model_config.output_nc
        if direction == "BtoA":
            in_nc, out_nc = out_nc, in_nc
        return _generator(path, model_config, states[name], in_nc, out_nc), model_config
    state = _torch_state_dict(path)
    model_config = generator_config_from_state_dict(state)
    return _generator(path, model_config, state, model_config.input_nc, model_config.output_nc), model_config


def _generator(
    path: Path, model_config: ModelConfig, state: Mapping[str, torch.Tensor], in_nc: int, out_nc: int
) -> nn.Module:
    """Check the weights against a shape-only network first, so a hostile file allocates nothing."""
    with torch.device("meta"):
        skeleton = build_generator(model_config, in_nc, out_nc)
    try:
        check_weights(skeleton, state)
    except CycleGANError as err:
        raise CycleGANError(f"{path}: {err}") from None
    net = build_generator(model_config, in_nc, out_nc)
    load_weights(net, state)
    return net.eval()


def _open(path: Path) -> Any:
    _refuse_lfs_pointer(path)
    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError) as err:
        raise CycleGANError(f"cannot read checkpoint {path}: {first_line(err)}") from None


def _read_metadata(path: Path, metadata: dict[str, str]) -> tuple[ModelConfig, dict[str, Any]]:
    if metadata.get("format") != FORMAT:
        raise CycleGANError(f"{path} is a safetensors file but not a cyclegan checkpoint")
    try:
        model_config = model_config_from_dict(json.loads(metadata["model_config"]))
        model_config.validate()
        info = json.loads(metadata.get("info", "{}"))
    except (KeyError, ValueError, TypeError, AttributeError) as err:
        raise CycleGANError(f"{path}: damaged architecture metadata ({first_line(err)})") from None
    except CycleGANError as err:
        raise CycleGANError(f"{path}: invalid architecture metadata: {err}") from None
    if not isinstance(info, dict):
        raise CycleGANError(f"{path}: damaged metadata (info is not a JSON object)")
    return model_config, info


def _refuse_lfs_pointer(path: Path) -> None:
    try:
        with open(path, "rb") as f:
            head = f.read(len(LFS_POINTER))
    except OSError as err:
        raise CycleGANError(f"cannot read checkpoint {path}: {err.strerror or err}") from None
    if head == LFS_POINTER:
        raise CycleGANError(
            f"{path} is a Git LFS pointer, not the weights: fetch the real file (git lfs pull) or download it"
        )


def _is_safetensors(path: Path) -> bool:
    """A safetensors file starts with an 8-byte little-endian header length and then '{'."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _torch_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises many types for damaged or hostile files
        raise CycleGANError(f"cannot read {path} as PyTorch weights: {_torch_load_reason(err)}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CycleGANError(f"{path} is not a state dict of tensors")
    return state


def _torch_load_reason(err: Exception) -> str:
    """torch.load's refusal of a pickled object spans many lines and recommends weights_only=False; that
    advice would run the file's code, so only the first line is kept and the advice is replaced."""
    text = first_line(err)
    if "Weights only load failed" in text or "weights_only" in str(err):
        return "it holds Python objects, not only tensors (refused: loading them could run code)"
    return text


def _flatten(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON for ``value`` with each tensor moved into ``tensors`` under a ``state/N`` key."""
    if isinstance(value, torch.Tensor):
        key = f"{STATE_PREFIX}{len(tensors)}"
        tensors[key] = value.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(value, Mapping):
        if all(isinstance(k, str) for k in value):
            return {k: _flatten(v, tensors) for k, v in value.items()}
        return {"__items__": [[k, _flatten(v, tensors)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return [_flatten(v, tensors) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store a {type(value).__name__} in a checkpoint")


def _unflatten(value: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__tensor__"}:
            return tensors[value["__tensor__"]]
        if set(value) == {"__items__"}:
            return {k: _unflatten(v, tensors) for k, v in value["__items__"]}
        return {k: _unflatten(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_unflatten(v, tensors) for v in value]
    return value
