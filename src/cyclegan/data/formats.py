"""Image files as raw numbers and back: 16-bit PNG, TIFF of any sample type, DICOM and NIfTI, without loss.

8-bit images keep their own path (:mod:`cyclegan.data.images`: Pillow, converted to RGB or grey). Every
other file is read here as float32 ``C×H×W`` arrays of its own values, in its own channel count: 16-bit PNG
(Pillow for grey, pypng for colour), TIFF of any integer or float type (tifffile), DICOM (pydicom, the
stored values through the rescale slope and intercept, so CT comes in Hounsfield units) and NIfTI
(nibabel, volumes cut into 2-D slices along a chosen axis). pydicom and nibabel are the optional
``medical`` extra.

A file is first *probed* from its header alone (:func:`probe`): its :class:`Kind` (sample type and
channels), slice size, slice count and the full range of its sample type. Training checks that a domain's
files agree before any pixel is decoded. A volume's slices are items of a domain like image files
(:class:`Slice`), and so are the halves of a side-by-side A|B image (:class:`Half`). Translations are
written back in the source's own kind (:func:`write`): 16-bit PNG, TIFF, DICOM with the source's header and
a new SOP Instance UID, NIfTI with the source's header and affine.

Decoding problems (a corrupt file, NaN or infinite values, a 4-D volume, DICOM without pixel data or
whose compression no installed handler decodes) raise :class:`UnreadableImage`, one of the decode errors
training skips and translation reports; a missing optional library is a one-line CycleGANError.
"""

from __future__ import annotations

import gzip
import importlib
import io
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

from cyclegan.data.images import IMAGE_EXTENSIONS, check_pixels, image_size, load_image, to_mode
from cyclegan.errors import CycleGANError, first_line

DICOM_SUFFIXES = (".dcm", ".dicom")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
PNG_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> samples (3, palette, is always 8-bit)
EIGHT_BIT = "8-bit"
MEDICAL_HINT = "pip install 'cyclegan[medical]'"
Source = Path | BinaryIO


class UnreadableImage(ValueError):
    """A file that cannot be used as an image, with the reason in one line (a decode error)."""


def require(module: str, what: str) -> ModuleType:
    """An optional reader, or one line saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise CycleGANError(
            f"reading {what} needs {module}, which is not installed: {MEDICAL_HINT}"
        ) from None


@dataclass(frozen=True)
class Kind:
    """What a file's values are: 8-bit images (converted to the model's channels, so their own channel
    count does not matter) or a sample type and channel count that are kept as they are."""

    dtype: str = EIGHT_BIT  # a numpy dtype name otherwise: uint16, int16, float32...
    channels: int = 0  # 0 for 8-bit images

    @property
    def eight_bit(self) -> bool:
        return self.dtype == EIGHT_BIT

    @property
    def is_float(self) -> bool:
        return not self.eight_bit and np.dtype(self.dtype).kind == "f"

    def __str__(self) -> str:
        return EIGHT_BIT if self.eight_bit else f"{self.channels}-channel {self.dtype}"


@dataclass(frozen=True)
class Header:
    """A file as its header describes it."""

    kind: Kind
    format: str  # pillow (8-bit), png16, tiff, dicom or nifti
    size: tuple[int, int]  # (width, height) of one image or slice
    slices: int = 1  # 2-D slices of a volume (or frames of a multi-frame DICOM); 1 for an image
    range: tuple[float, float] | None = None  # the sample type's full range in the file's units; None: float


@dataclass(frozen=True)
class Slice:
    """One 2-D slice of a volume file: an item of a domain, like an image file."""

    path: Path
    index: int

    @property
    def parent(self) -> Path:
        return self.path.parent

    def __str__(self) -> str:
        return f"{self.path}[{self.index}]"


@dataclass(frozen=True)
class Half:
    """One half of a side-by-side A|B image (the paired layout of pix2pix): an item of a domain, like an
    image file, named by its file."""

    path: Path
    side: int  # 0: the left half, 1: the right one

    @property
    def parent(self) -> Path:
        return self.path.parent

    def __str__(self) -> str:
        return str(self.path)

    def cut(self, image: Image.Image) -> Image.Image:
        """This half of the whole decoded image (of an odd width, the last column belongs to neither)."""
        half = image.width // 2
        return image.crop((self.side * half, 0, (self.side + 1) * half, image.height))

    def cut_values(self, values: np.ndarray) -> np.ndarray:
        """This half of the whole image's ``C×H×W`` values."""
        half = values.shape[-1] // 2
        return values[..., self.side * half : (self.side + 1) * half]


