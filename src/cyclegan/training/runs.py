"""A run folder: its config, its lock, its checkpoints and its logs, and the rules for resuming it.

The folder's layout is :mod:`cyclegan.layout`'s.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cyclegan.config import TrainConfig, changed_options, replace_options
from cyclegan.errors import CycleGANError, first_line
from cyclegan.files import atomic_write_text, read_jsonl, remove_stale_temporaries
from cyclegan.layout import CHECKPOINTS, CONFIG, LOCK
from cyclegan.models import Model, Trainer, checkpoints
from cyclegan.networks import check_weights


@dataclass
class Progress:
    """Where a run stands: ``epoch`` counts from 0, ``batch`` is the next batch within that epoch."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    best_kid: float | None = None
    seconds: float = 0.0  # training time, summed over resumes

    @classmethod
    def from_info(cls, info: dict[str, Any], path: Path) -> Progress:
        try:
            progress = cls(**{f.name: info[f.name] for f in dataclasses.fields(cls)})
        except (KeyError, TypeError):
            raise CycleGANError(f"{path}: damaged progress metadata") from None
        counters = (progress.epoch, progress.batch, progress.step)
        if not all(isinstance(n, int) and n >= 0 for n in counters):
            raise CycleGANError(f"{path}: damaged progress metadata (negative or non-integer counters)")
        return progress


def run_folder(cfg: TrainConfig) -> Path:
    return Path(cfg.checkpoints_dir) / cfg.name


