"""Memory and time of exact tiled translation against a whole-image forward, on CPU.

Each measurement runs in a fresh child process that builds a randomly initialised generator, makes a
SIZE×SIZE input, translates it, and reports its peak resident memory (``ru_maxrss``) and the wall time of
the translation alone. ``baseline_rss`` is the peak before translating (Python, PyTorch, weights, input), so
``peak_rss - baseline_rss`` is what the translation added; ``estimate`` is
``cyclegan.translation.tiling.estimate_memory`` for the same run less the input, which the baseline holds
(tensor bytes only), to show how close the derived estimate comes.
Prints one JSON object per run and writes them all to --out.

    .venv/bin/python benchmarks/tiling.py --size 4096 --ngf 64 --compare_size 2048 --out runs/tiling.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cyclegan.networks import GENERATORS


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=4096, help="image side for the tiled run (default: 4096)")
    p.add_argument("--ngf", type=int, default=64, help="generator width (default: 64)")
    p.add_argument(
        "--netG", choices=sorted(GENERATORS), default="resnet_9blocks", help="default: resnet_9blocks"
    )
    p.add_argument("--tile", type=int, default=256, help="tile side in pixels (default: 256)")
    p.add_argument(
        "--compare_size",
        type=int,
        default=2048,
        help="also run whole-image and tiled at this side, for comparison (0: skip; default: 2048)",
    )
    p.add_argument("--whole", action="store_true", help="also run whole-image at --size (needs the memory)")
    p.add_argument("--out", type=Path, help="write the results as a JSON list here")
    p.add_argument("--child", nargs=2, metavar=("MODE", "SIZE"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def measure(args: argparse.Namespace, mode: str, size: int) -> dict[str, Any]:
    """Translate once in this process; call only in a fresh child, so ru_maxrss is this run's peak."""
    import torch

    from cyclegan.config import NetConfig
    from cyclegan.networks import build_generator
    from cyclegan.translation.tiling import estimate_memory, translate_tiled

    torch.manual_seed(0)
    generator = build_generator(NetConfig(ngf=args.ngf, netG=args.netG)).eval()
    x = torch.empty(1, 3, size, size).uniform_(-1, 1)  # one allocation: no freed temporaries in the peak
    tile = args.tile if mode == "tiled" else None
    estimate = estimate_memory(generator, size, size, tile) - x.numel() * x.element_size()
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    with torch.inference_mode():
        y = generator(x) if tile is None else translate_tiled(generator, x, tile)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "mode": mode,
        "size": size,
        "netG": args.netG,
        "ngf": args.ngf,
        "tile": tile,
        "seconds": round(seconds, 2),
        "peak_rss": peak,
        "baseline_rss": baseline,
        "added_rss": peak - baseline,
        "estimate": estimate,
        "output_mean": float(y.mean()),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
    }


def run_child(argv: Sequence[str], mode: str, size: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, *argv, "--child", mode, str(size)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{mode} at {size}px failed:\n{done.stderr.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.child:
        print(json.dumps(measure(args, args.child[0], int(args.child[1]))))
        return 0
    runs = [("tiled", args.size)]
    if args.whole:
        runs.append(("whole", args.size))
    if args.compare_size:
        runs += [("whole", args.compare_size), ("tiled", args.compare_size)]
    results = []
    for mode, size in runs:
        results.append(run_child(argv, mode, size))
        print(json.dumps(results[-1]), flush=True)
    if args.out:
        from cyclegan.files import atomic_write_text

        atomic_write_text(args.out, json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
