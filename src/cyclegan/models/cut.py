"""CUT and FastCUT (Park, Efros, Zhang, Zhu, ECCV 2020): one-sided translation with a patch-wise
contrastive loss, as the reference's ``cut_model.py`` trains them.

One generator ``G`` maps A to B, one discriminator ``D`` judges B images, and the projection head ``F``
embeds patches of G's features for the PatchNCE loss, which ties each output patch to the input patch at
the same place. CUT adds the same loss between B and G(B) (NCE identity); FastCUT drops it, weighs PatchNCE
tenfold and flips the input at random (flip equivariance). Each step runs G once, updates D on that output
first, then G and F together against the updated D.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, ClassVar

import torch
from torch import nn

from cyclegan.config import CUTOptions, ModelOptions, NetConfig, TrainConfig
from cyclegan.distributed import World
from cyclegan.errors import CycleGANError
from cyclegan.models.base import Direction, Model, Trainer, set_requires_grad
from cyclegan.models.losses import GANLoss
from cyclegan.models.patchnce import Draws, PatchSampleF, SeededDraws, patch_nce_loss
from cyclegan.networks import build_discriminator, build_generator
from cyclegan.networks.layers import init_weights
from cyclegan.networks.resnet import ResnetGenerator
from cyclegan.precision import Precision
from cyclegan.seeds import Stream, item_seed

Critic = Callable[[torch.Tensor], dict[str, torch.Tensor]]
"""Updates D on a batch of (detached) fakes; returns its named losses."""


def feature_channels(net: NetConfig, layers: tuple[int, ...]) -> list[int]:
    """The channels of the generator's features at ``layers``, from a shape-only (meta) pass."""
    with torch.device("meta"):
        generator = build_generator(net)
        if not isinstance(generator, ResnetGenerator):
            raise CycleGANError(
                f"CUT's PatchNCE loss reads the layers of a ResNet generator, not --netG {net.netG}"
            )
        side = 4 * generator.size_multiple
        try:
            features = generator.features(torch.empty(1, net.input_nc, side, side), layers)
        except ValueError as err:
            raise CycleGANError(f"--nce_layers {','.join(map(str, layers))}: {err}") from None
    return [f.shape[1] for f in features]


class CUT(Model):
    """G: A->B, D judges B images, F: the projection head of the PatchNCE loss."""

    name = "cut"
    title = "CUT"
    network_names = ("G", "D", "F")
    directions = (
        Direction(
            "AtoB", generator="G", discriminator="D", source="A", target="B", adversarial="G_GAN",
            critic="D", losses=("G_GAN", "NCE", "NCE_Y"), anchor="lambda_NCE",
        ),
    )  # fmt: skip
    loss_names: ClassVar[tuple[str, ...]] = ("D", "D_real", "D_fake", "G_GAN", "NCE", "NCE_Y", "G")
    chart_groups: ClassVar[tuple[tuple[str, tuple[str, ...]], ...]] = (
        ("Adversarial losses", ("G_GAN", "D_real", "D_fake")),
        ("PatchNCE losses", ("NCE", "NCE_Y")),
        ("Totals", ("G", "D")),
    )
    sample_columns: ClassVar[tuple[str, ...]] = ("real A", "G(A)", "real B", "G(B)")
    options: CUTOptions
    G: ResnetGenerator
    D: nn.Module
    F: PatchSampleF

    @classmethod
    def build(cls, options: ModelOptions, name: str) -> nn.Module:
        assert isinstance(options, CUTOptions)
        net = options.net
        if name == "G":
            return build_generator(net)
        if name == "D":
            return build_discriminator(net, net.output_nc)
        head = PatchSampleF(feature_channels(net, options.layers), options.netF_nc)
        init_weights(head, net.init_type, net.init_gain)
        return head

    @torch.no_grad()
    def sample_row(self, real_A: torch.Tensor, real_B: torch.Tensor) -> list[torch.Tensor]:
        columns = [real_A, self.G(real_A), real_B, self.G(real_B)]
        return columns[: len(self.sample_columns)]

    def trial_forward(self, real_A: torch.Tensor, real_B: torch.Tensor) -> None:
        real = torch.cat((real_A, real_B)) if self.options.nce_idt else real_A
        fake = self.G(real)
        if fake.shape[-2:] != real.shape[-2:]:
            raise ValueError("the generator's output size differs from its input size")
        self.D(fake[: len(real_A)])
        self.D(real_B)
        features = self.G.features(real_A, self.options.layers)
        count = self.options.num_patches
        self.F(features, [torch.arange(min(count, f.shape[2] * f.shape[3])) for f in features])

    def trainer(self, cfg: TrainConfig, seed: int = 0, world: World | None = None) -> CUTTrainer:
        return CUTTrainer(self, cfg, seed, world)


