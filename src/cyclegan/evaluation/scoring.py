"""Scoring a trained model on a dataset's test split, beside the no-op baseline of the untranslated input.

For G (A→B) and F (B→A): FID and KID of the translations against the real test images of the target
domain, cycle consistency, identity, and PSNR/SSIM against ground truth where the test split is paired.
Every generated image is quantised to 8 bits before it is scored, exactly as saving it as PNG does, so the
scores computed in memory during training equal those ``cyclegan eval`` reports for the same weights.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from cyclegan.config import NetConfig
from cyclegan.data import formats
from cyclegan.data.datasets import list_images
from cyclegan.data.demo_scenes import DEMO_MARKER
from cyclegan.data.formats import Half
from cyclegan.data.images import open_image, to_unit_tensor
from cyclegan.data.paired import by_stem
from cyclegan.errors import CycleGANError
from cyclegan.evaluation import metrics
from cyclegan.evaluation.results import ResultRow, ResultTable
from cyclegan.evaluation.runfiles import read_config
from cyclegan.evaluation.triplets import ROWS, Triplet, save_triplets
from cyclegan.evaluation.values import FID_NOTE, WINDOWED_FID_NOTE, score_values
from cyclegan.evaluation.values import protocol as value_protocol
from cyclegan.files import atomic_write, atomic_write_bytes
from cyclegan.layout import CONFIG, EVAL_FILE, TRIPLETS
from cyclegan.models import Model, evaluating, model_type
from cyclegan.models.checkpoints import read_options, resolve_checkpoint, translations
from cyclegan.translation.translator import Translator

BASELINE = "untranslated input"
ARROWS = {"AtoB": "A→B", "BtoA": "B→A"}  # how directions are shown
OTHER = {"AtoB": "BtoA", "BtoA": "AtoB"}
SOURCE = {"AtoB": "A", "BtoA": "B"}
TARGET = {"AtoB": "B", "BtoA": "A"}
DISTRIBUTION_COLUMNS = ("FID", "KID", "KID std")  # need the Inception network
COLUMNS = (*DISTRIBUTION_COLUMNS, "cycle L1", "cycle PSNR", "identity L1")
PAIRED_COLUMNS = ("PSNR", "SSIM")
FORMATS = {"FID": "{:.2f}", "cycle PSNR": "{:.2f}", "PSNR": "{:.2f}"}
KID_SUBSET_SIZE = 1000
WINDOWED_FORMAT = "FID/KID on every slice through its domain's window as an 8-bit PNG; the rest on values"

Scores = defaultdict[tuple[str, str], defaultdict[str, list[float]]]


def _unit(image: Image.Image) -> torch.Tensor:
    """1×C×H×W float64 in [0, 1]: the batch shape the paired metrics take, in full precision."""
    return to_unit_tensor(image)[None].double()


def _l1(x: Image.Image, y: Image.Image) -> float:
    return float((_unit(x) - _unit(y)).abs().mean())


def _psnr(x: Image.Image, y: Image.Image) -> float:
    """PSNR in dB, identical images counted as ``PSNR_CAP`` so that means stay finite (and valid JSON)."""
    return float(metrics.psnr(_unit(x), _unit(y)).clamp(max=metrics.PSNR_CAP))


def _images(folder: Path) -> list[Path]:
    files = list_images(folder)
    if not files:
        raise CycleGANError(f"no images in {folder}")
    return files


def split_aligned(folder: Path, scratch: Path) -> tuple[Path, Path]:
    """Write the left (A) and right (B) halves of each side-by-side A|B test image into two folders: 8-bit
    images as PNG, others without loss in their own sample type (16-bit PNG, else TIFF)."""
    folders = scratch / "testA", scratch / "testB"
    for path in _images(folder):
        header = _probe(path)
        if header.size[0] % 2:
            raise CycleGANError(
                f"{path} is {header.size[0]} pixels wide: side-by-side A|B halves need an even width"
            )
        if formats.is_volume(header):
            raise CycleGANError(f"{path} is a volume: side-by-side A|B test images must be 2-D images")
        relative = path.relative_to(folder)
        if header.kind.eight_bit:
            image = open_image(path)
            for side, root in enumerate(folders):
                part = Half(path, side).cut(image)
                atomic_write(root / relative.with_suffix(".png"), partial(part.save, format="PNG"))
            continue
        suffix = ".png" if header.format == "png16" else ".tif"
        values = formats.read(path)
        for side, root in enumerate(folders):
            half = Half(path, side).cut_values(values)[None].astype(np.float64)
            data = formats.encode(half, path, header.kind.dtype, dst_suffix=suffix)
            atomic_write_bytes(root / relative.with_name(formats.stem(relative) + suffix), data)
    return folders


def _probe(path: Path) -> formats.Header:
    try:
        return formats.probe(path)
    except formats.UnreadableImage as err:
        raise CycleGANError(f"cannot read image {err}") from None


def _test_folders(dataroot: Path, scratch: Path) -> tuple[Path, Path, bool]:
    """testA/ and testB/, or the halves of an aligned test/ folder (val/ where there is no test/, as in the
    reference's edges2shoes); the flag says it was aligned."""
    folder_a, folder_b = dataroot / "testA", dataroot / "testB"
    aligned = next((dataroot / s for s in ("test", "val") if (dataroot / s).is_dir()), None)
    if not folder_a.is_dir() and not folder_b.is_dir() and aligned is not None:
        return *split_aligned(aligned, scratch), True
    for folder in (folder_a, folder_b):
        if not folder.is_dir():
            raise CycleGANError(f"{dataroot} has no {folder.name}/ folder of test images")
    return folder_a, folder_b, False


def _check_pairs(sources: dict[str, dict[Path, Path]]) -> None:
    """Paired metrics need testB/X for every testA/X and the other way round."""
    unmatched = sorted(set(sources["A"]) ^ set(sources["B"]))
    if unmatched:
        raise CycleGANError(
            f"paired metrics need testA/X and testB/X for every X, but {unmatched[0]} is in only one "
            "(pass --no-paired to skip them)"
        )


def _add_paired(row: defaultdict[str, list[float]], image: Image.Image, truth: Image.Image) -> None:
    row["PSNR"].append(_psnr(image, truth))
    row["SSIM"].append(float(metrics.ssim(_unit(image), _unit(truth))))


def _score_split(
    direction: str,
    sources: dict[Path, Path],
    truths: dict[Path, Path] | None,
    translators: dict[str, Translator],
    out_dir: Path,
    scores: Scores,
    method: str,
    show_progress: bool,
    triplets: list[Triplet],
) -> list[Path]:
    """Translate one test split into ``out_dir/direction``, scoring each image; returns the written files
    (and adds the first few (input, output, target) to ``triplets`` where the target is known).

    A split feeds both generators: the forward one translates it (and its cycle returns through the other),
    and the other generator's identity term maps it to itself.
    """
    forward, backward = translators.get(direction), translators.get(OTHER[direction])
    either = forward or backward
    assert either is not None, "a split is scored by at least one generator"
    channels = either.in_channels
    identity = backward if backward is not None and _has_identity(backward.config) else None
    row, back_row = scores[(method, direction)], scores[(method, OTHER[direction])]
    written = []
    for key, path in tqdm(sources.items(), desc=ARROWS[direction], disable=not show_progress, unit="image"):
        source = open_image(path, channels)
        if identity is not None:
            back_row["identity L1"].append(_l1(identity(source), source))
        if forward is None:
            continue
        fake = forward(source)
        target = out_dir / direction / key.with_name(f"{key.name}.png")
        atomic_write(target, partial(fake.save, format="PNG"))
        written.append(target)
        if backward is not None:
            cycled = backward(fake)
            row["cycle L1"].append(_l1(cycled, source))
            row["cycle PSNR"].append(_psnr(cycled, source))
        if truths is not None:
            truth = open_image(truths[key], len(fake.getbands()))
            if truth.size != source.size:
                raise CycleGANError(
                    f"{truths[key]} is {truth.width}x{truth.height} but its pair {path} is "
                    f"{source.width}x{source.height}; paired images must have the same size"
                )
            _add_paired(row, fake, truth)
            _add_paired(scores[(BASELINE, direction)], source.convert(truth.mode), truth)
            if len(row["PSNR"]) <= ROWS:
                triplets.append((source, fake, truth))
    return written


def _has_identity(net: NetConfig) -> bool:
    """Whether a generator can map its target domain to itself: only when both domains have the same
    channels (a 1->3-channel model has no identity term)."""
    return net.input_nc == net.output_nc


def _distribution_scores(fake: torch.Tensor, real: torch.Tensor, kid_subsets: int) -> dict[str, float]:
    kid_mean, kid_std = metrics.kid(fake, real, n_subsets=kid_subsets, subset_size=KID_SUBSET_SIZE)
    return {"FID": metrics.fid(fake, real), "KID": kid_mean, "KID std": kid_std}


def real_features(
    inception: nn.Module,
    test_a: list[Path],
    test_b: list[Path],
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 50,
) -> dict[str, torch.Tensor]:
    """Inception features of the real test images, {"A": …, "B": …}: computed once, reused by every score."""
    return {
        "A": metrics.file_features(inception, test_a, batch_size, device),
        "B": metrics.file_features(inception, test_b, batch_size, device),
    }


def _protocol(
    n_a: int, n_b: int, kid_subsets: int, weights: Path | None, supplied: bool
) -> dict[str, str | float]:
    subset_size = min(KID_SUBSET_SIZE, n_a, n_b)
    described = metrics.protocol_description(weights, n_subsets=kid_subsets, subset_size=subset_size)
    if supplied:
        described |= {"network": "supplied by the caller", "weights": "unverified", "weights_sha256": "n/a"}
    return {
        **described,
        "image format": "lossless 8-bit PNG; FID/KID computed on the decoded files",
        "translation": "each test image at its own size (reflect-padded for the generator, cropped back)",
        "N testA": n_a,
        "N testB": n_b,
        "reference A→B": "real testB",
        "reference B→A": "real testA",
        "KID subsets": kid_subsets,
        "KID subset size": subset_size,
        "cycle, identity": "mean absolute error in [0, 1] pixel units and mean PSNR of 8-bit outputs; "
        f"identical images count as {metrics.PSNR_CAP:g} dB",
    }


def _notes(
    n: int,
    net: NetConfig,
    *,
    single: bool,
    paired: bool,
    aligned: bool,
    supplied: bool,
    one_way: bool,
    swapped: bool,
) -> list[str]:
    notes = [f"FID and KID of {n}-image sets are biased by set size: compare only numbers on the same sets"]
    identity = _has_identity(net)
    if single:
        notes.append(
            "reference single-generator checkpoint: only A→B is evaluated; there is no cycle without F"
            + (", and identity L1 is G(testB) vs testB" if identity else "")
        )
    if not identity:
        notes.append(
            f"identity L1 omitted: A images have {net.input_nc} channel(s) and B images {net.output_nc},"
            " so no generator maps a domain to itself"
        )
    if aligned:
        notes.append("aligned test/ images split down the middle: left half is A, right half is B")
    if swapped:
        notes.append(
            "--direction BtoA: the model's A is the data's B and the other way round, as in training"
        )
    if paired:
        both = "" if one_way else ", and vice versa"
        notes.append(f"PSNR/SSIM: the translation of testA/X against testB/X as ground truth{both}")
        notes.append(f"{TRIPLETS}: input | output | target of the first {ROWS} test images per direction")
    else:
        notes.append("no ground-truth pairs: PSNR/SSIM omitted (pass --paired if testA/X and testB/X match)")
    if supplied:
        notes.append("a caller-supplied feature network was used: FID/KID are not the standard ones")
    return notes


def evaluate(
    checkpoint: Path,
    dataroot: Path,
    *,
    out_dir: Path,
    device: torch.device | str = "cpu",
    inception_weights: Path | None = None,
    inception: nn.Module | None = None,
    paired: bool | None = None,
    direction: str | None = None,
    kid_subsets: int = 100,
    batch_size: int = 50,
    show_progress: bool = True,
    windowed_fid: bool = False,
) -> ResultTable:
    """Translate testA with G and testB with F into ``out_dir/AtoB`` and ``out_dir/BtoA`` (PNG, same names,
    each image at its own size), score them and the untranslated inputs, write ``out_dir/eval.json`` and
    return it.

    ``checkpoint`` is a run folder, one of our checkpoints, or a reference single-generator ``.pth``
    (A→B only). ``paired=None`` scores PSNR/SSIM only where ground truth is known to exist: the demo dataset,
    aligned ``test/`` folders and models trained on pairs; with them, ``out_dir/triplets.png`` shows inputs,
    outputs and targets. ``direction`` is the run's ``--direction`` (default: a run folder's, else AtoB):
    BtoA swaps the data's domains, as training did. ``inception`` replaces the verified FID network (tests
    pass a stand-in). A model trained on data that is not 8-bit is scored in the data's own range, without
    FID/KID unless ``windowed_fid`` (:mod:`cyclegan.evaluation.values`), its triplets shown through the
    domains' windows. Existing files in ``out_dir`` are overwritten; only this run's translations are scored.
    """
    if kid_subsets < 1:
        raise CycleGANError(f"--kid_subsets must be at least 1, got {kid_subsets}")
    name = Path(checkpoint).name
    swapped = (direction or _run_direction(Path(checkpoint))) == "BtoA"
    checkpoint, dataroot, out_dir = resolve_checkpoint(checkpoint), Path(dataroot), Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="cyclegan-eval-") as scratch:
        folder_a, folder_b, aligned = _test_folders(dataroot, Path(scratch))
        if swapped:
            folder_a, folder_b = folder_b, folder_a
        sources = {"A": by_stem(folder_a, _images(folder_a)), "B": by_stem(folder_b, _images(folder_b))}
        is_ours = checkpoint.suffix == ".safetensors"
        model = model_type(read_options(checkpoint).name) if is_ours else None
        if paired is None:
            paired = aligned or (dataroot / DEMO_MARKER).is_file() or (model is not None and model.paired)
        if paired:
            _check_pairs(sources)
        directions = translations(checkpoint)
        method = model.title if model is not None else "reference generator"
        translators = {d: Translator.load(checkpoint, d, device) for d in directions}
        eight_bit = all(t.conversion.eight_bit for t in translators.values())
        n_a, n_b = len(sources["A"]), len(sources["B"])
        title = f"{method} evaluation of {name} on {dataroot.resolve().name}"
        notes = _notes(
            min(n_a, n_b),
            next(iter(translators.values())).config,
            single=model is None,
            paired=paired,
            aligned=aligned,
            supplied=(eight_bit or windowed_fid) and inception is not None,
            one_way=len(directions) == 1,
            swapped=swapped,
        )
        triplets: list[Triplet] = []
        network: nn.Module | None = None
        if eight_bit:
            network = _inception(inception, inception_weights, device)
            values, written = _image_scores(
                translators, sources, paired, out_dir, method, show_progress, triplets
            )
            real = real_features(
                network,
                [*sources["A"].values()],
                [*sources["B"].values()],
                device=device,
                batch_size=batch_size,
            )
            columns = [*COLUMNS, *(PAIRED_COLUMNS if paired else ())]
            protocol = _protocol(n_a, n_b, kid_subsets, inception_weights, inception is not None)
        else:
            previews = Path(scratch) / "previews" if windowed_fid else None
            columns, protocol, values = _value_scores(
                translators, sources, paired, out_dir, method, show_progress, triplets, previews
            )
            notes[0] = FID_NOTE if previews is None else WINDOWED_FID_NOTE
            if previews is not None:
                network = _inception(inception, inception_weights, device)
                written = {d: sorted((previews / d).rglob("*.png")) for d in directions}
                real = {
                    side: _folder_features(network, previews / f"real_{side}", batch_size, device)
                    for side in "AB"
                }
                columns = [*DISTRIBUTION_COLUMNS, *columns]
                slices = (len(real["A"]), len(real["B"]))
                protocol = (
                    _protocol(*slices, kid_subsets, inception_weights, inception is not None) | protocol
                )
                protocol["image format"] = WINDOWED_FORMAT
        if network is not None:
            for d in directions:
                fake = metrics.file_features(network, written[d], batch_size, device)
                target = real[TARGET[d]]
                values.setdefault((method, d), {}).update(_distribution_scores(fake, target, kid_subsets))
                values.setdefault((BASELINE, d), {}).update(
                    _distribution_scores(real[SOURCE[d]], target, kid_subsets)
                )
    rows = [
        ResultRow(row_method, ARROWS[d], {c: values.get((row_method, d), {}).get(c) for c in columns})
        for row_method in (method, BASELINE)
        for d in directions
    ]
    result = ResultTable(title=title, protocol=protocol, columns=columns, rows=rows, notes=notes)
    return _save(result, out_dir, triplets)


