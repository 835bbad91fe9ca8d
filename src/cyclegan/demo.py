"""``cyclegan demo``: render the day/night street dataset, train a small model on it (CycleGAN unless
``--model`` names another), and score it.

CycleGAN and the other unpaired models train on disjoint day and night scenes; a paired model (pix2pix)
trains on as many scenes rendered both ways (``data_paired``: the same day images and test scenes). Every
test scene exists by day (testA) and by night (testB), so G(day) and F(night) can be scored against the
true answer with PSNR and SSIM, beside two baselines: the untranslated input, and a global colour
statistics transfer fitted on the training images of the target domain. The scores go to ``demo.json``
in the run folder, which the report page shows with the sample grids and loss curves.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cyclegan.config import DemoSettings, TrainConfig
from cyclegan.data.datasets import list_images
from cyclegan.data.demo_scenes import channel_stats, colour_transfer, make_demo_dataset
from cyclegan.data.images import load_image, to_unit_tensor
from cyclegan.devices import resolve_device
from cyclegan.errors import CycleGANError
from cyclegan.evaluation.metrics import PSNR_CAP, psnr, ssim
from cyclegan.evaluation.report import write_report
from cyclegan.evaluation.results import ResultRow, ResultTable
from cyclegan.layout import CHECKPOINTS, CONFIG, DEMO_FILE, LATEST
from cyclegan.models import build_model, checkpoints, model_type
from cyclegan.networks import load_weights
from cyclegan.training.loop import train
from cyclegan.translation.translator import Translator


def run_demo(settings: DemoSettings, *, show_progress: bool = True) -> Path:
    """Render the data, train (or finish an interrupted demo run), score, and write the report page."""
    settings.validate()
    paired = model_type(settings.model).paired
    dataroot = make_demo_dataset(
        settings.out / ("data_paired" if paired else "data"),
        seed=settings.seed,
        size=settings.size,
        paired=paired,
    )
    cfg = settings.train_config(dataroot)
    run_dir = Path(cfg.checkpoints_dir) / cfg.name
    if run_dir.exists():
        _finish(run_dir, cfg, show_progress)
    else:
        train(cfg, show_progress=show_progress)
    score(run_dir, dataroot, resolve_device(settings.device)).save(run_dir / DEMO_FILE)
    return write_report(run_dir)


def _finish(run_dir: Path, cfg: TrainConfig, show_progress: bool) -> None:
    """Resume a demo run an earlier call left unfinished; refuse one made with other settings."""
    latest = run_dir / CHECKPOINTS / LATEST
    if not (run_dir / CONFIG).is_file() or not latest.is_file():
        raise CycleGANError(
            f"{run_dir} holds a demo run without a checkpoint; delete it or pass another --out"
        )
    saved = TrainConfig.load(run_dir / CONFIG)
    if dataclasses.replace(saved, device=cfg.device) != cfg:
        raise CycleGANError(f"{run_dir} was trained with other demo settings; pass another --out")
    if checkpoints.read_weights(latest)[2]["step"] < (cfg.max_steps or 0):
        train(cfg, run_dir, show_progress=show_progress)


def _load_folder(folder: Path) -> np.ndarray:
    return np.stack([np.asarray(load_image(p)) for p in list_images(folder)])


def _paired_scores(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float | None]:
    x, y = (
        torch.stack([to_unit_tensor(Image.fromarray(a)) for a in arr]).double() for arr in (predicted, truth)
    )
    return {"PSNR": psnr(x, y).clamp(max=PSNR_CAP).mean().item(), "SSIM": ssim(x, y).mean().item()}


def _translate(translator: Translator, images: np.ndarray) -> np.ndarray:
    """Translate uint8 images, quantised as saving them to PNG would."""
    return np.stack([np.asarray(translator(Image.fromarray(image))) for image in images])


def score(run_dir: Path, dataroot: Path, device: torch.device) -> ResultTable:
    """PSNR/SSIM of the trained generators and of both baselines against the known translations."""
    states, options, info = checkpoints.read_weights(run_dir / CHECKPOINTS / LATEST)
    model = build_model(options)
    for name, net in model.networks().items():
        load_weights(net, states[name])
    model.to(device).eval()
    images = {"A": _load_folder(dataroot / "testA"), "B": _load_folder(dataroot / "testB")}
    train_stats = {
        "A": channel_stats(_load_folder(dataroot / "trainA")),
        "B": channel_stats(_load_folder(dataroot / "trainB")),
    }
    rows = []
    for d in model.directions:
        source, truth = images[d.source], images[d.target]
        candidates = {
            model.title: _translate(Translator(model.generator(d.name), options.net, device), source),
            "colour transfer": colour_transfer(source, *train_stats[d.target]),
            "untranslated input": source,
        }
        for method, predicted in candidates.items():
            rows.append(ResultRow(method, f"{d.source}→{d.target}", _paired_scores(predicted, truth)))
    day = images["A"]
    return ResultTable(
        title="Demo: day ↔ night against the known answers",
        protocol={
            "test scenes": len(day),
            "image size": f"{day.shape[2]}x{day.shape[1]}",
            "training steps": info["step"],
            "PSNR": "dB on 8-bit RGB, mean over images",
            "SSIM": "Gaussian 11x11, sigma 1.5, mean over channels and images",
            "colour transfer": "per-channel mean/std matched to the target domain's training images",
        },
        columns=["PSNR", "SSIM"],
        rows=rows,
        notes=[
            "A→B turns a day scene into night (windows and lamps light up); B→A turns night into day.",
            "Higher is better for both columns.",
        ],
    )


def format_scores(scores: ResultTable) -> str:
    lines = [f"{'direction':<10}{'method':<22}{'PSNR':>8}{'SSIM':>8}"]
    for row in scores.rows:
        cells = (_fixed(row.scores.get("PSNR"), 2), _fixed(row.scores.get("SSIM"), 3))
        lines.append(f"{row.direction:<10}{row.method:<22}{cells[0]:>8}{cells[1]:>8}")
    return "\n".join(lines)


def _fixed(value: float | None, decimals: int) -> str:
    return "-" if value is None else f"{value:.{decimals}f}"
