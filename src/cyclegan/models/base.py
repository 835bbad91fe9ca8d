"""What a model is, for everything around it: its networks, losses, directions, samples and training step.

A model is one module that subclasses :class:`Model` (and, for its step, :class:`Trainer`) with a ``name``;
defining the subclass registers it. The training loop, checkpoints, resume, DDP, precision, compile,
activation checkpointing, the planner, health checks and the report take everything model-specific from
these declarations, so a new model plugs in without touching them.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from cyclegan.config import ModelOptions, NetConfig, TrainConfig, options_type
from cyclegan.distributed import World
from cyclegan.errors import CycleGANError, first_line
from cyclegan.networks import set_checkpointing
from cyclegan.precision import (
    Precision,
    adam_options,
    keep_norms_float32,
    match_param_layout,
    to_channels_last,
)


@dataclass(frozen=True)
class Direction:
    """One translation a model learns, and the names of what trains it (for health checks and tools).

    ``generator`` translates ``source`` images into ``target`` ones and ``discriminator`` judges its
    outputs. ``adversarial`` and ``critic`` name the generator's and the discriminator's adversarial losses;
    ``losses`` every loss term of that generator's objective. ``identity`` and ``cycle`` name its identity
    and cycle-consistency terms where the model has them, and ``anchor`` the option weighing the loss that
    ties its outputs to its inputs (what to raise against mode collapse).
    """

    name: str  # "AtoB" or "BtoA"
    generator: str
    discriminator: str
    source: str  # "A" or "B"
    target: str
    adversarial: str
    critic: str
    losses: tuple[str, ...]
    identity: str | None = None
    cycle: str | None = None
    anchor: str | None = None


class Model(nn.Module):
    """A translation method: the networks it trains (its submodules, in checkpoint order) and what it
    declares about them. Subclasses set the class attributes and implement the methods below."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""  # as people write it: "CycleGAN", "CUT"
    registry: ClassVar[dict[str, type[Model]]] = {}
    network_names: ClassVar[tuple[str, ...]]
    directions: ClassVar[tuple[Direction, ...]]
    loss_names: ClassVar[tuple[str, ...]]
    chart_groups: ClassVar[tuple[tuple[str, tuple[str, ...]], ...]]  # (title, loss names) per chart
    sample_columns: ClassVar[tuple[str, ...]]  # titles of the columns of a sample grid
    paired: ClassVar[bool] = False  # trains on aligned pairs (A[i] belongs with B[i])

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            Model.registry[cls.name] = cls

    def __init__(self, options: ModelOptions) -> None:
        super().__init__()
        if type(options) is not options_type(self.name):
            raise CycleGANError(
                f"{self.name} takes {options_type(self.name).__name__}, not {type(options).__name__}"
            )
        self.options = options
        for name in self.network_names:
            self.add_module(name, self.build(options, name))

    @classmethod
    def build(cls, options: ModelOptions, name: str) -> nn.Module:
        """The freshly initialised network ``name`` (one of ``network_names``)."""
        raise NotImplementedError

    @property
    def net(self) -> NetConfig:
        return self.options.net

    def networks(self) -> dict[str, nn.Module]:
        return {name: getattr(self, name) for name in self.network_names}

    @classmethod
    def direction(cls, name: str) -> Direction:
        for direction in cls.directions:
            if direction.name == name:
                return direction
        which = " and ".join(d.name for d in cls.directions)
        raise CycleGANError(f"a {cls.name} model translates {which} only, not {name}")

    def generator(self, direction: str) -> nn.Module:
        return getattr(self, self.direction(direction).generator)

    def sample_row(self, real_A: torch.Tensor, real_B: torch.Tensor) -> list[torch.Tensor]:
        """The images of one sample grid, column by column (``sample_columns``), in [-1, 1]; eval mode."""
        raise NotImplementedError

    def trial_forward(self, real_A: torch.Tensor, real_B: torch.Tensor) -> None:
        """Run every network as a training step would (on shape-only tensors, to vet image sizes)."""
        raise NotImplementedError

    def pool_bytes_per_pixel(self) -> float:
        """Memory that grows with the image size besides a step's activations (CycleGAN's image pools)."""
        return 0.0

    def trainer(self, cfg: TrainConfig, seed: int = 0, world: World | None = None) -> Trainer:
        """The object that trains this model (optimizers, schedules, the step)."""
        raise NotImplementedError


