"""Which method, for the same minutes? Each registered model (CycleGAN, CUT, FastCUT, and pix2pix where it
is registered, on paired renders) trains on the demo's day/night scenes for the same wall time, and its
translations are scored against the known answers (PSNR, SSIM), beside the demo's baselines, per seed.

Equal wall time, each with a whole schedule: a short calibration run measures a model's training steps per
second here (the demo's settings, its hooks included), then the real run trains as many steps as fit in
``--seconds`` (half at the full learning rate, half decaying, as the demo does) and is stopped at
``--seconds`` if it runs late. Wall time is the budget, so run it alone on the machine (under the shared
CPU lock). Each finished run's scores are kept in ``OUT/seed<N>/<model>.json``: a rerun skips it.

    PYTHONPATH=src python benchmarks/methods.py --seconds 600  # 3 models x 2 seeds: about 70 minutes
    PYTHONPATH=src python benchmarks/methods.py --seconds 20 --calibrate 5 --size 32 --out /tmp/smoke
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from cyclegan.config import DemoSettings
from cyclegan.data.demo_scenes import make_demo_dataset
from cyclegan.demo import score
from cyclegan.devices import resolve_device
from cyclegan.errors import CycleGANError
from cyclegan.evaluation.results import ResultRow, ResultTable
from cyclegan.files import atomic_write_text
from cyclegan.models import Model, model_type
from cyclegan.training.loop import TrainResult, train

BASELINES = ("colour transfer", "untranslated input")


def demo_data(out: Path, model: str, seed: int, size: int) -> Path:
    """The demo's renders for ``model``: unpaired scenes, or both renderings of each for a paired model."""
    paired = model_type(model).paired
    options: dict[str, Any] = {"paired": True} if paired else {}
    return make_demo_dataset(out / ("data_paired" if paired else "data"), seed=seed, size=size, **options)


def timed_run(settings: DemoSettings, dataroot: Path, seconds: float, report: bool) -> TrainResult:
    """Train the demo's config of ``settings`` until its steps are done or ``seconds`` have passed."""
    deadline = time.monotonic() + seconds
    return train(
        settings.train_config(dataroot),
        show_progress=False,
        report=report,
        should_stop=lambda: time.monotonic() > deadline,
    )


def steps_per_second(settings: DemoSettings, dataroot: Path, seconds: float) -> float:
    """The demo's training speed of ``settings.model`` here, from a throwaway run of ``seconds``."""
    result = timed_run(settings, dataroot, seconds, report=False)
    shutil.rmtree(result.run_dir)
    if result.progress.step < 2:
        raise CycleGANError(
            f"{settings.model} trained {result.progress.step} step in --calibrate {seconds} s"
        )
    return result.progress.step / max(result.progress.seconds, 1e-9)


def one_run(args: argparse.Namespace, model: str, seed: int) -> dict[str, Any]:
    """Calibrate, train and score one model on one seed (or read the scores a finished run left)."""
    folder = args.out / f"seed{seed}"
    kept = folder / f"{model}.json"
    if kept.is_file():
        return json.loads(kept.read_text())
    base = DemoSettings(folder, 10**6, args.size, args.ngf, args.ndf, seed, args.device, model)
    dataroot = demo_data(folder, model, seed, args.size)
    rate = steps_per_second(replace(base, out=folder / "calibration"), dataroot, args.calibrate)
    settings = replace(base, steps=max(1, int(rate * args.seconds)))
    cfg = settings.train_config(dataroot)
    if (Path(cfg.checkpoints_dir) / cfg.name).exists():
        raise CycleGANError(
            f"{Path(cfg.checkpoints_dir) / cfg.name} holds an unfinished run of an earlier call: delete it"
        )
    print(f"seed {seed}, {model}: {rate:.2f} steps/s, {settings.steps} steps", file=sys.stderr, flush=True)
    began = time.monotonic()
    result = timed_run(settings, dataroot, args.seconds, report=True)
    table = score(result.run_dir, dataroot, resolve_device(args.device))
    record = {
        "model": model,
        "seed": seed,
        "planned_steps": settings.steps,
        "steps": result.progress.step,
        "seconds": round(time.monotonic() - began, 1),
        "stopped": result.stopped or ("at the deadline" if result.interrupted else None),
        "rows": [{"method": r.method, "direction": r.direction, **r.scores} for r in table.rows],
    }
    atomic_write_text(kept, json.dumps(record, indent=2) + "\n")
    return record


