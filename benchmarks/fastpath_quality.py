"""Does the fast path train as well? The demo's day/night model trained on the same number of images with
the exact arithmetic (fp32, batch 1) and with a fast path, each scored by PSNR/SSIM against the known
translations (``cyclegan.demo.score``), beside the training speed of each.

GAN training varies from seed to seed, so with several ``--seeds`` each arm is run once per seed and the
seed-to-seed spread of the exact arm is the yardstick for the gap between the arms. Runs already in ``--out``
are reused (finished) or resumed, so several fast arms can share one set of exact runs.

    PYTHONPATH=src python3 benchmarks/fastpath_quality.py --quick --out runs/fastpath_quick    # ~3 min
    PYTHONPATH=src python3 benchmarks/fastpath_quality.py --seeds 0 1 --out runs/fastpath      # ~35 min
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cyclegan.config import COMPILE_MODES, DEMO_TRAIN_IMAGES, PRECISIONS, DemoSettings, TrainConfig
from cyclegan.data.demo_scenes import make_demo_dataset
from cyclegan.demo import score
from cyclegan.devices import resolve_device
from cyclegan.errors import CycleGANError
from cyclegan.files import atomic_write_text
from cyclegan.training.loop import train


def arm_config(args: argparse.Namespace, dataroot: Path, seed: int, fast: bool) -> TrainConfig:
    """The demo's training config for ``args.images`` images; the fast arm differs only in how it runs."""
    settings = DemoSettings(out=args.out, steps=args.images, size=args.size, seed=seed, device=args.device)
    cfg = settings.train_config(dataroot)  # epochs of DEMO_TRAIN_IMAGES: one schedule for every batch
    cfg.name = f"exact_seed{seed}"
    cfg.sample_freq = cfg.save_latest_freq = 10**9
    if fast:
        batch = args.batch_size
        layout = "_channels_last" if args.channels_last else ""
        compiled = f"_compile_{args.compile}" if args.compile != "none" else ""
        cfg.name = f"fast_{args.precision}_b{batch}{layout}{compiled}_seed{seed}"
        cfg = dataclasses.replace(
            cfg,
            precision=args.precision,
            channels_last=args.channels_last,
            compile=args.compile,
            batch_size=batch,
            max_steps=-(-args.images // batch),
            print_freq=max(1, cfg.print_freq // batch),
        )
    else:
        cfg.precision = "fp32"
    return cfg


def run_arm(cfg: TrainConfig, dataroot: Path) -> dict[str, Any]:
    """Train (or finish, or reuse: an arm is deterministic for its seed) one arm and score it; the speed is
    the run's own training time, start-up and scoring left out."""
    run_dir = Path(cfg.checkpoints_dir) / cfg.name
    result = train(cfg, run_dir if run_dir.exists() else None, show_progress=False, report=False)
    seconds = result.progress.seconds
    scores = score(result.run_dir, dataroot, resolve_device(cfg.device))
    cyclegan = {d: scores.row("CycleGAN", d).scores for d in ("A→B", "B→A")}
    images = result.progress.step * cfg.batch_size
    return {
        "name": cfg.name,
        "precision": cfg.precision,
        "channels_last": cfg.channels_last,
        "compile": cfg.compile,
        "batch_size": cfg.batch_size,
        "steps": result.progress.step,
        "images": images,
        "train_seconds": round(seconds, 1),
        "images_per_s": round(images / seconds, 2),
        **{
            f"{metric} {d}": _rounded(row[metric])
            for d, row in cyclegan.items()
            for metric in ("PSNR", "SSIM")
        },
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means per arm, the gap between the arms, and the exact arm's seed-to-seed spread."""
    metrics = [k for k in rows[0] if k.startswith(("PSNR", "SSIM"))] + ["images_per_s"]
    arms: dict[str, dict[str, Any]] = {}
    for arm in ("exact", "fast"):
        mine = [r for r in rows if r["name"].startswith(arm)]
        arms[arm] = {m: round(statistics.mean(r[m] for r in mine), 4) for m in metrics}
        if len(mine) > 1:
            arms[arm]["seed_spread"] = {
                m: round(max(r[m] for r in mine) - min(r[m] for r in mine), 4) for m in metrics
            }
    gap = {m: round(arms["fast"][m] - arms["exact"][m], 4) for m in metrics}
    speedup = round(arms["fast"]["images_per_s"] / arms["exact"]["images_per_s"], 3)
    return {"arms": arms, "fast_minus_exact": gap, "speedup": speedup}


def format_table(rows: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    keys = [k for k in rows[0] if k.startswith(("PSNR", "SSIM"))]
    lines = [f"{'run':<16}{'images/s':>10}" + "".join(f"{k:>12}" for k in keys)]
    for r in rows:
        lines.append(f"{r['name']:<16}{r['images_per_s']:>10.2f}" + "".join(f"{r[k]:>12.3f}" for k in keys))
    gap = summary["fast_minus_exact"]
    lines.append(
        f"{'fast - exact':<16}{summary['speedup']:>9.2f}x" + "".join(f"{gap[k]:>12.3f}" for k in keys)
    )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, help=f"training images per arm (default: {DemoSettings.steps})")
    p.add_argument("--size", type=int, default=DemoSettings.size, help="image size (default: %(default)s)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per arm per seed (default: 0)")
    p.add_argument("--precision", choices=PRECISIONS[1:], default="bf16", help="fast arm (default: bf16)")
    p.add_argument("--channels_last", action="store_true", help="fast arm: channels-last layout")
    p.add_argument("--compile", choices=COMPILE_MODES, default="none", help="fast arm (default: none)")
    p.add_argument("--batch_size", type=int, default=1, help="fast arm's batch (default: 1)")
    p.add_argument("--device", default="cpu", help="default: cpu")
    p.add_argument("--quick", action="store_true", help=f"{DEMO_TRAIN_IMAGES} images per arm, one seed")
    p.add_argument("--out", type=Path, required=True, help="output folder (data, runs, fastpath.json)")
    args = p.parse_args(argv)
    if args.images is None:
        args.images = DEMO_TRAIN_IMAGES if args.quick else DemoSettings.steps
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        dataroot = make_demo_dataset(args.out / "data", seed=0, size=args.size)
        rows = []
        for seed in args.seeds:
            for fast in (False, True):
                cfg = arm_config(args, dataroot, seed, fast)
                print(f"training {cfg.name}...", file=sys.stderr, flush=True)
                rows.append(run_arm(cfg, dataroot))
    except CycleGANError as err:
        print(f"fastpath_quality: error: {err}", file=sys.stderr)
        return 2
    summary = summarise(rows)
    print(format_table(rows, summary))
    result = {"settings": {k: str(v) for k, v in vars(args).items()}, "runs": rows, **summary}
    atomic_write_text(args.out / "fastpath.json", json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
