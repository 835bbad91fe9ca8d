"""The CycleGAN model and its training step: the analogue of the reference's ``cycle_gan_model.py``.

Naming follows the paper's reference code: ``G_A`` maps A->B, ``G_B`` maps B->A, ``D_A`` judges domain B
(real B against G_A(A)) and ``D_B`` judges domain A.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import nn

from cyclegan.config import ModelConfig, TrainConfig
from cyclegan.distributed import World
from cyclegan.errors import CycleGANError, first_line
from cyclegan.models.losses import GANLoss, ImagePool
from cyclegan.nets.networks import build_discriminator, build_generator, set_checkpointing
from cyclegan.precision import (
    Precision,
    adam_options,
    keep_norms_float32,
    match_param_layout,
    resolve_precision,
    to_channels_last,
)
from cyclegan.seeds import Stream, item_seed

LOSS_NAMES = ("D_A", "G_A", "cycle_A", "idt_A", "D_B", "G_B", "cycle_B", "idt_B")


class CycleGAN(nn.Module):
    """The four networks. G_A: A->B, G_B: B->A, D_A judges B images, D_B judges A images."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.G_A = build_generator(cfg, cfg.input_nc, cfg.output_nc)
        self.G_B = build_generator(cfg, cfg.output_nc, cfg.input_nc)
        self.D_A = build_discriminator(cfg, cfg.output_nc)
        self.D_B = build_discriminator(cfg, cfg.input_nc)

    def networks(self) -> dict[str, nn.Module]:
        return {"G_A": self.G_A, "G_B": self.G_B, "D_A": self.D_A, "D_B": self.D_B}


def check_training_size(cfg: ModelConfig, height: int, width: int) -> None:
    """Refuse an image size the four networks cannot train on, before any data is loaded.

    Runs the networks in training mode on shape-only (meta) tensors, so it costs no memory or compute and
    catches every rule at once: the generators' size multiples, reflection padding on tiny maps, and
    instance norm's need for more than one value per channel in the discriminators' last layers.
    """
    with torch.device("meta"):  # built without allocating or initialising any weights
        model = CycleGAN(cfg).train()
    a = torch.empty(1, cfg.input_nc, height, width, device="meta")
    b = torch.empty(1, cfg.output_nc, height, width, device="meta")
    try:
        for generator, x in ((model.G_A, a), (model.G_B, b)):
            if generator(x).shape[-2:] != x.shape[-2:]:
                raise ValueError("the generator's output size differs from its input size")
        model.D_A(b)
        model.D_B(a)
    except (RuntimeError, ValueError) as err:
        raise CycleGANError(
            f"{width}x{height} training images do not fit --netG {cfg.netG} --netD {cfg.netD}: "
            + first_line(err).split(", got input size")[0]
        ) from None


def lr_factor(epoch: int, n_epochs: int, n_epochs_decay: int) -> float:
    """The reference's linear rule: 1 for the first ``n_epochs`` epochs, then down towards 0.

    ``epoch`` counts from 0, so the last epoch trains at 1 / (n_epochs_decay + 1) of the initial rate.
    """
    return 1.0 - max(0, epoch + 1 - n_epochs) / float(n_epochs_decay + 1)


class GeneratorObjective(nn.Module):
    """The generators' losses on a batch: what one generator update minimises.

    The discriminators are read here but are no submodules of this one, so DDP averages only the
    generators' gradients over the processes.
    """

    def __init__(self, model: CycleGAN, cfg: TrainConfig, precision: Precision) -> None:
        super().__init__()
        self.G_A, self.G_B = model.G_A, model.G_B
        self.critics = (model.D_A, model.D_B)  # a tuple: not registered as submodules
        self.cfg, self.precision = cfg, precision
        self.gan_loss, self.l1 = GANLoss(cfg.gan_mode), nn.L1Loss()

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
        cfg, G_A, G_B, (D_A, D_B) = self.cfg, self.G_A, self.G_B, self.critics
        fake_B = G_A(real_A).float()
        rec_A = G_B(fake_B).float()
        fake_A = G_B(real_B).float()
        rec_B = G_A(fake_A).float()
        losses: dict[str, torch.Tensor] = {}
        if cfg.lambda_identity > 0:
            losses["idt_A"] = self.l1(G_A(real_B).float(), real_B) * cfg.lambda_B * cfg.lambda_identity
            losses["idt_B"] = self.l1(G_B(real_A).float(), real_A) * cfg.lambda_A * cfg.lambda_identity
        else:
            losses["idt_A"] = losses["idt_B"] = torch.zeros((), device=real_A.device)
        losses["G_A"] = self.gan_loss(D_A(fake_B).float(), True)
        losses["G_B"] = self.gan_loss(D_B(fake_A).float(), True)
        losses["cycle_A"] = self.l1(rec_A, real_A) * cfg.lambda_A
        losses["cycle_B"] = self.l1(rec_B, real_B) * cfg.lambda_B
        # Summed in the reference's order: autograd then accumulates gradients in the same order, which keeps
        # float32 results identical to it (Adam amplifies rounding differences in near-zero gradients).
        loss_G = losses["G_A"] + losses["G_B"] + losses["cycle_A"] + losses["cycle_B"]
        return loss_G + losses["idt_A"] + losses["idt_B"], losses, fake_A, fake_B


class DiscriminatorObjective(nn.Module):
    """The discriminators' losses: real images against (pooled) fakes, halved as in the reference."""

    def __init__(self, model: CycleGAN, cfg: TrainConfig, precision: Precision) -> None:
        super().__init__()
        self.D_A, self.D_B = model.D_A, model.D_B
        self.precision, self.gan_loss = precision, GANLoss(cfg.gan_mode)

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


