"""Running generators on images: translating files at their own size, and training sample grids."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image
from torch import nn
from torchvision.utils import make_grid, save_image
from tqdm import tqdm

from cyclegan.checkpoints import load_generator
from cyclegan.config import ModelConfig
from cyclegan.data import list_images, pad_to_multiple
from cyclegan.errors import CycleGANError
from cyclegan.files import atomic_write
from cyclegan.images import DECODE_ERRORS, first_line, load_image, to_image, to_tensor
from cyclegan.networks import size_multiple

if TYPE_CHECKING:
    from cyclegan.export import OnnxTranslator

MIN_SIZE = 8  # a ResNet's bottleneck must be at least 2x2 for its reflection padding
FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}
BACKENDS = ("torch", "onnxruntime")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Translator:
    """A loaded generator that maps images of any size: reflect-pad to the size it needs, crop back."""

    def __init__(self, generator: nn.Module, config: ModelConfig, device: torch.device | str = "cpu") -> None:
        self.generator, self.config, self.device = generator, config, torch.device(device)
        self.generator.to(self.device)
        self.in_channels = next(m for m in generator.modules() if isinstance(m, nn.Conv2d)).in_channels
        if self.in_channels not in (1, 3):
            raise CycleGANError(
                f"the model takes {self.in_channels}-channel images; only 1 and 3 are supported"
            )
        self.multiple = size_multiple(config)

    @classmethod
    def load(
        cls, checkpoint: Path, direction: str = "AtoB", device: torch.device | str = "cpu"
    ) -> Translator:
        """From a run folder, one of our checkpoints, or a reference generator ``.pth``."""
        generator, config = load_generator(Path(checkpoint), direction)
        return cls(generator, config, device)

    @torch.inference_mode()
    def translate_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """C×H×W (or N×C×H×W) in [-1, 1] -> the translation, same spatial size."""
        padded, (h, w) = pad_to_multiple(x.to(self.device), self.multiple, MIN_SIZE)
        batch = padded if padded.dim() == 4 else padded.unsqueeze(0)
        try:
            y = self.generator(batch)[..., :h, :w]
        except (torch.OutOfMemoryError, RuntimeError) as err:
            if not isinstance(err, torch.OutOfMemoryError) and "memory" not in str(err):
                raise
            raise CycleGANError(
                f"not enough memory to translate a {w}x{h} image on {self.device}; try a smaller image"
                " or a machine with more memory"
            ) from None
        return y if x.dim() == 4 else y[0]

    def __call__(self, image: Image.Image) -> Image.Image:
        return to_image(self.translate_tensor(to_tensor(image)))


class Autocast(nn.Module):
    """Runs a generator under autocast at reduced precision and returns float32, so callers see no change."""

    def __init__(self, generator: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.generator, self.dtype = generator, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=self.dtype):
            return self.generator(x).float()


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``--precision`` on ``device`` (None for fp32), or a one-line refusal."""
    if precision not in PRECISIONS:
        raise CycleGANError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise CycleGANError("--precision fp16 needs a CUDA device; on the CPU use bf16 or fp32")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise CycleGANError(f"--precision bf16: {device} does not support bfloat16; use fp16 or fp32")
    return PRECISIONS[precision]


def load_translator(
    checkpoint: Path,
    direction: str = "AtoB",
    device: torch.device | str = "cpu",
    backend: str = "torch",
    precision: str = "fp32",
) -> Translator | OnnxTranslator:
    """A Translator for ``backend``: PyTorch (at ``precision``) on our checkpoints, or onnxruntime on a model
    written by ``cyclegan export``. Both map PIL images and tensors the same way."""
    device = torch.device(device)
    if backend == "onnxruntime":
        if precision != "fp32":
            raise CycleGANError("--precision applies to the torch backend; an ONNX model runs in float32")
        from cyclegan.export import load_onnx_translator

        return load_onnx_translator(Path(checkpoint), direction, device)
    if backend != "torch":
        raise CycleGANError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    dtype = autocast_dtype(precision, device)
    if Path(checkpoint).suffix == ".onnx":
        raise CycleGANError(f"{checkpoint} is an ONNX model; run it with --backend onnxruntime")
    generator, config = load_generator(Path(checkpoint), direction)
    return Translator(generator if dtype is None else Autocast(generator, dtype), config, device)


