"""Shared test helpers: tiny image folders, small configs, and the reference fixtures when present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cyclegan.config import TrainConfig
from cyclegan.models import checkpoints

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"


def fixture_path(name: str) -> Path:
    path = FIXTURES / name
    if not path.is_file():
        pytest.skip(f"reference fixture {path} is not present (it lives in ../shared beside the checkout)")
    return path


def write_images(folder: Path, count: int, size: tuple[int, int] = (40, 40), seed: int = 0) -> list[Path]:
    """Random RGB PNGs, different per seed."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        array = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        path = folder / f"img_{i:03d}.png"
        Image.fromarray(array).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def dataroot(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    write_images(root / "trainA", 5, seed=1)
    write_images(root / "trainB", 6, seed=2)
    write_images(root / "testA", 2, seed=3)
    write_images(root / "testB", 2, seed=4)
    return root


def floats(losses: dict[str, torch.Tensor]) -> dict[str, float]:
    """A training step's losses as numbers (the step leaves them on the device, as tensors)."""
    return {name: value.item() for name, value in losses.items()}


def training_state(path: Path) -> dict:
    """The training state a resumable checkpoint holds."""
    return checkpoints.read_resumable(path)[2]


def tiny_config(dataroot: Path, out: Path, model: str = "cycle_gan", **overrides) -> TrainConfig:
    """A model small enough to train a few steps in well under a second per step on a CPU."""
    options = dict(
        ngf=4,
        ndf=4,
        netG="resnet_6blocks",
        dataroot=str(dataroot),
        checkpoints_dir=str(out),
        name="run",
        load_size=36,
        crop_size=32,
        n_epochs=1,
        n_epochs_decay=3,
        num_workers=0,
        seed=7,
        print_freq=2,
        sample_freq=5,
        save_latest_freq=1000,
        save_epoch_freq=1,
    )
    if model == "cycle_gan":
        options["pool_size"] = 3
    options.update(overrides)
    return TrainConfig.create(model, **options)


class StandInInception(torch.nn.Module):
    """Tiny fixed-seed network with the real one's contract (N×3×299×299 in [-1, 1] → N×2048), so the
    feature, FID and KID paths run fast without the 87 MB weights; it also records what it was fed."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, kernel_size=13, stride=13)
        self.pool = torch.nn.AdaptiveAvgPool2d(4)
        self.linear = torch.nn.Linear(8 * 16, 2048)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.clone())
        return self.linear(self.pool(torch.relu(self.conv(x))).flatten(1))