def model_type(name: str) -> type[Model]:
    options_type(name)  # the same one-line error for an unknown name
    if name not in Model.registry:
        raise CycleGANError(f"--model {name} has options but no registered model")
    return Model.registry[name]


def build_model(options: ModelOptions) -> Model:
    return model_type(options.name)(options)


def check_training_size(options: ModelOptions, height: int, width: int) -> None:
    """Refuse an image size the networks cannot train on, before any data is loaded.

    Runs the networks in training mode on shape-only (meta) tensors, so it costs no memory or compute and
    catches every rule at once: the generators' size multiples, reflection padding on tiny maps, and
    instance norm's need for more than one value per channel in the discriminators' last layers.
    """
    with torch.device("meta"):  # built without allocating or initialising any weights
        model = build_model(options).train()
    try:  # a size too large to describe is refused here too
        a = torch.empty(1, options.net.input_nc, height, width, device="meta")
        b = torch.empty(1, options.net.output_nc, height, width, device="meta")
        model.trial_forward(a, b)
    except (RuntimeError, ValueError) as err:
        raise CycleGANError(
            f"{width}x{height} training images do not fit --netG {options.net.netG}"
            f" --netD {options.net.netD}: " + first_line(err).split(", got input size")[0]
        ) from None


def lr_factor(epoch: int, n_epochs: int, n_epochs_decay: int) -> float:
    """The reference's linear rule: 1 for the first ``n_epochs`` epochs, then down towards 0.

    ``epoch`` counts from 0, so the last epoch trains at 1 / (n_epochs_decay + 1) of the initial rate.
    """
    return 1.0 - max(0, epoch + 1 - n_epochs) / float(n_epochs_decay + 1)


@contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode inside the block (dropout draws no random numbers, batch norm leaves its running
    statistics alone), then the mode the model had: for sample grids, probes and evaluations mid-training."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def set_requires_grad(nets: list[nn.Module], flag: bool) -> None:
    for net in nets:
        for p in net.parameters():
            p.requires_grad_(flag)


