"""Paired data, for models that learn from true pairs (pix2pix): which B belongs with which A.

Two layouts, as the reference and its users keep them:

- *aligned*: each image holds A and B side by side, A on the left, in ``train/``, ``val/`` and ``test/``
  (the reference's ``--dataset_mode aligned``); ``--direction BtoA`` takes the right half as the input;
- *folders*: ``trainA/x.png`` belongs with ``trainB/x.png``, matched by the path below the folder without
  its suffix (so a ``.png`` label map pairs with a ``.jpg`` photo); ``--direction BtoA`` swaps the folders.

A split with both takes the aligned images. Pairs that cannot be used are skipped, each with its reason: a
file without a partner, partners of different sizes, a side-by-side image of odd width (no two equal
halves), a file that is not an image. Both images of a pair get the same random crop and flip, drawn from
the item's seed as every random choice of the unpaired dataset is, so resume stays exact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from cyclegan.config import DEFAULT_MAX_PIXELS, TrainConfig
from cyclegan.data.datasets import (
    check_crop_fits,
    domain_folders,
    eval_transform,
    list_images,
    train_transform,
    training_size,
)
from cyclegan.data.images import DECODE_ERRORS, image_size, load_image, to_mode
from cyclegan.errors import CycleGANError
from cyclegan.seeds import item_seed

ALIGNED_SPLITS = ("train", "val", "test")

Skipped = list[tuple[Path, str]]  # a file left out, and why


@dataclass(frozen=True)
class Pair:
    """The files of one (A, B) pair as the model sees them, after ``--direction``.

    ``side`` is None for two files, else ``a`` is one side-by-side image and ``side`` the index of the half
    that is the model's A (0: left, 1: right); ``b`` is then the same file.
    """

    a: Path
    b: Path
    side: int | None = None


def halves(image: Image.Image, side: int = 0) -> tuple[Image.Image, Image.Image]:
    """(A, B) of a side-by-side image: ``side`` is the index of A's half (1 swaps them, for BtoA)."""
    half, height = image.width // 2, image.height
    left, right = image.crop((0, 0, half, height)), image.crop((half, 0, 2 * half, height))
    return (left, right) if side == 0 else (right, left)


def by_stem(folder: Path, files: Iterable[Path]) -> dict[Path, Path]:
    """Files keyed by their path below ``folder`` without suffix: what pairs ``trainA/x.png`` with
    ``trainB/x.jpg``. Two files differing only in suffix are ambiguous: a one-line error names them."""
    keyed: dict[Path, Path] = {}
    for path in files:
        relative = path.relative_to(folder)
        key = relative.with_name(relative.stem)
        if key in keyed:
            raise CycleGANError(f"{keyed[key]} and {path} differ only in suffix; rename one of them")
        keyed[key] = path
    return keyed


def aligned_folder(cfg: TrainConfig, split: str) -> Path | None:
    """The folder of side-by-side images of ``split`` (``train/``...), or None when it has none."""
    if cfg.dataroot is None or cfg.domain_a is not None:
        return None
    folder = Path(cfg.dataroot) / split
    return folder if folder.is_dir() else None


def has_split(cfg: TrainConfig, split: str) -> bool:
    """Whether ``split`` has images in either layout."""
    if aligned_folder(cfg, split) is not None:
        return True
    if cfg.domain_a is not None and split != "train":  # --domain_a/--domain_b give training folders only
        return False
    return all(folder.is_dir() for folder in domain_folders(cfg, split))


