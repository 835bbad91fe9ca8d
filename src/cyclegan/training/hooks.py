"""What the training loop calls besides the training step: logging, snapshots, evaluation, the report.

Each is a :class:`Hook`. The loop calls ``start`` once, ``after_step`` after every step, ``after_epoch``
when an epoch closes and ``end`` when the run stops; a hook whose state must survive a resume returns it
from ``state_dict`` (saved inside every checkpoint, under the hook's ``name``). API users can pass their
own hooks to ``train``.

A step's losses arrive as tensors on the training device: a hook that needs numbers reads them at its own
intervals, so no step waits for the device.

Hooks tell each other what they measured or wrote by events, not through each other's attributes: a hook
``publish``es :class:`Scalars`, :class:`ImageFile` or :class:`Text` on the :class:`RunState`, and a hook
that wants them (the trackers, the live report) ``subscribe``s in its ``start``.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from cyclegan.config import TrainConfig
from cyclegan.data.datasets import domain_folders, list_images
from cyclegan.data.paired import aligned_folder
from cyclegan.distributed import World, is_main_process
from cyclegan.errors import CycleGANError
from cyclegan.evaluation import metrics
from cyclegan.evaluation.scoring import evaluate_model, real_features, split_aligned
from cyclegan.layout import BEST, CHECKPOINTS, EVAL_LOG, LOG, epoch_checkpoint
from cyclegan.models import Model, Trainer, checkpoints
from cyclegan.training import runs
from cyclegan.training.runs import Progress


@dataclass(frozen=True)
class Scalars:
    """Numbers of ``step`` as a hook read them: ``group`` says what they are (loss, train, health, eval)."""

    step: int
    group: str
    values: dict[str, float]


@dataclass(frozen=True)
class ImageFile:
    """An image a hook has written (a PNG), e.g. the sample grid of ``step``."""

    step: int
    name: str
    path: Path


@dataclass(frozen=True)
class Text:
    """A message of ``step``, e.g. a health warning; ``name`` is its kind, as "health/SIGNAL/NETWORK"."""

    step: int
    name: str
    text: str


Event = Scalars | ImageFile | Text


@dataclass
class RunState:
    """What hooks may look at (and, for ``progress.best_kid``, update)."""

    cfg: TrainConfig
    run_dir: Path
    model: Model
    trainer: Trainer
    progress: Progress
    device: torch.device
    total_steps: int
    status: Callable[[str], None]  # shows a short text beside the progress bar (as a line without one)
    world: World = field(default_factory=World)  # hooks run on rank 0 only
    stopped: str | None = None  # why a hook stopped the run without saving its weights (see StopRun)
    saving: bool = False  # a checkpoint is committed after this step's hooks (a hook can still veto it)
    listeners: list[Callable[[Event], None]] = field(default_factory=list)

    def subscribe(self, listener: Callable[[Event], None]) -> None:
        self.listeners.append(listener)

    def publish(self, event: Event) -> None:
        for listener in self.listeners:
            listener(event)

    intensity: str | None = None  # the data's mapping to [-1, 1] as JSON (None: 8-bit), for checkpoints


class StopRun(Exception):
    """Raised by a hook's ``after_step`` to end the run at once *without* saving the current weights, which
    are not worth keeping (the health hook raises it when training diverges): the checkpoint already on
    disk stays the latest. The message says why; ``end`` hooks still run and can read it in ``run.stopped``.
    """


class Hook:
    """Base class: every method does nothing, so a hook overrides only what it needs."""

    name = "hook"  # the key of the hook's state in checkpoints: unique among a run's hooks

    def start(self, run: RunState) -> None:
        pass

    def after_step(self, run: RunState, losses: dict[str, torch.Tensor]) -> None:
        pass

    def after_epoch(self, run: RunState) -> None:
        pass

    def end(self, run: RunState) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def note(message: str) -> None:
    """A line for the user that does not break the progress bar (from rank 0 only under torchrun)."""
    if is_main_process():
        tqdm.write(message, file=sys.stderr)


class LossLog(Hook):
    """``log.jsonl``: one row of mean losses per ``print_freq`` steps; partial sums survive a resume."""

    name = "loss_log"

    def __init__(self) -> None:
        self.sums: torch.Tensor | None = None  # the window's loss sums, on the training device
        self.count = 0
        self.saved: dict[str, Any] = {}

    def start(self, run: RunState) -> None:
        self.names = run.model.loss_names
        if self.saved.get("count"):
            self.sums = torch.tensor([float(self.saved["sums"][k]) for k in self.names], device=run.device)
            self.count = int(self.saved["count"])

    def after_step(self, run: RunState, losses: dict[str, torch.Tensor]) -> None:
        values = torch.stack([losses[k] for k in self.names])
        self.sums = values if self.sums is None else self.sums + values
        self.count += 1
        p = run.progress
        if p.step % run.cfg.print_freq:
            return
        means = dict(zip(self.names, (self.sums / self.count).tolist(), strict=True))
        shown = " ".join(f"{k} {v:.2f}" for k, v in means.items())
        run.status(f"epoch {p.epoch + 1}/{run.cfg.total_epochs} {shown}")
        row = {"step": p.step, "epoch": p.epoch + 1, "lr": run.trainer.lr, "time": p.seconds}
        runs.append_row(run.run_dir / LOG, row | {k: round(v, 6) for k, v in means.items()})
        run.publish(Scalars(p.step, "loss", means))
        run.publish(Scalars(p.step, "train", {"lr": run.trainer.lr, "epoch": p.epoch + 1}))
        self.sums, self.count = None, 0

    def state_dict(self) -> dict[str, Any]:
        sums = [] if self.sums is None else self.sums.tolist()
        return {"sums": dict(zip(self.names, sums, strict=False)), "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.saved = state


class EpochSnapshots(Hook):
    """A weights-only copy of the model every ``save_epoch_freq`` epochs (``checkpoints/epoch_NNN``)."""

    name = "epoch_snapshots"

    def after_epoch(self, run: RunState) -> None:
        p = run.progress
        if p.epoch % run.cfg.save_epoch_freq == 0:
            path = run.run_dir / CHECKPOINTS / epoch_checkpoint(p.epoch)
            networks, options = run.model.networks(), run.model.options
            checkpoints.save_weights(path, networks, options, dataclasses.asdict(p), intensity=run.intensity)


class TestSetEvaluator(Hook):
    """FID/KID of the model's generators on the test split (testA/ and testB/, or the halves of side-by-side
    test/ images) every ``eval_every`` epochs, logged to ``eval_log.jsonl``. The checkpoint with the lowest
    mean KID over its directions is kept as ``checkpoints/best``.
    """

    name = "evaluation"
    halves: tempfile.TemporaryDirectory[str] | None = (
        None  # the test images' A and B halves, when side by side
    )

    def start(self, run: RunState) -> None:
        cfg = run.cfg
        if cfg.dataroot is None:
            raise CycleGANError("--eval_every needs --dataroot with testA/ and testB/")
        folders = domain_folders(cfg, "test")
        aligned = aligned_folder(cfg, "test")
        if aligned is not None and not all(folder.is_dir() for folder in folders):  # side-by-side A|B images
            self.halves = tempfile.TemporaryDirectory(prefix="cyclegan-test-")
            a, b = split_aligned(aligned, Path(self.halves.name))
            folders = (b, a) if cfg.direction == "BtoA" else (a, b)
        self.test_a, self.test_b = (list_images(folder) for folder in folders)
        weights = Path(cfg.inception_weights) if cfg.inception_weights else None
        self.inception = metrics.load_inception(weights, run.device)
        self.real = real_features(self.inception, self.test_a, self.test_b, device=run.device)

    def after_epoch(self, run: RunState) -> None:
        p = run.progress
        if run.cfg.eval_every is None or p.epoch % run.cfg.eval_every:
            return
        scores = evaluate_model(
            run.model, self.test_a, self.test_b, self.inception, device=run.device, real=self.real
        )
        runs.append_row(run.run_dir / EVAL_LOG, {"epoch": p.epoch, "step": p.step, "metrics": scores})
        run.publish(Scalars(p.step, "eval", scores))
        note(f"epoch {p.epoch}: " + ", ".join(f"{k} {v:.4g}" for k, v in scores.items()))
        kids = [v for k, v in scores.items() if k.startswith("KID")]
        kid = sum(kids) / len(kids)
        if p.best_kid is None or kid < p.best_kid:
            p.best_kid = kid
            info = {**dataclasses.asdict(p), "metrics": scores}
            path = run.run_dir / CHECKPOINTS / BEST
            checkpoints.save_weights(
                path, run.model.networks(), run.model.options, info, intensity=run.intensity
            )

    def end(self, run: RunState) -> None:
        if self.halves is not None:
            self.halves.cleanup()


LIVE_SHARE = 0.005  # of a run's time, at most, for rewriting its live report at new sample grids


class Report(Hook):
    """The HTML report with how far the run is: rewritten when a sample grid or an evaluation is new, so
    that it can be watched live (``cyclegan report RUN --watch``), and at the end. A long run's page takes
    about half a second to render, so a new grid rewrites it only once the run has trained for
    1 / ``LIVE_SHARE`` times as long as the last rewrite took; new scores always do. A report that fails is
    a warning, never a failed run."""

    name = "report"

    def start(self, run: RunState) -> None:
        self.grid = self.scores = self.warned = False
        self.next_write = 0.0  # the monotonic time from which a new grid may rewrite the page
        self.mark = (run.progress.step, run.progress.seconds)
        self.speed: float | None = None  # images/s between the last two reports
        run.subscribe(self._notice)

    def _notice(self, event: Event) -> None:
        self.grid |= isinstance(event, ImageFile)
        self.scores |= isinstance(event, Scalars) and event.group == "eval"

    def after_step(self, run: RunState, losses: dict[str, torch.Tensor]) -> None:
        if self.scores or (self.grid and time.monotonic() >= self.next_write):
            self._write(run, "training")

    def after_epoch(self, run: RunState) -> None:
        self.after_step(run, {})

    def end(self, run: RunState) -> None:
        finished = run.progress.step >= run.total_steps
        self._write(run, "stopped" if run.stopped else "finished" if finished else "interrupted", final=True)

    def _write(self, run: RunState, state: str, final: bool = False) -> None:
        from cyclegan.evaluation.report import (  # on use: matplotlib costs half a second
            RunStatus,
            write_report,
        )

        began = time.monotonic()
        self.grid = self.scores = False
        p, cfg = run.progress, run.cfg
        if p.step > self.mark[0] and p.seconds > self.mark[1]:
            self.speed = (p.step - self.mark[0]) * cfg.batch_size / (p.seconds - self.mark[1])
            self.mark = (p.step, p.seconds)
        left = (run.total_steps - p.step) * cfg.batch_size / self.speed if self.speed else None
        epoch = min(p.epoch + 1, cfg.total_epochs)
        status = RunStatus(
            state, p.step, run.total_steps, epoch, cfg.total_epochs, self.speed, left, run.stopped
        )
        try:
            write_report(run.run_dir, status=status)
        except Exception as err:  # the trained model matters more than its page
            if final or not self.warned:
                note(f"warning: the report could not be written ({type(err).__name__}: {err})")
            self.warned = True
        self.next_write = time.monotonic() + (time.monotonic() - began) / LIVE_SHARE
