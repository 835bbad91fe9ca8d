"""Experiment trackers and the live report: what they cost per training step at the default intervals.

Interleaved rounds of short training runs, identical but for what they log: each of ``--variants`` is a
``--log_to`` value, with "+report" for the live report too; the first is the baseline (by default "none",
the run as it was before ``--log_to``: no tracker, no live report). Each run times its steps from step
``--warmup`` on with a hook placed after all others, so what the trackers cost once per run (W&B's
service, MLflow's database, the last flush) is left out. The default intervals are kept: losses every 100
steps, a sample grid every 400, health every 100; epoch snapshots and checkpoints are pushed past the
run, as they cost every run alike.
Beside the end-to-end difference, which a shared machine makes noisy, the time spent inside the tracker
and report hooks is summed directly, and so is the CPU time of child processes (W&B's service runs in
one): on a machine with cores to spare it costs the training nothing, on a busy one it competes.

Then the report of a long run (2,000 loss rows, 500 sample grids of 1542x1030 px, as 200,000 steps at the
default intervals leave) is rendered a few times: the live report's cost per rewrite, which the report
hook keeps under ``LIVE_SHARE`` of the run's time by skipping grids.

    PYTHONPATH=src python benchmarks/tracking.py --steps 800 --rounds 2 --out runs/tracking.json

W&B runs offline (WANDB_MODE=offline unless set) and MLflow writes to a store in the temporary folder;
MLflow's telemetry is switched off (MLFLOW_DISABLE_TELEMETRY=true unless set).

Measured on the shared 2-core CPU machine (torch 2.14, tensorboard 2.21, wandb 0.31, mlflow 3.17),
``--steps 820 --rounds 1`` (32 px, ngf 8: about 36 ms a step):

* inside the hooks, all three trackers together: 0.30-0.42% of the run's time (two runs); the live
  report: 0.27-0.35% (its cap is 0.5%); W&B's service process: 0.002 CPU-s per second. The end-to-end
  differences (+1.6%, +7.4%) are this machine's noise: five identical runs without trackers spread over
  30.6-33.5 ms a step.
* per call, written out: TensorBoard 0.83 ms per step's scalars and 104 ms per 1542x1030 grid (a JPEG
  preview: its writer checksums in pure Python, 243 ms for the PNG itself), W&B 0.13 ms and 40 ms, MLflow
  5.6 ms (an SQLite commit) and 4 ms: 0.27, 0.10 and 0.07 ms per step at the default intervals, so one
  tracker stays under 1% for steps of 27 ms or longer, all three for steps of 44 ms or longer.
* a 200,000-step run's report renders in 0.51 s: the live report rewrites it at most every 103 s.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cyclegan.config import TrainConfig, trackers
from cyclegan.evaluation.report import RunStatus, write_report
from cyclegan.files import atomic_write_text
from cyclegan.training.hooks import LIVE_SHARE, Hook, Report, RunState
from cyclegan.training.loop import train
from cyclegan.training.tracking import BACKENDS, Backend, Tracker

INSIDE = {"trackers": 0.0, "report": 0.0}  # seconds spent inside those hooks during the timed steps


class Clock(Hook):
    """The time at the end of every step, after every other hook ran."""

    name = "clock"

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.times: list[float] = []
        self.helpers: list[float] = []  # CPU seconds of child processes at the first and last timed step

    def after_step(self, run: RunState, losses: dict[str, torch.Tensor]) -> None:
        if run.progress.step == run.total_steps and run.device.type == "cuda":
            torch.cuda.synchronize(run.device)  # the queued steps belong to the timed ones
        self.times.append(time.perf_counter())
        if run.progress.step in (self.warmup + 1, run.total_steps):
            self.helpers.append(children_cpu())


def children_cpu() -> float:
    """CPU seconds used so far by this process's living child processes (W&B's service, say)."""
    import psutil

    total = 0.0
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            times = child.cpu_times()
            total += times.user + times.system
    return total


def timed(kind: str, method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` adding its time to ``INSIDE[kind]``, once however deeply it calls the others."""
    depth = {"n": 0}

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        depth["n"] += 1
        began = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            depth["n"] -= 1
            if depth["n"] == 0:
                INSIDE[kind] += time.perf_counter() - began

    return wrapper


def instrument() -> None:
    for name in ("log", "after_step", "after_epoch"):
        setattr(Tracker, name, timed("trackers", getattr(Tracker, name)))
    for name in ("_notice", "after_step", "after_epoch"):
        setattr(Report, name, timed("report", getattr(Report, name)))


