"""How a domain's raw values map to the networks' [-1, 1] and back: stated, measured once, and saved.

Design. The networks always see float32 tensors in [-1, 1]; nothing on the way is rounded to 8 bits
unless the data is 8-bit. Each domain has one :class:`Intensity`:

- **the 8-bit rule** (``low`` is None): 8-bit images go the way they always have: Pillow decodes and
  converts them to RGB or grey, torchvision's PIL transforms resize and crop, ``value / 127.5 - 1``. This
  path is kept as it was so that every result on 8-bit data stays bit-identical (torchvision's tensor
  resize is close to Pillow's bicubic one, but not identical to the last grey level).
- **a window** ``[low, high]`` in the files' own units (HU for CT): ``2 (v - low) / (high - low) - 1``,
  clipped to [-1, 1], computed in float64 and handed to the network as float32, so 16-bit values come back
  exactly and float values to float32 rounding of the window. Raw float32 ``C×H×W`` arrays from
  :mod:`cyclegan.data.formats` are mapped first, then resized, cropped and flipped by torchvision's
  tensor transforms (the same options as the 8-bit path), and clipped again after a bicubic resize.

The window of a domain comes from ``--window_a`` / ``--window_b`` (:func:`cyclegan.config.parse_window`):
``auto`` (the default: the 8-bit rule for 8-bit images, the sample type's full range for integer data,
a 0.5-99.5 percentile window for float data), ``dtype`` (the sample type's full range: for DICOM the
stored bits through the rescale, for NIfTI the on-disk type through its scaling), ``LOW,HIGH`` (fixed),
or ``percentile[:P,Q]`` (measured once over the training images, from a fixed subsample of each). A
domain's files must agree in kind (sample type and channels): a mix is one line naming two files. One
conversion rule keeps older datasets working: under ``auto``, a domain with any 8-bit image follows the
8-bit rule, and its 16-bit images are scaled to 8 bits as before (with a note).

The two domains' mappings and the slice axis of volumes (:class:`Intensities`) are cached in the run
folder (``intensity.json``: a resumed run never re-measures) and saved in every checkpoint's metadata
and in exported ONNX models, so ``translate``, ``eval``, ``serve`` and ONNX runtimes apply a mapping and
its inverse without the user repeating it. A checkpoint without them (8-bit runs, reference ``.pth``
files) uses the 8-bit rule both ways.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np
import torch

from cyclegan.config import TrainConfig, parse_window
from cyclegan.data import formats
from cyclegan.data.formats import Half, Header, Item, Kind, Slice
from cyclegan.data.images import DECODE_ERRORS, load_image, to_tensor
from cyclegan.errors import CycleGANError, first_line
from cyclegan.files import atomic_write_text

PERCENTILE_ITEMS = 256  # images or slices a percentile window is measured on, evenly spread
PERCENTILE_VALUES = 65_536  # values taken from each, evenly strided
AUTO_PERCENTILES = (0.5, 99.5)  # auto's window for float data, which has no full range
DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float16", "float32", "float64")


@dataclass(frozen=True)
class Intensity:
    """One domain's mapping of raw values to [-1, 1]; ``low`` None is the 8-bit rule."""

    low: float | None = None
    high: float | None = None
    dtype: str = "uint8"  # the sample type of the domain's files: what translations into it are written as
    channels: int = 0  # 0 for the 8-bit rule (converted to the model's channels)
    how: str = "the 8-bit rule: value / 127.5 - 1"

    @property
    def eight_bit(self) -> bool:
        return self.low is None

    @property
    def window(self) -> tuple[float, float]:
        """(low, high) in raw units; the 8-bit rule's is 0..255 (its images take Pillow's path, though)."""
        return (0.0, 255.0) if self.low is None or self.high is None else (self.low, self.high)

    def forward(self, raw: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Raw values (C×H×W or N×C×H×W) -> float32 in [-1, 1]."""
        low, high = self.window
        x = torch.as_tensor(np.asarray(raw), dtype=torch.float64)
        return ((x - low) * (2.0 / (high - low)) - 1.0).clamp(-1.0, 1.0).float()

    def inverse(self, y: torch.Tensor) -> np.ndarray:
        """Network outputs in [-1, 1] -> float64 raw values, the window's ends at most."""
        low, high = self.window
        x = y.detach().to(device="cpu", dtype=torch.float64).clamp(-1.0, 1.0)
        return ((x + 1.0) * ((high - low) / 2.0) + low).numpy()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Intensity:
        """A mapping read from a file anyone could have edited: every field checked."""
        mapping = cls(**data)
        ends = (mapping.low, mapping.high)
        if mapping.eight_bit:
            if mapping.high is not None or mapping.channels != 0:
                raise ValueError("the 8-bit rule has no window")
            return mapping
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in ends):
            raise ValueError(f"window ends must be finite numbers, got {ends}")
        if not mapping.low < mapping.high:  # type: ignore[operator]
            raise ValueError(f"window low end {mapping.low} is not below its high end {mapping.high}")
        if mapping.dtype not in DTYPES or mapping.channels not in (1, 3) or not isinstance(mapping.how, str):
            raise ValueError(f"bad sample type or channels: {mapping.dtype}, {mapping.channels}")
        return mapping


