"""The training loop: read ``train`` top to bottom.

It sets up a run (or resumes one exactly), then repeats the model's training step over seeded epochs,
commits a checkpoint every ``save_latest_freq`` steps, and hands everything else (logging, health, sample
grids, snapshots, evaluation, the report) to hooks.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from cyclegan import distributed
from cyclegan.config import TrainConfig, trackers
from cyclegan.data import intensity
from cyclegan.data.datasets import (
    EpochSampler,
    RankBatches,
    UnpairedDataset,
    collate,
    domain_folders,
    ignore_interrupts,
    scan_domain,
)
from cyclegan.data.paired import PairedDataset, scan_pairs
from cyclegan.devices import is_out_of_memory
from cyclegan.distributed import World
from cyclegan.errors import CycleGANError
from cyclegan.layout import CHECKPOINTS, EVAL_LOG, INTENSITY, LATEST, LOG, PREVIOUS, STAGED
from cyclegan.models import Trainer, build_model, check_training_size, model_type
from cyclegan.networks import size_multiple
from cyclegan.precision import Precision, check_compiler, pick_conv_algorithms
from cyclegan.seeds import Stream, item_seed
from cyclegan.training import runs
from cyclegan.training.health import Health
from cyclegan.training.hooks import (
    EpochSnapshots,
    Hook,
    LossLog,
    Report,
    RunState,
    StopRun,
    TestSetEvaluator,
    note,
)
from cyclegan.training.interrupts import Interrupts, catch_interrupts
from cyclegan.training.runs import Progress
from cyclegan.training.samples import SampleGrids
from cyclegan.training.tracking import Tracker, check_installed

TrainingData = UnpairedDataset | PairedDataset


@dataclass
class TrainResult:
    run_dir: Path
    progress: Progress
    interrupted: bool = False
    skipped_files: set[str] = field(default_factory=set)
    stopped: str | None = None  # why a hook stopped the run without saving (e.g. training diverged)
    is_main: bool = True  # under torchrun: whether this process is rank 0, the one that reports

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / CHECKPOINTS / LATEST


def train(
    cfg: TrainConfig,
    run_dir: Path | None = None,
    *,
    hooks: Sequence[Hook] = (),
    report: bool = True,
    show_progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
    memory_budget: int | None = None,
) -> TrainResult:
    """Train ``cfg``'s model in a new run folder, or continue the run in ``run_dir`` exactly.

    With ``memory_budget`` (bytes), the run's peak memory is first predicted by ``cyclegan plan``'s dry
    runs, and a run that would not fit stops before it starts, with the numbers and what would fit.

    When resuming, ``cfg`` may differ from the run's saved config only in the options marked ``on_resume``
    (see :func:`cyclegan.training.runs.resume_config`). ``should_stop`` is asked once after every step;
    Ctrl-C or SIGTERM also stop the run after the current step, with a checkpoint. A hook that raises
    :class:`~cyclegan.training.hooks.StopRun` (the health hook, when training diverges) stops it at once
    without one: ``TrainResult.stopped`` says why. Under torchrun every process calls this with the same
    ``cfg``: rank 0 alone writes the run folder and runs the hooks. ``cfg`` itself is not changed.
    """
    cfg.validate()
    check_installed(cfg)  # a tracker asked for but not installed: one line before any folder is made
    distributed.check_global_batch(cfg.batch_size)
    if memory_budget is not None:
        from cyclegan.training.planner import check_budget  # the planner's dry runs: only when asked for

        note(check_budget(cfg, memory_budget))
    with distributed.session(cfg.device, cfg.dist_timeout) as world, ExitStack() as held:
        Precision.on(cfg.precision, world.device)  # before any folder is made: fp16 needs CUDA
        if cfg.compile != "none":
            check_compiler(world.device)
        resuming = run_dir is not None
        run_dir, seed = world.on_main(lambda: _claim_run(cfg, run_dir, held))
        cfg = dataclasses.replace(cfg, seed=seed)
        all_hooks = [*default_hooks(cfg, report), *hooks] if world.is_main else []
        _check_names(all_hooks)
        return _train(cfg, run_dir, world, resuming, all_hooks, show_progress, should_stop)


def _claim_run(cfg: TrainConfig, run_dir: Path | None, held: ExitStack) -> tuple[Path, int]:
    """Rank 0: check the resume or claim a new folder (choosing the seed), and hold the run's lock."""
    if run_dir is not None:
        run_dir = Path(run_dir)
        runs.check_resume(runs.resume_config(run_dir), cfg)
        held.enter_context(runs.locked(run_dir, created=False))
        assert cfg.seed is not None
        return run_dir, cfg.seed
    run_dir, seed = runs.create_run(cfg)
    held.enter_context(runs.locked(run_dir, created=True))
    return run_dir, seed


