"""Memory benchmark: peak training memory and step time at high resolution, fp32 and bf16, with and without
activation checkpointing, beside what ``cyclegan plan`` predicts from its small dry runs.

Batch 1 of the paper's networks of ``--model`` (resnet_9blocks, ngf/ndf 64, basic D; CUT's anti-aliased,
with its projection head) by default. Each configuration is measured as the planner measures: on CUDA the
allocator's ``max_memory_allocated`` in this process, on the CPU the peak resident size of a fresh process;
the step time is the fastest of ``--steps`` steps (after a
warm-up step at the smallest crop). The prediction comes from the planner's dry runs at ``--probe_sizes``.
Prints a table and JSON (also written to ``--out``).

    PYTHONPATH=src .venv/bin/python benchmarks/memory.py --crops 256 512 1024 --out memory.json
    PYTHONPATH=src .venv/bin/python benchmarks/memory.py --model cut --crops 256 --checkpointing off
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from cyclegan.config import TrainConfig
from cyclegan.devices import parse_memory, resolve_device
from cyclegan.files import atomic_write_text
from cyclegan.models import Model
from cyclegan.training.planner import DryRuns, GiB, Variant, plan


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument(
        "--model", default="cycle_gan", choices=sorted(Model.registry), help="(default: cycle_gan)"
    )
    p.add_argument("--crops", type=int, nargs="+", default=[256, 512, 1024], help="crop sizes to measure")
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument(
        "--checkpointing", nargs="+", default=["off", "on"], choices=["off", "on"], help="(default: both)"
    )
    p.add_argument("--steps", type=int, default=2, help="timed steps per configuration (default: 2)")
    p.add_argument("--netG", default="resnet_9blocks")
    p.add_argument("--ngf", type=int, default=64)
    p.add_argument("--ndf", type=int, default=64)
    p.add_argument("--probe_sizes", type=int, nargs="+", help="crops of the planner's dry runs")
    p.add_argument(
        "--limit",
        help="skip configurations predicted to need more than this, e.g. 20GB (default: 90%% of the device's"
        " memory, so that none is killed or swaps)",
    )
    p.add_argument("--out", type=Path, help="also write the JSON here")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = resolve_device(args.device)
    no_pool: dict[str, Any] = {"pool_size": 0} if args.model == "cycle_gan" else {}  # no image pools
    cfg = TrainConfig.create(
        args.model, device=str(device), ngf=args.ngf, ndf=args.ndf, netG=args.netG, **no_pool
    )
    variants = [Variant(c == "on", p) for p in args.precisions for c in args.checkpointing]
    limit = parse_memory(args.limit) if args.limit else int(0.9 * device_memory(device))
    rows = []
    with DryRuns(device) as runs:
        for fitted in plan(cfg, variants, args.probe_sizes, runs, translate=False):
            for crop in sorted(args.crops):
                predicted = fitted.training_bytes(crop)
                row = {
                    "crop": crop,
                    "precision": fitted.variant.precision,
                    "checkpointing": fitted.variant.checkpointing,
                    "predicted_gib": round(predicted / GiB, 3),
                    "probe_crops": [m.crop for m in fitted.measurements],
                }
                if predicted > limit:
                    row["skipped"] = f"predicted {predicted / GiB:.1f} GiB > {limit / GiB:.1f} GiB limit"
                else:
                    got = runs.train(cfg, fitted.variant, crop, steps=args.steps)
                    row |= {
                        "peak_gib": round(got.peak_bytes / GiB, 3),
                        "prediction_error_pct": round(100 * (predicted - got.peak_bytes) / got.peak_bytes, 1),
                        "step_s": round(got.seconds, 3),
                    }
                rows.append(row)
    for row in rows:  # the price of checkpointing: its step time against the same precision without it
        plain = next(
            (r for r in rows if r["crop"] == row["crop"] and r["precision"] == row["precision"]), None
        )
        if (
            row["checkpointing"]
            and "step_s" in row
            and plain
            and "step_s" in plain
            and not plain["checkpointing"]
        ):
            row["time_vs_plain"] = round(row["step_s"] / plain["step_s"], 3)
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine(),
        "device_type": device.type,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "model": {"name": args.model, "netG": args.netG, "ngf": args.ngf, "ndf": args.ndf, "batch": 1},
        "measure": "max_memory_allocated" if device.type == "cuda" else "peak RSS of a fresh process",
        "limit_gib": round(limit / GiB, 2),
        "rows": rows,
    }


def table(result: dict[str, Any]) -> str:
    lines = [
        "| crop | precision | checkpointing | peak GiB | predicted GiB | error | step s | time vs plain |",
        "|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        ratio = f"{r['time_vs_plain']:.2f}x" if "time_vs_plain" in r else ""
        saver = "on" if r["checkpointing"] else "off"
        if "skipped" in r:
            lines.append(f"| {r['crop']} | {r['precision']} | {saver} | not run: {r['skipped']} | | | | |")
            continue
        lines.append(
            f"| {r['crop']} | {r['precision']} | {saver} | {r['peak_gib']:.2f} | {r['predicted_gib']:.2f}"
            f" | {r['prediction_error_pct']:+.1f}% | {r['step_s']:.2f} | {ratio} |"
        )
    return "\n".join(lines)


def device_memory(device: torch.device) -> int:
    """The device's total memory in bytes: the GPU's, or the machine's RAM."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    result = run(args)
    print(table(result))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        atomic_write_text(args.out, text + "\n")


if __name__ == "__main__":
    main()
