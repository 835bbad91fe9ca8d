"""What the training loop calls besides the training step: logging, sample grids, evaluation, the report.

Each is a :class:`Hook`. The loop calls ``start`` once, ``after_step`` after every step, ``after_epoch``
when an epoch closes and ``end`` when the run stops; a hook whose state must survive a resume returns it
from ``state_dict`` (saved inside every checkpoint). API users can pass their own hooks to ``train``.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torchvision.utils import make_grid, save_image
from tqdm import tqdm

from cyclegan.config import TrainConfig
from cyclegan.data.datasets import domain_folders, eval_transform, list_images
from cyclegan.data.images import DECODE_ERRORS, load_image
from cyclegan.distributed import World, is_main_process
from cyclegan.errors import CycleGANError
from cyclegan.evaluate import metrics
from cyclegan.evaluate.evaluation import evaluate_model, real_features
from cyclegan.files import atomic_write
from cyclegan.models import checkpoints
from cyclegan.models.cycle_gan import LOSS_NAMES, CycleGAN, CycleGANTrainer
from cyclegan.train import runs
from cyclegan.train.runs import Progress


@dataclass
class RunState:
    """What hooks may look at (and, for ``progress.best_kid``, update)."""

    cfg: TrainConfig
    run_dir: Path
    model: CycleGAN
    trainer: CycleGANTrainer
    progress: Progress
    device: torch.device
    total_steps: int
    status: Callable[[str], None]  # shows a short text beside the progress bar
    world: World = field(default_factory=World)  # hooks run on rank 0 only
    stopped: str | None = None  # why a hook stopped the run without saving its weights (see StopRun)


class StopRun(Exception):
    """Raised by a hook's ``after_step`` to end the run at once *without* saving the current weights, which
    are not worth keeping (the health hook raises it when training diverges): the checkpoint already on
    disk stays the latest. The message says why; ``end`` hooks still run and can read it in ``run.stopped``.
    """


class Hook:
    """Base class: every method does nothing, so a hook overrides only what it needs."""

    name = "hook"

    def start(self, run: RunState) -> None:
        pass

    def after_step(self, run: RunState, losses: dict[str, float]) -> None:
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
        self.sums: dict[str, float] = dict.fromkeys(LOSS_NAMES, 0.0)
        self.count = 0

    def after_step(self, run: RunState, losses: dict[str, float]) -> None:
        for k, v in losses.items():
            self.sums[k] += v
        self.count += 1
        p = run.progress
        if p.step % run.cfg.print_freq:
            return
        means = {k: v / self.count for k, v in self.sums.items()}
        shown = " ".join(f"{k} {means[k]:.2f}" for k in ("G_A", "G_B", "D_A", "D_B", "cycle_A", "cycle_B"))
        run.status(f"epoch {p.epoch + 1}/{run.cfg.total_epochs} {shown}")
        row = {"step": p.step, "epoch": p.epoch + 1, "lr": run.trainer.lr, "time": p.seconds}
        runs.append_row(run.run_dir / runs.LOG, row | {k: round(v, 6) for k, v in means.items()})
        self.sums, self.count = dict.fromkeys(LOSS_NAMES, 0.0), 0

    def state_dict(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.sums = {k: float(state["sums"][k]) for k in LOSS_NAMES}
            self.count = int(state["count"])


class SampleGrids(Hook):
    """A grid of real | translated | reconstructed images every ``sample_freq`` steps and at the end."""

    name = "samples"

    def start(self, run: RunState) -> None:
        self.images = tuple(t.to(run.device) for t in sample_images(run.cfg))

    def after_step(self, run: RunState, losses: dict[str, float]) -> None:
        if run.progress.step % run.cfg.sample_freq == 0:
            self._save(run)

    def end(self, run: RunState) -> None:
        if run.stopped is None:  # weights a run stopped on (diverged) draw nothing worth seeing
            self._save(run)

    def _save(self, run: RunState) -> None:
        path = run.run_dir / runs.SAMPLES / f"step_{run.progress.step:07d}.png"
        save_sample_grid(path, run.model, *self.images)


class TestSetEvaluator(Hook):
    """FID/KID of both generators on testA/testB every ``eval_every`` epochs, logged to ``eval_log.jsonl``.

    The checkpoint with the lowest mean KID of the two directions is kept as ``checkpoints/best``.
    """

    name = "evaluation"

    def start(self, run: RunState) -> None:
        cfg = run.cfg
        if cfg.dataroot is None:
            raise CycleGANError("--eval_every needs --dataroot with testA/ and testB/")
        self.test_a, self.test_b = (list_images(folder) for folder in domain_folders(cfg, "test"))
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
        runs.append_row(run.run_dir / runs.EVAL_LOG, {"epoch": p.epoch, "step": p.step, "metrics": scores})
        note(f"epoch {p.epoch}: " + ", ".join(f"{k} {v:.4g}" for k, v in scores.items()))
        kid = (scores["KID A→B"] + scores["KID B→A"]) / 2
        if p.best_kid is None or kid < p.best_kid:
            p.best_kid = kid
            info = {**dataclasses.asdict(p), "metrics": scores}
            path = run.run_dir / runs.CHECKPOINTS / "best.safetensors"
            checkpoints.save_weights(path, run.model.networks(), run.model.config, info)


class Report(Hook):
    """The HTML report at the end of a run; a report that fails is a warning, never a failed run."""

    name = "report"

    def end(self, run: RunState) -> None:
        from cyclegan.evaluate.report import (
            write_report,  # on use: matplotlib adds half a second to every start
        )

        try:
            write_report(run.run_dir)
        except Exception as err:  # the trained model matters more than its page
            note(f"warning: the report could not be written ({type(err).__name__}: {err})")


@torch.no_grad()
def cycle_grid(model: CycleGAN, real_A: torch.Tensor, real_B: torch.Tensor) -> torch.Tensor:
    """Rows of real A | G_A(A) | G_B(G_A(A)) | real B | G_B(B) | G_A(G_B(B)), in [0, 1]."""
    was_training = model.training
    model.eval()
    fake_B = model.G_A(real_A)
    fake_A = model.G_B(real_B)
    columns = [real_A, fake_B, model.G_B(fake_B), real_B, fake_A, model.G_A(fake_A)]
    model.train(was_training)
    columns = [c.expand(-1, 3, -1, -1) if c.shape[1] == 1 else c for c in columns]
    tiles = torch.stack(columns, 1).flatten(0, 1)
    return make_grid((tiles.float().cpu() + 1) / 2, nrow=len(columns), padding=2, pad_value=1.0)


def save_sample_grid(path: Path, model: CycleGAN, real_A: torch.Tensor, real_B: torch.Tensor) -> None:
    grid = cycle_grid(model, real_A, real_B)
    atomic_write(path, lambda tmp: save_image(grid, tmp, format="png"))


def sample_images(cfg: TrainConfig, count: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed handful of A and B images (test split when there is one) for sample grids."""
    out = []
    a_train, b_train = domain_folders(cfg)
    channels = (cfg.model.input_nc, cfg.model.output_nc)
    for side, (train_folder, nc) in enumerate(zip((a_train, b_train), channels, strict=True)):
        folder = train_folder
        if cfg.dataroot is not None:
            test = domain_folders(cfg, "test")[side]
            folder = test if test.is_dir() and list_images(test) else train_folder
        transform = eval_transform(cfg.crop_size, nc)
        tensors = []
        for path in list_images(folder):
            try:
                tensors.append(transform(load_image(path, nc)))
            except DECODE_ERRORS:
                continue
            if len(tensors) == count:
                break
        if not tensors:
            raise CycleGANError(f"no readable image in {folder} for the sample grids")
        out.append(torch.stack(tensors))
    n = min(len(out[0]), len(out[1]))
    return out[0][:n], out[1][:n]
