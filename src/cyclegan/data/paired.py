"""Paired data, for models that learn from true pairs (pix2pix): which B belongs with which A.

Two layouts, as the reference and its users keep them:

- *aligned*: each image holds A and B side by side, A on the left, in ``train/``, ``val/`` and ``test/``
  (the reference's ``--dataset_mode aligned``); ``--direction BtoA`` takes the right half as the input;
- *folders*: ``trainA/x.png`` belongs with ``trainB/x.png``, matched by the path below the folder without
  its suffix (so a ``.png`` label map pairs with a ``.jpg`` photo); ``--direction BtoA`` swaps the folders.
  Two volumes of one name pair slice by slice.

A split with both takes the aligned images. Pairs that cannot be used are skipped, each with its reason: a
file without a partner, partners of different sizes or slice counts, a side-by-side image of odd width (no
two equal halves) or a volume, a file that is not an image. Both images of a pair get the same random crop
and flip, drawn from the item's seed as every random choice of the unpaired dataset is, so resume stays
exact.

The two sides of the pairs are two :class:`~cyclegan.data.datasets.Domain` objects, item i of one being the
partner of item i of the other, so paired data takes the same lossless path as unpaired data: each domain's
mapping to [-1, 1] (:mod:`cyclegan.data.intensity`) is resolved from its files' headers, and 16-bit, float
and medical pairs are mapped side by side, then cropped and flipped as one tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from cyclegan.config import DEFAULT_MAX_PIXELS, TrainConfig
from cyclegan.data import formats
from cyclegan.data.datasets import (
    Domain,
    check_crop_fits,
    domain_folders,
    eval_transform,
    list_images,
    tensor_transform,
    train_transform,
    training_size,
)
from cyclegan.data.formats import Half, Header, Item
from cyclegan.data.images import DECODE_ERRORS, load_image, to_mode, to_tensor
from cyclegan.data.intensity import Intensities
from cyclegan.errors import CycleGANError, first_line
from cyclegan.seeds import item_seed

ALIGNED_SPLITS = ("train", "val", "test")

Skipped = list[tuple[Path, str]]  # a file left out, and why
T = TypeVar("T")


@dataclass(frozen=True)
class Pair:
    """The two images of one (A, B) pair as the model sees them, after ``--direction``: two files, two
    slices of volumes, or the two halves of one side-by-side image; with their files' headers."""

    a: Item
    b: Item
    header_a: Header
    header_b: Header


def by_stem(folder: Path, files: Iterable[Path]) -> dict[Path, Path]:
    """Files keyed by their path below ``folder`` without suffix: what pairs ``trainA/x.png`` with
    ``trainB/x.jpg``. Two files differing only in suffix are ambiguous: a one-line error names them."""
    keyed: dict[Path, Path] = {}
    for path in files:
        relative = path.relative_to(folder)
        key = relative.with_name(formats.stem(relative))
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
        pairs, skipped = aligned_pairs(folder, 1 if cfg.direction == "BtoA" else 0, cfg.slice_axis)
    elif has_split(cfg, split):
        pairs, skipped = matched_pairs(*domain_folders(cfg, split), axis=cfg.slice_axis)
    else:
        root = cfg.dataroot or "the dataroot"
        raise CycleGANError(
            f"{root} has no {split}/ folder of side-by-side A|B images, nor {split}A/ and {split}B/ folders"
            " of pairs matched by name: pix2pix trains on pairs"
        )
    if cfg.max_dataset_size is not None:
        pairs = pairs[: cfg.max_dataset_size]
    return pairs, skipped


def aligned_pairs(folder: Path, side: int, axis: int = 2) -> tuple[list[Pair], Skipped]:
    """The side-by-side images of ``folder`` as pairs (``side``: the index of A's half), and those skipped."""
    pairs, skipped = [], []
    for path in list_images(folder):
        found = _probe(path, axis, side_by_side=True)
        if isinstance(found, str):
            skipped.append((path, found))
        else:
            pairs.append(Pair(Half(path, side), Half(path, 1 - side), found, found))
    if not pairs:
        raise CycleGANError(f"no usable side-by-side A|B image in {folder}" + _first(skipped))
    return pairs, skipped


