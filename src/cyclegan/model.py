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
from cyclegan.errors import CycleGANError
from cyclegan.losses import GANLoss, ImagePool
from cyclegan.networks import build_discriminator, build_generator, set_checkpointing
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
    model = CycleGAN(cfg).to("meta").train()
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
            + str(err).splitlines()[0].split(", got input size")[0]
        ) from None


def lr_factor(epoch: int, n_epochs: int, n_epochs_decay: int) -> float:
    """The reference's linear rule: 1 for the first ``n_epochs`` epochs, then down towards 0.

    ``epoch`` counts from 0, so the last epoch trains at 1 / (n_epochs_decay + 1) of the initial rate.
    """
    return 1.0 - max(0, epoch + 1 - n_epochs) / float(n_epochs_decay + 1)


class CycleGANTrainer:
    """Optimizers, schedulers, image pools and one training step, as in the reference.

    Callable from Python on given tensors: ``losses = trainer.step(real_A, real_B)``.
    """

    def __init__(self, model: CycleGAN, cfg: TrainConfig, seed: int = 0) -> None:
        self.model, self.cfg = model, cfg
        set_checkpointing(model, cfg.checkpoint_activations)
        betas = (cfg.beta1, cfg.beta2)
        self.opt_G = torch.optim.Adam(
            itertools.chain(model.G_A.parameters(), model.G_B.parameters()), lr=cfg.lr, betas=betas
        )
        self.opt_D = torch.optim.Adam(
            itertools.chain(model.D_A.parameters(), model.D_B.parameters()), lr=cfg.lr, betas=betas
        )
        rule = lambda epoch: lr_factor(epoch, cfg.n_epochs, cfg.n_epochs_decay)  # noqa: E731
        self.schedulers = [torch.optim.lr_scheduler.LambdaLR(opt, rule) for opt in (self.opt_G, self.opt_D)]
        self.pool_A = ImagePool(cfg.pool_size, seed=item_seed(seed, 0, Stream.POOL_A))
        self.pool_B = ImagePool(cfg.pool_size, seed=item_seed(seed, 0, Stream.POOL_B))
        self.gan_loss = GANLoss(cfg.gan_mode)
        self.l1 = nn.L1Loss()

    def step(self, real_A: torch.Tensor, real_B: torch.Tensor) -> dict[str, float]:
        """One generator update (discriminators frozen), then one discriminator update on pooled fakes.

        Returns the losses as computed before this step's updates.
        """
        m, cfg = self.model, self.cfg
        fake_B = m.G_A(real_A)
        rec_A = m.G_B(fake_B)
        fake_A = m.G_B(real_B)
        rec_B = m.G_A(fake_A)

        _set_requires_grad([m.D_A, m.D_B], False)
        self.opt_G.zero_grad(set_to_none=True)
        losses: dict[str, torch.Tensor] = {}
        if cfg.lambda_identity > 0:
            losses["idt_A"] = self.l1(m.G_A(real_B), real_B) * cfg.lambda_B * cfg.lambda_identity
            losses["idt_B"] = self.l1(m.G_B(real_A), real_A) * cfg.lambda_A * cfg.lambda_identity
        else:
            losses["idt_A"] = losses["idt_B"] = torch.zeros((), device=real_A.device)
        losses["G_A"] = self.gan_loss(m.D_A(fake_B), True)
        losses["G_B"] = self.gan_loss(m.D_B(fake_A), True)
        losses["cycle_A"] = self.l1(rec_A, real_A) * cfg.lambda_A
        losses["cycle_B"] = self.l1(rec_B, real_B) * cfg.lambda_B
        # Summed in the reference's order: autograd then accumulates gradients in the same order, which keeps
        # float32 results identical to it (Adam amplifies rounding differences in near-zero gradients).
        loss_G = losses["G_A"] + losses["G_B"] + losses["cycle_A"] + losses["cycle_B"]
        (loss_G + losses["idt_A"] + losses["idt_B"]).backward()
        self.opt_G.step()

        _set_requires_grad([m.D_A, m.D_B], True)
        self.opt_D.zero_grad(set_to_none=True)
        losses["D_A"] = self._discriminator_loss(m.D_A, real_B, self.pool_B.query(fake_B))
        losses["D_B"] = self._discriminator_loss(m.D_B, real_A, self.pool_A.query(fake_A))
        (losses["D_A"] + losses["D_B"]).backward()
        self.opt_D.step()
        return {name: losses[name].item() for name in LOSS_NAMES}

    def _discriminator_loss(self, net: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self.gan_loss(net(real), True) + self.gan_loss(net(fake.detach()), False))

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
        }

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        """Restore a saved state; anything that does not fit this trainer is a one-line error."""
        try:
            self.opt_G.load_state_dict(state["opt_G"])
            self.opt_D.load_state_dict(state["opt_D"])
            for scheduler, s in zip(self.schedulers, state["schedulers"], strict=True):
                scheduler.load_state_dict(s)
            self.pool_A.load_state_dict(state["pool_A"], device)
            self.pool_B.load_state_dict(state["pool_B"], device)
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise CycleGANError(f"the training state does not fit this model: {reason}") from None


def _set_requires_grad(nets: list[nn.Module], flag: bool) -> None:
    for net in nets:
        for p in net.parameters():
            p.requires_grad_(flag)