Item = Path | Slice | Half


def suffix(path: Path) -> str:
    """The image suffix, lower case, with NIfTI's double one (``.nii.gz``) kept whole."""
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def is_image_name(path: Path) -> bool:
    """Whether training and translation take ``path`` for an image (or volume), by its suffix."""
    return suffix(path) in (*IMAGE_EXTENSIONS, *DICOM_SUFFIXES, *NIFTI_SUFFIXES)


def stem(path: Path) -> str:
    """The file name without its image suffix (``ct.nii.gz`` -> ``ct``)."""
    return path.name[: len(path.name) - len(suffix(path))] if is_image_name(path) else path.stem


def _head(source: Source, count: int = 64) -> bytes:
    if isinstance(source, Path):
        with open(source, "rb") as f:
            return f.read(count)
    head = source.read(count)
    source.seek(0)
    return head


def _format(source: Source) -> str:
    """Which reader a file needs: by suffix for DICOM and NIfTI, by signature for PNG and TIFF."""
    if isinstance(source, Path):
        if suffix(source) in DICOM_SUFFIXES:
            return "dicom"
        if suffix(source) in NIFTI_SUFFIXES:
            return "nifti"
    head = _head(source, 26)
    if head.startswith(PNG_SIGNATURE) and head[12:16] == b"IHDR" and head[24] == 16:
        return "png16"
    if head[:4] in TIFF_MAGIC:
        return "tiff"
    return "pillow"


def _name(source: Source) -> str:
    return str(source) if isinstance(source, Path) else "the upload"


def probe(source: Source, axis: int = 2, max_pixels: int | None = None) -> Header:
    """A file's header: kind, slice size, slices and range, without decoding pixels.

    8-bit TIFFs and every format but 16-bit PNG, TIFF, DICOM and NIfTI are 8-bit Pillow images.
    """
    fmt = _format(source)
    try:
        if fmt == "png16":
            header: Header | None = _probe_png16(_head(source, 26))
        elif fmt == "tiff":
            header = _probe_tiff(source)
        elif fmt == "dicom":
            header = _probe_dicom(_dicom(source, defer=True))
        elif fmt == "nifti":
            header = _probe_nifti(_nifti(source), axis)
        else:
            header = None
    except CycleGANError:
        raise
    except UnreadableImage as err:
        raise UnreadableImage(f"{_name(source)}: {err}") from None
    except Exception as err:  # each library raises its own types for broken files
        raise UnreadableImage(f"{_name(source)}: {first_line(err)}") from None
    if header is None:  # an 8-bit image: Pillow reads it as it always has
        size = image_size(source) if isinstance(source, Path) else _pillow_size(source)
        if size is None:
            raise UnreadableImage(f"{_name(source)}: not a readable image")
        header = Header(Kind(), "pillow", size, 1, (0.0, 255.0))
    if max_pixels is not None:
        check_pixels(_name(source), header.size, max_pixels)
    return header


def pillow_values(image: Image.Image) -> np.ndarray:
    """An 8-bit Pillow image's values as float32 C×H×W (for a window on 8-bit images)."""
    pixels = np.asarray(image, dtype=np.float32)
    return pixels.reshape(*pixels.shape[:2], -1).transpose(2, 0, 1)


def _pillow_size(source: BinaryIO) -> tuple[int, int]:
    try:
        with Image.open(source) as image:
            return image.size
    finally:
        source.seek(0)


def _range(dtype: np.dtype, slope: float = 1.0, intercept: float = 0.0) -> tuple[float, float] | None:
    if dtype.kind not in "iu":
        return None
    info = np.iinfo(dtype)
    ends = sorted((info.min * slope + intercept, info.max * slope + intercept))
    return float(ends[0]), float(ends[1])


def _probe_png16(head: bytes) -> Header:
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    channels = PNG_CHANNELS.get(head[25], 0)
    return Header(Kind("uint16", channels), "png16", (width, height), 1, _range(np.dtype(np.uint16)))


def _seekable(source: Source) -> Path | BinaryIO:
    """What tifffile opens: a path, or an upload's bytes in memory (it needs a named or in-memory file)."""
    if isinstance(source, Path):
        return source
    data = source.read()
    source.seek(0)
    return io.BytesIO(data)