class Trainer:
    """Optimizers, schedulers, precision and the training step of a model.

    The plumbing every model shares lives here: activation checkpointing, mixed precision (norms kept in
    float32, fused Adam, the fp16 loss scaler), the memory layout, one Adam per group of networks with the
    reference's learning-rate rule, DDP around the objectives (``objective``), compilation, and the state a
    checkpoint saves. A model's trainer adds its step: ``losses = trainer.step(real_A, real_B)``.

    With several processes (``world``), each passes its slice of the global batch; gradients and the logged
    losses are averaged, so every process ends each step with the same weights as one process training on
    the whole batch.
    """

    def __init__(
        self,
        model: Model,
        cfg: TrainConfig,
        groups: dict[str, list[nn.Module]],
        seed: int = 0,
        world: World | None = None,
    ) -> None:
        self.model, self.cfg, self.seed = model, cfg, seed
        set_checkpointing(model, cfg.checkpoint_activations)
        self.world = world or World(device=next(model.parameters()).device)
        device = self.world.device
        self.precision = Precision.on(cfg.precision, device)
        if self.precision.mixed:
            keep_norms_float32(model)
        if cfg.channels_last:
            to_channels_last(model, device)
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        betas, adam = (cfg.beta1, cfg.beta2), adam_options(self.precision)
        self.optimizers = {
            name: torch.optim.Adam(
                [p for net in nets for p in net.parameters()], lr=cfg.lr, betas=betas, **adam
            )
            for name, nets in groups.items()
        }
        opts = cfg.model
        rule = lambda epoch: lr_factor(epoch, opts.n_epochs, opts.n_epochs_decay)  # noqa: E731
        self.schedulers = [torch.optim.lr_scheduler.LambdaLR(opt, rule) for opt in self.optimizers.values()]
        self.scaler = self.precision.grad_scaler()
        if cfg.compile == "networks":
            for net in model.networks().values():
                net.compile()

    def objective(self, module: nn.Module) -> nn.Module:
        """``module`` (the losses of one update, its networks as submodules) as the step runs it: with DDP
        when there are several processes, and compiled with ``--compile step``."""
        wrapped = self.world.wrap(module)
        if self.cfg.compile == "step":
            wrapped.compile()
        return wrapped

    def batch(self, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous(memory_format=self.memory_format)

    def step(self, real_A: torch.Tensor, real_B: torch.Tensor) -> dict[str, torch.Tensor]:
        """One training step; returns the losses as computed before its updates (averaged over processes),
        as 0-d tensors on the device: reading them is left to whoever needs the numbers."""
        raise NotImplementedError

    def update(self, group: str, loss: torch.Tensor) -> None:
        """Backpropagate ``loss`` and step the optimizer of ``group`` (the scale updates in ``losses``)."""
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizers[group])

    def zero_grad(self, group: str) -> None:
        self.optimizers[group].zero_grad(set_to_none=True)

    def losses(self, named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """End a step: update the loss scale and average the named losses over the processes."""
        self.scaler.update()
        names = self.model.loss_names
        values = self.world.mean(torch.stack([named[name].detach().float() for name in names]))
        return dict(zip(names, values.unbind(), strict=True))

    def end_epoch(self) -> None:
        with warnings.catch_warnings():
            # A run resumed at an epoch's last step closes that epoch before this process's first optimizer
            # step. The restored schedule steps right; PyTorch's check of the call order would warn anyway.
            warnings.filterwarnings(
                "ignore", r"Detected call of `lr_scheduler\.step\(\)` before", UserWarning
            )
            for scheduler in self.schedulers:
                scheduler.step()

    @property
    def lr(self) -> float:
        return next(iter(self.optimizers.values())).param_groups[0]["lr"]

    def extra_state(self) -> dict[str, Any]:
        """Model-specific training state a checkpoint must keep (CycleGAN's image pools)."""
        return {}

    def load_extra_state(self, state: dict[str, Any], device: torch.device) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            "schedulers": [s.state_dict() for s in self.schedulers],
            "grad_scaler": self.scaler.state_dict(),
            **self.extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        """Restore a saved state; anything that does not fit this trainer is a one-line error.

        A run may change ``--precision`` when resuming: an fp16 run's loss scale is restored when there is
        one, and starts afresh otherwise.
        """
        try:
            saved = state["optimizers"] if "optimizers" in state else _legacy_optimizers(state)
            if set(saved) != set(self.optimizers):
                raise KeyError(f"optimizers {sorted(saved)}, expected {sorted(self.optimizers)}")
            for name, optimizer in self.optimizers.items():
                optimizer.load_state_dict(saved[name])
            for scheduler, s in zip(self.schedulers, state["schedulers"], strict=True):
                scheduler.load_state_dict(s)
            self.load_extra_state(state, device)
            if self.scaler.is_enabled() and state.get("grad_scaler"):
                self.scaler.load_state_dict(state["grad_scaler"])
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as err:
            raise CycleGANError(f"the training state does not fit this model: {first_line(err)}") from None
        for optimizer in self.optimizers.values():
            match_param_layout(optimizer)


def _legacy_optimizers(state: dict[str, Any]) -> dict[str, Any]:
    """Checkpoints of earlier versions saved CycleGAN's two optimizers as ``opt_G`` and ``opt_D``."""
    return {"G": state["opt_G"], "D": state["opt_D"]}