def _save(result: ResultTable, out_dir: Path, triplets: list[Triplet]) -> ResultTable:
    """Write ``eval.json`` (and ``triplets.png`` when there are any) to ``out_dir``."""
    if triplets:
        save_triplets(out_dir / TRIPLETS, triplets)
    result.save(out_dir / EVAL_FILE)
    return result


def _run_direction(checkpoint: Path) -> str:
    """The ``--direction`` a run folder trained with; AtoB for a checkpoint file, which does not record it."""
    if not (checkpoint / CONFIG).is_file():
        return "AtoB"
    direction = read_config(checkpoint).get("direction", "AtoB")
    return direction if direction in ARROWS else "AtoB"


def _value_scores(
    translators: dict[str, Translator],
    sources: dict[str, dict[Path, Path]],
    paired: bool,
    out_dir: Path,
    method: str,
    show_progress: bool,
    triplets: list[Triplet],
    previews: Path | None,
) -> tuple[list[str], dict[str, str | float], dict[tuple[str, str], dict[str, float]]]:
    """The columns, protocol and scores of a model trained on data that is not 8-bit, scored in the data's
    own range; adds the first (input, output, target) per direction to ``triplets``, and with ``previews``
    writes every slice there through its window for FID/KID."""
    values = score_values(
        translators, sources, paired, out_dir, method, BASELINE, show_progress, triplets, previews
    )
    columns = [c for c in COLUMNS if c not in DISTRIBUTION_COLUMNS] + list(PAIRED_COLUMNS if paired else ())
    protocol: dict[str, str | float] = {**value_protocol(translators)}
    protocol |= {"N testA": len(sources["A"]), "N testB": len(sources["B"])}
    return columns, protocol, values