def make_data(root: Path, size: int, count: int) -> None:
    rng = np.random.default_rng(0)
    for domain in ("trainA", "trainB", "testA", "testB"):
        (root / domain).mkdir(parents=True)
        for i in range(count if domain.startswith("train") else 4):
            small = (rng.random((size // 8, size // 8, 3)) * 255).astype(np.uint8)
            Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC).save(
                root / domain / f"{i}.png"
            )


def one_run(args: argparse.Namespace, data: Path, out: Path, variant: str, name: str) -> dict[str, Any]:
    log_to, _, report = variant.partition("+")
    cfg = TrainConfig.create(
        dataroot=str(data), checkpoints_dir=str(out), name=name,
        crop_size=args.size, load_size=args.size + args.size // 8, ngf=args.ngf, ndf=args.ndf,
        netG=args.netG, num_workers=args.num_workers, device=args.device, seed=0, max_steps=args.steps,
        n_epochs=10**4, n_epochs_decay=0, save_latest_freq=10**9, save_epoch_freq=10**9,
        log_to=log_to,
    )  # fmt: skip
    clock = Clock(args.warmup)
    before = dict(INSIDE)
    result = train(cfg, hooks=[clock], show_progress=False, report=report == "report")
    assert result.progress.step == args.steps
    times = clock.times[args.warmup :]
    per_step = (times[-1] - times[0]) / (len(times) - 1)
    inside = {k: (INSIDE[k] - before[k]) / (len(times) - 1) for k in INSIDE}
    helpers = (clock.helpers[1] - clock.helpers[0]) / (times[-1] - times[0])
    print(f"  {name} {variant}: {1000 * per_step:.2f} ms/step", flush=True)
    return {
        "variant": variant, "run": name, "s_per_step": per_step, "inside_s_per_step": inside,
        "helper_cpu_s_per_s": helpers,
    }  # fmt: skip


class Capture(Hook):
    """Keeps the run's state, to open trackers on it after the run."""

    name = "capture"

    def start(self, run: RunState) -> None:
        self.run = run


def per_call_costs(
    args: argparse.Namespace, data: Path, out: Path, repeats: int
) -> dict[str, dict[str, float]]:
    """Milliseconds per call of each tracker, each flushed, with a step's usual scalars (losses, learning
    rate, epoch, images/s and health: 19 values) and the sample grid of a 256-px run (1542x1030 px), and
    what they add per step at the default intervals: scalars every 100 steps, a grid every 400."""
    capture = Capture()
    cfg = TrainConfig.create(
        dataroot=str(data), checkpoints_dir=str(out), name="calls", crop_size=args.size,
        load_size=args.size + args.size // 8, ngf=args.ngf, ndf=args.ndf, netG=args.netG, num_workers=0,
        device=args.device, seed=0, max_steps=1,
    )  # fmt: skip
    train(cfg, hooks=[capture], show_progress=False, report=False)
    run = capture.run
    grid = grid_png(out / "grid.png")
    values = {f"loss/{name}": 0.5 for name in run.model.loss_names}
    values |= {"train/lr": 2e-4, "train/epoch": 1.0, "train/images_per_s": 30.0}
    values |= {f"health/{k}_{d}": 0.3 for k in ("change", "gap", "diversity", "colour") for d in "AB"}
    steps = itertools.count(1)  # W&B takes steps in order only
    costs = {}
    variants = args.variants.split(";")
    for name in dict.fromkeys(n for v in variants for n in trackers(v.partition("+")[0])):
        backend = BACKENDS[name](run, {})

        def scalars(b: Backend = backend) -> None:
            b.scalars(next(steps), values)
            b.flush()

        def image(b: Backend = backend) -> None:
            b.image(next(steps), "samples", grid)
            b.flush()  # TensorBoard writes in a thread: counted as if it waited for the disk

        scalars_ms, image_ms = ms(scalars, repeats), ms(image, repeats)
        backend.close("finished")
        costs[name] = {
            "scalars_ms": scalars_ms, "image_ms": image_ms,
            "ms_per_step": scalars_ms / 100 + image_ms / 400,
        }  # fmt: skip
    return costs


def ms(call: Callable[[], object], repeats: int) -> float:
    began = time.perf_counter()
    for _ in range(repeats):
        call()
    return 1000 * (time.perf_counter() - began) / repeats


def grid_png(path: Path) -> Path:
    """A sample grid as a 256-px CycleGAN run draws it (4 rows of 6 images): 1542x1030 px, photo-like."""
    small = (np.random.default_rng(0).random((130, 200, 3)) * 255).astype(np.uint8)
    Image.fromarray(small).resize((1542, 1030), Image.Resampling.BICUBIC).save(path)
    return path


def long_run_report(folder: Path, renders: int) -> list[float]:
    """Seconds per render of a 200,000-step run's report (as the live report rewrites it)."""
    rng = np.random.default_rng(0)
    (folder / "samples").mkdir(parents=True)
    TrainConfig.create(dataroot="data").save(folder / "config.json")
    names = ("D_A", "G_A", "cycle_A", "idt_A", "D_B", "G_B", "cycle_B", "idt_B")
    rows = [
        {
            "step": i * 100,
            "epoch": i // 10 + 1,
            "lr": 2e-4,
            "time": i * 4.0,
            **{k: rng.random() for k in names},
        }
        for i in range(1, 2001)
    ]
    atomic_write_text(folder / "log.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    first = grid_png(folder / "samples" / "step_0000400.png")
    for step in range(800, 200_001, 400):
        os.link(first, folder / "samples" / f"step_{step:07d}.png")  # 500 names, one file's space
    status = RunStatus("training", 200_000, 400_000, 100, 200, 20.0, 10_000.0)
    seconds = []
    for _ in range(renders):
        began = time.perf_counter()
        write_report(folder, status=status)
        seconds.append(time.perf_counter() - began)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--variants",
        default="none;tensorboard,wandb,mlflow;tensorboard,wandb,mlflow+report",
        help="runs to compare, separated by ';': a --log_to value, +report for the live report; the first is"
        " the baseline",
    )
    parser.add_argument("--steps", type=int, default=800, help="steps per run (two sample grids at 800)")
    parser.add_argument("--warmup", type=int, default=20, help="steps not timed at the start of each run")
    parser.add_argument("--rounds", type=int, default=2, help="0: only the per-call costs and the report")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--ngf", type=int, default=8)
    parser.add_argument("--ndf", type=int, default=8)
    parser.add_argument("--netG", default="resnet_6blocks")
    parser.add_argument("--images", type=int, default=100, help="training images per domain")
    parser.add_argument("--num_workers", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=20, help="calls timed per tracker and kind")
    parser.add_argument("--renders", type=int, default=3, help="renders of the long run's report")
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    instrument()
    variants = args.variants.split(";")
    summary: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        make_data(Path(tmp) / "data", args.size, args.images)
        runs = [
            one_run(args, Path(tmp) / "data", Path(tmp) / "runs", variant, f"round{r}_{i}")
            for r in range(args.rounds)
            for i, variant in enumerate(variants)
        ]
        if runs:
            summary["runs"] = summarize(runs, variants, args)
        summary["calls"] = per_call_costs(args, Path(tmp) / "data", Path(tmp) / "calls", args.repeats)
        summary["long_run_report_s"] = long_run_report(Path(tmp) / "long", args.renders)
    for name, cost in summary["calls"].items():
        print(
            f"  {name}: {cost['scalars_ms']:.2f} ms per step's scalars, {cost['image_ms']:.2f} ms per"
            f" 1542x1030 grid, written out: {cost['ms_per_step']:.3f} ms per step at the default intervals"
        )
    render = statistics.median(summary["long_run_report_s"])
    print(
        f"  a 200,000-step run's report renders in {render:.3f} s; the live report rewrites it at most once"
        f" per {render / LIVE_SHARE:.0f} s of training"
    )
    if args.out is not None:
        text = json.dumps({"args": vars(args) | {"out": str(args.out)}, "summary": summary, "runs": runs})
        atomic_write_text(args.out, text + "\n")
    print(f"torch {torch.__version__}, {sys.platform}, device {args.device}")


def summarize(runs: list[dict[str, Any]], variants: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Per variant, the median over rounds; printed as a table."""
    base = statistics.median(r["s_per_step"] for r in runs if r["variant"] == variants[0])
    summary: dict[str, Any] = {}
    print(f"{args.size} px, ngf {args.ngf}, {args.steps} steps x {args.rounds} rounds, against {variants[0]}")
    for variant in variants:
        mine = [r for r in runs if r["variant"] == variant]
        per_step = statistics.median(r["s_per_step"] for r in mine)
        inside = {k: statistics.median(r["inside_s_per_step"][k] for r in mine) for k in INSIDE}
        helpers = statistics.median(r["helper_cpu_s_per_s"] for r in mine)
        summary[variant] = {
            "ms_per_step": 1000 * per_step,
            "end_to_end_overhead": per_step / base - 1,
            "inside_share": {k: v / per_step for k, v in inside.items()},
            "helper_cpu_s_per_s": helpers,
        }
        print(
            f"  {variant:40s} {1000 * per_step:8.2f} ms/step ({per_step / base - 1:+.2%} end to end);"
            f" inside trackers {inside['trackers'] / per_step:.3%},"
            f" inside the report {inside['report'] / per_step:.3%}; child processes {helpers:.3f} CPU-s/s"
        )
    return summary


if __name__ == "__main__":
    main()
