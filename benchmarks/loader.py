"""Data-loader throughput alone: JPEG decode, resize to 286, random 256 crop, flip, to tensor, as training
loads them (``cyclegan.training.loop.epoch_loader``, with its seeded per-item randomness).

One training item is an A image and a B image, so a loader delivering N items/s decodes 2N images/s. The
per-core rate is measured with the loading done in this process (``--num_workers 0``), then with workers;
``would_feed`` extrapolates the per-core rate to a machine with ``--cores`` cores, one of them left to the
training process.

    PYTHONPATH=src python3 benchmarks/loader.py --out loader.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from cyclegan.config import TrainConfig
from cyclegan.distributed import World
from cyclegan.files import atomic_write_text
from cyclegan.training.loop import epoch_loader, training_data
from cyclegan.training.runs import Progress

DEFAULT_DATAROOT = Path(__file__).resolve().parents[2] / "shared/datasets/horse2zebra"


def items_per_second(cfg: TrainConfig, items: int) -> float:
    """Items/s of the loader over ``items`` items, after its workers have started and made a first batch."""
    dataset, _ = training_data(cfg)
    loader = iter(epoch_loader(dataset, cfg, Progress(), World()))
    next(loader)
    began, count = time.perf_counter(), 0
    for batch in loader:
        count += len(batch["A"])
        if count >= items:
            break
    return count / (time.perf_counter() - began)


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)  # as in loader workers: the per-core rate is what is measured
    cfg = TrainConfig.create(dataroot=str(args.dataroot), seed=0)  # reference preprocessing at 256 px
    rates = {}
    for workers in (0, cfg.num_workers):
        cfg.num_workers = workers
        rates[workers] = items_per_second(cfg, args.items)
        print(f"{workers} workers: {rates[workers]:.1f} items/s", file=sys.stderr, flush=True)
    per_core = rates[0]
    feeding_workers = max(1, args.cores - 1)
    return {
        "what": "UnpairedDataset items/s (an item: an A and a B image decoded, resized, cropped, flipped)",
        "dataroot": str(args.dataroot),
        "preprocess": f"{cfg.preprocess} {cfg.load_size}->{cfg.crop_size}, flip",
        "cpu_cores_here": os.cpu_count(),
        "items_per_s_one_core": round(per_core, 1),
        "images_per_s_one_core": round(2 * per_core, 1),
        "items_per_s_default_workers": round(rates[cfg.num_workers], 1),
        "default_workers": cfg.num_workers,
        "extrapolated_cores": args.cores,
        "extrapolated_items_per_s": round(per_core * feeding_workers, 1),
        "would_feed": f"{args.target} items/s: {per_core * feeding_workers >= args.target}"
        f" with --num_workers {feeding_workers} (needs {args.target / per_core:.1f} workers)",
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataroot", type=Path, default=DEFAULT_DATAROOT, help="default: %(default)s")
    p.add_argument("--items", type=int, default=200, help="items timed per setting (default: 200)")
    p.add_argument("--cores", type=int, default=16, help="cores of the machine to extrapolate to")
    p.add_argument("--target", type=float, default=150.0, help="items/s the training would consume")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    print(json.dumps(result, indent=2))
    if args.out:
        atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