EIGHT_BIT = Intensity()


@dataclass(frozen=True)
class Conversion:
    """One translation's mappings: the source domain's into [-1, 1], the target domain's back out."""

    source: Intensity = EIGHT_BIT
    target: Intensity = EIGHT_BIT
    slice_axis: int = 2

    @property
    def eight_bit(self) -> bool:
        return self.source.eight_bit and self.target.eight_bit

    def to_json(self) -> str:
        return json.dumps(
            {"source": self.source.to_dict(), "target": self.target.to_dict(), "slice_axis": self.slice_axis}
        )

    @classmethod
    def from_json(cls, text: str, where: str) -> Conversion:
        try:
            data = json.loads(text)
            both = Intensities(
                Intensity.from_dict(data["source"]), Intensity.from_dict(data["target"]), data["slice_axis"]
            )
        except (ValueError, TypeError, KeyError, RecursionError) as err:
            raise CycleGANError(f"{where}: damaged intensity mapping ({first_line(err)})") from None
        return both.checked(where).direction("AtoB")


def conversion(text: str | None, direction: str, where: str) -> Conversion:
    """The conversion of ``direction`` from a checkpoint's mapping (None: 8-bit data)."""
    return Conversion() if text is None else Intensities.from_json(text, where).direction(direction)


@dataclass(frozen=True)
class Intensities:
    """A model's data mapping: domain A's, domain B's, and the axis volumes are sliced along."""

    a: Intensity = EIGHT_BIT
    b: Intensity = EIGHT_BIT
    slice_axis: int = 2

    @property
    def eight_bit(self) -> bool:
        return self.a.eight_bit and self.b.eight_bit

    def direction(self, name: str) -> Conversion:
        """The mappings of the translation ``AtoB`` or ``BtoA``."""
        source, target = (self.a, self.b) if name == "AtoB" else (self.b, self.a)
        return Conversion(source, target, self.slice_axis)

    def to_json(self) -> str:
        return json.dumps({"A": self.a.to_dict(), "B": self.b.to_dict(), "slice_axis": self.slice_axis})

    @classmethod
    def from_json(cls, text: str, where: str) -> Intensities:
        """Parse and check; anything wrong is one line naming ``where``."""
        try:
            data = json.loads(text)
            both = cls(Intensity.from_dict(data["A"]), Intensity.from_dict(data["B"]), data["slice_axis"])
        except (ValueError, TypeError, KeyError, RecursionError) as err:
            raise CycleGANError(f"{where}: damaged intensity mapping ({first_line(err)})") from None
        return both.checked(where)

    def checked(self, where: str) -> Intensities:
        if self.slice_axis not in (0, 1, 2) or isinstance(self.slice_axis, bool):
            raise CycleGANError(f"{where}: damaged intensity mapping (slice_axis {self.slice_axis!r})")
        return self


