"""Quality benchmark: train a CycleGAN on horse2zebra at a small resolution and step budget, then score it
with ``cyclegan.evaluation.scoring.evaluate`` beside the no-op baseline (the untranslated input).

The learning rate is constant for the first half of the budget and decays linearly over the second, as the
paper's schedule does over its 200 epochs. The test images are resized to the training resolution first,
so the translations are scored at the size the model was trained on. Prints the table, the training wall
time and steps/s, and writes OUT/quality.json (the evaluation's translations go to OUT/eval/).

    .venv/bin/python benchmarks/quality.py --size 64 --steps 20000 --device cuda --out runs/quality_64px
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from cyclegan.config import TrainConfig
from cyclegan.data.datasets import SPLITS, list_images
from cyclegan.data.images import load_image
from cyclegan.devices import resolve_device
from cyclegan.errors import CycleGANError
from cyclegan.evaluation.results import ResultTable
from cyclegan.evaluation.scoring import evaluate, format_table
from cyclegan.files import atomic_write, atomic_write_text
from cyclegan.networks import GENERATORS
from cyclegan.training.loop import train

DEFAULT_DATAROOT = Path(__file__).resolve().parents[2] / "shared/datasets/horse2zebra"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--dataroot", type=Path, default=DEFAULT_DATAROOT, help="horse2zebra (default: %(default)s)"
    )
    p.add_argument("--size", type=int, default=64, help="training and test resolution (default: 64)")
    p.add_argument("--steps", type=int, default=20000, help="training steps (default: 20000)")
    p.add_argument("--ngf", type=int, default=64, help="generator width (default: 64)")
    p.add_argument("--ndf", type=int, default=64, help="discriminator width (default: 64)")
    p.add_argument(
        "--netG", choices=sorted(GENERATORS), default="resnet_9blocks", help="default: resnet_9blocks"
    )
    p.add_argument("--batch_size", type=int, default=1, help="default: 1")
    p.add_argument("--num_workers", type=int, default=2, help="data loader workers (default: 2)")
    p.add_argument("--seed", type=int, default=0, help="default: 0")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--out", type=Path, help="output folder (default: runs/quality_<size>px_<steps>steps)")
    args = p.parse_args(argv)
    if args.out is None:
        args.out = Path("runs") / f"quality_{args.size}px_{args.steps}steps"
    return args


def check_dataset(root: Path) -> None:
    """Fail before training, with the fix, rather than after minutes of work."""
    for split in SPLITS:
        if not (root / split).is_dir() or not list_images(root / split):
            raise CycleGANError(
                f"horse2zebra not found: {root / split} is missing or has no images; pass --dataroot DIR "
                "(a folder with trainA/, trainB/, testA/, testB/), e.g. from `cyclegan download dataset "
                "horse2zebra`"
            )


def schedule(steps: int, batches_per_epoch: int) -> tuple[int, int]:
    """(n_epochs, n_epochs_decay) summing to about the budget: half at the initial rate, half decaying.

    The rate changes once per epoch, so budgets under two epochs train at the initial rate throughout.
    """
    epochs = max(2, round(steps / batches_per_epoch))
    return math.ceil(epochs / 2), epochs // 2


def train_config(args: argparse.Namespace) -> TrainConfig:
    longest = max(len(list_images(args.dataroot / "trainA")), len(list_images(args.dataroot / "trainB")))
    n_epochs, n_epochs_decay = schedule(args.steps, math.ceil(longest / args.batch_size))
    return TrainConfig.create(
        dataroot=str(args.dataroot),
        checkpoints_dir=str(args.out),
        name="run",
        n_epochs=n_epochs,
        n_epochs_decay=n_epochs_decay,
        max_steps=args.steps,
        batch_size=args.batch_size,
        load_size=round(args.size * 286 / 256),
        crop_size=args.size,
        num_workers=args.num_workers,
        seed=args.seed,
        device=args.device,
        print_freq=max(1, min(100, args.steps // 20)),
        sample_freq=max(1, args.steps // 10),
        save_latest_freq=max(1, args.steps // 4),
        save_epoch_freq=10**6,
        ngf=args.ngf,
        ndf=args.ndf,
        netG=args.netG,
    )


def save_png(image: Image.Image, path: Path) -> None:
    image.save(path, format="PNG")


def resize_test_set(dataroot: Path, size: int, dest: Path) -> Path:
    """testA/ and testB/ resized (bicubic, as in training) to size×size PNGs under ``dest``."""
    for split in ("testA", "testB"):
        for path in list_images(dataroot / split):
            image = load_image(path).resize((size, size), Image.Resampling.BICUBIC)
            target = dest / split / path.relative_to(dataroot / split).with_suffix(".png")
            atomic_write(target, partial(save_png, image))
    return dest


def run(args: argparse.Namespace) -> dict[str, Any]:
    check_dataset(args.dataroot)
    if (args.out / "run").exists():
        raise CycleGANError(f"{args.out} already holds a benchmark run; pass another --out")
    cfg = train_config(args)
    device = resolve_device(args.device)
    start = time.perf_counter()
    trained = train(cfg)
    train_seconds = time.perf_counter() - start
    if trained.interrupted:
        raise CycleGANError(f"training stopped at step {trained.progress.step}; nothing was evaluated")
    with tempfile.TemporaryDirectory(prefix="quality-test-") as scratch:
        test_root = resize_test_set(
            args.dataroot, args.size, Path(scratch) / f"{args.dataroot.name}_{args.size}px"
        )
        start = time.perf_counter()
        evaluation = evaluate(trained.run_dir, test_root, out_dir=args.out / "eval", device=device)
        eval_seconds = time.perf_counter() - start
    steps = trained.progress.step
    return {
        "benchmark": "quality: horse2zebra",
        "dataroot": str(args.dataroot),
        "size": args.size,
        "steps": steps,
        "schedule": f"lr {cfg.lr}: n_epochs {cfg.model.n_epochs} constant, n_epochs_decay"
        f" {cfg.model.n_epochs_decay} "
        f"linear decay, max_steps {cfg.max_steps}",
        "test_images": f"testA/testB resized (bicubic) to {args.size}x{args.size} PNG before translation",
        "train_config": cfg.to_dict(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.machine()} CPU, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "train_seconds": round(train_seconds, 1),
        "steps_per_second": round(steps / train_seconds, 3),
        "eval_seconds": round(eval_seconds, 1),
        "evaluation": evaluation,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except CycleGANError as error:
        print(f"quality: error: {error}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=2, ensure_ascii=False, default=ResultTable.to_dict)
    atomic_write_text(args.out / "quality.json", text + "\n")
    print(format_table(result["evaluation"]))
    print(f"\nTest images: {result['test_images']}; schedule: {result['schedule']}")
    print(
        f"Training: {result['steps']} steps in {result['train_seconds']} s "
        f"({result['steps_per_second']} steps/s) on {result['device']}; evaluation {result['eval_seconds']} s"
    )
    print(f"Result: {args.out / 'quality.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
