"""Translating folders of images: decode ahead, batch same-size images, write behind, resume, shard.

``cyclegan translate`` is this module. Under torchrun each process takes every WORLD_SIZE-th input, so a
collection splits over GPUs and machines without overlap and without a process group.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from tqdm import tqdm

from cyclegan.config import IMAGE_FORMATS, TranslateOptions
from cyclegan.data import formats
from cyclegan.data.datasets import list_images
from cyclegan.data.images import DECODE_ERRORS, DEFAULT_MAX_PIXELS, first_line, to_image
from cyclegan.data.intensity import Conversion, load_mapped
from cyclegan.devices import resolve_device
from cyclegan.distributed import TorchrunEnv
from cyclegan.errors import CycleGANError
from cyclegan.files import atomic_write
from cyclegan.translation.translator import AnyTranslator, load_translator


@dataclass
class Translated:
    """What one :func:`translate_files` call did."""

    written: list[Path]
    skipped: list[Path]  # outputs that were already there
    unreadable: list[Path]  # inputs that could not be decoded
    shard: TorchrunEnv = field(default_factory=TorchrunEnv)

    def summary(self) -> str:
        where = f"{self.shard.label}: " if self.shard.label else ""
        return (
            f"{where}{len(self.written)} translated, {len(self.skipped)} skipped (already done), "
            f"{len(self.unreadable)} unreadable"
        )


class UnreadableImages(CycleGANError):
    """Raised after everything readable is written, so the CLI exits 2 with the summary as its line."""

    def __init__(self, done: Translated) -> None:
        self.done = done
        super().__init__(f"{done.summary()} (first unreadable: {done.unreadable[0]})")


def collect_inputs(
    inputs: Iterable[Path], out_dir: Path, suffix: str | Callable[[Path], str] = ".png"
) -> list[tuple[Path, Path]]:
    """(source, destination) pairs: a file keeps its name, a folder's images keep their relative paths;
    every output gets ``suffix``, or ``suffix(source)`` (lossless PNG unless asked otherwise). An input
    folder that holds ``out_dir`` gives none of the images in it: outputs never become inputs of the next
    run."""
    if out_dir.exists() and not out_dir.is_dir():
        raise CycleGANError(f"--out {out_dir} exists and is not a folder")
    ending = suffix if callable(suffix) else lambda _: suffix

    def renamed(path: Path, relative: Path) -> Path:
        return out_dir / relative.parent / (formats.stem(path) + ending(path))

    outputs = out_dir.resolve()
    pairs: list[tuple[Path, Path]] = []
    for item in map(Path, inputs):
        if item.is_dir():
            images = list_images(item)
            if outputs != item.resolve():
                images = [p for p in images if not p.parent.resolve().is_relative_to(outputs)]
            pairs += [(p, renamed(p, p.relative_to(item))) for p in images]
        elif item.is_file():
            pairs.append((item, renamed(item, Path(item.name))))
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
    model: AnyTranslator | Path | str,
    out_dir: Path,
    *,
    direction: str = "AtoB",
    device: torch.device | str = "cpu",
    backend: str = "torch",
    precision: str = "fp32",
    overwrite: bool = False,
    image_format: str | None = TranslateOptions.image_format,
    quality: int = TranslateOptions.quality,
    batch_size: int | None = None,
    num_workers: int | None = None,
    shard: TorchrunEnv | None = None,
    max_pixels: int = TranslateOptions.max_pixels,
    tile: int | None = None,
    max_memory: int | None = None,
    show_progress: bool = True,
) -> Translated:
    """Translate image files and folders into ``out_dir``, each at its own size.

    By default each translation is written losslessly: as 8-bit PNG for a model trained on 8-bit images,
    else in the input's own kind with the target domain's sample type (16-bit PNG, TIFF, DICOM with the
    source's header, NIfTI volumes with the source's affine; see :mod:`cyclegan.data.formats`).
    ``image_format`` png, jpg or webp asks for 8-bit files instead (the target's window; a volume's middle
    slice); ``quality`` is for JPEG and WebP.

    ``model`` is a ready translator, or a checkpoint that :func:`load_translator` reads with ``direction``,
    ``device`` (``auto``, ``cpu``, ``cuda`` or ``cuda:N``; under torchrun ``auto`` and ``cuda`` mean the
    GPU of the process's local rank), ``backend`` and ``precision``. ``num_workers`` threads (default: one
    per CPU, at most 8) decode ahead and as many encode and write behind while the model runs; same-size
    images are translated ``batch_size`` at a time (default: :func:`default_batch_size`; lower it if memory
    runs out; with ``max_memory`` a batch runs in as many parts as the budget requires).

    Images are converted to the channels the model takes: a grey model gets RGB images as their
    luminance, an RGB model gets grey images copied to all three channels (transparent and palette
    images are put on white first); outputs have the model's output channels.

    Resumable: outputs that already exist are complete (writes are atomic), so they are skipped, not
    redone, unless ``overwrite``. With a ``shard`` (the CLI passes ``TorchrunEnv.read()``, what torchrun
    set) only every ``world_size``-th input from ``rank`` is done, chosen before skipping, so ranks never
    overlap.

    Path problems (an output in the way, a read-only or misplaced folder) fail before anything is written.
    Unreadable images get one warning each and are skipped; if there were any, :class:`UnreadableImages`
    is raised at the end, after everything readable has been written.
    """
    TranslateOptions(image_format, quality, batch_size, num_workers, max_pixels).validate()
    out_dir = Path(out_dir)
    shard = shard or TorchrunEnv()
    if isinstance(model, (str, Path)):
        device = resolve_device(device, shard.local_rank)  # under torchrun: the GPU of the local rank
    collect_inputs(inputs, out_dir)  # missing inputs fail before the model loads; names follow its data
    translator = (
        load_translator(Path(model), direction, device, backend, precision, tile, max_memory)
        if isinstance(model, (str, Path))
        else model
    )
    conversion = translator.conversion
    pairs = collect_inputs(inputs, out_dir, partial(output_suffix, image_format, conversion))
    check_outputs([dst for _, dst in pairs], out_dir)
    mine = pairs[shard.rank :: shard.world_size]
    existing = set() if overwrite else {dst for _, dst in mine if dst.exists()}
    skipped = [dst for _, dst in mine if dst in existing]
    todo = [(src, dst) for src, dst in mine if dst not in existing]
    batch_size = default_batch_size(translator.device) if batch_size is None else batch_size
    num_workers = default_workers() if num_workers is None else num_workers
    progress = tqdm(
        total=len(todo), unit="image", desc=shard.label or None, disable=None if show_progress else True
    )
    with progress as bar:
        save = saver(image_format, quality, conversion, {dst: src for src, dst in todo})
        written, unreadable = _translate_all(translator, todo, save, batch_size, num_workers, max_pixels, bar)
    done = Translated(written, skipped, unreadable, shard)
    if unreadable:
        raise UnreadableImages(done)
    return done


def default_batch_size(device: torch.device) -> int:
    """8 on a GPU, where batches fill the chip; 1 on a CPU, where a batch of 8 paper-sized generators'
    activations spills out of cache and runs 25% slower than one at a time (benchmarks/bulk.py)."""
    return 1 if device.type == "cpu" else 8


def default_workers() -> int:
    """One decoding and one writing thread per CPU, at most 8 of each."""
    return min(8, os.cpu_count() or 1)


def check_outputs(outputs: Sequence[Path], out_dir: Path) -> None:
    """Fail before any work, in one line, if an output cannot be written where it belongs."""
    for dst in outputs:
        if dst.is_dir() or dst.is_symlink():
            raise CycleGANError(f"cannot write {dst}: a folder or link is in the way")
    root = out_dir.resolve()
    for folder in sorted({dst.parent for dst in outputs}):
        existing = next(p for p in (folder, *folder.parents) if p.exists() or p.is_symlink())
        if not existing.is_dir():
            raise CycleGANError(f"cannot write into {folder}: {existing} is not a folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise CycleGANError(f"cannot write into {folder}: {existing} is read-only")
        if not folder.resolve().is_relative_to(root):
            raise CycleGANError(f"cannot write into {folder}: a link there leads out of {out_dir}")


def _translate_all(
    translator: AnyTranslator,
    todo: Sequence[tuple[Path, Path]],
    save: Callable[[Path, torch.Tensor], None],
    batch_size: int,
    workers: int,
    max_pixels: int,
    bar: tqdm,
) -> tuple[list[Path], list[Path]]:
    """Decode ahead, translate same-size batches, write behind; returns (written, unreadable). The slices of
    a volume are translated ``batch_size`` at a time as soon as it is decoded, and written as one file."""
    unreadable: list[Path] = []
    sources = [src for src, _ in todo]
    conversion = translator.conversion

    def images(items: Iterable[tuple[int, torch.Tensor]]) -> Iterator[tuple[int, torch.Tensor]]:
        for i, x in items:
            if x.dim() == 3:
                yield i, x
            else:
                slices = [translator.translate_tensor(part).cpu() for part in x.split(batch_size)]
                writer.submit(todo[i][1], torch.cat(slices))

    with (
        Writer(save, workers, 2 * batch_size, on_written=bar.update) as writer,
        closing(
            decode_ahead(
                sources, translator.in_channels, workers, 2 * batch_size + workers, max_pixels, conversion
            )
        ) as decoded,
    ):
        for batch in same_size_batches(images(_readable(decoded, sources, unreadable, bar)), batch_size):
            y = translator.translate_tensor(torch.stack([x for _, x in batch])).cpu()
            for (i, _), result in zip(batch, y, strict=True):
                writer.submit(todo[i][1], result)
    return writer.written, unreadable


def output_suffix(image_format: str | None, conversion: Conversion, source: Path) -> str:
    """The suffix of ``source``'s translation: the asked format's, 8-bit PNG's for 8-bit data, else the
    input's own kind's (:func:`cyclegan.data.formats.output_suffix`)."""
    if image_format is not None:
        return f".{image_format}"
    return ".png" if conversion.target.eight_bit else formats.output_suffix(source, conversion.target.dtype)


def saver(
    image_format: str | None,
    quality: int,
    conversion: Conversion | None = None,
    sources: Mapping[Path, Path] | None = None,
) -> Callable[[Path, torch.Tensor], None]:
    """Writes a result in [-1, 1] (C×H×W, or N×C×H×W for a volume) atomically: as an 8-bit
    ``image_format`` file (the target domain's window; a volume's middle slice), or with ``image_format``
    None losslessly, in the kind of its source (``sources``: destination -> input) through the target
    domain's inverse mapping."""
    conversion = conversion or Conversion()
    preview = image_format is not None or conversion.target.eight_bit
    chosen = image_format or "png"
    options = {"quality": quality} if chosen != "png" else {}

    def save(dst: Path, y: torch.Tensor) -> None:
        if preview:
            image = to_image(y if y.dim() == 3 else y[len(y) // 2])
            atomic_write(dst, lambda tmp: image.save(tmp, format=IMAGE_FORMATS[chosen], **options))
            return
        assert sources is not None, "lossless outputs are written in their source's kind"
        values = conversion.target.inverse(y if y.dim() == 4 else y[None])
        data = formats.encode(
            values, sources[dst], conversion.target.dtype, conversion.slice_axis, formats.suffix(dst)
        )
        atomic_write(dst, lambda tmp: tmp.write_bytes(data))

    return save


def decode_ahead(
    paths: Sequence[Path],
    channels: int,
    threads: int,
    ahead: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    conversion: Conversion | None = None,
) -> Generator[torch.Tensor | str, None, None]:
    """Each image as a C×H×W tensor in [-1, 1] (a volume as N×C×H×W; or the reason it cannot be read), in
    order, mapped by ``conversion``'s source mapping, decoded by ``threads`` threads at most ``ahead``
    images ahead of the consumer.

    Threads, not DataLoader processes: Pillow and torch release the GIL while decoding and scaling, and
    threads start instantly and pass tensors without copying (benchmarks/bulk.py measures both).
    """

    source = (conversion or Conversion()).source
    axis = (conversion or Conversion()).slice_axis

    def decode(path: Path) -> torch.Tensor | str:
        try:
            return load_mapped(path, source, channels, axis, max_pixels)
        except DECODE_ERRORS as error:
            return first_line(error)

    with ThreadPoolExecutor(threads, thread_name_prefix="decode") as pool:
        waiting: deque[Future[torch.Tensor | str]] = deque()
        for path in paths:
            waiting.append(pool.submit(decode, path))
            if len(waiting) > ahead:
                yield waiting.popleft().result()
        while waiting:
            yield waiting.popleft().result()


def _readable(
    decoded: Iterable[torch.Tensor | str],
    sources: Sequence[Path],
    unreadable: list[Path],
    bar: tqdm,
) -> Iterator[tuple[int, torch.Tensor]]:
    """(index, tensor) for each decoded image; one warning for each unreadable one, which is counted."""
    for i, x in enumerate(decoded):
        if isinstance(x, str):
            bar.write(f"warning: cannot read {sources[i]} as an image ({x}); skipped", file=sys.stderr)
            unreadable.append(sources[i])
            bar.update()
        else:
            yield i, x


def same_size_batches(
    items: Iterable[tuple[int, torch.Tensor]], batch_size: int, hold: int = 4
) -> Iterator[list[tuple[int, torch.Tensor]]]:
    """Group (index, C×H×W) items into batches of one shape, in arrival order within a shape.

    Items wait in a bucket per shape until it is full; at most ``hold`` batches' worth wait in all (the
    fullest bucket goes first when a folder has many sizes), so memory stays bounded.
    """
    buckets: dict[torch.Size, list[tuple[int, torch.Tensor]]] = {}
    waiting = 0
    for index, x in items:
        bucket = buckets.setdefault(x.shape, [])
        bucket.append((index, x))
        waiting += 1
        if len(bucket) == batch_size or waiting > hold * batch_size:
            full = buckets.pop(max(buckets, key=lambda shape: len(buckets[shape])))
            waiting -= len(full)
            yield full
    yield from buckets.values()


class Writer:
    """Saves results in background threads while the model runs; at most ``limit`` wait to be written,
    so memory stays bounded. The first failed write is raised in the caller's thread."""

    def __init__(
        self,
        save: Callable[[Path, torch.Tensor], None],
        threads: int,
        limit: int,
        on_written: Callable[[], object],
    ) -> None:
        self.save, self.limit, self.on_written = save, limit, on_written
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="write")
        self.waiting: deque[tuple[Path, Future[None]]] = deque()
        self.written: list[Path] = []

    def submit(self, dst: Path, y: torch.Tensor) -> None:
        self.waiting.append((dst, self.pool.submit(self.save, dst, y)))
        while self.waiting and (len(self.waiting) > self.limit or self.waiting[0][1].done()):
            self._collect()

    def _collect(self) -> None:
        dst, future = self.waiting.popleft()
        future.result()
        self.written.append(dst)
        self.on_written()

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, error_type: type[BaseException] | None, *_: object) -> None:
        """Writes already queued are finished, even after an error: their work is not thrown away."""
        try:
            while self.waiting and error_type is None:
                self._collect()
        finally:
            self.pool.shutdown(wait=True)
