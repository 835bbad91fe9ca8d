"""The adversarial loss and the pool of past fakes the discriminators learn from."""

from __future__ import annotations

import random
from typing import Any

import torch
from torch import nn


class GANLoss(nn.Module):
    """LSGAN (mean squared error to 1 or 0, the paper's choice) or vanilla (cross-entropy on logits)."""

    def __init__(self, gan_mode: str = "lsgan") -> None:
        super().__init__()
        if gan_mode == "lsgan":
            self.loss: nn.Module = nn.MSELoss()
        elif gan_mode == "vanilla":
            self.loss = nn.BCEWithLogitsLoss()
        else:
            raise ValueError(f"unknown gan_mode {gan_mode!r}")

    def forward(self, prediction: torch.Tensor, target_is_real: bool) -> torch.Tensor:
        target = torch.tensor(1.0 if target_is_real else 0.0, device=prediction.device)
        return self.loss(prediction, target.expand_as(prediction))


class ImagePool:
    """A buffer of past generated images (Shrivastava et al. 2017), as the CycleGAN paper uses.

    Until the pool is full each new fake is stored and returned. Then, per image, with probability 1/2 the
    new fake is returned as it is; otherwise a random stored fake is returned and the new one takes its
    place. The pool draws from its own seeded generator so that its state can be saved and resumed.
    """

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size = size
        self.images: list[torch.Tensor] = []
        self.rng = random.Random(seed)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images
        out = []
        for image in images.detach():
            image = image.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image)
                out.append(image)
            elif self.rng.uniform(0, 1) > 0.5:
                i = self.rng.randint(0, self.size - 1)
                out.append(self.images[i].clone())
                self.images[i] = image
            else:
                out.append(image)
        return torch.cat(out, 0)

    def state_dict(self) -> dict[str, Any]:
        """Stored images as a list (they may differ in size: ``--preprocess none`` keeps each image's own)."""
        return {"images": [image[0].cpu() for image in self.images], "rng": self.rng.getstate()}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        images = state["images"]
        if not isinstance(images, list) or not all(
            isinstance(image, torch.Tensor) and image.dim() == 3 for image in images
        ):
            raise ValueError("the image pool must hold a list of C×H×W tensors")
        if len(images) > self.size:
            raise ValueError(f"the image pool holds {len(images)} images, more than --pool_size {self.size}")
        self.rng.setstate(_as_tuple(state["rng"]))
        self.images = [image.unsqueeze(0).to(device) for image in images]


def _as_tuple(value: Any) -> Any:
    """``random.setstate`` wants tuples; a state that went through a checkpoint may come back as lists."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value
