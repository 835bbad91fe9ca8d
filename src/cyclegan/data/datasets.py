"""Image files in, normalised tensors out: folder scanning, robust decoding, the reference's preprocessing.

Every random choice of an item (its B partner, crop, flip) is drawn from a seed derived from
(run seed, epoch, index), so an epoch can be replayed exactly from any step: that is what makes resume exact,
with or without loader workers.
"""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler
from torchvision import transforms
from torchvision.transforms import InterpolationMode, v2

from cyclegan.config import TrainConfig
from cyclegan.data import formats
from cyclegan.data.formats import Half, Header, Item
from cyclegan.data.images import DECODE_ERRORS, DEFAULT_MAX_PIXELS
from cyclegan.data.intensity import EIGHT_BIT, Intensities, Intensity
from cyclegan.errors import CycleGANError, first_line
from cyclegan.seeds import Stream, item_seed

SPLITS = ("trainA", "trainB", "testA", "testB")


def list_images(folder: Path) -> list[Path]:
    """Image files below ``folder`` (recursively, sorted); other files and hidden ones are ignored."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CycleGANError(f"image folder not found: {folder}")
    return [p for p in visible_files(folder) if is_image_file(p)]


def visible_files(folder: Path) -> list[Path]:
    """Files under ``folder`` (recursively, sorted), skipping hidden files and hidden folders."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def is_image_file(path: Path) -> bool:
    """Whether training, translation and the data check take ``path`` for an image (or a DICOM or NIfTI
    file): by its extension."""
    return formats.is_image_name(path)


def scaled_width_size(size: tuple[int, int], width: int, min_height: int, multiple: int) -> tuple[int, int]:
    """``scale_width``'s target: ``width`` wide, the aspect ratio kept, at least ``min_height`` tall, and the
    height rounded to a size the generator maps back to itself (the reference leaves it odd, and crashes)."""
    w, h = size
    height = max(int(width * h / w), min_height)
    return width, max(multiple, round(height / multiple) * multiple)


def _scale_width(image: Image.Image, width: int, min_height: int, multiple: int) -> Image.Image:
    target = scaled_width_size(image.size, width, min_height, multiple)
    return image if image.size == target else image.resize(target, Image.Resampling.BICUBIC)


def pad_to_multiple(x: torch.Tensor, base: int = 4, minimum: int = 0) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad the last two dims up to a multiple of ``base``, and to at least ``minimum`` (reflect where the
    image is big enough, else replicate: a 1x1 image becomes a flat patch). Returns the original size too."""
    h, w = x.shape[-2:]
    ph, pw = max((-h) % base, minimum - h), max((-w) % base, minimum - w)
    if ph == 0 and pw == 0:
        return x, (h, w)
    mode = "reflect" if ph < h and pw < w else "replicate"
    padded = torch.nn.functional.pad(x.unsqueeze(0) if x.dim() == 3 else x, (0, pw, 0, ph), mode=mode)
    return (padded.squeeze(0) if x.dim() == 3 else padded), (h, w)


def train_transform(
    cfg: TrainConfig, channels: int, multiple: int
) -> Callable[[Image.Image | torch.Tensor], torch.Tensor]:
    """The reference's training preprocessing for ``cfg.preprocess``, flip, and scaling to [-1, 1].

    ``multiple`` is the generator's size multiple: uncropped images are brought to a size it accepts.
    Takes what :meth:`Domain.read` gives: an 8-bit Pillow image, or a float tensor already in [-1, 1]
    (:func:`tensor_transform`).
    """
    scale_width = transforms.Lambda(lambda im: _scale_width(im, cfg.load_size, cfg.crop_size, multiple))
    ops = [*_geometry(cfg, transforms, scale_width), transforms.ToTensor()]
    ops.append(transforms.Normalize([0.5] * channels, [0.5] * channels))
    if cfg.preprocess == "none":
        ops.append(lambda x: pad_to_multiple(x, multiple)[0])
    return _by_type(transforms.Compose(ops), tensor_transform(cfg, multiple))


def tensor_transform(cfg: TrainConfig, multiple: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The same preprocessing for C×H×W float tensors in [-1, 1] (16-bit, float and medical images), with
    torchvision's tensor transforms; a bicubic resize's overshoot is clipped back to [-1, 1]."""
    scale_width = v2.Lambda(lambda x: _scale_width_tensor(x, cfg.load_size, cfg.crop_size, multiple))
    ops = [*_geometry(cfg, v2, scale_width), v2.Lambda(lambda x: x.clamp(-1.0, 1.0))]
    if cfg.preprocess == "none":
        ops.append(v2.Lambda(lambda x: pad_to_multiple(x, multiple)[0]))
    return v2.Compose(ops)


