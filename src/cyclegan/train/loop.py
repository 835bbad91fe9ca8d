"""The training loop: read ``train`` top to bottom.

It sets up a run (or resumes one exactly), then repeats the model's training step over seeded epochs,
commits a checkpoint every ``save_latest_freq`` steps, and hands everything else (logging, sample grids,
evaluation, the report) to hooks.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from cyclegan import distributed
from cyclegan.config import TrainConfig
from cyclegan.data.datasets import (
    EpochSampler,
    RankBatches,
    UnpairedDataset,
    collate,
    domain_folders,
    ignore_interrupts,
    scan_domain,
)
from cyclegan.devices import is_out_of_memory
from cyclegan.distributed import World
from cyclegan.errors import CycleGANError
from cyclegan.models import checkpoints
from cyclegan.models.cycle_gan import CycleGAN, CycleGANTrainer, check_training_size
from cyclegan.nets.networks import size_multiple
from cyclegan.precision import check_compiler, pick_conv_algorithms, resolve_precision
from cyclegan.seeds import Stream, item_seed
from cyclegan.train import runs
from cyclegan.train.health import Health
from cyclegan.train.hooks import Hook, LossLog, Report, RunState, SampleGrids, StopRun, TestSetEvaluator, note
from cyclegan.train.interrupts import catch_interrupts
from cyclegan.train.runs import Progress


@dataclass
class TrainResult:
    run_dir: Path
    progress: Progress
    interrupted: bool = False
    skipped_files: set[str] = field(default_factory=set)
    stopped: str | None = None  # why a hook stopped the run without saving (e.g. training diverged)
    is_main: bool = True  # under torchrun: whether this process is rank 0, the one that reports


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
    (see :func:`cyclegan.train.runs.resume_config`). ``should_stop`` is asked once after every step; Ctrl-C or
    SIGTERM also stop the run after the current step, with a checkpoint. A hook that raises
    :class:`~cyclegan.train.hooks.StopRun` (the health hook, when training diverges) stops it at once without
    one: ``TrainResult.stopped`` says why. Under torchrun every process calls this with the same ``cfg``:
    rank 0 alone writes the run folder and runs the hooks.
    """
    cfg.validate()
    distributed.check_global_batch(cfg.batch_size)
    try:
        with distributed.session(cfg.device, cfg.dist_timeout) as world, ExitStack() as held:
            resolve_precision(cfg.precision, world.device)  # before any folder is made: fp16 needs CUDA
            if cfg.compile != "none":
                check_compiler(world.device)
            resuming = run_dir is not None
            run_dir, cfg.seed = world.on_main(lambda: _claim_run(cfg, run_dir, held))
            return _train(cfg, run_dir, world, resuming, hooks, report, show_progress, should_stop)
    except RuntimeError as err:
        if distributed.launched() and _is_collective_failure(err):
            raise distributed.stopped_peer_error(err, cfg.dist_timeout) from None
        raise


def _claim_run(cfg: TrainConfig, run_dir: Path | None, held: ExitStack) -> tuple[Path, int]:
    """Rank 0: check the resume or claim a new folder (choosing the seed), and hold the run's lock."""
    if run_dir is not None:
        run_dir = Path(run_dir)
        runs.check_resume(runs.resume_config(run_dir), cfg)
        held.enter_context(runs.locked(run_dir, created=False))
    else:
        run_dir = runs.create_run(cfg)
        held.enter_context(runs.locked(run_dir, created=True))
    assert cfg.seed is not None
    return run_dir, cfg.seed


