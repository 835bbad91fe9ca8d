"""``cyclegan data check``: what is in a dataset folder, and whether training will accept it.

Every image is fully decoded, so the files training would skip (corrupt, truncated) are named before it
starts. Images are found by the rules of ``cyclegan.data``: recursively, by extension, hidden files ignored.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from cyclegan.data import formats
from cyclegan.data.datasets import SPLITS, is_image_file, visible_files
from cyclegan.data.images import DECODE_ERRORS, load_image
from cyclegan.data.paired import ALIGNED_SPLITS, Pair, aligned_pairs, matched_pairs
from cyclegan.errors import CycleGANError, first_line

_LISTED = 20  # longer lists of files are cut, with a count of the rest


@dataclass
class SplitReport:
    """One folder of images: what decodes, at which sizes and modes, and what does not."""

    name: str
    path: Path
    exists: bool
    sizes: Counter[tuple[int, int]] = field(default_factory=Counter)
    modes: Counter[str] = field(default_factory=Counter)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)

    @property
    def images(self) -> int:
        """Readable images (the ones training can use)."""
        return sum(self.sizes.values())


@dataclass
class Pairing:
    """What a paired model (pix2pix) finds in the training images: its pairs, and the files it skips (or,
    with no pair at all, why)."""

    pairs: int
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    why_none: str = ""

    @property
    def summary(self) -> str:
        if not self.pairs:
            return f"none ({self.why_none})"
        skipped = f", {len(self.skipped)} {'file' if len(self.skipped) == 1 else 'files'} skipped"
        return f"{self.pairs} {'pair' if self.pairs == 1 else 'pairs'}" + (skipped if self.skipped else "")


@dataclass
class DataReport:
    """``root`` is the dataset folder, or None when two domain folders were checked."""

    root: Path | None
    splits: list[SplitReport]
    train_splits: tuple[str, ...]
    others: list[str]
    problems: list[str]
    warnings: list[str]
    pairing: Pairing | None = None

    @property
    def will_train(self) -> bool:
        return not self.problems


def check_data(root: Path) -> DataReport:
    """Report on a dataset folder in the reference layout: trainA/, trainB/, testA/, testB/, or side-by-side
    A|B images in train/, val/, test/ (the layout of the reference's paired datasets)."""
    root = Path(root)
    _require_folder(root)
    aligned = (root / "train").is_dir()  # what pix2pix trains on when there is both
    unpaired = not aligned or any((root / name).is_dir() for name in SPLITS)
    names = (SPLITS if unpaired else ()) + (ALIGNED_SPLITS if aligned else ())
    others = sorted(
        p.name + ("/" if p.is_dir() else "")
        for p in root.iterdir()
        if p.name not in names and not p.name.startswith(".")
    )
    splits = [_check_split(name, root / name) for name in names]
    pairing = None
    if aligned:
        pairing = _pairing(aligned_pairs, root / "train", 0)
    elif _has_both(splits):
        pairing = _pairing(matched_pairs, root / "trainA", root / "trainB")
    return _report(root, splits, (SPLITS[0], SPLITS[1]) if unpaired else ("train",), others, pairing)


def check_domains(domain_a: Path, domain_b: Path) -> DataReport:
    """Report on two folders of training images given directly (``--domain_a``/``--domain_b``)."""
    for folder in (domain_a, domain_b):
        _require_folder(Path(folder))
    splits = [_check_split("domain A", Path(domain_a)), _check_split("domain B", Path(domain_b))]
    pairing = _pairing(matched_pairs, Path(domain_a), Path(domain_b)) if _has_both(splits) else None
    return _report(None, splits, ("domain A", "domain B"), [], pairing)


def _report(
    root: Path | None,
    splits: list[SplitReport],
    train_splits: tuple[str, ...],
    others: list[str],
    pairing: Pairing | None,
) -> DataReport:
    problems, warnings = _verdict(splits, train_splits)
    if len(train_splits) == 1 and not problems and pairing is not None and not pairing.pairs:
        problems.append(f"{_label(splits[0])} holds no usable pair")
    return DataReport(root, splits, train_splits, others, problems, warnings, pairing)


def _has_both(splits: list[SplitReport]) -> bool:
    return all(split.images for split in splits[:2])


def _pairing(find: Callable[..., tuple[list[Pair], list[tuple[Path, str]]]], *args: Any) -> Pairing:
    try:
        pairs, skipped = find(*args)
    except CycleGANError as err:
        return Pairing(0, why_none=str(err))
    return Pairing(len(pairs), skipped)


def _require_folder(path: Path) -> None:
    if not path.exists():
        raise CycleGANError(f"no such folder: {path}")
    if not path.is_dir():
        raise CycleGANError(f"not a folder: {path}")


def _check_split(name: str, path: Path) -> SplitReport:
    report = SplitReport(name, path, path.is_dir())
    if not report.exists:
        return report
    for file in visible_files(path):
        if not is_image_file(file):
            report.ignored.append(file)
            continue
        try:
            size, mode = _decode(file)
        except DECODE_ERRORS as err:
            report.unreadable.append((file, first_line(err).removeprefix(f"{file}: ")))
            continue
        report.sizes[size] += 1
        report.modes[mode] += 1
    return report


def _decode(file: Path) -> tuple[tuple[int, int], str]:
    """Decode a file as training would; its (width, height) (a volume's slices') and its mode: Pillow's
    for what Pillow opens (16-bit PNG included), else the kind (``1-channel int16``...)."""
    try:
        header: formats.Header | None = formats.probe(file)
    except formats.UnreadableImage:
        if formats.suffix(file) in (*formats.DICOM_SUFFIXES, *formats.NIFTI_SUFFIXES):
            raise
        header = None  # Pillow's decoder names the problem (corrupt, truncated, too large)
    if header is None or header.kind.eight_bit:  # the training decoder: EXIF rotation, modes, pixel limit
        return load_image(file).size, _header_mode(file)
    formats.read_stack(file)  # every slice, as training reads them (NaN and undecodable ones refused)
    return header.size, _header_mode(file) if header.format == "png16" else str(header.kind)


def _header_mode(file: Path) -> str:
    """The file's own pixel mode (RGB, L, I;16, P…), which training converts to RGB or grey."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(file) as image:
            return image.mode


def _verdict(splits: list[SplitReport], train_splits: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Problems stop training from starting; warnings are worth knowing but do not."""
    problems: list[str] = []
    warnings: list[str] = []
    by_name = {s.name: s for s in splits}
    for name in train_splits:
        split = by_name[name]
        if not split.exists:
            problems.append(f"{_label(split)} is missing ({split.path})")
        elif split.unreadable and not split.images:
            problems.append(f"{_label(split)} has no readable images ({len(split.unreadable)} unreadable)")
        elif not split.images:
            problems.append(f"{_label(split)} has no images")
    for split in splits:
        if split.unreadable:
            consequence = "training skips them" if split.name in train_splits else "translating them fails"
            warnings.append(f"{len(split.unreadable)} unreadable images in {_label(split)}: {consequence}")
    return problems, warnings


def _label(split: SplitReport) -> str:
    return split.name if split.name.startswith("domain") else f"{split.name}/"


def format_report(report: DataReport) -> str:
    """The text ``cyclegan data check`` prints."""
    if report.root is None:
        lines = ["Domain folders: " + ", ".join(f"{s.name} = {s.path}" for s in report.splits)]
    else:
        lines = [f"Dataset {report.root}"]
    width = max(len(_label(s)) for s in report.splits)
    for split in report.splits:
        label = _label(split).ljust(width)
        if not split.exists:
            lines.append(f"  {label}  missing ({split.path})")
            continue
        line = f"  {label}  {split.images:6d} {'image ' if split.images == 1 else 'images'}"
        if split.sizes:
            line += f"  sizes {_sizes(split.sizes)}  modes {_counts(split.modes)}"
        if split.unreadable:
            line += f"  unreadable {len(split.unreadable)}"
        if split.ignored:
            line += f"  not images {len(split.ignored)}"
        lines.append(line)
    all_sizes: Counter[tuple[int, int]] = sum((s.sizes for s in report.splits), Counter())
    if all_sizes:
        lines.append(f"Sizes: {_sizes(all_sizes)}")
    unreadable = [(p, why) for s in report.splits for p, why in s.unreadable]
    lines += _listing(
        "Unreadable (decoding failed)", [f"{_relative(p, report)}: {why}" for p, why in unreadable]
    )
    ignored = [p for s in report.splits for p in s.ignored]
    lines += _listing("Not images, ignored by training", [_relative(p, report) for p in ignored])
    if report.others:
        lines.append(f"Not used by training: {', '.join(report.others)}")
    lines += [f"Warning: {w}" for w in report.warnings]
    if report.pairing is not None:
        lines.append(f"Pairs for paired models (pix2pix): {report.pairing.summary}")
        skipped = [f"{_relative(p, report)}: {why}" for p, why in report.pairing.skipped]
        lines += _listing("Skipped by paired models", skipped)
    trained = [next(s for s in report.splits if s.name == n) for n in report.train_splits]
    if report.will_train:
        counts = ", ".join(f"{_label(s)} {_images(s.images)}" for s in trained)
        paired = " paired models only" if len(trained) == 1 else ""
        lines.append(f"Verdict: will train{paired} ({counts})")
    else:
        lines.append("Verdict: will not train: " + "; ".join(report.problems))
    return "\n".join(lines)


def _images(n: int) -> str:
    return f"{n} image" if n == 1 else f"{n} images"


def _sizes(sizes: Counter[tuple[int, int]]) -> str:
    def text(size: tuple[int, int]) -> str:
        return f"{size[0]}x{size[1]}"

    by_area = sorted(sizes, key=lambda s: (s[0] * s[1], s))
    common, count = sizes.most_common(1)[0]
    if len(sizes) == 1:
        return f"{text(common)} (all)"
    total = sum(sizes.values())
    return f"min {text(by_area[0])}, max {text(by_area[-1])}, most common {text(common)} ({count}/{total})"


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{key} {count}" for key, count in counter.most_common())


def _relative(path: Path, report: DataReport) -> str:
    """A file name as one printable line: control characters and undecodable bytes are escaped."""
    name = str(path.relative_to(report.root) if report.root is not None else path)
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in name)


def _listing(title: str, items: list[str]) -> list[str]:
    if not items:
        return []
    lines = [f"{title} ({len(items)}):"] + [f"  {item}" for item in items[:_LISTED]]
    if len(items) > _LISTED:
        lines.append(f"  … and {len(items) - _LISTED} more")
    return lines