def resolve(
    option: str,
    spec: str,
    headers: Sequence[tuple[Path, Header]],
    items: Sequence[Item],
    channels: int,
    axis: int,
) -> tuple[Intensity, str | None]:
    """The mapping ``spec`` (a ``--window_a/b`` value) gives a domain whose files have ``headers``, and a
    note for the user when a conversion rule applied. ``items`` are the domain's images or slices (for a
    percentile window); ``channels`` is what the model takes."""
    rule, ends = parse_window(option, spec)
    kinds: dict[Kind, Path] = {}
    for path, header in headers:
        kinds.setdefault(header.kind, path)
    eight_bit = Kind() in kinds
    pillow_reads = all(h.format in ("pillow", "png16", "tiff") for _, h in headers)
    if rule == "auto" and eight_bit and pillow_reads:
        note = None
        if len(kinds) > 1:
            other = next(k for k in kinds if not k.eight_bit)
            note = (
                f"{option} auto: {kinds[other]} ({other}) is read as 8-bit like {kinds[Kind()]}, since the"
                " domain also holds 8-bit images; convert them to one kind to train without loss"
            )
        return EIGHT_BIT, note
    if len(kinds) > 1:
        (first, one), (second, two) = list(kinds.items())[:2]
        raise CycleGANError(
            f"{option} needs one kind of image per domain, but {one} is {first} and {two} is {second};"
            " convert them to one sample type and channel count"
        )
    kind = next(iter(kinds))
    if eight_bit:
        kind = Kind("uint8", channels)  # an explicit window on 8-bit images: their values 0..255
    elif kind.channels != channels:
        raise CycleGANError(
            f"{kinds[kind]} has {kind.channels} channel(s), but the model takes {channels}: set --input_nc"
            f" or --output_nc to {kind.channels} (16-bit, float and medical images are not converted)"
        )
    if rule == "auto":
        rule, ends = ("percentile", AUTO_PERCENTILES) if kind.is_float else ("dtype", None)
    if rule == "dtype":
        ranges = [h.range for _, h in headers]
        if kind.is_float or any(r is None for r in ranges):
            raise CycleGANError(
                f"{option} dtype: {kinds[kind]} holds float values, which have no full range;"
                " give a window LOW,HIGH or percentile"
            )
        low, high = min(r[0] for r in ranges if r), max(r[1] for r in ranges if r)
        how = f"the full range of {kind.dtype}" + (
            " after the rescale" if (low, high) != _plain(kind) else ""
        )
        return Intensity(low, high, kind.dtype, kind.channels, how), None
    assert ends is not None
    if rule == "fixed":
        return Intensity(
            ends[0], ends[1], kind.dtype, kind.channels, f"fixed window {ends[0]:g},{ends[1]:g}"
        ), None
    low, high = measure(option, items, ends, axis, channels)
    how = f"percentiles {ends[0]:g}-{ends[1]:g} of {min(len(items), PERCENTILE_ITEMS)} training images"
    return Intensity(low, high, kind.dtype, kind.channels, how), None


class Scanned(Protocol):
    """A scanned domain (:class:`cyclegan.data.datasets.Domain`): its items, channels and file headers."""

    paths: list[Item]
    channels: int
    headers: list[tuple[Path, Header]]
    intensity: Intensity