def _train(
    cfg: TrainConfig,
    run_dir: Path,
    world: World,
    resuming: bool,
    hooks: list[Hook],
    show_progress: bool,
    should_stop: Callable[[], bool] | None,
) -> TrainResult:
    assert cfg.seed is not None
    device = world.device
    dataset, skipped = training_data(cfg, intensity.load(run_dir / INTENSITY) if resuming else None)
    mapping = None if dataset.intensities.eight_bit else dataset.intensities.to_json()
    pick_conv_algorithms(device, fixed_size=cfg.preprocess not in ("scale_width", "none"))
    torch.manual_seed(cfg.seed)  # initial weights and dropout; a resumed run restores the saved RNG state
    model = build_model(cfg.model).to(device)
    trainer = model.trainer(cfg, cfg.seed, world)
    progress, hook_states = _restore(run_dir, resuming, model, trainer, device)
    if world.is_main:
        runs.drop_rows_after(run_dir / LOG, progress.step)
        runs.drop_rows_after(run_dir / EVAL_LOG, progress.step, progress.epoch)
        runs.save_config(run_dir, cfg)  # only now: every option has been validated and the data checked
        if mapping is not None:
            intensity.save(run_dir / INTENSITY, dataset.intensities)
    total = _total_steps(cfg, len(dataset))
    bar, status = _progress_bar(progress, total, show_progress and world.is_main)
    run = RunState(cfg, run_dir, model, trainer, progress, device, total, status, world, intensity=mapping)
    # Hooks start afresh on every resume: what they draw (say, building the FID network) must not move the
    # random numbers training draws its dropout masks from, or a resumed run would differ from a straight one.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for hook in hooks:
            hook.load_state_dict(hook_states.get(hook.name, {}))
            hook.start(run)

    interrupted, committed, began = False, progress.step, time.time() - progress.seconds
    first, per_epoch = progress.step, math.ceil(len(dataset) / cfg.batch_size)
    with bar, catch_interrupts() as interrupts:
        for batch in interrupts.until_stopped(_batches(dataset, cfg, progress, world, total)):
            if batch is None:  # an epoch has closed
                trainer.end_epoch()
                progress.epoch, progress.batch = progress.epoch + 1, 0
                run.stopped = _call(hooks, lambda hook: hook.after_epoch(run), world)
                if run.stopped is not None:
                    break
                if run.saving:  # a commit due at an epoch's last step waits for the epoch to close
                    committed = _commit(run, hooks, interrupts)
                continue
            _warn_skipped(batch["skipped"], skipped, world)
            losses = _step(trainer, batch, cfg, progress.step, world, first=progress.step == first)
            progress.batch, progress.step = progress.batch + 1, progress.step + 1
            progress.seconds = round(time.time() - began, 3)
            bar.update(1)
            interrupted = world.any(interrupts.requested or (should_stop is not None and should_stop()))
            run.saving = interrupted or progress.step % cfg.save_latest_freq == 0 or progress.step >= total
            run.stopped = _call(hooks, partial(_after_step, run=run, losses=losses), world)
            if run.stopped is not None:
                break  # the weights are not worth saving: the last checkpoint stays the latest
            if run.saving and (interrupted or progress.batch < per_epoch):
                committed = _commit(run, hooks, interrupts)
            if interrupted:
                break
        bar.close()
        interrupted = interrupted or interrupts.requested
        if run.stopped is None and committed != progress.step:
            _commit(run, hooks, interrupts)
        for hook in hooks:
            hook.end(run)
    skipped = world.union(skipped)  # each process decodes its own share of the images
    return TrainResult(run_dir, progress, interrupted, skipped, run.stopped, world.is_main)


