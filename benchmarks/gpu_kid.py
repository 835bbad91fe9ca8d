"""FID and KID of the translations ``benchmarks/gpu_check.sh`` brings back from a GPU machine.

The GPU run trains horse2zebra for the same number of steps in fp32 and in bf16 and packs the translated test
images as ``translations_{fp32,bf16}_{AtoB,BtoA}.npz`` (the 87 MB Inception file stays here). This scores each
against the real test images of the target domain, with the protocol ``cyclegan eval`` uses, and prints a
table: bf16 becomes the CUDA default of ``--precision auto`` only if its KID is no worse than fp32's.

    .venv/bin/python benchmarks/gpu_kid.py OUT_DIR ../shared/datasets/horse2zebra
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cyclegan.data.datasets import list_images
from cyclegan.data.images import to_unit_tensor
from cyclegan.evaluation import metrics

TARGET = {"AtoB": "testB", "BtoA": "testA"}


def translations(path: Path) -> list[torch.Tensor]:
    """The packed images, decoded as PNG files would be (they are lossless uint8 arrays)."""
    with np.load(path) as packed:
        return [to_unit_tensor(Image.fromarray(packed[name])) for name in sorted(packed.files)]


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="the folder gpu_check.sh wrote")
    p.add_argument("dataroot", type=Path, help="horse2zebra, with testA/ and testB/")
    p.add_argument("--kid_subsets", type=int, default=100)
    args = p.parse_args(argv)
    inception = metrics.load_inception()
    real = {s: metrics.file_features(inception, list_images(args.dataroot / s)) for s in TARGET.values()}
    rows = []
    for precision in ("fp32", "bf16"):
        for direction, split in TARGET.items():
            path = args.out / f"translations_{precision}_{direction}.npz"
            if not path.is_file():
                continue
            images = translations(path)
            fake = metrics.inception_features(inception, images)
            kid, kid_std = metrics.kid(fake, real[split], n_subsets=args.kid_subsets)
            fid = metrics.fid(fake, real[split])
            scores = {"FID": round(fid, 2), "KID": round(kid, 4), "KID std": round(kid_std, 4)}
            rows.append({"precision": precision, "direction": direction, "images": len(images)} | scores)
    lines = "".join(json.dumps(row) + "\n" for row in rows)
    print(lines, end="")
    (args.out / "kid.jsonl").write_text(lines)


if __name__ == "__main__":
    main()