def resolve_pair(
    cfg: TrainConfig, a: Scanned, b: Scanned, cached: Intensities | None
) -> tuple[Intensities, list[str]]:
    """Set both domains' mappings from ``--window_a/b`` (which name the folders: under ``--direction
    BtoA`` domain A's images are trainB's), or from a resumed run's cache; also returns notes for the user."""
    notes = []
    if cached is None:
        options = [("--window_a", cfg.window_a), ("--window_b", cfg.window_b)]
        if cfg.direction == "BtoA":
            options.reverse()
        resolved = []
        for (option, spec), domain in zip(options, (a, b), strict=True):
            mapping, note = resolve(
                option, spec, domain.headers, domain.paths, domain.channels, cfg.slice_axis
            )
            notes += [] if note is None else [f"note: {note}"]
            resolved.append(mapping)
        cached = Intensities(resolved[0], resolved[1], cfg.slice_axis)
    a.intensity, b.intensity = cached.a, cached.b
    return cached, notes


def _plain(kind: Kind) -> tuple[float, float] | None:
    if kind.is_float:
        return None
    info = np.iinfo(np.dtype(kind.dtype))
    return float(info.min), float(info.max)


def measure(
    option: str, items: Sequence[Item], percentiles: tuple[float, float], axis: int, channels: int
) -> tuple[float, float]:
    """The percentiles of a domain's values: from up to ``PERCENTILE_ITEMS`` images evenly spread, and up to
    ``PERCENTILE_VALUES`` evenly strided values of each, so the result is fixed by the files alone."""
    chosen = [items[i] for i in np.linspace(0, len(items) - 1, min(len(items), PERCENTILE_ITEMS)).astype(int)]
    samples = []
    for item in dict.fromkeys(chosen):
        try:
            values = _raw(item, axis, channels).ravel()
        except DECODE_ERRORS as err:
            raise CycleGANError(f"{option} percentile: cannot read {item}: {first_line(err)}") from None
        samples.append(values[:: max(1, values.size // PERCENTILE_VALUES)])
    low, high = (float(v) for v in np.percentile(np.concatenate(samples), percentiles))
    if not low < high:
        raise CycleGANError(
            f"{option} percentile: the training images have a single value ({low:g}) between those"
            " percentiles; give a window LOW,HIGH"
        )
    return low, high


def load_mapped(
    source: Path | BinaryIO, intensity: Intensity, channels: int, axis: int, max_pixels: int
) -> torch.Tensor:
    """A file as a generator takes it, through ``intensity``: C×H×W in [-1, 1] for an image, N×C×H×W for
    the slices of a volume. 8-bit images under the 8-bit rule are converted to ``channels`` as always;
    other data must have that many channels."""
    if intensity.eight_bit:
        return to_tensor(load_image(source, channels, max_pixels))  # type: ignore[arg-type]
    header = formats.probe(source, axis, max_pixels)
    if header.kind.eight_bit:
        values = formats.pillow_values(load_image(source, channels, max_pixels))[None]  # type: ignore[arg-type]
    elif isinstance(source, Path):
        values = formats.read_stack(source, axis)
    else:
        values = formats.read(source, axis)[None]
    if values.shape[1] != channels:
        name = source if isinstance(source, Path) else "the upload"
        raise formats.UnreadableImage(f"{name} has {values.shape[1]} channel(s); the model takes {channels}")
    x = intensity.forward(values)
    return x if formats.is_volume(header) else x[0]


def _raw(item: Item, axis: int, channels: int) -> np.ndarray:
    """An item's raw values; an 8-bit image's 0..255 after Pillow's conversion to ``channels``."""
    if isinstance(item, Slice):
        return formats.read(item, axis)
    if formats.probe(item.path if isinstance(item, Half) else item, axis).kind.eight_bit:
        return formats.pillow_values(formats.load_pillow(item, channels))
    return formats.read(item, axis)


def load(path: Path) -> Intensities | None:
    """A run folder's cached mappings, or None when it has none."""
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise CycleGANError(f"cannot read {path}: {first_line(err)}") from None
    return Intensities.from_json(text, str(path))


def save(path: Path, intensities: Intensities) -> None:
    atomic_write_text(path, intensities.to_json() + "\n")
