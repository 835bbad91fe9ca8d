"""``cyclegan demo``: render the day/night street dataset, train a small CycleGAN on it, and score it.

Every test scene exists by day (testA) and by night (testB), so G(day) and F(night) can be scored against
the true answer with PSNR and SSIM, beside two baselines: the untranslated input, and a global colour
statistics transfer fitted on the training images of the target domain. The scores go to ``demo.json``
in the run folder, which the report page shows with the sample grids and loss curves.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cyclegan.config import ModelConfig, TrainConfig
from cyclegan.data.datasets import list_images
from cyclegan.data.demo_scenes import channel_stats, colour_transfer, make_demo_dataset
from cyclegan.data.images import load_image, to_unit_tensor
from cyclegan.devices import resolve_device
from cyclegan.errors import CycleGANError
from cyclegan.evaluate.metrics import PSNR_CAP, psnr, ssim
from cyclegan.evaluate.report import write_report
from cyclegan.evaluate.results import DEMO_FILE, ResultRow, ResultTable
from cyclegan.models import checkpoints
from cyclegan.models.cycle_gan import CycleGAN
from cyclegan.nets.networks import load_weights
from cyclegan.train.loop import train
from cyclegan.translate.translator import Translator

TRAIN_IMAGES = 400  # per domain, as make_demo_dataset renders by default: one epoch is 400 steps


@dataclass
class DemoSettings:
    """Sized to train in about ten minutes on two CPU cores."""

    out: Path = Path("demo_output")
    steps: int = 2400
    size: int = 64
    ngf: int = 32
    ndf: int = 32
    seed: int = 0
    device: str = "auto"

    def train_config(self, dataroot: Path) -> TrainConfig:
        """Half the epochs at the full learning rate, half decaying.

        The discriminator sees 34x34 patches, about the share of a 64-pixel image that the paper's 70x70
        patches are of a 256-pixel one: a discriminator that sees the whole image lets local artifacts pass.
        """
        epochs = max(2, -(-self.steps // TRAIN_IMAGES))
        return TrainConfig(
            dataroot=str(dataroot),
            checkpoints_dir=str(self.out),
            name="day2night",
            n_epochs=-(-epochs // 2),
            n_epochs_decay=epochs // 2,
            max_steps=self.steps,
            load_size=self.size + self.size // 8,
            crop_size=self.size,
            num_workers=0,
            seed=self.seed,
            device=self.device,
            print_freq=50,
            sample_freq=200,
            save_latest_freq=400,
            save_epoch_freq=10**6,
            model=ModelConfig(
                netG="resnet_6blocks", ngf=self.ngf, ndf=self.ndf, netD="n_layers", n_layers_D=2
            ),
        )


def run_demo(settings: DemoSettings, *, show_progress: bool = True) -> Path:
    """Render the data, train (or finish an interrupted demo run), score, and write the report page."""
    dataroot = make_demo_dataset(settings.out / "data", seed=settings.seed, size=settings.size)
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
    latest = run_dir / "checkpoints" / "latest.safetensors"
    if not (run_dir / "config.json").is_file() or not latest.is_file():
        raise CycleGANError(
            f"{run_dir} holds a demo run without a checkpoint; delete it or pass another --out"
        )
    saved = TrainConfig.load(run_dir / "config.json")
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
    states, model_config, info = checkpoints.read_weights(run_dir / "checkpoints" / "latest.safetensors")
    model = CycleGAN(model_config)
    for name, net in model.networks().items():
        load_weights(net, states[name])
    model.to(device).eval()
    day, night = _load_folder(dataroot / "testA"), _load_folder(dataroot / "testB")
    train_stats = {
        "A": channel_stats(_load_folder(dataroot / "trainA")),
        "B": channel_stats(_load_folder(dataroot / "trainB")),
    }
    rows = []
    for direction, source, truth, generator, target in (
        ("A→B", day, night, model.G_A, "B"),
        ("B→A", night, day, model.G_B, "A"),
    ):
        candidates = {
            "CycleGAN": _translate(Translator(generator, model_config, device), source),
            "colour transfer": colour_transfer(source, *train_stats[target]),
            "untranslated input": source,
        }
        for method, predicted in candidates.items():
            rows.append(ResultRow(method, direction, _paired_scores(predicted, truth)))
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
