"""Image files in, normalised tensors out: folder scanning, robust decoding, the reference's preprocessing.

Every random choice of an item (its B partner, crop, flip) is drawn from a seed derived from
(run seed, epoch, index), so an epoch can be replayed exactly from any step: that is what makes resume exact,
with or without loader workers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset, Sampler
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from cyclegan.config import TrainConfig
from cyclegan.errors import CycleGANError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


def list_images(folder: Path) -> list[Path]:
    """Image files below ``folder`` (recursively, sorted); other files and hidden ones are ignored."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CycleGANError(f"image folder not found: {folder}")
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def to_mode(image: Image.Image, channels: int) -> Image.Image:
    """Convert any decoded image to 8-bit RGB (3 channels) or L (1 channel).

    16-bit and 32-bit images are scaled to 8 bits rather than clipped; transparent pixels are composited on
    white rather than showing whatever colour they happen to store; palettes are expanded.
    """
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = float(array.max(initial=0))
        integer_peak = 65535.0 if top > 255 else 255.0
        peak = max(top, 1.0) if image.mode == "F" else integer_peak  # float: [0, 1], or scaled by its max
        image = Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "P" or image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB" if channels == 3 else "L")


def load_image(path: Path, channels: int = 3) -> Image.Image:
    """Decode, apply the EXIF orientation, convert; raises the decoder's error for a broken file."""
    with Image.open(path) as image:
        image.load()
        image = ImageOps.exif_transpose(image)
        return to_mode(image, channels)


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) after EXIF rotation, read from the header only; None if it is not an image."""
    try:
        with Image.open(path) as image:
            w, h = image.size
            orientation = image.getexif().get(0x0112, 1)
    except DECODE_ERRORS:
        return None
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def _scale_width(image: Image.Image, width: int, min_height: int) -> Image.Image:
    w, h = image.size
    if w == width and h >= min_height:
        return image
    return image.resize((width, int(max(width * h / w, min_height))), Image.BICUBIC)


def pad_to_multiple(x: torch.Tensor, base: int = 4) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad the last two dims up to a multiple of ``base`` (reflect where the image is big enough)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % base, (-w) % base
    if ph == 0 and pw == 0:
        return x, (h, w)
    mode = "reflect" if ph < h and pw < w else "replicate"
    padded = torch.nn.functional.pad(x.unsqueeze(0) if x.dim() == 3 else x, (0, pw, 0, ph), mode=mode)
    return (padded.squeeze(0) if x.dim() == 3 else padded), (h, w)


def train_transform(cfg: TrainConfig, channels: int) -> Callable[[Image.Image], torch.Tensor]:
    """The reference's training preprocessing for ``cfg.preprocess``, flip, and scaling to [-1, 1]."""
    ops: list[Callable] = []
    bicubic = InterpolationMode.BICUBIC
    if cfg.preprocess == "resize_and_crop":
        ops += [
            transforms.Resize([cfg.load_size, cfg.load_size], bicubic),
            transforms.RandomCrop(cfg.crop_size),
        ]
    elif cfg.preprocess == "crop":
        ops.append(transforms.RandomCrop(cfg.crop_size))
    elif cfg.preprocess in ("scale_width", "scale_width_and_crop"):
        ops.append(transforms.Lambda(lambda im: _scale_width(im, cfg.load_size, cfg.crop_size)))
        if cfg.preprocess == "scale_width_and_crop":
            ops.append(transforms.RandomCrop(cfg.crop_size))
    if not cfg.no_flip:
        ops.append(transforms.RandomHorizontalFlip())
    ops += [transforms.ToTensor(), transforms.Normalize([0.5] * channels, [0.5] * channels)]
    if cfg.preprocess == "none":
        ops.append(lambda x: pad_to_multiple(x)[0])
    return transforms.Compose(ops)


def eval_transform(size: int, channels: int) -> Callable[[Image.Image], torch.Tensor]:
    """Square centre view used for sample grids, so the same images can be compared across a run."""
    return transforms.Compose(
        [
            transforms.Resize(size, InterpolationMode.BICUBIC),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize([0.5] * channels, [0.5] * channels),
        ]
    )


def item_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0] >> 1)


@dataclass
class Domain:
    """The images of one domain and how to turn one of them into a tensor."""

    paths: list[Path]
    channels: int


