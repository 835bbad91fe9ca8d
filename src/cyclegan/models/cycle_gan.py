"""CycleGAN (Zhu, Park, Isola, Efros, ICCV 2017): the reference's ``cycle_gan_model.py``, as a model here.

Naming follows the paper's reference code: ``G_A`` maps A->B, ``G_B`` maps B->A, ``D_A`` judges domain B
(real B against G_A(A)) and ``D_B`` judges domain A.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cyclegan.config import CycleGANOptions, ModelOptions, TrainConfig
from cyclegan.distributed import World
from cyclegan.models.base import Direction, Model, Trainer, set_requires_grad
from cyclegan.models.losses import GANLoss, ImagePool
from cyclegan.networks import build_discriminator, build_generator
from cyclegan.precision import Precision
from cyclegan.seeds import Stream, item_seed


class CycleGAN(Model):
    """The four networks. G_A: A->B, G_B: B->A, D_A judges B images, D_B judges A images."""

    name = "cycle_gan"
    title = "CycleGAN"
    network_names = ("G_A", "G_B", "D_A", "D_B")
    directions = (
        Direction(
            "AtoB", generator="G_A", discriminator="D_A", source="A", target="B", adversarial="G_A",
            critic="D_A", losses=("G_A", "cycle_A", "idt_A"), identity="idt_A", cycle="cycle_A",
            anchor="lambda_A",
        ),
        Direction(
            "BtoA", generator="G_B", discriminator="D_B", source="B", target="A", adversarial="G_B",
            critic="D_B", losses=("G_B", "cycle_B", "idt_B"), identity="idt_B", cycle="cycle_B",
            anchor="lambda_B",
        ),
    )  # fmt: skip
    loss_names = ("D_A", "G_A", "cycle_A", "idt_A", "D_B", "G_B", "cycle_B", "idt_B")
    chart_groups = (
        ("Adversarial losses", ("G_A", "G_B", "D_A", "D_B")),
        ("Cycle and identity losses", ("cycle_A", "cycle_B", "idt_A", "idt_B")),
    )
    sample_columns = ("real A", "G_A(A)", "G_B(G_A(A))", "real B", "G_B(B)", "G_A(G_B(B))")
    options: CycleGANOptions
    G_A: nn.Module
    G_B: nn.Module
    D_A: nn.Module
    D_B: nn.Module

    @classmethod
    def build(cls, options: ModelOptions, name: str) -> nn.Module:
        net = options.net
        a, b = net.input_nc, net.output_nc
        return {
            "G_A": lambda: build_generator(net, a, b),
            "G_B": lambda: build_generator(net, b, a),
            "D_A": lambda: build_discriminator(net, b),
            "D_B": lambda: build_discriminator(net, a),
        }[name]()

    @torch.no_grad()
    def sample_row(self, real_A: torch.Tensor, real_B: torch.Tensor) -> list[torch.Tensor]:
        fake_B, fake_A = self.G_A(real_A), self.G_B(real_B)
        return [real_A, fake_B, self.G_B(fake_B), real_B, fake_A, self.G_A(fake_A)]

    def trial_forward(self, real_A: torch.Tensor, real_B: torch.Tensor) -> None:
        for generator, x in ((self.G_A, real_A), (self.G_B, real_B)):
            if generator(x).shape[-2:] != x.shape[-2:]:
                raise ValueError("the generator's output size differs from its input size")
        self.D_A(real_B)
        self.D_B(real_A)

    def pool_bytes_per_pixel(self) -> float:
        """Each pool keeps up to ``pool_size`` float32 images of its domain."""
        return 4.0 * self.options.pool_size * (self.net.input_nc + self.net.output_nc)

    def trainer(self, cfg: TrainConfig, seed: int = 0, world: World | None = None) -> CycleGANTrainer:
        return CycleGANTrainer(self, cfg, seed, world)


class GeneratorObjective(nn.Module):
    """The generators' losses on a batch: what one generator update minimises.

    The discriminators are read here but are no submodules of this one, so DDP averages only the
    generators' gradients over the processes.
    """

    def __init__(self, model: CycleGAN, precision: Precision) -> None:
        super().__init__()
        self.G_A, self.G_B = model.G_A, model.G_B
        self.critics = (model.D_A, model.D_B)  # a tuple: not registered as submodules
        self.options, self.precision = model.options, precision
        self.gan_loss, self.l1 = GANLoss(model.options.gan_mode), nn.L1Loss()

    def forward(
        self, real_A: torch.Tensor, real_B: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """Returns (total loss, named losses, fake_A, fake_B)."""
        with self.precision.autocast():  # one context: weights are cast to bf16/fp16 once per step
            return self._losses(real_A, real_B)

    def _losses(
        self, real_A: torch.Tensor, real_B: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        # Network outputs go on in float32: the fakes feed the image pool, and the L1/MSE losses run in
        # float32 under autocast anyway (autocast's float32 list).
        o, G_A, G_B, (D_A, D_B) = self.options, self.G_A, self.G_B, self.critics
        fake_B = G_A(real_A).float()
        rec_A = G_B(fake_B).float()
        fake_A = G_B(real_B).float()
        rec_B = G_A(fake_A).float()
        losses: dict[str, torch.Tensor] = {}
        if o.lambda_identity > 0:
            losses["idt_A"] = self.l1(G_A(real_B).float(), real_B) * o.lambda_B * o.lambda_identity
            losses["idt_B"] = self.l1(G_B(real_A).float(), real_A) * o.lambda_A * o.lambda_identity
        else:
            losses["idt_A"] = losses["idt_B"] = torch.zeros((), device=real_A.device)
        losses["G_A"] = self.gan_loss(D_A(fake_B).float(), True)
        losses["G_B"] = self.gan_loss(D_B(fake_A).float(), True)
        losses["cycle_A"] = self.l1(rec_A, real_A) * o.lambda_A
        losses["cycle_B"] = self.l1(rec_B, real_B) * o.lambda_B
        # Summed in the reference's order: autograd then accumulates gradients in the same order, which keeps
        # float32 results identical to it (Adam amplifies rounding differences in near-zero gradients).
        loss_G = losses["G_A"] + losses["G_B"] + losses["cycle_A"] + losses["cycle_B"]
        return loss_G + losses["idt_A"] + losses["idt_B"], losses, fake_A, fake_B


class DiscriminatorObjective(nn.Module):
    """The discriminators' losses: real images against (pooled) fakes, halved as in the reference."""

    def __init__(self, model: CycleGAN, precision: Precision) -> None:
        super().__init__()
        self.D_A, self.D_B = model.D_A, model.D_B
        self.precision, self.gan_loss = precision, GANLoss(model.options.gan_mode)

    def _loss(self, net: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        on_real, on_fake = net(real).float(), net(fake.detach()).float()
        return 0.5 * (self.gan_loss(on_real, True) + self.gan_loss(on_fake, False))

    def forward(
        self, real_A: torch.Tensor, real_B: torch.Tensor, fake_A: torch.Tensor, fake_B: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with self.precision.autocast():
            losses = {
                "D_A": self._loss(self.D_A, real_B, fake_B),
                "D_B": self._loss(self.D_B, real_A, fake_A),
            }
        return losses["D_A"] + losses["D_B"], losses


class CycleGANTrainer(Trainer):
    """The reference's step: the generators first (discriminators frozen), then the discriminators on fakes
    drawn from two image pools (shared across processes, so a multi-process run equals a one-process one)."""

    model: CycleGAN

    def __init__(self, model: CycleGAN, cfg: TrainConfig, seed: int = 0, world: World | None = None) -> None:
        super().__init__(model, cfg, {"G": [model.G_A, model.G_B], "D": [model.D_A, model.D_B]}, seed, world)
        pool_size = model.options.pool_size
        self.pool_A = ImagePool(pool_size, seed=item_seed(seed, 0, Stream.POOL_A))
        self.pool_B = ImagePool(pool_size, seed=item_seed(seed, 0, Stream.POOL_B))
        self.generators = self.objective(GeneratorObjective(model, self.precision))
        self.discriminators = self.objective(DiscriminatorObjective(model, self.precision))

    def step(self, real_A: torch.Tensor, real_B: torch.Tensor) -> dict[str, torch.Tensor]:
        m = self.model
        real_A, real_B = self.batch(real_A), self.batch(real_B)
        set_requires_grad([m.D_A, m.D_B], False)
        self.zero_grad("G")
        loss_G, losses, fake_A, fake_B = self.generators(real_A, real_B)
        self.update("G", loss_G)

        set_requires_grad([m.D_A, m.D_B], True)
        self.zero_grad("D")
        fake_B = self._pooled(self.pool_B, fake_B)
        fake_A = self._pooled(self.pool_A, fake_A)
        loss_D, d_losses = self.discriminators(real_A, real_B, fake_A, fake_B)
        self.update("D", loss_D)
        return self.losses(losses | d_losses)

    def _pooled(self, pool: ImagePool, fakes: torch.Tensor) -> torch.Tensor:
        """The pool sees the global batch in rank order, exactly as one process would; each process then
        takes its own slice of the answer."""
        fakes = self.world.gather(fakes.detach())
        n = fakes.shape[0] // self.world.size
        return pool.query(fakes)[self.world.rank * n : (self.world.rank + 1) * n]

    def extra_state(self) -> dict[str, Any]:
        return {"pool_A": self.pool_A.state_dict(), "pool_B": self.pool_B.state_dict()}

    def load_extra_state(self, state: dict[str, Any], device: torch.device) -> None:
        self.pool_A.load_state_dict(state["pool_A"], device)
        self.pool_B.load_state_dict(state["pool_B"], device)