def _inception(supplied: nn.Module | None, weights: Path | None, device: torch.device | str) -> nn.Module:
    return supplied if supplied is not None else metrics.load_inception(weights, device)


def _folder_features(
    network: nn.Module, folder: Path, batch_size: int, device: torch.device | str
) -> torch.Tensor:
    return metrics.file_features(network, sorted(folder.rglob("*.png")), batch_size, device)


def _image_scores(
    translators: dict[str, Translator],
    sources: dict[str, dict[Path, Path]],
    paired: bool,
    out_dir: Path,
    method: str,
    show_progress: bool,
    triplets: list[Triplet],
) -> tuple[dict[tuple[str, str], dict[str, float]], dict[str, list[Path]]]:
    """8-bit data: translate each split to PNG and score it; returns the mean scores and the files written
    per direction."""
    scores: Scores = defaultdict(lambda: defaultdict(list))
    written = {}
    for d in ("AtoB", "BtoA"):
        truths = sources[TARGET[d]] if paired else None
        written[d] = _score_split(
            d, sources[SOURCE[d]], truths, translators, out_dir, scores, method, show_progress, triplets
        )
    values = {key: {c: sum(v) / len(v) for c, v in row.items()} for key, row in scores.items()}
    return values, written


def evaluate_model(
    model: Model,
    test_a: list[Path],
    test_b: list[Path],
    inception: nn.Module,
    *,
    device: torch.device | str,
    kid_subsets: int = 100,
    batch_size: int = 50,
    real: dict[str, torch.Tensor] | None = None,
) -> dict[str, float]:
    """FID and KID of a model's generators in memory, for evaluation during training; writes nothing.

    Returns {"FID A→B", "KID A→B"} and, for a model with both directions, {"FID B→A", "KID B→A"}, equal
    to what :func:`evaluate` reports for a checkpoint of the same weights. ``real`` ({"A", "B"} from
    :func:`real_features`) saves recomputing the unchanging real-image features at every evaluation.
    ``device`` is where the model and ``inception`` are. The model's train/eval mode is left as it was.
    """
    if real is None:
        real = real_features(inception, test_a, test_b, device=device, batch_size=batch_size)
    scores: dict[str, float] = {}
    tests = {"A": test_a, "B": test_b}
    with evaluating(model):
        for d in model.directions:
            direction, sources, target = d.name, tests[d.source], real[d.target]
            translator = Translator(model.generator(direction), model.net, device)
            features = metrics.inception_features(
                inception, _as_saved(translator, sources), batch_size, device
            )
            distribution = _distribution_scores(features, target, kid_subsets)
            scores[f"FID {ARROWS[direction]}"] = distribution["FID"]
            scores[f"KID {ARROWS[direction]}"] = distribution["KID"]
    return scores


