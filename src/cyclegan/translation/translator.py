"""A trained generator as a function on images of any size, on PyTorch (at a chosen precision) or ONNX."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np
import torch
from PIL import Image
from torch import nn

from cyclegan.config import NetConfig, check_choice
from cyclegan.data.datasets import pad_to_multiple
from cyclegan.data.images import to_image, to_tensor
from cyclegan.data.intensity import Conversion, conversion
from cyclegan.devices import is_out_of_memory
from cyclegan.errors import CycleGANError, TooLarge
from cyclegan.models.checkpoints import load_generator, read_intensity, resolve_checkpoint
from cyclegan.networks import MIN_SIZE, input_channels, size_multiple
from cyclegan.precision import Autocast, Precision
from cyclegan.translation.tiling import check_tile, choose_tile, images_that_fit, translate_tiled

if TYPE_CHECKING:
    from cyclegan.translation.export import OnnxTranslator

BACKENDS = ("torch", "onnxruntime")


class Translator:
    """A loaded generator that maps images of any size: reflect-pad to the size it needs, crop back.

    With ``tile`` (pixels) each image is translated in exact tiles (``cyclegan.tiling``): the whole-image
    result in bounded memory. With ``max_memory`` (bytes of tensors) and no ``tile``, every forward stays
    within it: a batch runs in as many parts as that takes, and an image whose whole-image forward would
    need more is tiled with the largest tile that fits. The plan for each size is traced once, then cached.

    ``conversion`` says how the source domain's values map to [-1, 1] and the target's back (the 8-bit rule
    by default); :func:`translate_values` applies it around the generator.
    """

    PLANS_CACHED = 256  # batch and image sizes whose plan is kept (a server sees many sizes)

    def __init__(
        self,
        generator: nn.Module,
        config: NetConfig,
        device: torch.device | str = "cpu",
        tile: int | None = None,
        max_memory: int | None = None,
        conversion: Conversion | None = None,
    ) -> None:
        self.generator, self.config, self.device = generator, config, torch.device(device)
        self.conversion = conversion or Conversion()
        self.generator.to(self.device)
        self.in_channels = input_channels(generator)
        if self.in_channels not in (1, 3):
            raise CycleGANError(
                f"the model takes {self.in_channels}-channel images; only 1 and 3 are supported"
            )
        self.multiple = size_multiple(config)
        if (tile is not None or max_memory is not None) and isinstance(generator, Autocast):
            raise CycleGANError("--tile and --max_memory translate in fp32; leave --precision at fp32")
        if max_memory is not None and max_memory <= 0:
            raise CycleGANError(f"--max_memory must be a positive number of bytes, got {max_memory}")
        if tile is not None or max_memory is not None:
            check_tile(generator, tile)  # a generator the tiling cannot trace is refused now, not per image
        self.tile, self.max_memory = tile, max_memory
        self._plans = lru_cache(self.PLANS_CACHED)(self._plan)

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
        return cls(generator, config, device, tile, max_memory, checkpoint_conversion(checkpoint, direction))

    def tile_for(self, height: int, width: int) -> int | None:
        """The tile for an image of this (padded) size: ``tile``, or the one ``max_memory`` calls for."""
        return self.plan(1, height, width)[1]

    def plan(self, batch: int, height: int, width: int) -> tuple[int, int | None]:
        """How ``batch`` images of this (padded) size are translated: so many per forward, whole or (when
        a tile size is given) one at a time in tiles of that size."""
        plan = self._plans(batch, height, width)
        if isinstance(plan, str):
            raise TooLarge(plan)
        return plan

    def _plan(self, batch: int, height: int, width: int) -> tuple[int, int | None] | str:
        """The plan, or why there is none (kept too, so that a size refused once is not traced again)."""
        if self.tile is not None or self.max_memory is None:
            return (batch, None) if self.tile is None else (1, self.tile)
        whole = images_that_fit(self.generator, height, width, self.max_memory, batch)
        if whole:
            return whole, None
        try:
            return 1, choose_tile(self.generator, height, width, self.max_memory)
        except TooLarge as refusal:
            return str(refusal)

    @torch.inference_mode()
    def translate_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """C×H×W (or N×C×H×W) in [-1, 1] -> the translation, same spatial size. Tiling goes image by image."""
        padded, (h, w) = pad_to_multiple(x.to(self.device), self.multiple, MIN_SIZE)
        batch = padded if padded.dim() == 4 else padded.unsqueeze(0)
        images, tile = self.plan(len(batch), *batch.shape[-2:])
        try:
            if tile is not None:
                y = torch.cat([translate_tiled(self.generator, image[None], tile) for image in batch])
            elif images < len(batch):
                y = torch.cat([self.generator(part) for part in batch.split(images)])
            else:
                y = self.generator(batch)
        except RuntimeError as err:
            if not is_out_of_memory(err):
                raise
            raise TooLarge(
                f"not enough memory to translate a {w}x{h} image on {self.device}; translate it in exact"
                " tiles with --max_memory (e.g. 2GB) or --tile 512"
            ) from None
        y = y[..., :h, :w]
        return y if x.dim() == 4 else y[0]

    def __call__(self, image: Image.Image) -> Image.Image:
        return to_image(self.translate_tensor(to_tensor(image)))


def load_translator(
    checkpoint: Path,
    direction: str = "AtoB",
    device: torch.device | str = "cpu",
    backend: str = "torch",
    precision: str = "fp32",
    tile: int | None = None,
    max_memory: int | None = None,
) -> Translator | OnnxTranslator:
    """A Translator for ``backend``: PyTorch (at ``precision``, optionally in exact tiles) on our
    checkpoints, or onnxruntime on a model written by ``cyclegan export``. Both map PIL images and tensors
    the same way."""
    device = torch.device(device)
    check_choice("--backend", backend, BACKENDS)
    if backend == "onnxruntime":
        if precision != "fp32" or tile is not None or max_memory is not None:
            raise CycleGANError(
                "--precision, --tile and --max_memory apply to the torch backend; an ONNX model runs whole"
                " images in float32"
            )
        from cyclegan.translation.export import load_onnx_translator

        return load_onnx_translator(Path(checkpoint), direction, device)
    if precision == "auto":
        raise CycleGANError("--precision must be fp32, bf16 or fp16 for translation")
    arithmetic = Precision.on(precision, device)
    if Path(checkpoint).suffix == ".onnx":
        raise CycleGANError(f"{checkpoint} is an ONNX model; run it with --backend onnxruntime")
    generator, config = load_generator(Path(checkpoint), direction)
    model = Autocast(generator, arithmetic) if arithmetic.mixed else generator
    return Translator(model, config, device, tile, max_memory, checkpoint_conversion(checkpoint, direction))


def checkpoint_conversion(checkpoint: Path, direction: str) -> Conversion:
    """How the data of a checkpoint's ``direction`` maps to [-1, 1] and back (the 8-bit rule unless it was
    trained on other data)."""
    path = resolve_checkpoint(Path(checkpoint))
    return conversion(read_intensity(path), direction, str(path))


def translate_values(translator: AnyTranslator, values: np.ndarray) -> np.ndarray:
    """Values of the source domain (C×H×W or N×C×H×W, its own units) -> the translation in the target
    domain's units, float64: the translator's mapping, the generator, the inverse mapping."""
    conversion = translator.conversion
    return conversion.target.inverse(translator.translate_tensor(conversion.source.forward(values)))


AnyTranslator = Union[Translator, "OnnxTranslator"]  # what load_translator returns; both map images alike
