"""The CycleGAN model, its training step, and the training loop (read ``train`` top to bottom).

Naming follows the paper's reference code: ``G_A`` maps A->B, ``G_B`` maps B->A, ``D_A`` judges domain B
(real B against G_A(A)) and ``D_B`` judges domain A.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from cyclegan import checkpoints, metrics
from cyclegan.config import ModelConfig, TrainConfig
from cyclegan.data import (
    DECODE_ERRORS,
    EpochSampler,
    UnpairedDataset,
    collate,
    domain_folders,
    eval_transform,
    item_seed,
    list_images,
    load_image,
    scan_domain,
)
from cyclegan.errors import CycleGANError
from cyclegan.evaluation import evaluate_model, real_features
from cyclegan.inference import save_sample_grid
from cyclegan.losses import GANLoss, ImagePool
from cyclegan.networks import build_discriminator, build_generator, load_weights
from cyclegan.report import write_report

LOSS_NAMES = ("D_A", "G_A", "cycle_A", "idt_A", "D_B", "G_B", "cycle_B", "idt_B")


class CycleGAN(nn.Module):
    """The four networks. G_A: A->B, G_B: B->A, D_A judges B images, D_B judges A images."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.G_A = build_generator(cfg, cfg.input_nc, cfg.output_nc)
        self.G_B = build_generator(cfg, cfg.output_nc, cfg.input_nc)
        self.D_A = build_discriminator(cfg, cfg.output_nc)
        self.D_B = build_discriminator(cfg, cfg.input_nc)

    def networks(self) -> dict[str, nn.Module]:
        return {"G_A": self.G_A, "G_B": self.G_B, "D_A": self.D_A, "D_B": self.D_B}


def lr_factor(epoch: int, n_epochs: int, n_epochs_decay: int) -> float:
    """The reference's linear rule: 1 for the first ``n_epochs`` epochs, then down towards 0.

    ``epoch`` counts from 0, so the last epoch trains at 1 / (n_epochs_decay + 1) of the initial rate.
    """
    return 1.0 - max(0, epoch + 1 - n_epochs) / float(n_epochs_decay + 1)


