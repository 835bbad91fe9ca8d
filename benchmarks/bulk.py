"""Bulk translation speed: ``translate_files`` (decode ahead in threads, same-size batches, write behind)
against the previous one-by-one loop, on horse2zebra test images replicated to ``--count`` files.

Runs alternate between the two (old, new, new, old, ...) so drifting machine load hits both alike; the
generator is the paper's (resnet_9blocks, ngf 64) with random weights, which cost the same time as trained
ones. Also times decoding alone with DataLoader worker processes and with a thread pool, the choice
``translate_files`` makes. Prints JSON (and writes it to ``--json``).

    PYTHONPATH=src .venv/bin/python benchmarks/bulk.py --count 500 --device cpu --json bulk.json
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from cyclegan.config import NetConfig
from cyclegan.data.datasets import list_images
from cyclegan.data.images import load_image, to_tensor
from cyclegan.devices import resolve_device
from cyclegan.errors import CycleGANError
from cyclegan.files import atomic_write, atomic_write_text
from cyclegan.networks import GENERATORS, build_generator
from cyclegan.translation.bulk import decode_ahead, default_batch_size, default_workers, translate_files
from cyclegan.translation.translator import Translator

DEFAULT_DATAROOT = Path(__file__).resolve().parents[2] / "shared/datasets/horse2zebra"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataroot", type=Path, default=DEFAULT_DATAROOT, help="default: %(default)s")
    p.add_argument("--count", type=int, default=500, help="images per run, replicated from testA+testB")
    p.add_argument("--rounds", type=int, default=2, help="runs of each method, alternating (default: 2)")
    p.add_argument("--batch_size", type=int, help="translate_files batch size (default: its own)")
    p.add_argument("--num_workers", type=int, help="translate_files threads (default: its own)")
    p.add_argument("--ngf", type=int, default=64, help="generator width (default: 64)")
    p.add_argument(
        "--netG", choices=sorted(GENERATORS), default="resnet_9blocks", help="default: resnet_9blocks"
    )
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N (default: cpu)")
    p.add_argument(
        "--stand_in_ms",
        type=float,
        help="replace the generator by one that waits this long per image without using the CPU, as a "
        "model on a GPU does: measures how much decoding and writing the pipeline hides",
    )
    p.add_argument("--json", type=Path, help="also write the result here")
    return p.parse_args(argv)


def replicate(dataroot: Path, count: int, dest: Path) -> list[Path]:
    """``count`` copies of testA+testB under new names, so no file is read from the page cache twice
    in a row more than the originals would be."""
    sources = list_images(dataroot / "testA") + list_images(dataroot / "testB")
    if not sources:
        raise CycleGANError(f"no test images under {dataroot}; pass --dataroot (a horse2zebra folder)")
    dest.mkdir(parents=True)
    copies = [dest / f"{i:05d}{sources[i % len(sources)].suffix}" for i in range(count)]
    for i, copy in enumerate(copies):
        shutil.copyfile(sources[i % len(sources)], copy)
    return copies


def one_by_one(translator: Translator, folder: Path, out: Path) -> None:
    """The previous translate loop: decode, translate and write each image in turn, in one thread."""
    for src in list_images(folder):
        image = load_image(src, translator.in_channels)
        result = translator(image)
        dst = (out / src.relative_to(folder)).with_suffix(".png")
        atomic_write(dst, partial(result.save, format="PNG"))


class StandIn(Translator):
    """A model that costs ``seconds`` per image and no CPU, like a generator running on a GPU."""

    def __init__(self, generator: torch.nn.Module, config: NetConfig, seconds: float) -> None:
        super().__init__(generator, config)
        self.seconds = seconds

    def translate_tensor(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds * (len(x) if x.dim() == 4 else 1))
        return x.clone()


def timed(run: Callable[[], object], count: int) -> float:
    start = time.perf_counter()
    run()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return count / (time.perf_counter() - start)


def decode_rates(paths: list[Path], workers: int) -> dict[str, float]:
    """Images/s decoding to [-1, 1] tensors alone: the loop, DataLoader processes, and a thread pool."""

    def processes() -> None:
        for _ in DataLoader(_Decoded(paths), batch_size=None, num_workers=workers):
            pass

    def threads() -> None:
        for _ in decode_ahead(paths, 3, workers, 4 * workers):
            pass

    def serial() -> None:
        for path in paths:
            to_tensor(load_image(path))

    return {
        "serial": round(timed(serial, len(paths)), 1),
        f"dataloader_{workers}_processes": round(timed(processes, len(paths)), 1),
        f"threads_{workers}": round(timed(threads, len(paths)), 1),
    }


class _Decoded(torch.utils.data.Dataset):
    """Decoding in DataLoader workers, as a process-based translate_files would do it."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return to_tensor(load_image(self.paths[i]))


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = resolve_device(args.device)
    torch.manual_seed(0)
    config = NetConfig(ngf=args.ngf, netG=args.netG)
    generator = build_generator(config).eval()
    translator = (
        Translator(generator, config, device)
        if args.stand_in_ms is None
        else StandIn(generator, config, args.stand_in_ms / 1000)
    )
    batch_size = args.batch_size or default_batch_size(device)
    workers = args.num_workers or default_workers()
    rates: dict[str, list[float]] = {"one_by_one": [], "translate_files": []}
    with tempfile.TemporaryDirectory(prefix="bulk-bench-") as scratch:
        folder = Path(scratch) / "in"
        paths = replicate(args.dataroot, args.count, folder)
        decode = decode_rates(paths, workers)
        methods: dict[str, Callable[[Path], object]] = {
            "one_by_one": lambda out: one_by_one(translator, folder, out),
            "translate_files": lambda out: translate_files(
                [folder], translator, out, batch_size=batch_size, num_workers=workers,
                show_progress=False,
            ),
        }  # fmt: skip
        for r in range(args.rounds):
            order = list(methods) if r % 2 == 0 else list(reversed(methods))
            for name in order:
                out = Path(scratch) / f"{name}_{r}"
                rates[name].append(round(timed(partial(methods[name], out), args.count), 3))
                print(f"round {r + 1}: {name} {rates[name][-1]} images/s", file=sys.stderr, flush=True)
                shutil.rmtree(out)
    median = {name: statistics.median(values) for name, values in rates.items()}
    return {
        "benchmark": "bulk translation: translate_files vs the one-by-one loop",
        "images": args.count,
        "image_size": "256x256 JPEG (horse2zebra testA+testB, replicated)",
        "model": f"{args.netG}, ngf {args.ngf}, random init"
        if args.stand_in_ms is None
        else f"stand-in: {args.stand_in_ms} ms per image, no CPU used (returns its input)",
        "batch_size": batch_size,
        "num_workers": workers,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "images_per_second": rates,
        "median_images_per_second": median,
        "speedup": round(median["translate_files"] / median["one_by_one"], 3),
        "decode_only_images_per_second": decode,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except CycleGANError as error:
        print(f"bulk: error: {error}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=2)
    if args.json:
        atomic_write_text(args.json, text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
