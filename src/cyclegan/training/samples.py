"""Sample grids: the model's view of a fixed handful of images, saved every ``sample_freq`` steps.

Which images a row shows (real, translated, reconstructed…) is the model's choice (``Model.sample_row``
and ``Model.sample_columns``); this module picks the images and draws the grid.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torchvision.utils import make_grid, save_image

from cyclegan.config import TrainConfig
from cyclegan.data.datasets import domain_folders, eval_transform, list_images
from cyclegan.data.images import DECODE_ERRORS, DEFAULT_MAX_PIXELS, load_image
from cyclegan.data.intensity import Intensities, Intensity, load_mapped
from cyclegan.data.paired import sample_pairs
from cyclegan.errors import CycleGANError
from cyclegan.files import atomic_write
from cyclegan.layout import SAMPLES, sample_grid
from cyclegan.models import Model, evaluating, model_type
from cyclegan.training.hooks import Hook, ImageFile, RunState


class SampleGrids(Hook):
    """A grid of the model's sample rows every ``sample_freq`` steps and at the end."""

    name = "samples"

    def start(self, run: RunState) -> None:
        self.images = tuple(t.to(run.device) for t in run_images(run))
        self.saved = -1  # the step of the last grid, drawn once

    def after_step(self, run: RunState, losses: dict[str, torch.Tensor]) -> None:
        if run.progress.step % run.cfg.sample_freq == 0:
            self._save(run)

    def end(self, run: RunState) -> None:
        if run.stopped is None and self.saved != run.progress.step:  # a diverged run's weights draw nothing
            self._save(run)

    def _save(self, run: RunState) -> None:
        self.saved = step = run.progress.step
        path = run.run_dir / SAMPLES / sample_grid(step)
        save_sample_grid(path, run.model, *self.images)
        run.publish(ImageFile(step, "samples", path))


@torch.no_grad()
def grid(model: Model, real_A: torch.Tensor, real_B: torch.Tensor) -> torch.Tensor:
    """One row per image pair, one column per ``model.sample_columns``, in [0, 1]; grey images as RGB."""
    with evaluating(model):
        columns = model.sample_row(real_A, real_B)
    columns = [c.expand(-1, 3, -1, -1) if c.shape[1] == 1 else c for c in columns]
    tiles = torch.stack(columns, 1).flatten(0, 1)
    return make_grid((tiles.float().cpu() + 1) / 2, nrow=len(columns), padding=2, pad_value=1.0)


def save_sample_grid(path: Path, model: Model, real_A: torch.Tensor, real_B: torch.Tensor) -> None:
    image = grid(model, real_A, real_B)
    atomic_write(path, lambda tmp: save_image(image, tmp, format="png"))


def run_images(run: RunState, count: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`sample_images` of a run, through its data's mappings."""
    intensities = None if run.intensity is None else Intensities.from_json(run.intensity, str(run.run_dir))
    return sample_images(run.cfg, count, intensities)


def _sample(path: Path, mapping: Intensity, channels: int, axis: int) -> Image.Image | torch.Tensor:
    if mapping.eight_bit:
        return load_image(path, channels)
    x = load_mapped(path, mapping, channels, axis, DEFAULT_MAX_PIXELS)
    return x[len(x) // 2] if x.dim() == 4 else x


def sample_images(
    cfg: TrainConfig, count: int = 4, intensities: Intensities | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed handful of A and B images (test split when there is one) for sample grids, through the
    domains' mappings (``intensities``; the 8-bit rule by default): grids show the windows. A volume
    shows its middle slice; a paired model shows true pairs."""
    if model_type(cfg.model.name).paired:
        return sample_pairs(cfg, count, intensities)
    out = []
    a_train, b_train = domain_folders(cfg)
    channels = (cfg.model.net.input_nc, cfg.model.net.output_nc)
    both = intensities or Intensities()
    for side, (train_folder, nc) in enumerate(zip((a_train, b_train), channels, strict=True)):
        mapping = (both.a, both.b)[side]
        folder = train_folder
        if cfg.dataroot is not None:
            test = domain_folders(cfg, "test")[side]
            folder = test if test.is_dir() and list_images(test) else train_folder
        transform = eval_transform(cfg.crop_size, nc)
        tensors = []
        for path in list_images(folder):
            try:
                tensors.append(transform(_sample(path, mapping, nc, both.slice_axis)))
            except DECODE_ERRORS:
                continue
            if len(tensors) == count:
                break
        if not tensors:
            raise CycleGANError(f"no readable image in {folder} for the sample grids")
        out.append(torch.stack(tensors))
    n = min(len(out[0]), len(out[1]))
    return out[0][:n], out[1][:n]