def _as_saved(translator: Translator, paths: Iterable[Path]) -> Iterator[torch.Tensor]:
    """Translations as :func:`metrics.read_image` would decode them from the PNG files evaluate writes."""
    for path in paths:
        translation = translator(open_image(path, translator.in_channels))
        yield to_unit_tensor(translation.convert("RGB"))


def evaluate_checkpoints(
    checkpoints: Sequence[Path], dataroot: Path, *, out: Path | None = None, **options: Any
) -> tuple[dict[str, ResultTable], ResultTable | None, Path]:
    """``cyclegan eval``: score each checkpoint (:func:`evaluate`, with ``options``) into a folder of its
    own, rank several by KID (``ranking.json``), and keep a run folder's scores in it (``eval.json``, where
    its report finds them). Returns the scores by name, the ranking (None for one checkpoint) and the
    output folder: ``out``, or ``RUN/eval`` for a run folder, else ``./eval_<checkpoint name>``."""
    first = Path(checkpoints[0])
    run_dir = first if len(checkpoints) == 1 and first.is_dir() else None
    out = Path(out) if out is not None else (run_dir / "eval" if run_dir else Path(f"eval_{first.stem}"))
    names = _unique_names([Path(c) for c in checkpoints])
    results = {
        name: evaluate(checkpoint, dataroot, out_dir=out if len(names) == 1 else out / name, **options)
        for name, checkpoint in zip(names, checkpoints, strict=True)
    }
    ranking = rank(results) if len(results) > 1 else None
    if ranking is not None:
        ranking.save(out / "ranking.json")
    if run_dir is not None:
        results[names[0]].save(run_dir / EVAL_FILE)
        if (out / TRIPLETS).is_file():  # where the run's report finds it
            atomic_write(run_dir / TRIPLETS, partial(shutil.copyfile, out / TRIPLETS))
    return results, ranking, out