def _geometry(cfg: TrainConfig, library: ModuleType, scale_width: Callable) -> list[Callable]:
    """``cfg.preprocess``'s resize and crop, and the flip, from torchvision's ``transforms`` (Pillow images)
    or ``transforms.v2`` (tensors): the one place the reference's preprocess modes are spelled out."""
    ops: list[Callable] = []
    if cfg.preprocess == "resize_and_crop":
        resize = library.Resize([cfg.load_size, cfg.load_size], InterpolationMode.BICUBIC, antialias=True)
        ops += [resize, library.RandomCrop(cfg.crop_size)]
    elif cfg.preprocess == "crop":
        ops.append(library.RandomCrop(cfg.crop_size))
    elif cfg.preprocess in ("scale_width", "scale_width_and_crop"):
        ops.append(scale_width)
        if cfg.preprocess == "scale_width_and_crop":
            ops.append(library.RandomCrop(cfg.crop_size))
    if not cfg.no_flip:
        ops.append(library.RandomHorizontalFlip())
    return ops


def _scale_width_tensor(x: torch.Tensor, width: int, min_height: int, multiple: int) -> torch.Tensor:
    w, h = scaled_width_size((x.shape[-1], x.shape[-2]), width, min_height, multiple)
    return (
        x
        if (x.shape[-1], x.shape[-2]) == (w, h)
        else v2.functional.resize(x, [h, w], InterpolationMode.BICUBIC)
    )


def _by_type(
    pil: Callable[[Image.Image], torch.Tensor], tensor: Callable[[torch.Tensor], torch.Tensor]
) -> Callable[[Image.Image | torch.Tensor], torch.Tensor]:
    """One transform for both kinds of input: Pillow images take the 8-bit path, tensors the float one."""
    return lambda x: tensor(x) if isinstance(x, torch.Tensor) else pil(x)


def eval_transform(size: int, channels: int) -> Callable[[Image.Image | torch.Tensor], torch.Tensor]:
    """Square centre view used for sample grids, so the same images can be compared across a run."""
    pil = transforms.Compose(
        [
            transforms.Resize(size, InterpolationMode.BICUBIC),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize([0.5] * channels, [0.5] * channels),
        ]
    )
    tensor = v2.Compose(
        [
            v2.Resize(size, InterpolationMode.BICUBIC, antialias=True),
            v2.CenterCrop(size),
            v2.Lambda(lambda x: x.clamp(-1.0, 1.0)),
        ]
    )
    return _by_type(pil, tensor)


def decay_resize(cfg: TrainConfig) -> bool:
    """Whether the decay phase resizes images to the crop size instead of cropping them (``--decay_resize``,
    CUT's; a preprocessing without a crop after its resize has nothing to drop)."""
    chosen = getattr(cfg.model, "decay_resize", False)
    return bool(chosen) and cfg.preprocess in ("resize_and_crop", "scale_width_and_crop")


@dataclass
class Domain:
    """The images of one domain (files, or slices of volume files) and how to turn one into a tensor."""

    paths: list[Item]
    channels: int
    intensity: Intensity = EIGHT_BIT  # how values map to [-1, 1] (see cyclegan.data.intensity)
    headers: list[tuple[Path, Header]] = field(default_factory=list)  # of the files, as scanned
    slice_axis: int = 2

    def read(self, item: Item) -> Image.Image | torch.Tensor:
        """One image as the transforms take it: an 8-bit Pillow image under the 8-bit rule, else a float
        tensor in [-1, 1] (an explicit window on 8-bit images maps their 0..255 values)."""
        if isinstance(item, (Path, Half)) and self.intensity.eight_bit:
            return formats.load_pillow(item, self.channels)
        if isinstance(item, (Path, Half)) and self.headers and self.headers[0][1].kind.eight_bit:
            return self.intensity.forward(formats.pillow_values(formats.load_pillow(item, self.channels)))
        return self.intensity.forward(formats.read(item, self.slice_axis))


class UnpairedDataset(Dataset):
    """Yields ``{"A", "B", "A_path", "B_path", "skipped"}``: A cycles through its folder, B is a random image
    (or B[i] with ``serial_batches``). A file that fails to decode is replaced by the next one and named in
    ``skipped`` with why, so the training loop can warn once and count it."""

    def __init__(self, a: Domain, b: Domain, cfg: TrainConfig, seed: int, multiple: int) -> None:
        self.a, self.b, self.cfg, self.seed = a, b, cfg, seed
        self.transforms = [train_transform(cfg, d.channels, multiple) for d in (a, b)]
        # CUT's rule: once the learning rate decays, images are resized straight to the crop size
        resized = dataclasses.replace(cfg, load_size=cfg.crop_size)
        self.decay_transforms = [train_transform(resized, d.channels, multiple) for d in (a, b)]
        self.decay_from = cfg.model.n_epochs if decay_resize(cfg) else None
        self.epoch = 0

    def __len__(self) -> int:
        return max(len(self.a.paths), len(self.b.paths))

    @property
    def intensities(self) -> Intensities:
        """How the two domains' values map to [-1, 1]: what checkpoints and translations carry."""
        return Intensities(self.a.intensity, self.b.intensity, self.cfg.slice_axis)

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng(item_seed(self.seed, self.epoch, index))
        if self.cfg.serial_batches:
            b_index = index % len(self.b.paths)
        else:
            b_index = int(rng.integers(len(self.b.paths)))
        skipped: list[tuple[str, str]] = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(rng.integers(2**62)))
            decaying = self.decay_from is not None and self.epoch >= self.decay_from
            transform_a, transform_b = self.decay_transforms if decaying else self.transforms
            a_path, a = self._load(self.a, transform_a, index % len(self.a.paths), skipped)
            b_path, b = self._load(self.b, transform_b, b_index, skipped)
        return {"A": a, "B": b, "A_path": str(a_path), "B_path": str(b_path), "skipped": skipped}

    @staticmethod
    def _load(
        domain: Domain, transform: Callable, index: int, skipped: list[tuple[str, str]]
    ) -> tuple[Item, torch.Tensor]:
        for offset in range(len(domain.paths)):
            path = domain.paths[(index + offset) % len(domain.paths)]
            try:
                return path, transform(domain.read(path))
            except DECODE_ERRORS as err:
                skipped.append((str(path), first_line(err)))
        raise CycleGANError(f"no image in {domain.paths[0].parent} could be decoded")


