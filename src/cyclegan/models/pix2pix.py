"""pix2pix (Isola, Zhu, Zhou, Efros, CVPR 2017): the reference's ``pix2pix_model.py``, as a model here.

Paired translation: one generator ``G`` maps A to B and learns from the true B of each A, through an L1 loss
and a conditional PatchGAN ``D`` that judges (input, output) pairs concatenated along the channels. With
``--direction BtoA`` the data's domains are swapped before the model sees them, as for every model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from cyclegan.config import ModelOptions, Pix2PixOptions, TrainConfig
from cyclegan.distributed import World
from cyclegan.models.base import Direction, Model, Trainer, set_requires_grad
from cyclegan.models.losses import GANLoss
from cyclegan.networks import build_discriminator, build_generator
from cyclegan.precision import Precision

CriticStep = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]


class Pix2Pix(Model):
    """G: A->B; D judges cat(A, B) pairs, real (the true B) or fake (G's B)."""

    name = "pix2pix"
    title = "pix2pix"
    paired = True
    network_names = ("G", "D")
    # "D" is the loss D minimises, the mean of D_real and D_fake: the health checks judge the critic by it.
    directions = (
        Direction(
            "AtoB", generator="G", discriminator="D", source="A", target="B", adversarial="G_GAN",
            critic="D", losses=("G_GAN", "G_L1"), anchor="lambda_L1",
        ),
    )  # fmt: skip
    loss_names = ("G_GAN", "G_L1", "D_real", "D_fake", "D")
    chart_groups = (
        ("Adversarial losses", ("G_GAN", "D_real", "D_fake", "D")),
        ("L1 loss to the target", ("G_L1",)),
    )
    sample_columns = ("input A", "G(A)", "target B")
    options: Pix2PixOptions
    G: nn.Module
    D: nn.Module

    @classmethod
    def build(cls, options: ModelOptions, name: str) -> nn.Module:
        net = options.net
        if name == "G":
            return build_generator(net, net.input_nc, net.output_nc)
        return build_discriminator(net, net.input_nc + net.output_nc)

    @torch.no_grad()
    def sample_row(self, real_A: torch.Tensor, real_B: torch.Tensor) -> list[torch.Tensor]:
        return [real_A, self.G(real_A), real_B]

    def trial_forward(self, real_A: torch.Tensor, real_B: torch.Tensor) -> None:
        fake_B = self.G(real_A)
        if fake_B.shape[-2:] != real_A.shape[-2:]:
            raise ValueError("the generator's output size differs from its input size")
        self.D(torch.cat((real_A, fake_B), 1))

    def trainer(self, cfg: TrainConfig, seed: int = 0, world: World | None = None) -> Pix2PixTrainer:
        return Pix2PixTrainer(self, cfg, seed, world)


class DiscriminatorObjective(nn.Module):
    """D's loss: the pair with G's output (detached) judged fake, then the true pair judged real, halved.

    Fake before real, as the reference: autograd then accumulates D's gradients in its order, and batch
    norm's running statistics see the two batches in the same order.
    """

    def __init__(self, model: Pix2Pix, precision: Precision) -> None:
        super().__init__()
        self.D, self.precision = model.D, precision
        self.gan_loss = GANLoss(model.options.gan_mode)

    def forward(
        self, real_A: torch.Tensor, real_B: torch.Tensor, fake_B: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with self.precision.autocast():
            on_fake = self.D(torch.cat((real_A, fake_B.detach()), 1)).float()
            on_real = self.D(torch.cat((real_A, real_B), 1)).float()
        losses = {"D_fake": self.gan_loss(on_fake, False), "D_real": self.gan_loss(on_real, True)}
        losses["D"] = (losses["D_fake"] + losses["D_real"]) * 0.5
        return losses["D"], losses


class GeneratorObjective(nn.Module):
    """G's loss on a batch, with D's update in the middle of it: the reference's step order.

    The reference runs G once, updates D on that output, then backpropagates G's loss, judged by the
    updated D, through the same forward pass (the same dropout masks, batch-norm statistics updated once).
    So this module's forward runs G, calls ``critic_step`` (D's whole update, on the detached output), then
    computes G's loss. Keeping G's forward and its loss in one module's forward is what DDP needs: DDP wraps
    this module, whose only submodule is G, so the backward of the loss it returns averages exactly G's
    gradients over the processes, while D's update runs through D's own DDP module in between (D is not a
    submodule here, and is frozen while G's loss is computed, so G's backward neither touches nor reduces
    D's gradients). ``critic_step`` is left out of compilation: an optimizer step is no part of a graph.
    """

    def __init__(self, model: Pix2Pix, precision: Precision, critic_step: CriticStep) -> None:
        super().__init__()
        self.G = model.G
        self.critics = (model.D,)  # a tuple: not registered as a submodule
        self.critic_step = torch.compiler.disable(critic_step)
        self.lambda_L1, self.precision = model.options.lambda_L1, precision
        self.gan_loss, self.l1 = GANLoss(model.options.gan_mode), nn.L1Loss()

    def forward(
        self, real_A: torch.Tensor, real_B: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Returns (G's total loss, every named loss of the step, D's included)."""
        with self.precision.autocast():
            fake_B = self.G(real_A).float()
        losses = self.critic_step(real_A, real_B, fake_B.detach())
        with self.precision.autocast():
            on_fake = self.critics[0](torch.cat((real_A, fake_B), 1)).float()
        losses["G_GAN"] = self.gan_loss(on_fake, True)
        losses["G_L1"] = self.l1(fake_B, real_B) * self.lambda_L1
        return losses["G_GAN"] + losses["G_L1"], losses


class Pix2PixTrainer(Trainer):
    """The reference's step: one G forward, D's update on it (D first), then G's with D frozen. No image pool
    (the reference's pix2pix sets its size to 0)."""

    model: Pix2Pix

    def __init__(self, model: Pix2Pix, cfg: TrainConfig, seed: int = 0, world: World | None = None) -> None:
        super().__init__(model, cfg, {"G": [model.G], "D": [model.D]}, seed, world)
        self.discriminator = self.objective(DiscriminatorObjective(model, self.precision))
        self.generator = self.objective(GeneratorObjective(model, self.precision, self._critic_step))

    def step(self, real_A: torch.Tensor, real_B: torch.Tensor) -> dict[str, torch.Tensor]:
        real_A, real_B = self.batch(real_A), self.batch(real_B)
        self.zero_grad("G")
        loss_G, losses = self.generator(real_A, real_B)
        self.update("G", loss_G)
        return self.losses(losses)

    def _critic_step(
        self, real_A: torch.Tensor, real_B: torch.Tensor, fake_B: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """D's update; D is left frozen for G's loss, which the generator objective computes next."""
        set_requires_grad([self.model.D], True)
        self.zero_grad("D")
        loss_D, losses = self.discriminator(real_A, real_B, fake_B)
        self.update("D", loss_D)
        set_requires_grad([self.model.D], False)
        return losses