def resume_config(run_dir: Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The saved config of a run with ``overrides`` (flat option names, as for ``TrainConfig.create``)
    applied, validated.

    Options that would change the model or the data it sees are refused: resuming must continue the same
    run. Nothing is written here; ``train`` saves the merged config once the run has started.
    """
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise CycleGANError(f"{run_dir} is not a run folder (no {CONFIG})")
    saved = TrainConfig.load(run_dir / CONFIG)
    overrides = dict(overrides or {})
    if overrides.get("model", saved.model.name) != saved.model.name:
        raise CycleGANError(
            f"--model cannot change when resuming (the run trains {saved.model.name}, asked"
            f" {overrides['model']}); start a new run instead"
        )
    cfg = replace_options(saved, overrides)
    check_resume(saved, cfg)
    cfg.validate()
    return cfg


def check_resume(saved: TrainConfig, cfg: TrainConfig) -> None:
    """``cfg`` may differ from the run's saved config only in the options marked ``on_resume``."""
    for name, old, new, allowed in changed_options(saved, cfg):
        if not allowed:
            raise CycleGANError(
                f"--{name} cannot change when resuming (the run has {old!r}, asked {new!r});"
                " start a new run instead"
            )


def create_run(cfg: TrainConfig) -> tuple[Path, int]:
    """Claim a new run folder (an existing non-empty folder is never reused) and the run's seed, drawn when
    ``cfg`` has none. Nothing is written yet."""
    run_dir = run_folder(cfg)
    if run_dir.is_symlink() or (run_dir.exists() and not run_dir.is_dir()):
        raise CycleGANError(f"{run_dir} exists and is not a folder; pick another --name")
    if run_dir.exists() and any(run_dir.iterdir()):
        raise CycleGANError(
            f"run folder {run_dir} already exists: resume it with --resume {run_dir}, or pick another --name"
        )
    return run_dir, secrets.randbelow(2**31 - 1) if cfg.seed is None else cfg.seed


@contextmanager
def locked(run_dir: Path, *, created: bool) -> Iterator[None]:
    """Hold the run folder's lock: two processes training one run would corrupt it.

    If the run was ``created`` here and failed before writing its config, the folder is removed again, so a
    failed start does not block the name.
    """
    made = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = open(run_dir / LOCK, "a")  # noqa: SIM115 - held open for the whole run
    except OSError as err:
        raise CycleGANError(f"cannot create the run folder {run_dir}: {err.strerror or err}") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise CycleGANError(
            f"another process is training in {run_dir}; wait for it or stop it first"
        ) from None
    try:
        if (run_dir / CHECKPOINTS).is_dir():
            checkpoints.recover(run_dir / CHECKPOINTS)
        remove_stale_temporaries(run_dir / CHECKPOINTS)
        remove_stale_temporaries(run_dir)
        yield
    finally:
        if created and not (run_dir / CONFIG).exists():
            (run_dir / LOCK).unlink(missing_ok=True)
            if made and not any(run_dir.iterdir()):
                run_dir.rmdir()
        handle.close()


def save_config(run_dir: Path, cfg: TrainConfig) -> None:
    cfg.save(run_dir / CONFIG)


def save_checkpoint(
    run_dir: Path,
    model: Model,
    trainer: Trainer,
    progress: Progress,
    hook_states: dict[str, Any],
    intensity: str | None = None,
) -> Path:
    """Commit the resumable ``latest`` checkpoint (weights and all training state, one file); ``intensity``
    is the data's mapping (JSON), kept in the metadata for translation."""
    state = {
        "trainer": trainer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "hooks": hook_states,
    }
    info = dataclasses.asdict(progress)

    def save(path: Path) -> None:
        checkpoints.save_weights(path, model.networks(), model.options, info, state, intensity)

    return checkpoints.commit_resumable(run_dir / CHECKPOINTS, save)


def load_checkpoint(
    run_dir: Path, model: Model, trainer: Trainer, device: torch.device
) -> tuple[Progress, dict[str, Any], str]:
    """Restore the newest complete checkpoint; returns its progress, the hook states and what was done."""
    path, info, passed = checkpoints.newest_resumable(run_dir / CHECKPOINTS)
    progress = Progress.from_info(info, path)
    states, options, state = checkpoints.read_resumable(path)
    if options.name != model.name:
        raise CycleGANError(
            f"{path} holds a {options.name} model, not the {model.name} of {run_dir / CONFIG}"
        )
    if options.net != model.net:
        raise CycleGANError(f"{path} holds another architecture than {run_dir / CONFIG}")
    for name, net in model.networks().items():
        if name not in states:
            raise CycleGANError(f"{path} holds no network {name}")
        try:
            net.load_state_dict(check_weights(net, states[name]), strict=True)
        except CycleGANError as err:
            raise CycleGANError(f"{path}: {name}: {err}") from None
    try:
        trainer.load_state_dict(state["trainer"], device)
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and state["cuda_rng"]:  # a machine with fewer GPUs restores the first ones
            torch.cuda.set_rng_state_all(state["cuda_rng"][: torch.cuda.device_count()])
        hooks = state.get("hooks", {})
        if not isinstance(hooks, dict):
            raise TypeError("hook states are not a mapping")
    except CycleGANError as err:
        raise CycleGANError(f"{path}: {err}") from None
    except (KeyError, TypeError, RuntimeError, ValueError) as err:
        raise CycleGANError(f"{path}: damaged training state ({first_line(err)})") from None
    where = os.path.relpath(path, run_dir)
    message = f"Resuming {run_dir} at step {progress.step} from {where}"
    if passed:
        message += " (skipped: " + "; ".join(passed) + ")"
    return progress, hooks, message


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The JSON rows of a log; a line torn by a kill (or otherwise unreadable) is left out."""
    return read_jsonl(path)[0]


def drop_rows_after(path: Path, step: int, epochs: int | None = None) -> None:
    """On resume, forget log rows written after the checkpoint (they will be written again): those of later
    steps and, with ``epochs`` (the epochs the checkpoint had completed), rows of later epoch closes. A
    checkpoint taken at an epoch's last step precedes the epoch's close, whose evaluation has that step."""
    if path.exists():
        rows = [
            r
            for r in read_rows(path)
            if isinstance(r.get("step"), int)
            and r["step"] <= step
            and (epochs is None or not isinstance(r.get("epoch"), int) or r["epoch"] <= epochs)
        ]
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append one JSON line; a kill mid-write tears at most this line, which readers skip."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