class EpochSampler(Sampler[int]):
    """A seeded permutation of the dataset for each epoch (or file order), from any start position."""

    def __init__(self, size: int, seed: int, epoch: int, shuffle: bool, start: int = 0) -> None:
        self.size, self.seed, self.epoch, self.shuffle, self.start = size, seed, epoch, shuffle, start

    def order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        generator = torch.Generator().manual_seed(item_seed(self.seed, self.epoch, Stream.EPOCH_ORDER))
        return torch.randperm(self.size, generator=generator).tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.start :])

    def __len__(self) -> int:
        return max(0, self.size - self.start)


class RankBatches(Sampler[list[int]]):
    """This process's slice of each global batch of an epoch, from global batch ``start`` on.

    Global batch k is items k*B .. k*B+B-1 of the epoch's order. Process r of n takes the r-th contiguous
    slice of it, so the slices in rank order are the batch one process would see. A short last batch is
    topped up with the epoch's first items to a multiple of n, so every process gets an equal share.
    """

    def __init__(self, epoch: EpochSampler, batch_size: int, rank: int = 0, world: int = 1, start: int = 0):
        self.epoch, self.batch_size, self.rank, self.world, self.start = epoch, batch_size, rank, world, start

    def __iter__(self) -> Iterator[list[int]]:
        order = self.epoch.order()
        for first in range(self.start * self.batch_size, len(order), self.batch_size):
            batch = order[first : first + self.batch_size]
            batch += [order[i % len(order)] for i in range(-len(batch) % self.world)]
            share = len(batch) // self.world
            yield batch[self.rank * share : (self.rank + 1) * share]

    def __len__(self) -> int:
        return max(0, -(-self.epoch.size // self.batch_size) - self.start)


def ignore_interrupts(worker_id: int) -> None:
    """Loader workers leave Ctrl-C and SIGTERM to the main process, which stops cleanly after the current
    step: a terminal, SLURM, systemd and ``docker stop`` signal the whole process group, workers included.
    The main process still ends its workers through their queues (and they end when it dies)."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


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


def scan_domain(
    folder: Path, cfg: TrainConfig, channels: int, multiple: int
) -> tuple[Domain, list[tuple[Path, str]], set[tuple[int, int]]]:
    """List a domain's images, drop the ones that are not images at all or are too large to decode, and
    work out the sizes (height, width) the networks will see. Volumes count as their slices.

    Returns the domain, the dropped files with the reason, and the training sizes. Only headers are read;
    the domain's mapping to [-1, 1] is set by :func:`cyclegan.data.intensity.resolve` from them.
    """
    paths = list_images(folder)
    if cfg.max_dataset_size is not None:
        paths = paths[: cfg.max_dataset_size]
    good: list[Item] = []
    bad, sizes, headers = [], set(), []
    for path in paths:
        try:
            header = formats.probe(path, cfg.slice_axis)
        except formats.UnreadableImage as err:
            bad.append((path, str(err).removeprefix(f"{path}: ")))
            continue
        size = header.size
        if size[0] * size[1] > DEFAULT_MAX_PIXELS:
            bad.append(
                (path, f"{size[0]}x{size[1]} is above the {DEFAULT_MAX_PIXELS / 1e6:.0f}-megapixel limit")
            )
        else:
            check_crop_fits(path, size, cfg)
            sizes.add(training_size(size, cfg, multiple))
            good += formats.items(path, header)
            headers.append((path, header))
    if not good:
        raise CycleGANError(f"no readable images in {folder}")
    return Domain(good, channels, headers=headers, slice_axis=cfg.slice_axis), bad, sizes


def training_size(size: tuple[int, int], cfg: TrainConfig, multiple: int) -> tuple[int, int]:
    """(height, width) of an image of ``size`` (width, height) after the training preprocessing."""
    if cfg.preprocess in ("resize_and_crop", "crop", "scale_width_and_crop"):
        return cfg.crop_size, cfg.crop_size
    if cfg.preprocess == "scale_width":
        w, h = scaled_width_size(size, cfg.load_size, cfg.crop_size, multiple)
        return h, w
    w, h = size
    return -(-h // multiple) * multiple, -(-w // multiple) * multiple


def check_crop_fits(path: Path, size: tuple[int, int], cfg: TrainConfig) -> None:
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
