"""Checkpoints: safetensors files that carry their own model and architecture, and resumable state.

A checkpoint ``NAME.safetensors`` holds a model's networks under their names as prefixes (``G_A.``,
``G_B.``, ``D_A.``, ``D_B.`` for CycleGAN, ``G.``, ``D.``, ``F.`` for CUT) and, in its metadata, the model's
options and architecture as JSON, so nothing else is needed to rebuild the networks. A *resumable*
checkpoint also holds the training state (optimizers, schedulers, image pools, RNG states, hook states) in
the same file: tensors under ``state/``, the structure around them as JSON metadata. One file is one commit
point, written atomically, so a kill at any instant leaves a complete checkpoint. Loading never unpickles
anything.

A run's resumable checkpoints are ``latest`` and the one before it, ``previous``. A commit writes the new
one whole (as ``.latest.safetensors.staged``), then renames: the old latest to previous (only when it is
complete: a damaged file never replaces a good one), the staged file to latest. A kill between the renames
leaves a complete staged file, which counts as the newest checkpoint and is promoted at the next start.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
from collections.abc import Callable, Collection, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from cyclegan.config import DIRECTIONS, ModelOptions, NetConfig, check_choice, check_fields, parse_json_object
from cyclegan.errors import CycleGANError, first_line
from cyclegan.files import atomic_write, fsync_folder
from cyclegan.layout import CHECKPOINTS, LATEST, PREVIOUS, STAGED
from cyclegan.models.base import model_type
from cyclegan.networks import build_generator, check_weights, generator_config_from_state_dict, load_weights

FORMAT = "cyclegan/1"
STATE_PREFIX = "state/"
LFS_POINTER = b"version https://git-lfs.github.com/spec/"


def save_weights(
    path: Path,
    networks: Mapping[str, nn.Module],
    options: ModelOptions,
    info: Mapping[str, Any],
    state: Mapping[str, Any] | None = None,
    intensity: str | None = None,
) -> None:
    """Save networks (name -> module), the model's options and ``info`` (epoch, step…) in one atomic write.

    With ``state`` (nested dicts and lists of tensors and JSON values) the file is resumable. ``intensity``
    (JSON: how the data maps to [-1, 1], see :mod:`cyclegan.data.intensity`) is kept for translation; a
    checkpoint without it was trained on 8-bit images.
    """
    tensors = {
        f"{name}.{key}": value.detach().cpu().contiguous()
        for name, net in networks.items()
        for key, value in net.state_dict().items()
    }
    model = {k: v for k, v in options.to_dict().items() if k != "net"}
    metadata = {
        "format": FORMAT,
        "model": json.dumps(model),
        "model_config": json.dumps(dataclasses.asdict(options.net)),
        "info": json.dumps(dict(info)),
    }
    if intensity is not None:
        metadata["intensity"] = intensity
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


def commit_resumable(folder: Path, save: Callable[[Path], None]) -> Path:
    """Make a new ``latest`` checkpoint and keep the one before it as ``previous``.

    ``save(path)`` writes the new file (atomically). At every instant the newest complete checkpoint is
    on disk under one of the three names, whatever kills the process.
    """
    save(folder / STAGED)
    _promote(folder)
    return folder / LATEST


def _promote(folder: Path) -> None:
    """Finish a commit whose file is staged: the old latest becomes previous if it is complete."""
    latest = folder / LATEST
    if _step(latest) is not None:
        os.replace(latest, folder / PREVIOUS)
    os.replace(folder / STAGED, latest)
    fsync_folder(folder)


def recover(folder: Path) -> None:
    """Complete a commit a kill interrupted between its renames (call with the run's lock held): a complete
    staged file newer than ``latest`` becomes ``latest``; a damaged or older one is removed."""
    staged = _step(folder / STAGED)
    if staged is None:
        (folder / STAGED).unlink(missing_ok=True)
        return
    latest = _step(folder / LATEST)
    if latest is None or latest < staged:
        _promote(folder)
    else:
        (folder / STAGED).unlink()


def _step(path: Path) -> int | None:
    """The step of a complete resumable checkpoint at ``path``; None if absent or damaged."""
    if not path.exists():
        return None
    try:
        return _resumable_info(path)["step"]
    except CycleGANError:
        return None


def _resumable_info(path: Path, resumable: bool = True) -> dict[str, Any]:
    """The info of a complete checkpoint (with ``resumable``, one holding training state and a step)."""
    with _open(path) as f:
        metadata = f.metadata() or {}
        info = _read_metadata(path, metadata)[1]
    if resumable and ("training_state" not in metadata or not isinstance(info.get("step"), int)):
        raise CycleGANError(f"{path} holds no training state")
    return info


def read_weights(
    path: Path, networks: Collection[str] | None = None
) -> tuple[dict[str, dict[str, torch.Tensor]], ModelOptions, dict[str, Any]]:
    """Return ({network name: state_dict}, the model's options, info) of one of our checkpoints, reading
    the tensors of ``networks`` only (default: all; a generator for translation leaves the rest on disk).

    The options are validated before anything is built.
    """
    with _open(path) as f:
        options, info = _read_metadata(path, f.metadata() or {})
        return _networks(f, networks), options, info


def read_resumable(path: Path) -> tuple[dict[str, dict[str, torch.Tensor]], ModelOptions, dict[str, Any]]:
    """The networks' weights, the model's options and the training state of a resumable checkpoint, read
    in one opening of the file (so all three come from the same commit)."""
    with _open(path) as f:
        metadata = f.metadata() or {}
        options, _ = _read_metadata(path, metadata)
        return _networks(f), options, _training_state(path, f, metadata)


def _networks(f: Any, networks: Collection[str] | None = None) -> dict[str, dict[str, torch.Tensor]]:
    states: dict[str, dict[str, torch.Tensor]] = {}
    for key in f.keys():  # noqa: SIM118 - safe_open has no __iter__
        name, _, rest = key.partition(".")
        if not key.startswith(STATE_PREFIX) and (networks is None or name in networks):
            states.setdefault(name, {})[rest] = f.get_tensor(key)
    return states


def _training_state(path: Path, f: Any, metadata: dict[str, str]) -> dict[str, Any]:
    if "training_state" not in metadata:
        raise CycleGANError(f"{path} holds weights only, no training state to resume from")
    tensors = {k: f.get_tensor(k) for k in f.keys() if k.startswith(STATE_PREFIX)}  # noqa: SIM118
    try:
        return _unflatten(_json(metadata["training_state"], dict), tensors)
    except (ValueError, KeyError, TypeError) as err:
        raise CycleGANError(f"{path}: damaged training state ({first_line(err)})") from None


def newest_resumable(folder: Path, resumable: bool = True) -> tuple[Path, dict[str, Any], list[str]]:
    """The newest complete resumable checkpoint in ``folder``, its info, and why others were passed over.

    Without ``resumable``, a weights-only checkpoint counts too (enough to translate with)."""
    found, passed = [], []
    for name in (STAGED, LATEST, PREVIOUS):
        path = folder / name
        if not path.exists():
            continue
        try:
            info = _resumable_info(path, resumable)
            step = info.get("step")
            found.append((step if isinstance(step, int) else -1, path, info))
        except CycleGANError as err:
            passed.append(str(err))
    if not found:
        raise CycleGANError(f"no complete checkpoint to resume from in {folder}" + _why(passed))
    _, path, info = max(found, key=lambda item: item[0])
    return path, info, passed


def _why(passed: list[str]) -> str:
    return f" ({'; '.join(passed)})" if passed else ""


def resolve_checkpoint(path: Path) -> Path:
    """A run folder means its newest complete checkpoint (as resuming picks it); a file is taken as it is."""
    path = Path(path)
    if path.is_dir():
        folder = path / CHECKPOINTS
        if not any((folder / name).is_file() for name in (LATEST, PREVIOUS, STAGED)):
            raise CycleGANError(f"{path} is a folder without checkpoints/{LATEST}")
        return newest_resumable(folder, resumable=False)[0]
    if not path.is_file():
        raise CycleGANError(f"checkpoint not found: {path}")
    return path


def load_generator(checkpoint: Path, direction: str = "AtoB") -> tuple[nn.Module, NetConfig]:
    """The generator for ``direction`` from a run folder, one of our checkpoints or a reference ``.pth``,
    in eval mode, with its architecture.

    A reference file holds one generator (``latest_net_G_A.pth``, ``latest_net_G.pth``, a released
    ``NAME.pth``); its kind, width, block count and channels are read from the weights, and ``direction``
    is not used.
    """
    path = resolve_checkpoint(checkpoint)
    check_choice("--direction", direction, DIRECTIONS)
    _refuse_lfs_pointer(path)
    if path.suffix == ".safetensors" or _is_safetensors(path):
        options = read_options(path)
        model = model_type(options.name)
        try:
            name = model.direction(direction).generator
        except CycleGANError as err:
            raise CycleGANError(f"{path}: {err}") from None
        states, _, _ = read_weights(path, (name,))
        if name not in states:
            raise CycleGANError(f"{path} holds no generator {name}")
        return _generator(path, partial(model.build, options, name), states[name]), options.net
    state = _torch_state_dict(path)
    net = generator_config_from_state_dict(state)
    return _generator(path, partial(build_generator, net), state), net


def translations(checkpoint: Path) -> tuple[str, ...]:
    """The directions a checkpoint translates: its model's, or ``AtoB`` alone for a reference ``.pth``
    (one generator)."""
    path = resolve_checkpoint(checkpoint)
    if path.suffix == ".safetensors" or _is_safetensors(path):
        return tuple(d.name for d in model_type(read_options(path).name).directions)
    return ("AtoB",)


def read_intensity(path: Path) -> str | None:
    """The data mapping (JSON) of a checkpoint, run folder or reference ``.pth``; None for 8-bit data."""
    path = resolve_checkpoint(path)
    if not (path.suffix == ".safetensors" or _is_safetensors(path)):
        return None
    with _open(path) as f:
        return (f.metadata() or {}).get("intensity")


def read_options(path: Path) -> ModelOptions:
    """The model options of one of our checkpoints, from its header alone."""
    with _open(path) as f:
        return _read_metadata(path, f.metadata() or {})[0]


def _generator(path: Path, build: Callable[[], nn.Module], state: Mapping[str, torch.Tensor]) -> nn.Module:
    """The network ``build`` makes, with ``state`` loaded. The weights are checked against a shape-only
    network first, so a hostile file allocates nothing."""
    with torch.device("meta"):
        skeleton = build()
    try:
        check_weights(skeleton, state)
    except CycleGANError as err:
        raise CycleGANError(f"{path}: {err}") from None
    generator = build()
    load_weights(generator, state)
    return generator.eval()


def _open(path: Path) -> Any:
    _refuse_lfs_pointer(path)
    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError) as err:
        raise CycleGANError(f"cannot read checkpoint {path}: {first_line(err)}") from None


def _read_metadata(path: Path, metadata: dict[str, str]) -> tuple[ModelOptions, dict[str, Any]]:
    """The model options (a checkpoint of an earlier version holds only a CycleGAN's architecture) and the
    info of a checkpoint's header, validated: the header comes from a file anyone could have edited."""
    if metadata.get("format") != FORMAT:
        raise CycleGANError(f"{path} is a safetensors file but not a cyclegan checkpoint")
    try:
        model = _json(metadata.get("model", '{"name": "cycle_gan"}'), dict)
        options = ModelOptions.from_dict(model | {"net": _json(metadata["model_config"], dict)})
        check_fields(options)  # types and choices: training rules (say, the identity loss's) apply to runs
        options.net.validate()
        model_type(options.name)
        info = _json(metadata.get("info", "{}"), dict)
    except (KeyError, ValueError, TypeError, AttributeError) as err:
        raise CycleGANError(f"{path}: damaged model metadata ({first_line(err)})") from None
    except CycleGANError as err:
        raise CycleGANError(f"{path}: invalid model metadata: {err}") from None
    return options, info


def _json(text: str, kind: type) -> Any:
    """JSON of the expected kind from a header; nesting too deep to parse is a ValueError."""
    value = parse_json_object(f'{{"v": {text}}}')["v"] if kind is not dict else parse_json_object(text)
    if not isinstance(value, kind):
        raise ValueError(f"expected a JSON {kind.__name__}")
    return value


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
