"""Export benchmark: onnxruntime against PyTorch on the CPU, and bf16 against fp32, for one generator.

Times one image at a time (batch 1, ``--size`` px) through the same ``translate_tensor`` the ``translate``
command uses, interleaving the backends image by image so that machine noise falls on all of them alike.
Fidelity: the PSNR of the bf16 and onnxruntime outputs against fp32, on the [0, 1] float outputs and on the
8-bit images ``translate`` would save. Without ``--checkpoint`` the paper's generator (resnet_9blocks, ngf 64)
is used with its random initialisation (seed 0): the speed is the trained model's, the fidelity is
indicative only. Prints JSON (and writes it to ``--out`` if given).

    PYTHONPATH=src .venv/bin/python benchmarks/export.py --images ../shared/datasets/horse2zebra/testA
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import torch
from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Resize

from cyclegan.config import CycleGANOptions, NetConfig
from cyclegan.data.datasets import list_images
from cyclegan.data.demo_scenes import random_scene, render
from cyclegan.data.images import load_image, to_image, to_tensor, to_unit_tensor
from cyclegan.evaluation.metrics import psnr
from cyclegan.files import atomic_write_text
from cyclegan.models.checkpoints import save_weights
from cyclegan.networks import build_generator
from cyclegan.translation.export import export_onnx
from cyclegan.translation.translator import load_translator

DEFAULT_IMAGES = Path(__file__).resolve().parents[2] / "shared/datasets/horse2zebra/testA"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, help="a trained checkpoint (default: random paper generator)")
    p.add_argument(
        "--images", type=Path, default=DEFAULT_IMAGES, help="test images (default: %(default)s, else demo)"
    )
    p.add_argument("--count", type=int, default=8, help="images to translate (default: 8)")
    p.add_argument("--size", type=int, default=256, help="resize and centre-crop to this (default: 256)")
    p.add_argument("--rounds", type=int, default=3, help="timed passes over the images (default: 3)")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    return p.parse_args(argv)


def bench_images(folder: Path, count: int, size: int) -> tuple[list[torch.Tensor], str]:
    """Real photographs when the folder is there, else rendered demo street scenes."""
    resize = Compose([Resize(size, InterpolationMode.BICUBIC), CenterCrop(size)])
    if folder.is_dir():
        return [to_tensor(resize(load_image(p))) for p in list_images(folder)[:count]], str(folder)
    rng = np.random.default_rng(0)
    scenes = [render(random_scene(rng), night=False, size=size) for _ in range(count)]
    return [torch.from_numpy(s).permute(2, 0, 1).float() / 127.5 - 1 for s in scenes], "demo street scenes"


def paper_checkpoint(folder: Path) -> Path:
    torch.manual_seed(0)
    path = folder / "paper.safetensors"
    save_weights(path, {"G_A": build_generator(NetConfig())}, CycleGANOptions(), {"step": 0})
    return path


def time_interleaved(
    backends: Mapping[str, Callable[[torch.Tensor], torch.Tensor]], images: list[torch.Tensor], rounds: int
) -> dict[str, list[float]]:
    """Seconds per image for each backend; the order of backends rotates from one image to the next."""
    names = list(backends)
    times: dict[str, list[float]] = {name: [] for name in names}
    for name in names:
        backends[name](images[0])  # warm-up: allocators, oneDNN kernels, onnxruntime's arena
    for r in range(rounds):
        for i, x in enumerate(images):
            shift = (r * len(images) + i) % len(names)
            for name in names[shift:] + names[:shift]:
                start = time.perf_counter()
                backends[name](x)
                times[name].append(time.perf_counter() - start)
    return times


def fidelity(outputs: list[torch.Tensor], reference: list[torch.Tensor]) -> dict[str, float]:
    y, ref = torch.stack(outputs), torch.stack(reference)
    y8 = torch.stack([to_unit_tensor(to_image(o)) for o in outputs])
    ref8 = torch.stack([to_unit_tensor(to_image(o)) for o in reference])
    grey_levels = ((y8 - ref8).abs() * 255).round()
    return {
        "psnr_db_float_mean": round(psnr((y + 1) / 2, (ref + 1) / 2).mean().item(), 2),
        "psnr_db_8bit_min": round(psnr(y8, ref8).clamp(max=99).min().item(), 2),
        "psnr_db_8bit_mean": round(psnr(y8, ref8).clamp(max=99).mean().item(), 2),
        "max_abs_diff_float": float(f"{(y - ref).abs().max().item():.3g}"),
        "max_grey_level_diff": int(grey_levels.max().item()),
        "share_of_values_off_by_more_than_1_level": round((grey_levels > 1).float().mean().item(), 5),
    }


def summarise(seconds: list[float]) -> dict[str, float]:
    return {
        "median_ms": round(1000 * statistics.median(seconds), 1),
        "mean_ms": round(1000 * statistics.fmean(seconds), 1),
        "min_ms": round(1000 * min(seconds), 1),
        "runs": len(seconds),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    images, source = bench_images(args.images, args.count, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or paper_checkpoint(Path(tmp))
        start = time.perf_counter()
        model = export_onnx(checkpoint, Path(tmp) / "model.onnx")
        export_seconds = time.perf_counter() - start
        translators = {
            "torch_fp32": load_translator(checkpoint),
            "torch_bf16": load_translator(checkpoint, precision="bf16"),
            "onnxruntime_fp32": load_translator(model, backend="onnxruntime"),
        }
        backends = {name: t.translate_tensor for name, t in translators.items()}
        times = time_interleaved(backends, images, args.rounds)
        outputs = {name: [t.translate_tensor(x) for x in images] for name, t in translators.items()}
        onnx_mb = model.stat().st_size / 1e6
    speed = {name: summarise(seconds) for name, seconds in times.items()}
    fp32 = speed["torch_fp32"]["median_ms"]
    result = {
        "model": str(args.checkpoint) if args.checkpoint else "resnet_9blocks ngf 64, random init (seed 0)",
        "images": f"{len(images)} from {source}, {args.size}x{args.size}, batch 1",
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "onnxruntime": onnxruntime.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        },
        "export": {"seconds": round(export_seconds, 2), "onnx_mb": round(onnx_mb, 1)},
        "speed": speed,
        "speedup_vs_torch_fp32": {name: round(fp32 / s["median_ms"], 2) for name, s in speed.items()},
        "fidelity_vs_torch_fp32": {
            name: fidelity(outputs[name], outputs["torch_fp32"])
            for name in ("torch_bf16", "onnxruntime_fp32")
        },
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        atomic_write_text(args.out, text + "\n")
    return result


if __name__ == "__main__":
    main()
