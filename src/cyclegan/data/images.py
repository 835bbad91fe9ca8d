"""Image files and tensors: the one place where pixels are decoded, converted and scaled.

Networks see C×H×W floats in [-1, 1]; metrics see [0, 1]; files hold 8-bit RGB or grey. Every module
converts through these functions, so a translation saved by ``translate`` and one scored in memory by
``eval`` are the same pixels.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from cyclegan.config import DEFAULT_MAX_PIXELS
from cyclegan.errors import CycleGANError, TooLarge, first_line

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class ImageTooLarge(TooLarge):
    """An image whose pixel count is above the limit: refused before it is decoded."""


# Everything decoding a file can raise: Pillow uses many types for broken, truncated or hostile files.
DECODE_ERRORS = (
    OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError, ImageTooLarge
)  # fmt: skip


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


def load_image(path: Path, channels: int = 3, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode, apply the EXIF orientation, convert; raises the decoder's error for a broken file.

    The size is checked from the header before decoding, so a huge image costs no memory to refuse.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            opened = Image.open(path)
        except Image.DecompressionBombError as err:
            raise ImageTooLarge(f"{path} is too large to decode safely: {first_line(err)}") from None
        with opened as image:
            check_pixels(path, image.size, max_pixels)
            image.load()
            image = ImageOps.exif_transpose(image)
            return to_mode(image, channels)


def check_pixels(path: Path | str, size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"{path} is {width}x{height} ({width * height / 1e6:.3g} megapixels), above the limit of "
            f"{max_pixels / 1e6:.3g} megapixels (raise it with --max_pixels)"
        )


def open_image(path: Path, channels: int = 3, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """:func:`load_image` with a broken file named in one line (for commands that cannot skip it)."""
    try:
        return load_image(path, channels, max_pixels)
    except DECODE_ERRORS as error:
        raise CycleGANError(f"cannot read image {path}: {first_line(error)}") from None


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) after EXIF rotation, read from the header only; None if it is not an image."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                w, h = image.size
                orientation = image.getexif().get(0x0112, 1)
    except DECODE_ERRORS:
        return None
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def to_unit_tensor(image: Image.Image) -> torch.Tensor:
    """8-bit image -> float32 C×H×W in [0, 1], exactly value/255, the scale every metric works in."""
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255


def to_tensor(image: Image.Image) -> torch.Tensor:
    """8-bit image -> C×H×W float in [-1, 1], the scaling the networks are trained on."""
    return to_unit_tensor(image) * 2 - 1


def to_image(y: torch.Tensor) -> Image.Image:
    """C×H×W in [-1, 1] -> 8-bit image, rounding (y + 1) / 2 * 255 to the nearest grey level."""
    levels = ((y.detach().float().cpu() + 1.0) / 2.0 * 255.0).round().clamp(0, 255).to(torch.uint8)
    array = levels.permute(1, 2, 0).numpy()
    return Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