def matched_pairs(folder_a: Path, folder_b: Path, axis: int = 2) -> tuple[list[Pair], Skipped]:
    """The images of ``folder_a`` with their partners of the same name in ``folder_b`` (two volumes: slice
    by slice), and those skipped."""
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
        header_a, header_b = _probe(a, axis), _probe(b, axis)
        if isinstance(header_a, str) or isinstance(header_b, str):
            skipped += [(path, why) for path, why in ((a, header_a), (b, header_b)) if isinstance(why, str)]
        elif header_a.size != header_b.size:
            sizes = f"{_wxh(header_b.size)} but its partner {a} is {_wxh(header_a.size)}"
            skipped.append((b, f"is {sizes}: partners must have one size"))
        elif header_a.slices != header_b.slices:
            slices = f"{header_b.slices} slices but its partner {a} has {header_a.slices}"
            skipped.append((b, f"has {slices}: partners must have as many"))
        else:
            items = zip(formats.items(a, header_a), formats.items(b, header_b), strict=True)
            pairs += [Pair(x, y, header_a, header_b) for x, y in items]
    if not pairs:
        raise CycleGANError(f"no usable pair in {folder_a} and {folder_b}" + _first(skipped))
    return pairs, sorted(skipped)


def _probe(path: Path, axis: int, side_by_side: bool = False) -> Header | str:
    """A file's header, or why it cannot be used (as one image of a pair, or as a pair side by side)."""
    try:
        header = formats.probe(path, axis)
    except formats.UnreadableImage as err:
        return str(err).removeprefix(f"{path}: ")
    width, height = header.size
    if width * height > DEFAULT_MAX_PIXELS:
        return f"{_wxh(header.size)} is above the {DEFAULT_MAX_PIXELS / 1e6:.0f}-megapixel limit"
    if side_by_side and formats.is_volume(header):
        return "a volume cannot hold side-by-side A|B images; keep A and B in trainA/ and trainB/"
    if side_by_side and width % 2:
        return f"its width {width} is odd: side by side, A and B must be halves of equal width"
    return header


def _unmatched(files: dict[Path, Path], others: dict[Path, Path], other_folder: Path) -> Skipped:
    return [
        (path, f"has no partner of the same name in {other_folder}")
        for k, path in files.items()
        if k not in others
    ]


