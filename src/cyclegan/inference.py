"""Running generators on images: translating files at their own size, and training sample grids."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision.utils import make_grid, save_image
from tqdm import tqdm

from cyclegan.checkpoints import atomic_write, load_generator
from cyclegan.config import ModelConfig
from cyclegan.data import DECODE_ERRORS, list_images, load_image, pad_to_multiple
from cyclegan.errors import CycleGANError
from cyclegan.tiling import check_tile, choose_tile, translate_tiled


def size_multiple(cfg: ModelConfig) -> int:
    """Sizes a generator maps back to themselves: ResNets halve twice, U-Nets 7 or 8 times."""
    return {"unet_128": 2**7, "unet_256": 2**8}.get(cfg.netG, 4)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL image -> C×H×W float in [-1, 1], the scaling the networks are trained on."""
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1.0


def to_image(y: torch.Tensor) -> Image.Image:
    """C×H×W in [-1, 1] -> 8-bit image, rounding (y + 1) / 2 * 255 to the nearest grey level."""
    array = ((y.detach().float().cpu() + 1.0) / 2.0 * 255.0).round().clamp(0, 255).to(torch.uint8)
    array = array.permute(1, 2, 0).numpy()
    return Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)


class Translator:
    """A loaded generator that maps images of any size: reflect-pad to the size it needs, crop back.

    With ``tile`` (pixels) each image is translated in exact tiles (``cyclegan.tiling``): the whole-image
    result in bounded memory. With ``max_memory`` (bytes of tensors) and no ``tile``, an image whose
    whole-image forward would need more is tiled with the largest tile that fits.
    """

    def __init__(
        self,
        generator: nn.Module,
        config: ModelConfig,
        device: torch.device | str = "cpu",
        tile: int | None = None,
        max_memory: int | None = None,
    ) -> None:
        self.generator, self.config, self.device = generator, config, torch.device(device)
        self.generator.to(self.device)
        self.in_channels = next(m for m in generator.modules() if isinstance(m, nn.Conv2d)).in_channels
        self.multiple = size_multiple(config)
        if tile is not None:
            check_tile(generator, tile)
        if max_memory is not None and max_memory <= 0:
            raise CycleGANError(f"max_memory must be a positive number of bytes, got {max_memory}")
        self.tile, self.max_memory = tile, max_memory

    @classmethod
    def load(
        cls,
        checkpoint: Path,
        direction: str = "AtoB",
        device: torch.device | str = "cpu",
        tile: int | None = None,
        max_memory: int | None = None,
    ) -> Translator:
        """From a run folder, one of our checkpoints, or a reference generator ``.pth``."""
        generator, config = load_generator(Path(checkpoint), direction)
        return cls(generator, config, device, tile, max_memory)

    def tile_for(self, height: int, width: int) -> int | None:
        """The tile for an image of this (padded) size: ``tile``, or the one ``max_memory`` calls for."""
        if self.tile is not None or self.max_memory is None:
            return self.tile
        return choose_tile(self.generator, height, width, self.max_memory)

    @torch.inference_mode()
    def translate_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """C×H×W (or N×C×H×W) in [-1, 1] -> the translation, same spatial size. Tiling goes image by image."""
        padded, (h, w) = pad_to_multiple(x.to(self.device), self.multiple)
        batch = padded if padded.dim() == 4 else padded.unsqueeze(0)
        tile = self.tile_for(*batch.shape[-2:])
        if tile is None:
            y = self.generator(batch)
        else:
            y = torch.cat([translate_tiled(self.generator, image[None], tile) for image in batch])
        y = y[..., :h, :w]
        return y if x.dim() == 4 else y[0]

    def __call__(self, image: Image.Image) -> Image.Image:
        return to_image(self.translate_tensor(to_tensor(image)))


