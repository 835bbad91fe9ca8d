"""The training loop: read ``train`` top to bottom.

It sets up a run (or resumes one exactly), then repeats the model's training step over seeded epochs,
commits a checkpoint every ``save_latest_freq`` steps, and hands everything else (logging, sample grids,
evaluation, the report) to hooks.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from cyclegan import checkpoints, runs
from cyclegan.config import TrainConfig
from cyclegan.data import (
    EpochSampler,
    UnpairedDataset,
    collate,
    domain_folders,
    ignore_interrupts,
    scan_domain,
)
from cyclegan.devices import resolve_device
from cyclegan.errors import CycleGANError
from cyclegan.hooks import Hook, RunState, StopRun, default_hooks, note
from cyclegan.interrupts import catch_interrupts
from cyclegan.model import CycleGAN, CycleGANTrainer, check_training_size
from cyclegan.networks import size_multiple
from cyclegan.runs import Progress


@dataclass
class TrainResult:
    run_dir: Path
    progress: Progress
    interrupted: bool = False
    skipped_files: set[str] = field(default_factory=set)
    stopped: str | None = None  # why a hook stopped the run without saving (e.g. training diverged)


def train(
    cfg: TrainConfig,
    run_dir: Path | None = None,
    *,
    hooks: Sequence[Hook] = (),
    report: bool = True,
    show_progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train a CycleGAN from ``cfg`` in a new run folder, or continue the run in ``run_dir`` exactly.

    When resuming, ``cfg`` may differ from the run's saved config only in the options marked ``on_resume``
    (see :func:`cyclegan.runs.resume_config`). ``should_stop`` is asked once after every step; Ctrl-C or
    SIGTERM also stop the run after the current step, with a checkpoint. A hook that raises
    :class:`~cyclegan.hooks.StopRun` (the health hook, when training diverges) stops it at once without
    one: ``TrainResult.stopped`` says why.
    """
    cfg.validate()
    resuming = run_dir is not None
    if run_dir is not None:
        run_dir = Path(run_dir)
        runs.check_resume(runs.resume_config(run_dir), cfg)
    else:
        run_dir = runs.create_run(cfg)
    assert cfg.seed is not None
    with runs.locked(run_dir, created=not resuming):
        device = resolve_device(cfg.device)
        dataset, skipped = training_data(cfg)
        torch.manual_seed(cfg.seed)  # initial weights and dropout; a resumed run restores the saved RNG state
        model = CycleGAN(cfg.model).to(device)
        trainer = CycleGANTrainer(model, cfg, cfg.seed)
        progress, hook_states = Progress(), dict[str, Any]()
        if resuming and _has_checkpoint(run_dir):
            progress, hook_states, message = runs.load_checkpoint(run_dir, model, trainer, device)
            note(message)
        elif resuming:
            note(f"{run_dir} has no checkpoint yet: starting it from step 0")
        for name in (runs.LOG, runs.EVAL_LOG):
            runs.drop_rows_after(run_dir / name, progress.step)
        runs.save_config(run_dir, cfg)  # only now: every option has been validated and the data checked

        batches_per_epoch = math.ceil(len(dataset) / cfg.batch_size)
        total = cfg.total_epochs * batches_per_epoch
        if cfg.max_steps is not None:
            total = min(total, cfg.max_steps)
        bar = tqdm(
            total=total, initial=progress.step, disable=not show_progress, unit="step", dynamic_ncols=True
        )
        run = RunState(cfg, run_dir, model, trainer, progress, device, total, bar.set_postfix_str)
        all_hooks = [*default_hooks(cfg, report), *hooks]
        for hook in all_hooks:
            hook.load_state_dict(hook_states.get(hook.name, {}))
            hook.start(run)

        interrupted = False
        start = time.time() - progress.seconds
        with catch_interrupts() as interrupts:
            committed: tuple[int, int, int] | None = None

            def commit() -> None:
                nonlocal committed
                where = (progress.epoch, progress.batch, progress.step)
                if where == committed:
                    return  # nothing changed since the last commit
                with interrupts.protect():
                    states = {hook.name: hook.state_dict() for hook in all_hooks}
                    runs.save_checkpoint(run_dir, model, trainer, progress, states)
                committed = where

            while (
                progress.epoch < cfg.total_epochs
                and progress.step < total
                and not (interrupted or run.stopped)
            ):
                for batch in epoch_loader(dataset, cfg, progress, device):
                    _warn_skipped(batch["skipped"], skipped)
                    model.train()
                    real_A = batch["A"].to(device, non_blocking=True)
                    real_B = batch["B"].to(device, non_blocking=True)
                    losses = trainer.step(real_A, real_B)
                    progress.batch += 1
                    progress.step += 1
                    progress.seconds = round(time.time() - start, 3)
                    bar.update(1)
                    try:
                        for hook in all_hooks:
                            hook.after_step(run, losses)
                    except StopRun as stop:  # the weights are not worth saving: keep the last checkpoint
                        run.stopped = str(stop)
                        break
                    if progress.step % cfg.save_latest_freq == 0:
                        commit()
                    interrupted = interrupts.requested or (should_stop is not None and should_stop())
                    if interrupted or (progress.step >= total and progress.batch < batches_per_epoch):
                        break  # mid-epoch; at an epoch's end the epoch is closed below first
                else:
                    trainer.end_epoch()
                    progress.epoch += 1
                    progress.batch = 0
                    for hook in all_hooks:
                        hook.after_epoch(run)
                    if progress.epoch % cfg.save_epoch_freq == 0:
                        path = run_dir / runs.CHECKPOINTS / f"epoch_{progress.epoch:03d}.safetensors"
                        checkpoints.save_weights(
                            path, model.networks(), cfg.model, dataclasses.asdict(progress)
                        )
            bar.close()
            if run.stopped is None:
                commit()
            for hook in all_hooks:
                hook.end(run)
    return TrainResult(run_dir, progress, interrupted, skipped, run.stopped)