class UnpairedDataset(Dataset):
    """Yields ``{"A", "B", "A_path", "B_path", "skipped"}``: A cycles through its folder, B is a random image
    (or B[i] with ``serial_batches``). A file that fails to decode is replaced by the next one and named in
    ``skipped`` so the training loop can warn once and count it."""

    def __init__(self, a: Domain, b: Domain, cfg: TrainConfig, seed: int) -> None:
        self.a, self.b, self.cfg, self.seed = a, b, cfg, seed
        self.transform_a = train_transform(cfg, a.channels)
        self.transform_b = train_transform(cfg, b.channels)
        self.epoch = 0

    def __len__(self) -> int:
        return max(len(self.a.paths), len(self.b.paths))

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng(item_seed(self.seed, self.epoch, index))
        if self.cfg.serial_batches:
            b_index = index % len(self.b.paths)
        else:
            b_index = int(rng.integers(len(self.b.paths)))
        skipped: list[str] = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(rng.integers(2**62)))
            a_path, a = self._load(self.a, self.transform_a, index % len(self.a.paths), skipped)
            b_path, b = self._load(self.b, self.transform_b, b_index, skipped)
        return {"A": a, "B": b, "A_path": str(a_path), "B_path": str(b_path), "skipped": skipped}

    @staticmethod
    def _load(
        domain: Domain, transform: Callable, index: int, skipped: list[str]
    ) -> tuple[Path, torch.Tensor]:
        for offset in range(len(domain.paths)):
            path = domain.paths[(index + offset) % len(domain.paths)]
            try:
                return path, transform(load_image(path, domain.channels))
            except DECODE_ERRORS:
                skipped.append(str(path))
        raise CycleGANError(f"no image in {domain.paths[0].parent} could be decoded")


class EpochSampler(Sampler[int]):
    """A seeded permutation of the dataset for each epoch (or file order), from any start position."""

    def __init__(self, size: int, seed: int, epoch: int, shuffle: bool, start: int = 0) -> None:
        self.size, self.seed, self.epoch, self.shuffle, self.start = size, seed, epoch, shuffle, start

    def order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        generator = torch.Generator().manual_seed(item_seed(self.seed, self.epoch, -1 % 2**32))
        return torch.randperm(self.size, generator=generator).tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.start :])

    def __len__(self) -> int:
        return max(0, self.size - self.start)


def collate(items: list[dict]) -> dict:
    return {
        "A": torch.stack([it["A"] for it in items]),
        "B": torch.stack([it["B"] for it in items]),
        "A_path": [it["A_path"] for it in items],
        "B_path": [it["B_path"] for it in items],
        "skipped": [p for it in items for p in it["skipped"]],
    }


def domain_folders(cfg: TrainConfig, split: str = "train") -> tuple[Path, Path]:
    """The A and B folders of a split, honouring ``--domain_a/--domain_b`` and ``--direction BtoA``."""
    if cfg.domain_a is not None and cfg.domain_b is not None:
        if split != "train":
            raise CycleGANError("--domain_a/--domain_b give training folders only")
        a, b = Path(cfg.domain_a), Path(cfg.domain_b)
    else:
        root = Path(cfg.dataroot or ".")
        a, b = root / f"{split}A", root / f"{split}B"
    return (b, a) if cfg.direction == "BtoA" else (a, b)


def scan_domain(folder: Path, cfg: TrainConfig, channels: int) -> tuple[Domain, list[Path]]:
    """List a domain's images, drop the ones that are not images at all, and check every size fits.

    Returns the domain and the files that were dropped. Only headers are read, so this is quick.
    """
    paths = list_images(folder)
    if cfg.max_dataset_size is not None:
        paths = paths[: cfg.max_dataset_size]
    good, bad = [], []
    for path in paths:
        size = image_size(path)
        if size is None:
            bad.append(path)
            continue
        _check_crop_fits(path, size, cfg)
        good.append(path)
    if not good:
        raise CycleGANError(f"no readable images in {folder}")
    return Domain(good, channels), bad


def _check_crop_fits(path: Path, size: tuple[int, int], cfg: TrainConfig) -> None:
    w, h = size
    if (
        cfg.preprocess in ("resize_and_crop", "scale_width_and_crop", "scale_width")
        and cfg.load_size < cfg.crop_size
    ):
        raise CycleGANError(f"--load_size {cfg.load_size} is smaller than --crop_size {cfg.crop_size}")
    if cfg.preprocess == "crop" and (w < cfg.crop_size or h < cfg.crop_size):
        raise CycleGANError(
            f"{path} is {w}x{h}, smaller than --crop_size {cfg.crop_size}; use --preprocess resize_and_crop"
            " (or scale_width_and_crop) to scale images up first"
        )