def collect_inputs(inputs: Iterable[Path], out_dir: Path) -> list[tuple[Path, Path]]:
    """(source, destination) pairs: a file keeps its name, a folder's images keep their relative paths."""
    pairs: list[tuple[Path, Path]] = []
    for item in map(Path, inputs):
        if item.is_dir():
            pairs += [(p, out_dir / p.relative_to(item)) for p in list_images(item)]
        elif item.is_file():
            pairs.append((item, out_dir / item.name))
        else:
            raise CycleGANError(f"input not found: {item}")
    if not pairs:
        raise CycleGANError("no images to translate in the given inputs")
    seen: dict[Path, Path] = {}
    for src, dst in pairs:
        if dst in seen:
            raise CycleGANError(f"{src} and {seen[dst]} would both be written to {dst}")
        if dst.resolve() == src.resolve():
            raise CycleGANError(f"--out would overwrite the input {src}; choose another folder")
        seen[dst] = src
    return pairs


def translate_files(
    inputs: Iterable[Path],
    checkpoint: Path,
    out_dir: Path,
    *,
    direction: str = "AtoB",
    device: torch.device | str = "cpu",
    overwrite: bool = False,
    show_progress: bool = True,
    tile: int | None = None,
    max_memory: int | None = None,
) -> list[Path]:
    """Translate image files and folders into ``out_dir``; returns the written files.

    ``tile`` and ``max_memory`` are ``Translator``'s: exact tiled translation of large images.

    Unreadable images are reported and skipped; if any were, a CycleGANError naming them is raised at the end,
    after every readable image has been written. Existing outputs are kept unless ``overwrite``.
    """
    out_dir = Path(out_dir)
    pairs = collect_inputs(inputs, out_dir)
    if not overwrite:
        existing = [dst for _, dst in pairs if dst.exists()]
        if existing:
            raise CycleGANError(
                f"{existing[0]} exists ({len(existing)} outputs in all); pass --overwrite to replace"
            )
    translator = Translator.load(checkpoint, direction, device, tile, max_memory)
    written, failed = [], []
    for src, dst in tqdm(pairs, disable=not show_progress, unit="image"):
        try:
            image = load_image(src, translator.in_channels)
        except DECODE_ERRORS:
            tqdm.write(f"warning: cannot read {src} as an image; skipped", file=sys.stderr)
            failed.append(src)
            continue
        result = translator(image)
        atomic_write(dst, lambda tmp, r=result, d=dst: _save(r, tmp, d.suffix))
        written.append(dst)
    if failed:
        raise CycleGANError(f"{len(failed)} of {len(pairs)} images could not be read (first: {failed[0]})")
    return written


def _save(image: Image.Image, path: Path, suffix: str) -> None:
    fmt = Image.registered_extensions().get(suffix.lower(), "PNG")
    options = {"quality": 95} if fmt == "JPEG" else {}
    image.save(path, format=fmt, **options)


@torch.no_grad()
def cycle_grid(model: nn.Module, real_A: torch.Tensor, real_B: torch.Tensor) -> torch.Tensor:
    """Rows of real A | G_A(A) | G_B(G_A(A)) | real B | G_B(B) | G_A(G_B(B)), in [0, 1]."""
    was_training = model.training
    model.eval()
    fake_B = model.G_A(real_A)
    fake_A = model.G_B(real_B)
    columns = [real_A, fake_B, model.G_B(fake_B), real_B, fake_A, model.G_A(fake_A)]
    model.train(was_training)
    columns = [c.expand(-1, 3, -1, -1) if c.shape[1] == 1 else c for c in columns]
    tiles = torch.stack(columns, 1).flatten(0, 1)
    return make_grid((tiles.float().cpu() + 1) / 2, nrow=len(columns), padding=2, pad_value=1.0)


def save_sample_grid(path: Path, model: nn.Module, real_A: torch.Tensor, real_B: torch.Tensor) -> None:
    grid = cycle_grid(model, real_A, real_B)
    atomic_write(path, lambda tmp: save_image(grid, tmp, format="png"))