def _tiff_layout(axes: str, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(channels, height, width) of a TIFF series, or UnreadableImage for what is not one 2-D image."""
    if axes == "YX":
        return 1, shape[0], shape[1]
    if axes == "YXS":
        return shape[2], shape[0], shape[1]
    if axes == "SYX":
        return shape[0], shape[1], shape[2]
    raise UnreadableImage(f"a TIFF of axes {axes} {shape} is not one 2-D image (stacks are not supported)")


def _probe_tiff(source: Source) -> Header | None:
    import tifffile

    try:
        with tifffile.TiffFile(_seekable(source)) as tif:
            series = tif.series[0]
            dtype, axes, shape = np.dtype(series.dtype), series.axes, tuple(series.shape)
    except Exception:  # what tifffile cannot parse, Pillow may still read as an 8-bit image (as before)
        return None
    if dtype == np.uint8:
        return None  # Pillow's, as before
    channels, height, width = _tiff_layout(axes, shape)
    if dtype.kind not in "iuf":
        raise UnreadableImage(f"TIFF samples of type {dtype} are not supported")
    return Header(Kind(dtype.name, channels), "tiff", (width, height), 1, _range(dtype))


def _dicom(source: Source, defer: bool = False) -> Any:
    pydicom = require("pydicom", "DICOM")
    return pydicom.dcmread(source, defer_size=1024 if defer else None, force=True)


def _dicom_dtype(ds: Any) -> np.dtype:
    bits = int(ds.BitsAllocated)
    if bits not in (8, 16, 32):
        raise UnreadableImage(f"DICOM with {bits} bits allocated per sample is not supported")
    return np.dtype(f"{'i' if int(ds.get('PixelRepresentation', 0)) else 'u'}{bits // 8}")


def _rescale(ds: Any) -> tuple[float, float]:
    return float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)


def _no_decoder(syntax: Any) -> str:
    name = getattr(syntax, "name", "unknown")
    return (
        f"no installed handler decodes its transfer syntax {name} (pydicom's pixel-data plugins, e.g."
        " pylibjpeg or gdcm, add decoders)"
    )


def _probe_dicom(ds: Any) -> Header:
    if "PixelData" not in ds:
        kinds = ("FloatPixelData", "DoubleFloatPixelData")
        found = "float pixel data, which is not supported" if any(k in ds for k in kinds) else "no pixel data"
        raise UnreadableImage(f"the DICOM file holds {found}")
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is not None and syntax.is_compressed:
        from pydicom.pixels import get_decoder

        try:
            available = get_decoder(syntax).is_available
        except NotImplementedError:
            available = False
        if not available:
            raise UnreadableImage(_no_decoder(syntax))
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric not in ("MONOCHROME1", "MONOCHROME2", "RGB"):
        raise UnreadableImage(f"DICOM photometric interpretation {photometric} is not supported")
    dtype = _dicom_dtype(ds)
    channels, frames = int(ds.get("SamplesPerPixel", 1)), int(ds.get("NumberOfFrames", 1) or 1)
    bits = int(ds.get("BitsStored", dtype.itemsize * 8))
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if dtype.kind == "i" else (0, 2**bits - 1)
    slope, intercept = _rescale(ds)
    ends = sorted((low * slope + intercept, high * slope + intercept))
    integral = float(slope).is_integer() and float(intercept).is_integer()
    kind = Kind(dtype.name if integral else "float32", channels)
    return Header(kind, "dicom", (int(ds.Columns), int(ds.Rows)), frames, (ends[0], ends[1]))


def _nifti(source: Source) -> Any:
    nibabel = require("nibabel", "NIfTI")
    if not isinstance(source, Path):
        raise UnreadableImage("NIfTI volumes are read from files only")
    return nibabel.load(source)


def _volume_shape(image: Any) -> tuple[int, ...]:
    """The 3-D shape of a NIfTI volume (trailing axes of length 1 dropped); 4-D data is refused."""
    shape = tuple(image.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) > 3:
        raise UnreadableImage(
            f"a {len(shape)}-D volume {shape}: only 2-D images and 3-D volumes are supported"
        )
    if len(shape) < 2:
        raise UnreadableImage(f"a NIfTI of shape {shape} is not a 2-D image or 3-D volume")
    return shape if len(shape) == 3 else (*shape, 1)


def _probe_nifti(image: Any, axis: int) -> Header:
    shape = _volume_shape(image)
    dtype = np.dtype(image.get_data_dtype()).newbyteorder("=")
    if dtype.kind not in "iuf":
        raise UnreadableImage(f"NIfTI samples of type {dtype} are not supported")
    slope, intercept = _nifti_scaling(image)
    height, width = (n for i, n in enumerate(shape) if i != axis)
    scaled = (slope, intercept) != (1.0, 0.0) and not (slope.is_integer() and intercept.is_integer())
    kind = Kind("float32" if scaled or dtype.kind == "f" else dtype.name, 1)
    return Header(kind, "nifti", (width, height), shape[axis], _range(dtype, slope, intercept))


def _nifti_scaling(image: Any) -> tuple[float, float]:
    slope, intercept = getattr(image.dataobj, "slope", 1.0), getattr(image.dataobj, "inter", 0.0)
    return float(slope), float(intercept)


def is_volume(header: Header) -> bool:
    """Whether a file is a stack of slices (a NIfTI, a multi-frame DICOM), written back as one."""
    return header.format == "nifti" or header.slices > 1


def items(path: Path, header: Header) -> list[Item]:
    """The 2-D images a file holds: itself, or each slice of a volume."""
    return [Slice(path, i) for i in range(header.slices)] if is_volume(header) else [path]


def load_pillow(item: Path | Half, channels: int) -> Image.Image:
    """An 8-bit image (or half of one) as Pillow decodes and converts it (:func:`load_image`); a half is
    cut from the whole image in RGB, then converted."""
    if isinstance(item, Half):
        return to_mode(item.cut(load_image(item.path, 3)), channels)
    return load_image(item, channels)


def read(item: Item | BinaryIO, axis: int = 2) -> np.ndarray:
    """One image, slice or half as float32 C×H×W in the file's own values; NaN or infinite values are
    refused.

    An 8-bit Pillow image is not read here (see :func:`load_pillow`).
    """
    if isinstance(item, Half):
        return item.cut_values(read(item.path, axis))
    source: Source = item.path if isinstance(item, Slice) else item
    index = item.index if isinstance(item, Slice) else 0
    try:
        array = _read(source, index, axis)
    except (CycleGANError, UnreadableImage):
        raise
    except Exception as err:  # each library raises its own types for broken files
        raise UnreadableImage(f"{_name(source)}: {first_line(err)}") from None
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise UnreadableImage(f"{item if isinstance(item, (Path, Slice)) else 'the upload'} holds NaN or"
                              " infinite values; replace them (e.g. numpy.nan_to_num) first")  # fmt: skip
    return array


def _read(source: Source, index: int, axis: int) -> np.ndarray:
    fmt = _format(source)
    if fmt == "png16":
        return _read_png16(source)
    if fmt == "tiff":
        import tifffile

        with tifffile.TiffFile(_seekable(source)) as tif:
            series = tif.series[0]
            array, axes = series.asarray(), series.axes
        return _channels_first(array, axes).astype(np.float32)
    if fmt == "dicom":
        return _dicom_frames(_dicom(source))[index]
    if fmt == "nifti":
        image = _nifti(source)
        shape = _volume_shape(image)
        slicer = tuple(index if i == axis else slice(None) for i in range(3))
        volume = image.dataobj if len(image.shape) == 3 else np.asarray(image.dataobj).reshape(shape)
        return np.asarray(volume[slicer], dtype=np.float32)[None]
    raise UnreadableImage(f"{_name(source)} is an 8-bit image, read by Pillow")


def _read_png16(source: Source) -> np.ndarray:
    """A 16-bit PNG: Pillow reads grey ones losslessly and fast; pypng every kind (colour too)."""
    if _probe_png16(_head(source, 26)).kind.channels == 1:
        with Image.open(source) as image:
            return np.asarray(image).astype(np.float32)[None]
    import png

    reader = png.Reader(filename=str(source)) if isinstance(source, Path) else png.Reader(file=source)
    width, height, rows, info = reader.asDirect()
    return np.vstack(list(rows)).reshape(height, width, info["planes"]).transpose(2, 0, 1).astype(np.float32)


def _channels_first(array: np.ndarray, axes: str) -> np.ndarray:
    if axes == "YX":
        return array[None]
    if axes == "YXS":
        return array.transpose(2, 0, 1)
    if axes == "SYX":
        return array
    raise UnreadableImage(f"a TIFF of axes {axes} is not one 2-D image")


def _dicom_frames(ds: Any) -> np.ndarray:
    """Every frame as F×C×H×W float32 modality values (stored values through the rescale)."""
    _probe_dicom(ds)
    frames, channels = int(ds.get("NumberOfFrames", 1) or 1), int(ds.get("SamplesPerPixel", 1))
    try:
        stored = ds.pixel_array
    except (RuntimeError, NotImplementedError, ValueError):  # no plugin decodes this kind of compression
        raise UnreadableImage(_no_decoder(ds.file_meta.get("TransferSyntaxUID"))) from None
    pixels = stored.reshape(frames, int(ds.Rows), int(ds.Columns), channels)
    slope, intercept = _rescale(ds)
    return (pixels.transpose(0, 3, 1, 2).astype(np.float64) * slope + intercept).astype(np.float32)


def read_stack(path: Path, axis: int = 2) -> np.ndarray:
    """Every slice of a file as N×C×H×W float32 (N is 1 for an image): what translation takes."""
    header = probe(path, axis)
    return np.stack([read(item, axis) for item in items(path, header)])


# Writing.


def output_suffix(source: Path, dtype: str) -> str:
    """The suffix of a translation of ``source`` whose values are of ``dtype``: the source's own container
    where it holds that type (PNG holds 8 and 16 bits), else TIFF."""
    own = suffix(source)
    if own in (*DICOM_SUFFIXES, *NIFTI_SUFFIXES, ".tif", ".tiff"):
        return own
    if own == ".png" and dtype in ("uint8", "uint16"):
        return ".png"
    return ".tif"


def _integers(values: np.ndarray, dtype: np.dtype, low: float, high: float) -> np.ndarray:
    return np.clip(np.rint(values), low, high).astype(dtype)


def encode(
    values: np.ndarray, source: Path, dtype: str, axis: int = 2, dst_suffix: str | None = None
) -> bytes:
    """A translation (N×C×H×W float64 in the target's units) as the bytes of a file of ``source``'s kind:
    PNG or TIFF of ``dtype``; DICOM or NIfTI with ``source``'s header."""
    kind = dst_suffix or output_suffix(source, dtype)
    if kind in DICOM_SUFFIXES:
        return _encode_dicom(values, source)
    if kind in NIFTI_SUFFIXES:
        data = _encode_nifti(values, source, axis)
        return gzip.compress(data, mtime=0) if kind == ".nii.gz" else data
    image = values[0].transpose(1, 2, 0)
    target = np.dtype(dtype)
    if target.kind in "iu":
        info = np.iinfo(target)
        image = _integers(image, target, info.min, info.max)
    else:
        image = image.astype(target)
    buffer = io.BytesIO()
    if kind == ".png":
        _write_png(buffer, image)
    else:
        import tifffile

        photometric = "rgb" if image.shape[2] == 3 else "minisblack"
        tifffile.imwrite(buffer, image[:, :, 0] if image.shape[2] == 1 else image, photometric=photometric)
    return buffer.getvalue()


def _write_png(buffer: BinaryIO, image: np.ndarray) -> None:
    """8- or 16-bit grey or RGB PNG (Pillow writes no 16-bit colour PNG; pypng writes every kind)."""
    import png

    height, width, channels = image.shape
    writer = png.Writer(width, height, greyscale=channels == 1, bitdepth=8 * image.dtype.itemsize)
    writer.write(buffer, image.reshape(height, width * channels))


def _encode_dicom(values: np.ndarray, source: Path) -> bytes:
    """The source's dataset with its pixel data replaced: stored values through the source's rescale,
    written uncompressed (Explicit VR Little Endian) under a new SOP Instance UID."""
    ds = _dicom(source)
    header = _probe_dicom(ds)
    if not ds.is_little_endian:
        raise CycleGANError(
            f"{source}: big-endian DICOM (a retired transfer syntax) can be read but not written"
        )
    dtype = _dicom_dtype(ds)
    slope, intercept = _rescale(ds)
    bits = int(ds.get("BitsStored", dtype.itemsize * 8))
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if dtype.kind == "i" else (0, 2**bits - 1)
    stored = _integers((values - intercept) / slope, dtype, low, high)  # N×C×H×W
    frames = stored.transpose(0, 2, 3, 1)  # N×H×W×C
    array = frames[..., 0] if header.kind.channels == 1 else frames
    ds.set_pixel_data(array if header.slices > 1 else array[0], str(ds.PhotometricInterpretation), bits)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _encode_nifti(values: np.ndarray, source: Path, axis: int) -> bytes:
    """The source's header and affine with the slices stacked back along ``axis``; integer volumes keep
    their sample type and scaling."""
    image = _nifti(source)
    volume = np.stack([v[0] for v in values], axis=axis).reshape(image.shape)
    dtype = np.dtype(image.get_data_dtype())
    slope, intercept = _nifti_scaling(image)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        volume = _integers((volume - intercept) / slope, dtype, info.min, info.max)
    else:
        volume = volume.astype(dtype)
    out = type(image)(volume, image.affine, image.header)
    if dtype.kind in "iu":
        out.header.set_slope_inter(slope, intercept)  # a new image forgets the source's scaling
    return out.to_bytes()