def find_pairs(cfg: TrainConfig, split: str = "train") -> tuple[list[Pair], Skipped]:
    """The pairs of ``split`` and the files left out with why; only names and headers are read.

    A split without pairs at all (no such folders, or folders that share no name: unpaired data) is a
    one-line error.
    """
    folder = aligned_folder(cfg, split)
    if folder is not None:
        pairs, skipped = aligned_pairs(folder, 1 if cfg.direction == "BtoA" else 0)
    elif has_split(cfg, split):
        pairs, skipped = matched_pairs(*domain_folders(cfg, split))
    else:
        root = cfg.dataroot or "the dataroot"
        raise CycleGANError(
            f"{root} has no {split}/ folder of side-by-side A|B images, nor {split}A/ and {split}B/ folders"
            " of pairs matched by name: pix2pix trains on pairs"
        )
    if cfg.max_dataset_size is not None:
        pairs = pairs[: cfg.max_dataset_size]
    return pairs, skipped


def aligned_pairs(folder: Path, side: int) -> tuple[list[Pair], Skipped]:
    """The side-by-side images of ``folder`` as pairs (``side``: the index of A's half), and those skipped."""
    pairs, skipped = [], []
    for path in list_images(folder):
        size = image_size(path)
        problem = _size_problem(size)
        if problem is None and size is not None and size[0] % 2:
            problem = f"its width {size[0]} is odd: side by side, A and B must be halves of equal width"
        if problem is None:
            pairs.append(Pair(path, path, side))
        else:
            skipped.append((path, problem))
    if not pairs:
        raise CycleGANError(f"no usable side-by-side A|B image in {folder}" + _first(skipped))
    return pairs, skipped


def matched_pairs(folder_a: Path, folder_b: Path) -> tuple[list[Pair], Skipped]:
    """The images of ``folder_a`` with their partners of the same name in ``folder_b``, and those skipped."""
    files_a = by_stem(folder_a, list_images(folder_a))
    files_b = by_stem(folder_b, list_images(folder_b))
    common = sorted(set(files_a) & set(files_b))
    if not common:
        raise CycleGANError(
            f"{folder_a} and {folder_b} share no file name, so they hold no pairs: pix2pix learns from"
            " images of the same name in both folders, or from A|B side-by-side images in DATAROOT/train/;"
            " for unpaired images use --model cycle_gan or cut"
        )
    skipped = _unmatched(files_a, files_b, folder_b) + _unmatched(files_b, files_a, folder_a)
    pairs = []
    for key in common:
        a, b = files_a[key], files_b[key]
        size_a, size_b = image_size(a), image_size(b)
        problems = [(path, _size_problem(size)) for path, size in ((a, size_a), (b, size_b))]
        bad = [(path, problem) for path, problem in problems if problem is not None]
        if not bad and size_a != size_b:
            assert size_a is not None and size_b is not None
            bad = [
                (b, f"is {_wxh(size_b)} but its partner {a} is {_wxh(size_a)}: partners must have one size")
            ]
        if bad:
            skipped += bad
        else:
            pairs.append(Pair(a, b))
    if not pairs:
        raise CycleGANError(f"no usable pair in {folder_a} and {folder_b}" + _first(skipped))
    return pairs, sorted(skipped)


def _unmatched(files: dict[Path, Path], others: dict[Path, Path], other_folder: Path) -> Skipped:
    return [
        (path, f"has no partner of the same name in {other_folder}")
        for k, path in files.items()
        if k not in others
    ]


def _size_problem(size: tuple[int, int] | None) -> str | None:
    if size is None:
        return "not a readable image"
    if size[0] * size[1] > DEFAULT_MAX_PIXELS:
        return f"{_wxh(size)} is above the {DEFAULT_MAX_PIXELS / 1e6:.0f}-megapixel limit"
    return None