def _progress_bar(progress: Progress, total: int, show: bool) -> tuple[tqdm, Callable[[str], None]]:
    """The bar, and where a hook's status line goes: beside the bar on a terminal; elsewhere (CI, nohup, a
    job scheduler's log) there is no bar, whose redraws would fill the file, but the status as one line."""
    bar = tqdm(total=total, initial=progress.step, disable=None if show else True, unit="step")
    if bar.disable and show:
        return bar, lambda text: note(f"step {progress.step}/{total} {text}")
    return bar, bar.set_postfix_str


def default_hooks(cfg: TrainConfig, report: bool = True) -> list[Hook]:
    """The hooks every run has: its log, health checks, sample grids, snapshots, evaluation and trackers if
    asked, the report. Health comes first: a step that diverged stops the run before anything is drawn or
    saved; the trackers and the report come after the hooks whose results they show."""
    hooks: list[Hook] = [LossLog(), *([] if cfg.no_health else [Health()]), SampleGrids(), EpochSnapshots()]
    if cfg.eval_every:
        hooks.append(TestSetEvaluator())
    if trackers(cfg.log_to):
        hooks.append(Tracker(trackers(cfg.log_to), cfg.log_to_strict))
    if report:
        hooks.append(Report())
    return hooks


def _check_names(hooks: Sequence[Hook]) -> None:
    """Hook states are saved under the hooks' names: two hooks of one name would overwrite each other's."""
    names = [hook.name for hook in hooks]
    for name in names:
        if names.count(name) > 1:
            raise CycleGANError(f"two hooks are named {name!r}; give each hook a name of its own")


def _restore(
    run_dir: Path, resuming: bool, model: torch.nn.Module, trainer: Trainer, device: torch.device
) -> tuple[Progress, dict[str, Any]]:
    """The progress and hook states of the newest checkpoint when resuming (weights and trainer restored)."""
    if resuming and any((run_dir / CHECKPOINTS / name).exists() for name in (LATEST, PREVIOUS, STAGED)):
        progress, hook_states, message = runs.load_checkpoint(run_dir, model, trainer, device)  # type: ignore[arg-type]
        note(message)
        return progress, hook_states
    if resuming:
        note(f"{run_dir} has no checkpoint yet: starting it from step 0")
    return Progress(), {}


def _total_steps(cfg: TrainConfig, images: int) -> int:
    total = cfg.total_epochs * math.ceil(images / cfg.batch_size)
    return total if cfg.max_steps is None else min(total, cfg.max_steps)


def _batches(
    dataset: TrainingData, cfg: TrainConfig, progress: Progress, world: World, total: int
) -> Iterator[dict[str, Any] | None]:
    """This process's batches from where ``progress`` stands to the run's last step; ``None`` after each
    complete epoch. A run that reaches its last step mid-epoch ends there, the epoch left open."""
    per_epoch = math.ceil(len(dataset) / cfg.batch_size)
    while progress.epoch < cfg.total_epochs and progress.step < total:
        for batch in epoch_loader(dataset, cfg, progress, world):
            yield batch
            if progress.step >= total and progress.batch < per_epoch:
                return
        yield None


def _call(hooks: Sequence[Hook], method: Callable[[Hook], None], world: World) -> str | None:
    """Call one method of every hook; why a hook stopped the run (agreed by all processes), or None."""
    stopped = None
    try:
        for hook in hooks:
            method(hook)
    except StopRun as stop:
        stopped = str(stop)
    if world.any(stopped is not None):
        return stopped or "the main process stopped the run"
    return None


