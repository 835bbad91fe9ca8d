"""What a paired evaluation looked at: input | output | target, one row per test image, in one picture."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

from PIL import Image

from cyclegan.files import atomic_write

ROWS = 8  # test images shown per direction
HEIGHT = 128  # pixels per row: every image is scaled to it, its aspect ratio kept
GAP = 4

Triplet = tuple[Image.Image, Image.Image, Image.Image]  # input, output, target


def triplets_image(rows: Sequence[Triplet], height: int = HEIGHT) -> Image.Image:
    """The rows on a white canvas, each image scaled to ``height`` pixels."""
    scaled = [[_to_height(image, height) for image in row] for row in rows]
    widths = [sum(image.width for image in row) + GAP * (len(row) - 1) for row in scaled]
    canvas = Image.new("RGB", (max(widths), len(rows) * (height + GAP) - GAP), "white")
    for i, row in enumerate(scaled):
        x = 0
        for image in row:
            canvas.paste(image, (x, i * (height + GAP)))
            x += image.width + GAP
    return canvas


def _to_height(image: Image.Image, height: int) -> Image.Image:
    width = max(1, round(image.width * height / image.height))
    return image.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)


def save_triplets(path: Path, rows: Sequence[Triplet]) -> None:
    image = triplets_image(rows)
    atomic_write(path, partial(image.save, format="PNG"))