def _wxh(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def _first(skipped: Skipped) -> str:
    return f" ({skipped[0][0]}: {skipped[0][1]})" if skipped else ""


def pair_size(pair: Pair) -> tuple[int, int]:
    """(width, height) of each image of a pair, from the header."""
    size = image_size(pair.a)
    assert size is not None, "pairs are made of readable images"
    return (size[0] // 2, size[1]) if pair.side is not None else size


def scan_pairs(cfg: TrainConfig, multiple: int) -> tuple[list[Pair], Skipped, set[tuple[int, int]]]:
    """The training pairs, the files left out with why, and the sizes (height, width) the networks will see
    (as :func:`cyclegan.data.datasets.scan_domain` does for one domain)."""
    pairs, skipped = find_pairs(cfg)
    sizes = set()
    for pair in pairs:
        size = pair_size(pair)
        check_crop_fits(pair.a, size, cfg)
        sizes.add(training_size(size, cfg, multiple))
    return pairs, skipped, sizes


def load_pair(pair: Pair, channels: tuple[int, int]) -> tuple[Image.Image, Image.Image]:
    """The A and B images of a pair, converted to their channel counts; raises the decoder's error."""
    if pair.side is None:
        return load_image(pair.a, channels[0]), load_image(pair.b, channels[1])
    a, b = halves(load_image(pair.a, 3), pair.side)
    return to_mode(a, channels[0]), to_mode(b, channels[1])


class PairedDataset(Dataset):
    """Yields ``{"A", "B", "A_path", "B_path", "skipped"}`` as the unpaired dataset does, B being A's
    partner, cropped and flipped as A is. A pair that fails to decode is replaced by the next one and its
    file named in ``skipped``."""

    def __init__(self, pairs: list[Pair], cfg: TrainConfig, seed: int, multiple: int) -> None:
        net = cfg.model.net
        self.pairs, self.seed, self.channels = pairs, seed, (net.input_nc, net.output_nc)
        self.transforms = [train_transform(cfg, nc, multiple) for nc in self.channels]
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng(item_seed(self.seed, self.epoch, index))
        draws = int(rng.integers(2**62))
        skipped: list[str] = []
        for offset in range(len(self.pairs)):
            pair = self.pairs[(index + offset) % len(self.pairs)]
            try:
                images = load_pair(pair, self.channels)
            except DECODE_ERRORS:
                skipped.append(str(pair.a if pair.side is not None or not _decodes(pair.a) else pair.b))
                continue
            a, b = (_seeded(t, image, draws) for t, image in zip(self.transforms, images, strict=True))
            return {"A": a, "B": b, "A_path": str(pair.a), "B_path": str(pair.b), "skipped": skipped}
        raise CycleGANError(f"no pair in {self.pairs[0].a.parent} could be decoded")


def _seeded(transform: Callable[[Image.Image], torch.Tensor], image: Image.Image, seed: int) -> torch.Tensor:
    """``transform(image)`` with its random draws from ``seed``: both images of a pair have one size, so
    they draw the same crop and flip."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return transform(image)


def _decodes(path: Path) -> bool:
    try:
        load_image(path)
    except DECODE_ERRORS:
        return False
    return True


def sample_pairs(cfg: TrainConfig, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed handful of true pairs for sample grids and health probes, from the test split (or val/)
    when there is one, else the training pairs; each image resized and centre-cropped to ``crop_size``."""
    pairs = next((p for s in ("test", "val") if has_split(cfg, s) and (p := _pairs_or_none(cfg, s))), None)
    pairs = pairs or find_pairs(cfg)[0]
    channels = (cfg.model.net.input_nc, cfg.model.net.output_nc)
    transforms = [eval_transform(cfg.crop_size, nc) for nc in channels]
    a, b = [], []
    for pair in pairs:
        try:
            images = load_pair(pair, channels)
        except DECODE_ERRORS:
            continue
        a.append(transforms[0](images[0]))
        b.append(transforms[1](images[1]))
        if len(a) == count:
            break
    if not a:
        raise CycleGANError(f"no readable pair in {pairs[0].a.parent} for the sample grids")
    return torch.stack(a), torch.stack(b)


def _pairs_or_none(cfg: TrainConfig, split: str) -> list[Pair] | None:
    try:
        return find_pairs(cfg, split)[0]
    except CycleGANError:
        return None
