"""Training-step speed: the exact reference step (eager fp32, batch 1) beside each fast configuration.

Each configuration is a full ``CycleGANTrainer.step`` (both generator and both discriminator updates) on a
fixed random batch, so the step is timed and not the data loader (``benchmarks/loader.py`` times that).
All configurations are built first, warmed up (torch.compile's warm-up is timed apart as ``warmup_s``),
then timed in interleaved rounds, so a shared machine's drift hits all alike; ms/step is the median over
rounds. Peak memory: on CUDA, what ``torch.cuda.max_memory_allocated`` rose by while a configuration was
built and warmed up; on CPU, the peak RSS of a fresh process that runs only that configuration.

    PYTHONPATH=src python3 benchmarks/speed.py --quick --out speed_cpu.json          # CPU, ~2 minutes
    PYTHONPATH=src python3 benchmarks/speed.py --device cuda --size 256 --out speed_cuda.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from cyclegan.config import NetConfig, TrainConfig
from cyclegan.demo import DemoSettings
from cyclegan.devices import resolve_device
from cyclegan.errors import CycleGANError, first_line
from cyclegan.files import atomic_write_text
from cyclegan.models.cycle_gan import CycleGAN, CycleGANTrainer
from cyclegan.precision import check_compiler, pick_conv_algorithms


@dataclass
class Setup:
    """One way to run the training step."""

    name: str
    precision: str = "fp32"
    channels_last: bool = False
    compile: str = "none"
    batch_size: int = 1
    results: dict[str, Any] = field(default_factory=dict)


EXACT = Setup("exact (fp32, batch 1)")


def setups(device: torch.device, batches: Sequence[int], with_compile: bool) -> list[Setup]:
    """The exact step first, then the fast paths this device supports."""
    low = ["bf16"] + (["fp16"] if device.type == "cuda" else [])
    out = [EXACT, Setup("fp32 channels_last", channels_last=True)]
    for p in low:
        out += [Setup(p, precision=p), Setup(f"{p} channels_last", precision=p, channels_last=True)]
    out += [Setup(f"bf16 batch {b}", precision="bf16", batch_size=b) for b in batches if b > 1]
    out += [Setup(f"fp32 batch {b}", batch_size=b) for b in batches[-1:] if b > 1]
    if with_compile:  # last: their warm-up takes minutes, and --deadline may skip them
        out += [
            Setup("bf16 compile step", precision="bf16", compile="step"),
            Setup("fp32 compile step", compile="step"),
        ]
    return out


def model_config(name: str) -> NetConfig:
    """``paper``: the paper's networks (ResNet-9 generator, 70x70 PatchGAN, 64 filters); ``demo``: the
    demo's small networks, the ones ``benchmarks/fastpath_quality.py`` trains."""
    if name == "paper":
        return NetConfig()
    return DemoSettings().train_config(Path(".")).model.net


def cuda_peak_mb(device: torch.device, before: float | None = None) -> float:
    """With ``before=None``: reset the peak and return the memory in use; else the peak added since."""
    torch.cuda.synchronize(device)
    if before is None:
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    return torch.cuda.max_memory_allocated(device) / 2**20 - before


def cpu_peak_rss_mb(setup: Setup, argv: Sequence[str]) -> float | None:
    """Peak RSS of a fresh process that builds this configuration and runs its warm-up steps alone: in one
    process, memory freed by earlier configurations is reused and hides later ones' peaks."""
    if setup.compile != "none":
        return None  # compiling again in another process would take minutes
    done = subprocess.run(
        [sys.executable, __file__, *argv, "--probe", setup.name], capture_output=True, text=True, timeout=1800
    )
    lines = done.stdout.split()
    return float(lines[-1]) if done.returncode == 0 and lines else None


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(
    setup: Setup, args: argparse.Namespace, device: torch.device
) -> tuple[CycleGANTrainer, torch.Tensor, torch.Tensor]:
    cfg = TrainConfig.create(
        **asdict(model_config(args.model)),
        precision=setup.precision,
        channels_last=setup.channels_last,
        compile=setup.compile,
        batch_size=setup.batch_size,
    )
    torch.manual_seed(0)
    trainer = CycleGANTrainer(CycleGAN(cfg.model).to(device), cfg)
    generator = torch.Generator().manual_seed(1)
    shape = (setup.batch_size, 3, args.size, args.size)
    a = (torch.rand(shape, generator=generator) * 2 - 1).to(device)
    b = (torch.rand(shape, generator=generator) * 2 - 1).to(device)
    return trainer, a, b


def timed_steps(trainer: CycleGANTrainer, a: torch.Tensor, b: torch.Tensor, steps: int) -> float:
    """Seconds per step, until the device has finished them: ``step`` leaves its losses on the device, so
    reading them waits for every step (as a run's log interval does)."""
    began = time.perf_counter()
    for _ in range(steps):
        losses = trainer.step(a, b)
    if steps:
        torch.stack(list(losses.values())).tolist()
    return (time.perf_counter() - began) / max(steps, 1)