def _after_step(hook: Hook, *, run: RunState, losses: dict[str, torch.Tensor]) -> None:
    hook.after_step(run, losses)


def _commit(run: RunState, hooks: Sequence[Hook], interrupts: Interrupts) -> int:
    """Commit the resumable checkpoint (rank 0 writes it; a second Ctrl-C waits for it); its step."""
    if run.world.is_main:
        with interrupts.protect():
            states = {hook.name: hook.state_dict() for hook in hooks}
            runs.save_checkpoint(run.run_dir, run.model, run.trainer, run.progress, states, run.intensity)
    return run.progress.step


def training_data(
    cfg: TrainConfig, cached: intensity.Intensities | None = None
) -> tuple[TrainingData, set[str]]:
    """The two domains' images (true pairs for a paired model), with the unusable files named once, every
    training size checked, and each domain's mapping to [-1, 1] resolved (or ``cached``, a resumed run's)."""
    net = cfg.model.net
    multiple = size_multiple(net)
    paired = model_type(cfg.model.name).paired
    if paired:
        domain_a, domain_b, bad, sizes = scan_pairs(cfg, multiple)
    else:
        a_folder, b_folder = domain_folders(cfg)
        domain_a, bad_a, sizes_a = scan_domain(a_folder, cfg, net.input_nc, multiple)
        domain_b, bad_b, sizes_b = scan_domain(b_folder, cfg, net.output_nc, multiple)
        bad, sizes = bad_a + bad_b, sizes_a | sizes_b
    for path, why in bad:
        note(f"warning: skipping {path}: {why}")
    if cfg.batch_size > 1 and len(sizes) > 1:
        raise CycleGANError(
            f"--preprocess {cfg.preprocess} gives images of {len(sizes)} different sizes, which cannot"
            " share a batch: use --batch_size 1, or a cropping --preprocess"
        )
    for height, width in sorted(sizes):
        check_training_size(cfg.model, height, width)
    intensities, notes = intensity.resolve_pair(cfg, domain_a, domain_b, cached)
    for line in notes:
        note(line)
    if cfg.eval_every and not intensities.eight_bit:
        raise CycleGANError(
            "--eval_every scores FID/KID with an ImageNet network, which means little for data that is not"
            " 8-bit; leave it out and score with cyclegan eval (PSNR/SSIM in the data's own range)"
        )
    assert cfg.seed is not None
    kind = PairedDataset if paired else UnpairedDataset
    return kind(domain_a, domain_b, cfg, cfg.seed, multiple), {str(path) for path, _ in bad}


def _step(
    trainer: Trainer, batch: dict[str, Any], cfg: TrainConfig, step: int, world: World, *, first: bool
) -> dict[str, torch.Tensor]:
    """One training step; running out of memory is a one-line error that says what to change (the last
    committed checkpoint stays as it was)."""
    trainer.model.train()
    if world.distributed and cfg.model.net.dropout:
        _seed_dropout(cfg.seed or 0, step, world.rank)
    real_A = batch["A"].to(world.device, non_blocking=True)
    real_B = batch["B"].to(world.device, non_blocking=True)
    began = time.time()
    try:
        losses = trainer.step(real_A, real_B)
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
    if first and cfg.compile != "none":
        note(f"torch.compile warm-up: the first step took {time.time() - began:.1f} s")
    return losses


def _warn_skipped(met: list[tuple[str, str]], skipped: set[str], world: World) -> None:
    """Once per image, with why, named by the process that met it: under torchrun each process reads its
    own images."""
    where = f" (rank {world.rank})" if world.distributed else ""
    for path, why in sorted(set(met)):
        if path not in skipped:
            skipped.add(path)
            what = "an image" if path in why else path  # decoders' messages often name the file already
            tqdm.write(f"warning{where}: skipping {what}: {why}", file=sys.stderr)


def epoch_loader(dataset: TrainingData, cfg: TrainConfig, progress: Progress, world: World) -> DataLoader:
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
