"""Sample grids: the model's view of a fixed handful of images, saved every ``sample_freq`` steps.

Which images a row shows (real, translated, reconstructed…) is the model's choice (``Model.sample_row``
and ``Model.sample_columns``); this module picks the images and draws the grid.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image

from cyclegan.config import TrainConfig
from cyclegan.data.datasets import domain_folders, eval_transform, list_images
from cyclegan.data.images import DECODE_ERRORS, load_image
from cyclegan.data.paired import sample_pairs
from cyclegan.errors import CycleGANError
from cyclegan.files import atomic_write
from cyclegan.layout import SAMPLES, sample_grid
from cyclegan.models import Model, model_type
from cyclegan.train.hooks import Hook, RunState


class SampleGrids(Hook):
    """A grid of the model's sample rows every ``sample_freq`` steps and at the end."""

    name = "samples"

    def start(self, run: RunState) -> None:
        self.images = tuple(t.to(run.device) for t in sample_images(run.cfg))

    def after_step(self, run: RunState, losses: dict[str, torch.Tensor]) -> None:
        if run.progress.step % run.cfg.sample_freq == 0:
            self._save(run)

    def end(self, run: RunState) -> None:
        if run.stopped is None:  # weights a run stopped on (diverged) draw nothing worth seeing
            self._save(run)

    def _save(self, run: RunState) -> None:
        save_sample_grid(run.run_dir / SAMPLES / sample_grid(run.progress.step), run.model, *self.images)


@torch.no_grad()
def grid(model: Model, real_A: torch.Tensor, real_B: torch.Tensor) -> torch.Tensor:
    """One row per image pair, one column per ``model.sample_columns``, in [0, 1]; grey images as RGB."""
    was_training = model.training
    model.eval()
    try:
        columns = model.sample_row(real_A, real_B)
    finally:
        model.train(was_training)
    columns = [c.expand(-1, 3, -1, -1) if c.shape[1] == 1 else c for c in columns]
    tiles = torch.stack(columns, 1).flatten(0, 1)
    return make_grid((tiles.float().cpu() + 1) / 2, nrow=len(columns), padding=2, pad_value=1.0)


def save_sample_grid(path: Path, model: Model, real_A: torch.Tensor, real_B: torch.Tensor) -> None:
    image = grid(model, real_A, real_B)
    atomic_write(path, lambda tmp: save_image(image, tmp, format="png"))


def sample_images(cfg: TrainConfig, count: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed handful of A and B images (test split when there is one) for sample grids; true pairs for a
    paired model."""
    if model_type(cfg.model.name).paired:
        return sample_pairs(cfg, count)
    out = []
    a_train, b_train = domain_folders(cfg)
    channels = (cfg.model.net.input_nc, cfg.model.net.output_nc)
    for side, (train_folder, nc) in enumerate(zip((a_train, b_train), channels, strict=True)):
        folder = train_folder
        if cfg.dataroot is not None:
            test = domain_folders(cfg, "test")[side]
            folder = test if test.is_dir() and list_images(test) else train_folder
        transform = eval_transform(cfg.crop_size, nc)
        tensors = []
        for path in list_images(folder):
            try:
                tensors.append(transform(load_image(path, nc)))
            except DECODE_ERRORS:
                continue
            if len(tensors) == count:
                break
        if not tensors:
            raise CycleGANError(f"no readable image in {folder} for the sample grids")
        out.append(torch.stack(tensors))
    n = min(len(out[0]), len(out[1]))
    return out[0][:n], out[1][:n]