def prepare(setup: Setup, args: argparse.Namespace, device: torch.device) -> Any:
    """Build and warm up one configuration; ``None`` (with the reason recorded) if it cannot run here."""
    before = cuda_peak_mb(device) if device.type == "cuda" else 0.0
    try:
        if setup.compile != "none":
            check_compiler(device)
        trainer, a, b = build(setup, args, device)
        first = timed_steps(trainer, a, b, 1)
        if args.warmup:
            timed_steps(trainer, a, b, args.warmup)
    except (CycleGANError, RuntimeError) as err:
        setup.results["error"] = first_line(err)
        return None
    setup.results["warmup_s"] = round(first, 3)
    if device.type == "cuda":
        setup.results["peak_mem_mb"] = round(cuda_peak_mb(device, before), 1)
    return trainer, a, b


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    device = resolve_device(args.device)
    pick_conv_algorithms(device, fixed_size=True)
    chosen = setups(device, args.batches, args.compile)
    if args.only:
        chosen = [s for s in chosen if s is EXACT or any(word in s.name for word in args.only)]
    deadline = time.monotonic() + args.deadline if args.deadline else float("inf")
    ready = {}
    for setup in chosen:
        if time.monotonic() > deadline:
            setup.results["error"] = "skipped: --deadline reached"
            continue
        print(f"preparing {setup.name}...", file=sys.stderr, flush=True)
        prepared = prepare(setup, args, device)
        if prepared is not None:
            ready[setup.name] = prepared
    times: dict[str, list[float]] = {name: [] for name in ready}
    for r in range(args.rounds):
        if r > 0 and time.monotonic() > deadline:
            break
        print(f"round {r + 1}/{args.rounds}", file=sys.stderr, flush=True)
        for name, (trainer, a, b) in ready.items():
            times[name].append(timed_steps(trainer, a, b, args.steps))
    ready.clear()
    exact_ms = statistics.median(times[EXACT.name]) * 1000 / EXACT.batch_size
    for setup in chosen:
        if setup.name not in times:
            continue
        ms = statistics.median(times[setup.name]) * 1000
        setup.results |= {
            "ms_per_step": round(ms, 2),
            "ms_per_step_rounds": [round(t * 1000, 2) for t in times[setup.name]],
            "images_per_s": round(setup.batch_size * 1000 / ms, 2),
            "ratio_to_exact": round(exact_ms * setup.batch_size / ms, 3),
        }
        if device.type == "cpu":
            print(f"measuring the memory of {setup.name}...", file=sys.stderr, flush=True)
            setup.results["peak_mem_mb"] = cpu_peak_rss_mb(setup, argv)
    return {
        "what": "CycleGANTrainer.step on a fixed random batch; ratio_to_exact: images/s over the exact step",
        "device": _device_name(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "model": args.model,
        "model_config": dataclasses.asdict(model_config(args.model)),
        "size": args.size,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "peak_memory": (
            "torch.cuda.max_memory_allocated above what was allocated before the configuration was built"
            if device.type == "cuda"
            else "peak RSS of a fresh process running only this configuration (not measured for compile)"
        ),
        "configs": [{**_describe(s), **s.results} for s in chosen],
    }


def probe(args: argparse.Namespace) -> int:
    """The child of :func:`cpu_peak_rss_mb`: one configuration, its warm-up, and its peak RSS printed."""
    setup = next(s for s in setups(torch.device("cpu"), args.batches, False) if s.name == args.probe)
    trainer, a, b = build(setup, args, torch.device("cpu"))
    timed_steps(trainer, a, b, 1 + args.warmup)
    print(f"{_peak_rss_mb():.1f}")
    return 0


def _describe(setup: Setup) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(setup).items() if k != "results"}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu: {platform.processor() or platform.machine()}, {torch.backends.cpu.get_cpu_capability()}"


def format_table(result: dict[str, Any]) -> str:
    lines = [
        f"{result['device']} | {result['model']} networks at {result['size']} px | torch {result['torch']}",
        f"{'configuration':<34}{'ms/step':>10}{'images/s':>10}{'vs exact':>10}{'peak MB':>10}"
        f"{'warm-up s':>11}",
    ]
    for c in result["configs"]:
        if "error" in c:
            lines.append(f"{c['name']:<34}  not run: {c['error']}")
            continue
        lines.append(
            f"{c['name']:<34}{c['ms_per_step']:>10.1f}{c['images_per_s']:>10.2f}{c['ratio_to_exact']:>9.2f}x"
            f"{_mb(c.get('peak_mem_mb')):>10}{c['warmup_s']:>11.1f}"
        )
    return "\n".join(lines)


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--size", type=int, help="image size, 64-256 (default: 256; --quick: 64)")
    p.add_argument("--model", choices=("paper", "demo"), help="networks (default: paper; --quick: demo)")
    p.add_argument("--batches", type=int, nargs="+", help="batch sizes (default: 1 4 8 16; --quick: 1 4)")
    p.add_argument("--rounds", type=int, help="interleaved timing rounds (default: 5)")
    p.add_argument("--steps", type=int, help="steps per configuration per round (default: 10; --quick: 3)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after the first (default: 2)")
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        help="include torch.compile configurations (default: on; --quick: off, compiling takes minutes)",
    )
    p.add_argument(
        "--deadline",
        type=float,
        help="seconds: configurations not yet built are skipped, and rounds stop (after the first) once past",
    )
    p.add_argument("--only", nargs="+", help="only configurations whose name contains one of these words")
    p.add_argument("--quick", action="store_true", help="a couple of minutes on a CPU")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--probe", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    quick = {"size": 64, "model": "demo", "batches": [1, 4], "rounds": 5, "steps": 3, "compile": False}
    full = {"size": 256, "model": "paper", "batches": [1, 4, 8, 16], "rounds": 5, "steps": 10}
    full["compile"] = True
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if not 16 <= args.size <= 1024 or args.size % 4:
        p.error("--size must be a multiple of 4 between 16 and 1024")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.probe:
        return probe(args)
    try:
        result = run(args, argv)
    except CycleGANError as err:
        print(f"speed: error: {err}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.out:
        atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