def _train(
    cfg: TrainConfig,
    run_dir: Path,
    world: World,
    resuming: bool,
    extra_hooks: Sequence[Hook],
    report: bool,
    show_progress: bool,
    should_stop: Callable[[], bool] | None,
) -> TrainResult:
    assert cfg.seed is not None
    device = world.device
    dataset, skipped = training_data(cfg)
    pick_conv_algorithms(device, fixed_size=cfg.preprocess not in ("scale_width", "none"))
    torch.manual_seed(cfg.seed)  # initial weights and dropout; a resumed run restores the saved RNG state
    model = CycleGAN(cfg.model).to(device)
    trainer = CycleGANTrainer(model, cfg, cfg.seed, world)
    progress = Progress()
    hook_states: dict[str, Any] = {}
    if resuming and _has_checkpoint(run_dir):
        progress, hook_states, message = runs.load_checkpoint(run_dir, model, trainer, device)
        note(message)
    elif resuming:
        note(f"{run_dir} has no checkpoint yet: starting it from step 0")
    if world.is_main:
        for name in (runs.LOG, runs.EVAL_LOG):
            runs.drop_rows_after(run_dir / name, progress.step)
        runs.save_config(run_dir, cfg)  # only now: every option has been validated and the data checked

    batches_per_epoch = math.ceil(len(dataset) / cfg.batch_size)
    total = cfg.total_epochs * batches_per_epoch
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    with tqdm(
        total=total,
        initial=progress.step,
        disable=not (show_progress and world.is_main),
        unit="step",
        dynamic_ncols=True,
    ) as bar:  # closed on errors too, so an error message starts on a line of its own
        run = RunState(cfg, run_dir, model, trainer, progress, device, total, bar.set_postfix_str, world)
        all_hooks = [*default_hooks(cfg, report), *extra_hooks] if world.is_main else []
        for hook in all_hooks:
            hook.load_state_dict(hook_states.get(hook.name, {}))
            hook.start(run)

        interrupted, first_step = False, True
        start = time.time() - progress.seconds
        with catch_interrupts() as interrupts:
            committed: tuple[int, int, int] | None = None

            def commit() -> None:
                nonlocal committed
                where = (progress.epoch, progress.batch, progress.step)
                if where == committed or not world.is_main:
                    return  # nothing changed since the last commit, or another process writes it
                with interrupts.protect():
                    states = {hook.name: hook.state_dict() for hook in all_hooks}
                    runs.save_checkpoint(run_dir, model, trainer, progress, states)
                committed = where

            while (
                progress.epoch < cfg.total_epochs
                and progress.step < total
                and not (interrupted or run.stopped)
            ):
                for batch in epoch_loader(dataset, cfg, progress, world):
                    _warn_skipped(batch["skipped"], skipped, world)
                    model.train()
                    if world.distributed and cfg.model.dropout:
                        _seed_dropout(cfg.seed, progress.step, world.rank)
                    real_A = batch["A"].to(device, non_blocking=True)
                    real_B = batch["B"].to(device, non_blocking=True)
                    began = time.time()
                    losses = _step(trainer, real_A, real_B, cfg, progress.step)
                    if first_step and cfg.compile != "none":
                        note(f"torch.compile warm-up: the first step took {time.time() - began:.1f} s")
                    first_step = False
                    progress.batch += 1
                    progress.step += 1
                    progress.seconds = round(time.time() - start, 3)
                    bar.update(1)
                    try:
                        for hook in all_hooks:
                            hook.after_step(run, losses)
                    except StopRun as stop:  # the weights are not worth saving: keep the last checkpoint
                        run.stopped = str(stop)
                    if world.any(run.stopped is not None):
                        run.stopped = run.stopped or "the main process stopped the run"
                        break
                    if progress.step % cfg.save_latest_freq == 0:
                        commit()
                    interrupted = world.any(
                        interrupts.requested or (should_stop is not None and should_stop())
                    )
                    if interrupted or (progress.step >= total and progress.batch < batches_per_epoch):
                        break  # mid-epoch; at an epoch's end the epoch is closed below first
                else:
                    trainer.end_epoch()
                    progress.epoch += 1
                    progress.batch = 0
                    for hook in all_hooks:
                        hook.after_epoch(run)
                    if progress.epoch % cfg.save_epoch_freq == 0 and world.is_main:
                        path = run_dir / runs.CHECKPOINTS / f"epoch_{progress.epoch:03d}.safetensors"
                        checkpoints.save_weights(
                            path, model.networks(), cfg.model, dataclasses.asdict(progress)
                        )
            bar.close()
            if run.stopped is None:
                commit()
            for hook in all_hooks:
                hook.end(run)
    skipped = world.union(skipped)  # each process decodes its own share of the images
    return TrainResult(run_dir, progress, interrupted, skipped, run.stopped, world.is_main)