def _unique_names(checkpoints: list[Path]) -> list[str]:
    """A folder name per checkpoint: its file stem (or run folder name), numbered where two collide."""
    stems = [p.name if p.is_dir() else p.stem for p in checkpoints]
    return [f"{i + 1}_{stem}" if stems.count(stem) > 1 else stem for i, stem in enumerate(stems)]


def _cell(value: float | None, column: str) -> str:
    return "-" if value is None else FORMATS.get(column, "{:.4f}").format(value)


RANK_COLUMNS = ("mean KID", "KID A→B", "KID B→A", "FID A→B", "FID B→A")


def rank(results: dict[str, ResultTable]) -> ResultTable:
    """Several snapshots' scores as one table, best (lowest mean KID over the directions) first.

    KID rather than FID ranks because it is unbiased for the small test sets CycleGAN datasets have; the
    checkpoint to keep is the first row. Snapshots scored with different protocols are not comparable.
    """
    rows = []
    for name, result in results.items():
        scores: dict[str, float | None] = {}
        for arrow in ARROWS.values():
            model = next((r for r in result.rows if r.method != BASELINE and r.direction == arrow), None)
            for metric in ("KID", "FID"):
                scores[f"{metric} {arrow}"] = model.scores.get(metric) if model else None
        kids = [v for k, v in scores.items() if k.startswith("KID") and v is not None]
        scores["mean KID"] = sum(kids) / len(kids) if kids else None
        rows.append(ResultRow(name, "both", scores))
    rows.sort(key=lambda r: (r.scores["mean KID"] is None, r.scores["mean KID"] or 0.0))
    first = next(iter(results.values()))
    return ResultTable(
        title=f"Ranking of {len(rows)} checkpoints by mean KID (lower is better)",
        protocol=first.protocol,
        columns=list(RANK_COLUMNS),
        rows=rows,
        notes=["each checkpoint's translations and eval.json are in its own folder under the output folder"],
    )


def format_table(result: ResultTable) -> str:
    """The result as a terminal table, with the protocol and notes underneath."""
    header = ["method", "direction", *result.columns]
    body = [
        [row.method, row.direction, *(_cell(row.scores.get(c), c) for c in result.columns)]
        for row in result.rows
    ]
    widths = [max(len(line[i]) for line in (header, *body)) for i in range(len(header))]

    def render(cells: list[str]) -> str:
        """Names left-aligned, numbers right-aligned."""
        padded = [
            cell.ljust(width) if i < 2 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(padded).rstrip()

    lines = [result.title, "", render(header), render(["-" * w for w in widths])]
    lines += [render(cells) for cells in body]
    lines += ["", "Protocol:", *(f"  {key}: {value}" for key, value in result.protocol.items())]
    lines += ["", "Notes:", *(f"  - {note}" for note in result.notes)]
    return "\n".join(lines)