class CycleGANTrainer:
    """Optimizers, schedulers, image pools and one training step, as in the reference.

    Callable from Python on given tensors: ``losses = trainer.step(real_A, real_B)``.
    """

    def __init__(self, model: CycleGAN, cfg: TrainConfig, seed: int = 0) -> None:
        self.model, self.cfg = model, cfg
        betas = (cfg.beta1, cfg.beta2)
        self.opt_G = torch.optim.Adam(
            itertools.chain(model.G_A.parameters(), model.G_B.parameters()), lr=cfg.lr, betas=betas
        )
        self.opt_D = torch.optim.Adam(
            itertools.chain(model.D_A.parameters(), model.D_B.parameters()), lr=cfg.lr, betas=betas
        )
        rule = lambda epoch: lr_factor(epoch, cfg.n_epochs, cfg.n_epochs_decay)  # noqa: E731
        self.schedulers = [torch.optim.lr_scheduler.LambdaLR(opt, rule) for opt in (self.opt_G, self.opt_D)]
        self.pool_A = ImagePool(cfg.pool_size, seed=item_seed(seed, 0, -3 % 2**32))
        self.pool_B = ImagePool(cfg.pool_size, seed=item_seed(seed, 0, -4 % 2**32))
        self.gan_loss = GANLoss(cfg.gan_mode)
        self.l1 = nn.L1Loss()

    def step(self, real_A: torch.Tensor, real_B: torch.Tensor) -> dict[str, float]:
        """One generator update (discriminators frozen), then one discriminator update on pooled fakes.

        Returns the losses as computed before this step's updates.
        """
        m, cfg = self.model, self.cfg
        fake_B = m.G_A(real_A)
        rec_A = m.G_B(fake_B)
        fake_A = m.G_B(real_B)
        rec_B = m.G_A(fake_A)

        _set_requires_grad([m.D_A, m.D_B], False)
        self.opt_G.zero_grad(set_to_none=True)
        losses: dict[str, torch.Tensor] = {}
        if cfg.lambda_identity > 0:
            losses["idt_A"] = self.l1(m.G_A(real_B), real_B) * cfg.lambda_B * cfg.lambda_identity
            losses["idt_B"] = self.l1(m.G_B(real_A), real_A) * cfg.lambda_A * cfg.lambda_identity
        else:
            losses["idt_A"] = losses["idt_B"] = torch.zeros((), device=real_A.device)
        losses["G_A"] = self.gan_loss(m.D_A(fake_B), True)
        losses["G_B"] = self.gan_loss(m.D_B(fake_A), True)
        losses["cycle_A"] = self.l1(rec_A, real_A) * cfg.lambda_A
        losses["cycle_B"] = self.l1(rec_B, real_B) * cfg.lambda_B
        # Summed in the reference's order: autograd then accumulates gradients in the same order, which keeps
        # float32 results identical to it (Adam amplifies rounding differences in near-zero gradients).
        loss_G = losses["G_A"] + losses["G_B"] + losses["cycle_A"] + losses["cycle_B"]
        (loss_G + losses["idt_A"] + losses["idt_B"]).backward()
        self.opt_G.step()

        _set_requires_grad([m.D_A, m.D_B], True)
        self.opt_D.zero_grad(set_to_none=True)
        losses["D_A"] = self._discriminator_loss(m.D_A, real_B, self.pool_B.query(fake_B))
        losses["D_B"] = self._discriminator_loss(m.D_B, real_A, self.pool_A.query(fake_A))
        (losses["D_A"] + losses["D_B"]).backward()
        self.opt_D.step()
        return {name: losses[name].item() for name in LOSS_NAMES}

    def _discriminator_loss(self, net: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self.gan_loss(net(real), True) + self.gan_loss(net(fake.detach()), False))

    def end_epoch(self) -> None:
        for scheduler in self.schedulers:
            scheduler.step()

    @property
    def lr(self) -> float:
        return self.opt_G.param_groups[0]["lr"]

    def state_dict(self) -> dict[str, Any]:
        return {
            "opt_G": self.opt_G.state_dict(),
            "opt_D": self.opt_D.state_dict(),
            "schedulers": [s.state_dict() for s in self.schedulers],
            "pool_A": self.pool_A.state_dict(),
            "pool_B": self.pool_B.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D.load_state_dict(state["opt_D"])
        for scheduler, s in zip(self.schedulers, state["schedulers"], strict=True):
            scheduler.load_state_dict(s)
        self.pool_A.load_state_dict(state["pool_A"], device)
        self.pool_B.load_state_dict(state["pool_B"], device)


def _set_requires_grad(nets: list[nn.Module], flag: bool) -> None:
    for net in nets:
        for p in net.parameters():
            p.requires_grad_(flag)


@dataclass
class Progress:
    """Where a run stands: ``epoch`` counts from 0, ``batch`` is the next batch within that epoch."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    best_kid: float | None = None
    seconds: float = 0.0  # training time, summed over resumes


@dataclass
class TrainResult:
    run_dir: Path
    progress: Progress
    interrupted: bool = False
    skipped_files: set[str] = field(default_factory=set)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CycleGANError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CycleGANError(f"--device {name}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CycleGANError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type != "cpu":
        raise CycleGANError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
    return device


def prepare_run(cfg: TrainConfig) -> Path:
    """Create a new run folder and write its config; an existing non-empty folder is never reused."""
    cfg.validate()
    run_dir = Path(cfg.checkpoints_dir) / cfg.name
    if run_dir.exists() and any(run_dir.iterdir()):
        raise CycleGANError(
            f"run folder {run_dir} already exists: resume it with --resume {run_dir}, or pick another --name"
        )
    if cfg.seed is None:
        cfg.seed = secrets.randbelow(2**31 - 1)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(run_dir / "config.json")
    return run_dir


def save_checkpoint(
    run_dir: Path, tag: str, model: CycleGAN, trainer: CycleGANTrainer, progress: Progress
) -> None:
    """Weights (self-describing safetensors) and the training state beside them, each written atomically."""
    folder = run_dir / "checkpoints"
    info = dataclasses.asdict(progress)
    state = {
        "progress": info,
        "trainer": trainer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    checkpoints.save_state(folder / f"{tag}.state.pt", state)
    checkpoints.save_weights(folder / f"{tag}.safetensors", model.networks(), model.config, info)


def load_checkpoint(
    run_dir: Path, model: CycleGAN, trainer: CycleGANTrainer, device: torch.device
) -> Progress:
    folder = run_dir / "checkpoints"
    states, _, info = checkpoints.read_weights(checkpoints.resolve_checkpoint(folder / "latest.safetensors"))
    state = checkpoints.load_state(folder / "latest.state.pt")
    if state["progress"] != info:
        raise CycleGANError(f"{folder}: latest.safetensors and latest.state.pt are from different steps")
    for name, net in model.networks().items():
        load_weights(net, states[name])
    trainer.load_state_dict(state["trainer"], device)
    torch.set_rng_state(state["torch_rng"])
    if device.type == "cuda" and state["cuda_rng"]:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return Progress(**info)


class LossLog:
    """``log.jsonl``: one JSON row of mean losses per logged interval, appended as training goes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sums: dict[str, float] = dict.fromkeys(LOSS_NAMES, 0.0)
        self.count = 0

    def add(self, losses: dict[str, float]) -> None:
        for k, v in losses.items():
            self.sums[k] += v
        self.count += 1

    def means(self) -> dict[str, float]:
        return {k: v / max(self.count, 1) for k, v in self.sums.items()}

    def summary(self) -> str:
        means = self.means()
        return " ".join(f"{k} {means[k]:.2f}" for k in ("G_A", "G_B", "D_A", "D_B", "cycle_A", "cycle_B"))

    def write(self, **fields: Any) -> None:
        row = {**fields, **{k: round(v, 6) for k, v in self.means().items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        self.sums = dict.fromkeys(LOSS_NAMES, 0.0)
        self.count = 0


def drop_rows_after(path: Path, step: int) -> None:
    """On resume, forget log rows written after the checkpoint (they will be written again)."""
    if path.exists():
        rows = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        checkpoints.atomic_write_text(path, "".join(row + "\n" for row in rows))


@contextmanager
def stop_on_signals() -> Iterator[Callable[[], bool]]:
    """Turn Ctrl-C / SIGTERM into a request to stop after the current step (a second Ctrl-C kills)."""
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested.is_set
        return

    def handler(signum: int, frame: Any) -> None:
        if requested.is_set():
            raise KeyboardInterrupt
        requested.set()
        tqdm.write(
            "Stopping after this step and saving a checkpoint (Ctrl-C again to abort)...", file=sys.stderr
        )

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield requested.is_set
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class TestSetEvaluator:
    """FID/KID of both generators on testA/testB during training, logged to ``eval_log.jsonl``.

    The checkpoint with the lowest mean KID of the two directions is kept as ``checkpoints/best``.
    """

    def __init__(self, cfg: TrainConfig, device: torch.device) -> None:
        if cfg.dataroot is None:
            raise CycleGANError("--eval_every needs --dataroot with testA/ and testB/")
        folders = domain_folders(cfg, "test")
        self.test_a, self.test_b = (list_images(folder) for folder in folders)
        weights = Path(cfg.inception_weights) if cfg.inception_weights else None
        self.inception = metrics.load_inception(weights, device)
        self.device = device
        self.real = real_features(self.inception, self.test_a, self.test_b, device=device)

    def __call__(self, run_dir: Path, model: CycleGAN, progress: Progress) -> None:
        scores = evaluate_model(
            model, self.test_a, self.test_b, self.inception, device=self.device, real=self.real
        )
        with open(run_dir / "eval_log.jsonl", "a") as f:
            f.write(json.dumps({"epoch": progress.epoch, "step": progress.step, "metrics": scores}) + "\n")
        kid = (scores["KID A→B"] + scores["KID B→A"]) / 2
        tqdm.write(
            f"epoch {progress.epoch}: " + ", ".join(f"{k} {v:.4g}" for k, v in scores.items()),
            file=sys.stderr,
        )
        if progress.best_kid is None or kid < progress.best_kid:
            progress.best_kid = kid
            info = {**dataclasses.asdict(progress), "metrics": scores}
            checkpoints.save_weights(
                run_dir / "checkpoints" / "best.safetensors", model.networks(), model.config, info
            )


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
        generator=torch.Generator().manual_seed(cfg.seed),  # keeps the global RNG untouched
    )


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
        out.append(torch.stack(tensors))
    n = min(len(out[0]), len(out[1]))
    return out[0][:n], out[1][:n]


def train(
    cfg: TrainConfig,
    resume_dir: Path | None = None,
    *,
    show_progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train a CycleGAN from ``cfg`` in a new run folder, or continue the run in ``resume_dir`` exactly."""
    run_dir = Path(resume_dir) if resume_dir is not None else prepare_run(cfg)
    assert cfg.seed is not None
    device = resolve_device(cfg.device)

    a_folder, b_folder = domain_folders(cfg)
    domain_a, bad_a = scan_domain(a_folder, cfg, cfg.model.input_nc)
    domain_b, bad_b = scan_domain(b_folder, cfg, cfg.model.output_nc)
    skipped = {str(p) for p in bad_a + bad_b}
    for path in sorted(skipped):
        tqdm.write(f"warning: skipping {path}: not a readable image", file=sys.stderr)
    dataset = UnpairedDataset(domain_a, domain_b, cfg, cfg.seed)
    batches_per_epoch = math.ceil(len(dataset) / cfg.batch_size)

    torch.manual_seed(cfg.seed)  # initial weights and dropout; a resumed run restores the saved RNG state
    model = CycleGAN(cfg.model).to(device)
    trainer = CycleGANTrainer(model, cfg, cfg.seed)
    progress = Progress()
    if resume_dir is not None:
        progress = load_checkpoint(run_dir, model, trainer, device)
        for name in ("log.jsonl", "eval_log.jsonl"):
            drop_rows_after(run_dir / name, progress.step)
    log = LossLog(run_dir / "log.jsonl")
    evaluator = TestSetEvaluator(cfg, device) if cfg.eval_every else None
    samples = tuple(t.to(device) for t in sample_images(cfg))

    total = cfg.total_epochs * batches_per_epoch
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    bar = tqdm(total=total, initial=progress.step, disable=not show_progress, unit="step", dynamic_ncols=True)
    interrupted = False
    start = time.time() - progress.seconds
    with stop_on_signals() as signalled:
        stop = lambda: signalled() or (should_stop is not None and should_stop())  # noqa: E731
        while progress.epoch < cfg.total_epochs and progress.step < total and not interrupted:
            loader = epoch_loader(dataset, cfg, progress, device)
            for batch in loader:
                for path in set(batch["skipped"]) - skipped:
                    skipped.add(path)
                    tqdm.write(f"warning: skipping {path}: the image could not be decoded", file=sys.stderr)
                model.train()
                losses = trainer.step(batch["A"].to(device), batch["B"].to(device))
                progress.batch += 1
                progress.step += 1
                progress.seconds = round(time.time() - start, 3)
                log.add(losses)
                bar.update(1)
                if progress.step % cfg.print_freq == 0:
                    bar.set_postfix_str(f"epoch {progress.epoch + 1}/{cfg.total_epochs} {log.summary()}")
                    log.write(
                        step=progress.step, epoch=progress.epoch + 1, lr=trainer.lr, time=progress.seconds
                    )
                if progress.step % cfg.sample_freq == 0:
                    save_sample_grid(run_dir / "samples" / f"step_{progress.step:07d}.png", model, *samples)
                if progress.step % cfg.save_latest_freq == 0:
                    save_checkpoint(run_dir, "latest", model, trainer, progress)
                if stop() or (progress.step >= total and progress.batch < batches_per_epoch):
                    interrupted = stop()
                    break  # mid-epoch; at an epoch's end the epoch is closed below first
            else:
                trainer.end_epoch()
                progress.epoch += 1
                progress.batch = 0
                if evaluator is not None and progress.epoch % cfg.eval_every == 0:
                    evaluator(run_dir, model, progress)
                if progress.epoch % cfg.save_epoch_freq == 0:
                    checkpoints.save_weights(
                        run_dir / "checkpoints" / f"epoch_{progress.epoch:03d}.safetensors",
                        model.networks(),
                        cfg.model,
                        dataclasses.asdict(progress),
                    )
    bar.close()
    save_checkpoint(run_dir, "latest", model, trainer, progress)
    save_sample_grid(run_dir / "samples" / f"step_{progress.step:07d}.png", model, *samples)
    write_report(run_dir)
    return TrainResult(run_dir, progress, interrupted, skipped)