def _wxh(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def _first(skipped: Skipped) -> str:
    return f" ({skipped[0][0]}: {skipped[0][1]})" if skipped else ""


def pair_size(pair: Pair) -> tuple[int, int]:
    """(width, height) of each image of a pair, from the header."""
    width, height = pair.header_a.size
    return (width // 2, height) if isinstance(pair.a, Half) else (width, height)


def pair_domains(
    pairs: list[Pair], channels: tuple[int, int], axis: int, intensities: Intensities | None = None
) -> tuple[Domain, Domain]:
    """The A and B sides of ``pairs`` as two domains, item i of one the partner of item i of the other;
    with ``intensities``' mappings (as resolved for training), else the 8-bit rule until they are."""
    mapping = intensities or Intensities()
    sides = ([(pair.a, pair.header_a) for pair in pairs], [(pair.b, pair.header_b) for pair in pairs])
    a, b = (
        Domain([item for item, _ in side], nc, intensity, [*{_file(i): h for i, h in side}.items()], axis)
        for side, nc, intensity in zip(sides, channels, (mapping.a, mapping.b), strict=True)
    )
    return a, b


def _file(item: Item) -> Path:
    return item if isinstance(item, Path) else item.path


def scan_pairs(cfg: TrainConfig, multiple: int) -> tuple[Domain, Domain, Skipped, set[tuple[int, int]]]:
    """The training pairs as two domains, the files left out with why, and the sizes (height, width) the
    networks will see (as :func:`cyclegan.data.datasets.scan_domain` does for one domain)."""
    pairs, skipped = find_pairs(cfg)
    sizes = set()
    for pair in pairs:
        size = pair_size(pair)
        check_crop_fits(_file(pair.a), size, cfg)
        sizes.add(training_size(size, cfg, multiple))
    net = cfg.model.net
    return *pair_domains(pairs, (net.input_nc, net.output_nc), cfg.slice_axis), skipped, sizes


def read_pair(
    a: Domain, b: Domain, index: int
) -> tuple[Image.Image | torch.Tensor, Image.Image | torch.Tensor]:
    """Pair ``index`` as the transforms take it (:meth:`Domain.read`): Pillow images under the 8-bit rule (a
    side-by-side image decoded once), float tensors in [-1, 1] through a window."""
    x, y = a.paths[index], b.paths[index]
    if a.intensity.eight_bit and b.intensity.eight_bit and isinstance(x, Half) and isinstance(y, Half):
        image = load_image(x.path, 3)
        return to_mode(x.cut(image), a.channels), to_mode(y.cut(image), b.channels)
    return a.read(x), b.read(y)


class PairedDataset(Dataset):
    """Yields ``{"A", "B", "A_path", "B_path", "skipped"}`` as the unpaired dataset does, B being A's
    partner (item i of ``b``), cropped and flipped as A is. A pair that fails to decode is replaced by the
    next one and its file named in ``skipped``."""

    def __init__(self, a: Domain, b: Domain, cfg: TrainConfig, seed: int, multiple: int) -> None:
        self.a, self.b, self.cfg, self.seed = a, b, cfg, seed
        self.transforms = [train_transform(cfg, domain.channels, multiple) for domain in (a, b)]
        self.joint = tensor_transform(cfg, multiple)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.a.paths)

    @property
    def intensities(self) -> Intensities:
        """How the two sides' values map to [-1, 1]: what checkpoints and translations carry."""
        return Intensities(self.a.intensity, self.b.intensity, self.cfg.slice_axis)

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng(item_seed(self.seed, self.epoch, index))
        draws = int(rng.integers(2**62))
        skipped: list[tuple[str, str]] = []
        for offset in range(len(self)):
            i = (index + offset) % len(self)
            try:
                a, b = self._transformed(i, draws)
            except DECODE_ERRORS as err:
                skipped.append((self._culprit(i), first_line(err)))
                continue
            return {
                "A": a,
                "B": b,
                "A_path": str(self.a.paths[i]),
                "B_path": str(self.b.paths[i]),
                "skipped": skipped,
            }
        raise CycleGANError(f"no pair in {self.a.paths[0].parent} could be decoded")

    def _transformed(self, index: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The pair's tensors, both cropped and flipped alike. Two Pillow images take the 8-bit path each
        (both have one size, so they draw the same crop and flip); otherwise both sides are mapped to
        [-1, 1] first and transformed as one tensor of their channels together."""
        x, y = read_pair(self.a, self.b, index)
        if isinstance(x, Image.Image) and isinstance(y, Image.Image):
            return _seeded(self.transforms[0], x, seed), _seeded(self.transforms[1], y, seed)
        a, b = (v if isinstance(v, torch.Tensor) else to_tensor(v) for v in (x, y))
        both = _seeded(self.joint, torch.cat([a, b]), seed)
        return both[: len(a)], both[len(a) :]

    def _culprit(self, index: int) -> str:
        """The file of a pair that does not decode (A's, when both are one side-by-side image)."""
        x, y = self.a.paths[index], self.b.paths[index]
        if isinstance(x, Half) or not _decodes(self.a, x):
            return str(x)
        return str(y)


def _seeded(transform: Callable[[T], torch.Tensor], x: T, seed: int) -> torch.Tensor:
    """``transform(x)`` with its random draws from ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return transform(x)


def _decodes(domain: Domain, item: Item) -> bool:
    try:
        domain.read(item)
    except DECODE_ERRORS:
        return False
    return True


def sample_pairs(
    cfg: TrainConfig, count: int, intensities: Intensities | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed handful of true pairs for sample grids and health probes, from the test split (or val/)
    when there is one, else the training pairs; each image resized and centre-cropped to ``crop_size``,
    through the sides' mappings (``intensities``; the 8-bit rule by default)."""
    pairs = next((p for s in ("test", "val") if has_split(cfg, s) and (p := _pairs_or_none(cfg, s))), None)
    pairs = pairs or find_pairs(cfg)[0]
    net = cfg.model.net
    a, b = pair_domains(pairs, (net.input_nc, net.output_nc), cfg.slice_axis, intensities)
    transforms = [eval_transform(cfg.crop_size, domain.channels) for domain in (a, b)]
    out_a, out_b = [], []
    for index in range(len(pairs)):
        try:
            x, y = read_pair(a, b, index)
        except DECODE_ERRORS:
            continue
        out_a.append(transforms[0](x))
        out_b.append(transforms[1](y))
        if len(out_a) == count:
            break
    if not out_a:
        raise CycleGANError(f"no readable pair in {a.paths[0].parent} for the sample grids")
    return torch.stack(out_a), torch.stack(out_b)


def _pairs_or_none(cfg: TrainConfig, split: str) -> list[Pair] | None:
    try:
        return find_pairs(cfg, split)[0]
    except CycleGANError:
        return None