class FastCUT(CUT):
    """CUT's networks and step with FastCUT's options: no NCE identity, so no G(B) to log or show."""

    name = "fastcut"
    title = "FastCUT"
    directions = (
        Direction(
            "AtoB", generator="G", discriminator="D", source="A", target="B", adversarial="G_GAN",
            critic="D", losses=("G_GAN", "NCE"), anchor="lambda_NCE",
        ),
    )  # fmt: skip
    loss_names = ("D", "D_real", "D_fake", "G_GAN", "NCE", "G")
    chart_groups = (
        ("Adversarial losses", ("G_GAN", "D_real", "D_fake")),
        ("PatchNCE loss", ("NCE",)),
        ("Totals", ("G", "D")),
    )
    sample_columns = ("real A", "G(A)", "real B")


class CriticObjective(nn.Module):
    """D's loss on G's detached outputs and real B images, halved, as the reference computes it."""

    def __init__(self, model: CUT, precision: Precision) -> None:
        super().__init__()
        self.D, self.precision = model.D, precision
        self.gan_loss = GANLoss(model.options.gan_mode)

    def forward(
        self, fake_B: torch.Tensor, real_B: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with self.precision.autocast():
            fake = self.gan_loss(self.D(fake_B).float(), False)
            real = self.gan_loss(self.D(real_B).float(), True)
        loss = (fake + real) * 0.5
        return loss, {"D": loss, "D_fake": fake, "D_real": real}


class GeneratorObjective(nn.Module):
    """G's and F's losses on a batch: the adversarial loss against D and the PatchNCE losses.

    The reference updates D between G's forward pass and G's loss. Here that happens inside this module's
    forward (the ``critic`` callback), so that under DDP the one forward of this module is followed by the
    one backward of its loss: DDP then averages G's and F's gradients over the processes exactly once per
    step, while D (no submodule of this one) is averaged by its own objective's DDP inside the callback.
    """

    def __init__(self, model: CUT, precision: Precision, draws: Draws) -> None:
        super().__init__()
        self.G = model.G
        self.F = model.F if model.options.lambda_NCE > 0 else None  # DDP refuses parameters left unused
        self.critics = (model.D,)  # a tuple: not registered as a submodule
        self.options, self.precision, self.draws = model.options, precision, draws
        self.gan_loss = GANLoss(model.options.gan_mode)

    def forward(
        self, real_A: torch.Tensor, real_B: torch.Tensor, critic: Critic
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Returns (G's total loss, every named loss of the step, D's included)."""
        o, n = self.options, len(real_A)
        real = torch.cat((real_A, real_B)) if o.nce_idt else real_A
        flipped = o.flip_equivariance and self.draws.flip()
        if flipped:
            real = torch.flip(real, [3])
        with self.precision.autocast():
            fake = self.G(real).float()
        fake_B, idt_B = fake[:n], fake[n:]
        losses = critic(fake_B.detach())
        zero = torch.zeros((), device=real_A.device)
        with self.precision.autocast():
            if o.lambda_GAN > 0:
                (D,) = self.critics
                losses["G_GAN"] = self.gan_loss(D(fake_B).float(), True) * o.lambda_GAN
            else:
                losses["G_GAN"] = zero
            losses["NCE"] = self._nce(real_A, fake_B, flipped) if self.F is not None else zero
            losses["NCE_Y"] = self._nce(real_B, idt_B, flipped) if self.F is not None and o.nce_idt else zero
        nce = (losses["NCE"] + losses["NCE_Y"]) * 0.5 if o.nce_idt else losses["NCE"]
        losses["G"] = losses["G_GAN"] + nce
        return losses["G"], losses

    def _nce(self, source: torch.Tensor, target: torch.Tensor, flipped: bool) -> torch.Tensor:
        """The PatchNCE loss between ``source`` images and G's outputs ``target`` for them, averaged over
        the layers (each layer's mean patch loss times lambda_NCE)."""
        o, head = self.options, self.F
        assert head is not None
        query = self.G.features(target, o.layers)
        if flipped:  # back to the source's orientation: patches must meet their own input patch
            query = [torch.flip(q, [3]) for q in query]
        with torch.no_grad():  # the keys carry no gradient (the loss detaches them): keep no activations
            key = self.G.features(source, o.layers)
        ids = self.draws.patches([k.shape[2] * k.shape[3] for k in key], o.num_patches)
        with torch.no_grad():
            key_patches = head(key, ids)
        query_patches = head(query, ids)
        images = 1 if o.nce_includes_all_negatives_from_minibatch else len(source)
        layer_losses = (
            (patch_nce_loss(q, k, images, o.nce_T) * o.lambda_NCE).mean()
            for q, k in zip(query_patches, key_patches, strict=True)
        )
        return sum(layer_losses, torch.zeros((), device=source.device)) / len(o.layers)


class CUTTrainer(Trainer):
    """The reference's step: G's forward pass, D's update on its outputs, then G's and F's update (one
    optimizer group) against the updated D. ``draws`` (default: the run's seeded stream) supplies the patch
    samples and flips; a test passes recorded ones."""

    model: CUT

    def __init__(
        self,
        model: CUT,
        cfg: TrainConfig,
        seed: int = 0,
        world: World | None = None,
        draws: Draws | None = None,
    ) -> None:
        super().__init__(model, cfg, {"G": [model.G, model.F], "D": [model.D]}, seed, world)
        self.draws = draws if draws is not None else SeededDraws(item_seed(seed, 0, Stream.CUT_DRAWS))
        self.generator = self.objective(GeneratorObjective(model, self.precision, self.draws))
        self.critic = self.objective(CriticObjective(model, self.precision))
        self._update_critic = torch.compiler.disable(self._critic_step)  # a graph break under --compile step

    def step(self, real_A: torch.Tensor, real_B: torch.Tensor) -> dict[str, torch.Tensor]:
        real_A, real_B = self.batch(real_A), self.batch(real_B)
        self.zero_grad("G")
        loss, losses = self.generator(real_A, real_B, partial(self._update_critic, real_B=real_B))
        self.update("G", loss)
        return self.losses(losses)

    def _critic_step(self, fake_B: torch.Tensor, real_B: torch.Tensor) -> dict[str, torch.Tensor]:
        D = self.model.D
        set_requires_grad([D], True)
        self.zero_grad("D")
        loss, losses = self.critic(fake_B, real_B)
        self.update("D", loss)
        set_requires_grad([D], False)  # G's loss reads D without training it
        return losses

    def extra_state(self) -> dict[str, Any]:
        return {"draws": self.draws.state_dict()} if isinstance(self.draws, SeededDraws) else {}

    def load_extra_state(self, state: dict[str, Any], device: torch.device) -> None:
        if isinstance(self.draws, SeededDraws):
            self.draws.load_state_dict(state["draws"])