class CycleGANTrainer:
    """Optimizers, schedulers, image pools and one training step, as in the reference.

    Callable from Python on given tensors: ``losses = trainer.step(real_A, real_B)``. The model must already
    be on its device. With several processes (``world``), each passes its slice of the global batch; the
    gradients, the logged losses and the image pools are shared, so every process ends each step with the
    same weights as one process training on the whole batch.
    """

    def __init__(self, model: CycleGAN, cfg: TrainConfig, seed: int = 0, world: World | None = None) -> None:
        self.model, self.cfg = model, cfg
        set_checkpointing(model, cfg.checkpoint_activations)
        self.world = world or World(device=next(model.parameters()).device)
        device = self.world.device
        self.precision = Precision(resolve_precision(cfg.precision, device), device.type)
        if self.precision.mixed:
            keep_norms_float32(model)
        if cfg.channels_last:
            to_channels_last(model)
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        betas, adam = (cfg.beta1, cfg.beta2), adam_options(self.precision)
        self.opt_G = torch.optim.Adam(
            itertools.chain(model.G_A.parameters(), model.G_B.parameters()), lr=cfg.lr, betas=betas, **adam
        )
        self.opt_D = torch.optim.Adam(
            itertools.chain(model.D_A.parameters(), model.D_B.parameters()), lr=cfg.lr, betas=betas, **adam
        )
        rule = lambda epoch: lr_factor(epoch, cfg.n_epochs, cfg.n_epochs_decay)  # noqa: E731
        self.schedulers = [torch.optim.lr_scheduler.LambdaLR(opt, rule) for opt in (self.opt_G, self.opt_D)]
        self.scaler = self.precision.grad_scaler()
        self.pool_A = ImagePool(cfg.pool_size, seed=item_seed(seed, 0, Stream.POOL_A))
        self.pool_B = ImagePool(cfg.pool_size, seed=item_seed(seed, 0, Stream.POOL_B))
        self.generators = self.world.wrap(GeneratorObjective(model, cfg, self.precision))
        self.discriminators = self.world.wrap(DiscriminatorObjective(model, cfg, self.precision))
        if cfg.compile == "networks":
            for net in model.networks().values():
                net.compile()
        elif cfg.compile == "step":
            self.generators.compile()
            self.discriminators.compile()

    def step(self, real_A: torch.Tensor, real_B: torch.Tensor) -> dict[str, float]:
        """One generator update (discriminators frozen), then one discriminator update on pooled fakes.

        Returns the losses as computed before this step's updates (averaged over the processes).
        """
        m, scaler = self.model, self.scaler
        real_A = real_A.contiguous(memory_format=self.memory_format)
        real_B = real_B.contiguous(memory_format=self.memory_format)
        _set_requires_grad([m.D_A, m.D_B], False)
        self.opt_G.zero_grad(set_to_none=True)
        loss_G, losses, fake_A, fake_B = self.generators(real_A, real_B)
        scaler.scale(loss_G).backward()
        scaler.step(self.opt_G)

        _set_requires_grad([m.D_A, m.D_B], True)
        self.opt_D.zero_grad(set_to_none=True)
        fake_B = self._pooled(self.pool_B, fake_B)
        fake_A = self._pooled(self.pool_A, fake_A)
        loss_D, d_losses = self.discriminators(real_A, real_B, fake_A, fake_B)
        scaler.scale(loss_D).backward()
        scaler.step(self.opt_D)
        scaler.update()
        losses |= d_losses
        values = self.world.mean(torch.stack([losses[name].detach() for name in LOSS_NAMES]))
        return dict(zip(LOSS_NAMES, values.tolist(), strict=True))

    def _pooled(self, pool: ImagePool, fakes: torch.Tensor) -> torch.Tensor:
        """The pool sees the global batch in rank order, exactly as one process would; each process then
        takes its own slice of the answer."""
        fakes = self.world.gather(fakes.detach())
        n = fakes.shape[0] // self.world.size
        return pool.query(fakes)[self.world.rank * n : (self.world.rank + 1) * n]

    def end_epoch(self) -> None:
        for scheduler in self.schedulers:
            scheduler.step()

    @property
    def lr(self) -> float:
        return self.opt_G.param_groups[0]["lr"]

    def state_dict(self) -> dict[str, Any]:
        return {
            "opt_G": self.opt_G.state_dict(),
            "opt_D": self.opt_D.state_dict(),
            "schedulers": [s.state_dict() for s in self.schedulers],
            "pool_A": self.pool_A.state_dict(),
            "pool_B": self.pool_B.state_dict(),
            "grad_scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        """Restore a saved state; anything that does not fit this trainer is a one-line error.

        A run may change ``--precision`` when resuming: an fp16 run's loss scale is restored when there is
        one, and starts afresh otherwise.
        """
        try:
            self.opt_G.load_state_dict(state["opt_G"])
            self.opt_D.load_state_dict(state["opt_D"])
            for scheduler, s in zip(self.schedulers, state["schedulers"], strict=True):
                scheduler.load_state_dict(s)
            self.pool_A.load_state_dict(state["pool_A"], device)
            self.pool_B.load_state_dict(state["pool_B"], device)
            if self.scaler.is_enabled() and state.get("grad_scaler"):
                self.scaler.load_state_dict(state["grad_scaler"])
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as err:
            raise CycleGANError(f"the training state does not fit this model: {first_line(err)}") from None
        for optimizer in (self.opt_G, self.opt_D):
            match_param_layout(optimizer)


def _set_requires_grad(nets: list[nn.Module], flag: bool) -> None:
    for net in nets:
        for p in net.parameters():
            p.requires_grad_(flag)