def default_hooks(cfg: TrainConfig, report: bool = True) -> list[Hook]:
    """The hooks every run has: its log, health checks, sample grids, evaluation if asked, the report."""
    # health before the sample grids: a step that diverged stops the run before its grid is drawn
    hooks: list[Hook] = [LossLog(), *([] if cfg.no_health else [Health()]), SampleGrids()]
    if cfg.eval_every:
        hooks.append(TestSetEvaluator())
    if report:
        hooks.append(Report())
    return hooks


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


def _step(
    trainer: CycleGANTrainer, real_A: torch.Tensor, real_B: torch.Tensor, cfg: TrainConfig, step: int
) -> dict[str, float]:
    """One training step; running out of memory is a one-line error that says what to change (the last
    committed checkpoint stays as it was)."""
    try:
        return trainer.step(real_A, real_B)
    except RuntimeError as err:
        if not is_out_of_memory(err):
            raise
        tips = [] if cfg.checkpoint_activations else ["--checkpoint_activations"]
        tips += [] if trainer.precision.mixed else ["--precision bf16"]
        tips += ["a smaller --crop_size or --batch_size"]
        raise CycleGANError(
            f"out of memory in training step {step + 1} ({cfg.crop_size} px crops, batch {cfg.batch_size},"
            f" {trainer.precision.name}): try {', '.join(tips)};"
            " `cyclegan plan --memory SIZE` predicts what fits"
        ) from None


def _warn_skipped(paths: list[str], skipped: set[str], world: World) -> None:
    """Named by the process that met it: under torchrun each process reads its own images."""
    where = f" (rank {world.rank})" if world.distributed else ""
    for path in sorted(set(paths) - skipped):
        skipped.add(path)
        tqdm.write(f"warning{where}: skipping {path}: the image could not be decoded", file=sys.stderr)


def epoch_loader(dataset: UnpairedDataset, cfg: TrainConfig, progress: Progress, world: World) -> DataLoader:
    """This process's batches of the current epoch from ``progress.batch`` on, in the epoch's seeded order.

    Pinned host memory on CUDA lets the copies to the GPU run asynchronously (``non_blocking``).
    """
    assert cfg.seed is not None
    dataset.epoch = progress.epoch
    order = EpochSampler(len(dataset), cfg.seed, progress.epoch, not cfg.serial_batches)
    return DataLoader(
        dataset,
        batch_sampler=RankBatches(order, cfg.batch_size, world.rank, world.size, progress.batch),
        num_workers=cfg.num_workers,
        collate_fn=collate,
        pin_memory=world.device.type == "cuda",
        worker_init_fn=ignore_interrupts,
        generator=torch.Generator().manual_seed(cfg.seed),  # keeps the global RNG untouched
    )


def _seed_dropout(seed: int, step: int, rank: int) -> None:
    """Several processes: each draws its own dropout masks from a seed of (step, rank), so a resumed run
    replays them without saving every process's RNG state."""
    torch.manual_seed(item_seed(item_seed(seed, step, Stream.DROPOUT), rank, 0))


def _is_collective_failure(err: RuntimeError) -> bool:
    """Errors of gloo and NCCL collectives (a peer that died, or a timeout), not this process's own."""
    text = str(err).lower()
    return isinstance(err, getattr(torch.distributed, "DistError", ())) or any(
        word in text for word in ("gloo", "nccl", "connection closed", "connection reset", "timed out")
    )