def collect_inputs(inputs: Iterable[Path], out_dir: Path, suffix: str = ".png") -> list[tuple[Path, Path]]:
    """(source, destination) pairs: a file keeps its name, a folder's images keep their relative paths;
    every output gets ``suffix`` (lossless PNG unless asked otherwise)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise CycleGANError(f"--out {out_dir} exists and is not a folder")
    pairs: list[tuple[Path, Path]] = []
    for item in map(Path, inputs):
        if item.is_dir():
            pairs += [(p, (out_dir / p.relative_to(item)).with_suffix(suffix)) for p in list_images(item)]
        elif item.is_file():
            pairs.append((item, (out_dir / item.name).with_suffix(suffix)))
        else:
            raise CycleGANError(f"input not found: {item}")
    if not pairs:
        raise CycleGANError("no images to translate in the given inputs")
    seen: dict[Path, Path] = {}
    for src, dst in pairs:
        if dst in seen:
            raise CycleGANError(f"{src} and {seen[dst]} would both be written to {dst}")
        if dst.resolve() == src.resolve():
            raise CycleGANError(f"--out would overwrite the input {src}; choose another folder")
        seen[dst] = src
    return pairs


def translate_files(
    inputs: Iterable[Path],
    checkpoint: Path,
    out_dir: Path,
    *,
    direction: str = "AtoB",
    device: torch.device | str = "cpu",
    backend: str = "torch",
    precision: str = "fp32",
    overwrite: bool = False,
    image_format: str = "png",
    quality: int = 95,
    show_progress: bool = True,
) -> list[Path]:
    """Translate image files and folders into ``out_dir`` as ``image_format`` files (lossless PNG by
    default; ``quality`` is for JPEG and WebP) with :func:`load_translator`; returns the written files.

    Unreadable images are reported and skipped; if any were, a CycleGANError naming them is raised at the end,
    after every readable image has been written. Existing outputs are kept unless ``overwrite``.
    """
    if image_format not in FORMATS:
        raise CycleGANError(f"--format must be one of {', '.join(FORMATS)}, got {image_format!r}")
    if not 1 <= quality <= 100:
        raise CycleGANError(f"--quality must be between 1 and 100, got {quality}")
    out_dir = Path(out_dir)
    pairs = collect_inputs(inputs, out_dir, f".{image_format}")
    for _, dst in pairs:
        if dst.is_dir() or dst.is_symlink():
            raise CycleGANError(f"cannot write {dst}: a folder or link is in the way")
    if not overwrite:
        existing = [dst for _, dst in pairs if dst.exists()]
        if existing:
            raise CycleGANError(
                f"{existing[0]} exists ({len(existing)} outputs in all); pass --overwrite to replace"
            )
    translator = load_translator(checkpoint, direction, device, backend, precision)
    options = {"quality": quality} if image_format != "png" else {}
    written, failed = [], []
    for src, dst in tqdm(pairs, disable=not show_progress, unit="image"):
        try:
            image = load_image(src, translator.in_channels)
        except DECODE_ERRORS as err:
            tqdm.write(f"warning: skipped {src}: {first_line(err)}", file=sys.stderr)
            failed.append(src)
            continue
        result = translator(image)
        atomic_write(dst, lambda tmp, r=result: r.save(tmp, format=FORMATS[image_format], **options))
        written.append(dst)
    if failed:
        raise CycleGANError(f"{len(failed)} of {len(pairs)} images could not be read (first: {failed[0]})")
    return written


@torch.no_grad()
def cycle_grid(model: nn.Module, real_A: torch.Tensor, real_B: torch.Tensor) -> torch.Tensor:
    """Rows of real A | G_A(A) | G_B(G_A(A)) | real B | G_B(B) | G_A(G_B(B)), in [0, 1]."""
    was_training = model.training
    model.eval()
    fake_B = model.G_A(real_A)
    fake_A = model.G_B(real_B)
    columns = [real_A, fake_B, model.G_B(fake_B), real_B, fake_A, model.G_A(fake_A)]
    model.train(was_training)
    columns = [c.expand(-1, 3, -1, -1) if c.shape[1] == 1 else c for c in columns]
    tiles = torch.stack(columns, 1).flatten(0, 1)
    return make_grid((tiles.float().cpu() + 1) / 2, nrow=len(columns), padding=2, pad_value=1.0)


def save_sample_grid(path: Path, model: nn.Module, real_A: torch.Tensor, real_B: torch.Tensor) -> None:
    grid = cycle_grid(model, real_A, real_B)
    atomic_write(path, lambda tmp: save_image(grid, tmp, format="png"))
