"""Scoring a model trained on data that is not 8-bit (16-bit, float, DICOM, NIfTI) in the data's own range.

Nothing is quantised: translations are compared as float64 values in the target domain's units, each
domain's values scaled by its window width (so an L1 of 0.01 is 1% of the window, and PSNR and SSIM use the
window width as the data range; values outside the window count as they are). Volumes are scored slice by
slice. Translations are written in their inputs' own kind, as ``cyclegan translate`` writes them.
Inception-based FID and KID are not computed unless asked for: an ImageNet network's features say little
about CT, MR or microscopy images, so the result notes their absence instead. Asked for, they are computed on
every slice seen through its domain's window as an 8-bit picture (:data:`WINDOWED_FID_NOTE`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from cyclegan.data import formats
from cyclegan.data.images import DEFAULT_MAX_PIXELS, open_image, to_image
from cyclegan.data.intensity import Conversion, Intensity
from cyclegan.errors import CycleGANError
from cyclegan.evaluation import metrics
from cyclegan.evaluation.triplets import ROWS, Triplet
from cyclegan.files import atomic_write_bytes
from cyclegan.translation.translator import Translator, translate_values

OTHER = {"AtoB": "BtoA", "BtoA": "AtoB"}
FID_NOTE = (
    "FID/KID omitted: their Inception network was trained on 8-bit photographs, and its features mean"
    " little for 16-bit, float or medical images"
)
WINDOWED_FID_NOTE = (
    "FID/KID (asked for) on every slice seen through its domain's window as an 8-bit picture: their Inception"
    " network was trained on photographs, so compare runs on the same data only, not with published figures"
)


def read_values(path: Path, intensity: Intensity, channels: int, axis: int) -> np.ndarray:
    """A file's values as N×C×H×W float32 in its own units (N slices of a volume, 1 for an image); a file
    that cannot be read is a one-line error, as for 8-bit evaluation."""
    try:
        header = formats.probe(path, axis, DEFAULT_MAX_PIXELS)
        if header.kind.eight_bit:
            return formats.pillow_values(open_image(path, channels))[None]
        values = formats.read_stack(path, axis)
    except formats.UnreadableImage as err:
        raise CycleGANError(f"cannot read image {err}") from None
    if values.shape[1] != channels:
        raise CycleGANError(f"{path} has {values.shape[1]} channel(s); the model takes {channels}")
    return values


def _unit(values: np.ndarray, intensity: Intensity) -> torch.Tensor:
    """Values scaled by a window: 0 at its low end, 1 at its high end (not clipped)."""
    low, high = intensity.window
    return torch.from_numpy((np.asarray(values, np.float64) - low) / (high - low))


def _preview(values: np.ndarray, intensity: Intensity) -> Image.Image:
    """N×C×H×W values as an 8-bit picture through the domain's window (a volume's middle slice)."""
    return to_image(intensity.forward(values[len(values) // 2]))


def _write_previews(values: np.ndarray, intensity: Intensity, folder: Path, key: Path) -> None:
    """Each slice of N×C×H×W values through the window as an 8-bit PNG in ``folder``, for FID/KID."""
    for i, values_slice in enumerate(values):
        path = folder / f"{key}.{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        to_image(intensity.forward(values_slice)).save(path)


def _paired(row: defaultdict[str, list[float]], x: torch.Tensor, truth: torch.Tensor) -> None:
    if x.shape != truth.shape:
        raise CycleGANError(f"paired images differ in shape: {tuple(x.shape)} and {tuple(truth.shape)}")
    row["PSNR"] += metrics.psnr(x, truth).clamp(max=metrics.PSNR_CAP).tolist()
    row["SSIM"] += metrics.ssim(x, truth).tolist()


def score_values(
    translators: Mapping[str, Translator],
    sources: Mapping[str, Mapping[Path, Path]],
    paired: bool,
    out_dir: Path,
    method: str,
    baseline: str,
    show_progress: bool = True,
    triplets: list[Triplet] | None = None,
    previews: Path | None = None,
) -> dict[tuple[str, str], dict[str, float]]:
    """Translate each split with its forward generator into ``out_dir/DIRECTION`` and score it: cycle L1
    and PSNR, identity L1, and with ``paired`` PSNR/SSIM against testB/X (and the untranslated baseline).
    ``sources`` maps "A"/"B" to {name without suffix: file}. Returns {(method, direction): {score: mean}};
    with ``paired``, the first (input, output, target) of each direction, as seen through the domains'
    windows, are added to ``triplets``. With ``previews``, every slice of the inputs and translations is
    written there through its window as an 8-bit PNG, ``real_A``, ``real_B`` and one folder per direction."""
    scores: defaultdict[tuple[str, str], defaultdict[str, list[float]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for direction, (side, target_side) in (("AtoB", ("A", "B")), ("BtoA", ("B", "A"))):
        forward, backward = translators.get(direction), translators.get(OTHER[direction])
        either = forward or backward
        assert either is not None, "a split is scored by at least one generator"
        flipped = either.conversion
        conversion = (
            flipped if forward is not None else Conversion(flipped.target, flipped.source, flipped.slice_axis)
        )
        source, target, axis = conversion.source, conversion.target, conversion.slice_axis
        row, back_row = scores[(method, direction)], scores[(method, OTHER[direction])]
        shown = 0
        items = tqdm(sources[side].items(), desc=direction, disable=not show_progress, unit="image")
        for key, path in items:
            x = read_values(path, source, either.in_channels, axis)
            if previews is not None:
                _write_previews(x, source, previews / f"real_{side}", key)
            if backward is not None and backward.config.input_nc == backward.config.output_nc:
                mapped = source.forward(x)
                back_row["identity L1"].append(
                    float((backward.translate_tensor(mapped) - mapped).abs().mean() / 2)
                )
            if forward is None:
                continue
            fake = translate_values(forward, x)
            suffix = formats.output_suffix(path, target.dtype)
            dst = out_dir / direction / key.with_name(key.name + suffix)
            data = formats.encode(fake, path, target.dtype, axis, suffix)
            atomic_write_bytes(dst, data)
            if previews is not None:
                _write_previews(fake, target, previews / direction, key)
            if backward is not None:
                cycled = _unit(translate_values(backward, fake), source)
                row["cycle L1"].append(float((cycled - _unit(x, source)).abs().mean()))
                row["cycle PSNR"] += (
                    metrics.psnr(cycled, _unit(x, source)).clamp(max=metrics.PSNR_CAP).tolist()
                )
            if paired:
                truth_values = read_values(sources[target_side][key], target, fake.shape[1], axis)
                truth = _unit(truth_values, target)
                _paired(row, _unit(fake, target), truth)
                _paired(scores[(baseline, direction)], _unit(x, source), truth)
                if triplets is not None and shown < ROWS:
                    triplets.append(
                        (_preview(x, source), _preview(fake, target), _preview(truth_values, target))
                    )
                    shown += 1
    return {key: {c: float(np.mean(v)) for c, v in row.items()} for key, row in scores.items()}


def protocol(translators: Mapping[str, Translator]) -> dict[str, str]:
    """How the values were scored, with each domain's window."""
    first = next(iter(translators.values()))
    windows = {"A": first.conversion.source, "B": first.conversion.target}
    if next(iter(translators)) == "BtoA":
        windows = {"A": windows["B"], "B": windows["A"]}
    described = {
        f"window {side}": f"{w.low:g}..{w.high:g} ({w.how}; {w.dtype})" if not w.eight_bit else w.how
        for side, w in windows.items()
    }
    return {
        **described,
        "values": "float64 in each domain's own units, never quantised; translations written in the inputs'"
        " own kind",
        "cycle, identity": "mean absolute error as a fraction of the window width, and PSNR with the window"
        f" width as the data range; identical images count as {metrics.PSNR_CAP:g} dB",
        "PSNR/SSIM": "against the ground truth in the target domain's units, the window width as the data"
        " range; volumes slice by slice",
    }