def training_data(cfg: TrainConfig) -> tuple[UnpairedDataset, set[str]]:
    """The two domains' images, with the unreadable ones named once, and every training size checked."""
    multiple = size_multiple(cfg.model)
    a_folder, b_folder = domain_folders(cfg)
    domain_a, bad_a, sizes_a = scan_domain(a_folder, cfg, cfg.model.input_nc, multiple)
    domain_b, bad_b, sizes_b = scan_domain(b_folder, cfg, cfg.model.output_nc, multiple)
    for path, why in bad_a + bad_b:
        note(f"warning: skipping {path}: {why}")
    sizes = sizes_a | sizes_b
    if cfg.batch_size > 1 and len(sizes) > 1:
        raise CycleGANError(
            f"--preprocess {cfg.preprocess} gives images of {len(sizes)} different sizes, which cannot"
            " share a batch: use --batch_size 1, or a cropping --preprocess"
        )
    for height, width in sorted(sizes):
        check_training_size(cfg.model, height, width)
    assert cfg.seed is not None
    dataset = UnpairedDataset(domain_a, domain_b, cfg, cfg.seed, multiple)
    return dataset, {str(path) for path, _ in bad_a + bad_b}


def _has_checkpoint(run_dir: Path) -> bool:
    folder = run_dir / runs.CHECKPOINTS
    return any((folder / name).exists() for name in (checkpoints.LATEST, checkpoints.PREVIOUS))


def _warn_skipped(paths: list[str], skipped: set[str]) -> None:
    for path in sorted(set(paths) - skipped):
        skipped.add(path)
        note(f"warning: skipping {path}: the image could not be decoded")


def epoch_loader(
    dataset: UnpairedDataset, cfg: TrainConfig, progress: Progress, device: torch.device
) -> DataLoader:
    """Batches of the current epoch from ``progress.batch`` on, in the epoch's seeded order."""
    assert cfg.seed is not None
    dataset.epoch = progress.epoch
    start = progress.batch * cfg.batch_size
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=EpochSampler(len(dataset), cfg.seed, progress.epoch, not cfg.serial_batches, start),
        num_workers=cfg.num_workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        worker_init_fn=ignore_interrupts,
        generator=torch.Generator().manual_seed(cfg.seed),  # keeps the global RNG untouched
    )