def summary(records: list[dict[str, Any]], args: argparse.Namespace) -> ResultTable:
    """Per method and direction: the mean over seeds of each score, and of the steps a model trained."""
    values: dict[tuple[str, str], dict[str, list[float]]] = {}
    for record in records:
        for row in record["rows"]:
            cell = values.setdefault((row["method"], row["direction"]), {})
            for name in ("PSNR", "SSIM"):
                if row.get(name) is not None:
                    cell.setdefault(name, []).append(row[name])
            if row["method"] not in BASELINES:
                cell.setdefault("steps", []).append(record["steps"])
    models = [Model.registry[m].title for m in args.models]
    order = {name: i for i, name in enumerate([*models, *BASELINES])}
    rows = [
        ResultRow(method, direction, {k: statistics.fmean(v) for k, v in cell.items()})
        for (method, direction), cell in sorted(values.items(), key=lambda kv: (kv[0][1], order[kv[0][0]]))
    ]
    per_seed = [
        f"{r['model']} seed {r['seed']}: {r['steps']} steps in {r['seconds']} s"
        + (f" (stopped {r['stopped']}: {r['planned_steps']} planned)" if r["stopped"] else "")
        for r in records
    ]
    return ResultTable(
        title="Methods at equal wall time on the demo: day ↔ night against the known answers",
        protocol={
            "wall time per run": f"{args.seconds:g} s",
            "seeds": ", ".join(map(str, args.seeds)),
            "image size": f"{args.size}x{args.size}",
            "networks": f"demo's (resnet_6blocks, ngf {args.ngf}, n_layers D of 2, ndf {args.ndf})",
            "scores": "mean over seeds of the demo's PSNR (dB) and SSIM on the test scenes",
        },
        columns=["PSNR", "SSIM", "steps"],
        rows=rows,
        notes=per_seed,
    )


def markdown(table: ResultTable) -> str:
    lines = ["| method | direction | steps | PSNR | SSIM |", "|---|---|---:|---:|---:|"]
    for row in table.rows:
        s = row.scores
        steps = f"{s['steps']:,.0f}" if s.get("steps") is not None else ""
        psnr, ssim = (f"{s[k]:.{d}f}" if s.get(k) is not None else "-" for k, d in (("PSNR", 2), ("SSIM", 3)))
        lines.append(f"| {row.method} | {row.direction} | {steps} | {psnr} | {ssim} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    d = DemoSettings()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--models", nargs="+", choices=sorted(Model.registry), help="(default: every registered one)"
    )
    p.add_argument("--seconds", type=float, default=600.0, help="wall time per run (default: 600)")
    p.add_argument(
        "--calibrate", type=float, help="seconds of each calibration run (default: 5%% of --seconds)"
    )
    p.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1], help="data and training seeds (default: 0 1)"
    )
    p.add_argument("--size", type=int, default=d.size, help=f"image size (default: {d.size})")
    p.add_argument("--ngf", type=int, default=d.ngf, help=f"generator width (default: {d.ngf})")
    p.add_argument("--ndf", type=int, default=d.ndf, help=f"discriminator width (default: {d.ndf})")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--out", type=Path, default=Path("methods_output"), help="output folder")
    args = p.parse_args(argv)
    args.models = args.models or sorted(Model.registry, key=lambda m: (m != "cycle_gan", m))
    args.calibrate = args.calibrate or max(5.0, args.seconds / 20)
    if args.seconds <= 0 or args.calibrate <= 0:
        p.error("--seconds and --calibrate must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        records = [one_run(args, model, seed) for seed in args.seeds for model in args.models]
    except CycleGANError as err:
        print(f"methods: error: {err}", file=sys.stderr)
        return 2
    table = summary(records, args)
    table.save(args.out / "methods.json")
    text = markdown(table)
    atomic_write_text(args.out / "methods.md", text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
