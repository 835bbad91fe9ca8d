"""Memory planning: how much memory training (and translating) takes at a crop size, and what fits a budget.

Memory is measured, not modelled: a few short dry-run training steps at small crops on the chosen device,
then a straight-line fit ``peak = fixed + per_pixel * pixels * batch``. Activations grow with the pixels of
a batch; weights, gradients, Adam's state and the runtime do not. On CUDA a measurement is the allocator's
``max_memory_allocated`` in this process; on the CPU it is the peak resident size of a fresh process per
measurement (see :class:`DryRuns`).

Dry runs train as the configuration would (its precision, checkpointing and layout) but uncompiled:
compiling every dry run would take minutes. Memory that fills over many steps (CycleGAN's image pools) is
added from its size (``Model.pool_bytes_per_pixel``); a dry run's pools hold at most two images.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cyclegan.config import ModelOptions, TrainConfig
from cyclegan.devices import resolve_device
from cyclegan.errors import CycleGANError, first_line
from cyclegan.models import Trainer, build_model, check_training_size, model_type
from cyclegan.networks import size_multiple
from cyclegan.precision import Autocast, Precision, resolve_precision
from cyclegan.translation.translator import Translator

GiB = 2**30
MAX_CROP = 16384  # the largest crop the search considers
PROBE_STEPS = 1  # measured steps per dry run, after a warm-up step at the smallest crop


@dataclass(frozen=True)
class Variant:
    """The memory savers of a run: activation checkpointing and the precision of the step."""

    checkpointing: bool = False
    precision: str = "fp32"

    @property
    def label(self) -> str:
        return self.precision + (" + checkpointing" if self.checkpointing else "")


def half_precision(device: torch.device) -> str:
    """The memory-saving precision of ``device``: bf16, or fp16 on GPUs without bfloat16."""
    return "fp16" if device.type == "cuda" and not torch.cuda.is_bf16_supported() else "bf16"


def default_variants(cfg: TrainConfig, device: torch.device) -> list[Variant]:
    """fp32, the device's half precision and the run's own precision, each without and with checkpointing."""
    precisions = dict.fromkeys(["fp32", half_precision(device), resolve_precision(cfg.precision, device)])
    return [Variant(c, p) for p in precisions for c in (False, True)]


@dataclass(frozen=True)
class Measurement:
    """One dry run: the peak bytes of training steps (or of translating one image) at a crop size, and the
    fastest step's seconds."""

    crop: int
    batch: int
    peak_bytes: int
    seconds: float


@dataclass(frozen=True)
class Line:
    """``fixed + per_pixel * pixels``, fitted by least squares."""

    fixed: float
    per_pixel: float

    @classmethod
    def fit(cls, pixels: Sequence[float], peaks: Sequence[float]) -> Line:
        if len(set(pixels)) < 2:
            raise CycleGANError("the memory fit needs dry runs at two or more different sizes")
        slope, intercept = np.polyfit(np.asarray(pixels, float), np.asarray(peaks, float), 1)
        if slope <= 0:
            raise CycleGANError(
                "the dry runs did not show memory growing with the crop size; try larger --probe_sizes"
            )
        return cls(float(intercept), float(slope))

    def __call__(self, pixels: float) -> float:
        return self.fixed + self.per_pixel * pixels


@dataclass(frozen=True)
class Plan:
    """The fitted memory of one variant of a configuration on one device."""

    variant: Variant
    model: ModelOptions
    train: Line
    translate: Line | None
    pool_per_pixel: float  # bytes per pixel of both image pools when full
    measurements: tuple[Measurement, ...]

    def training_bytes(self, crop: int, batch: int = 1) -> float:
        return self.train(crop * crop * batch) + self.pool_per_pixel * crop * crop

    def translate_bytes(self, crop: int) -> float:
        if self.translate is None:
            raise ValueError("this plan was made without translation dry runs")
        return self.translate(crop * crop)

    def largest_crop(self, budget: float, batch: int = 1) -> int | None:
        """The largest square crop the networks accept whose training fits ``budget`` bytes, or None."""
        room = budget - self.train.fixed
        if room <= 0:
            return None
        multiple = size_multiple(self.model.net)
        crop = min(MAX_CROP, math.isqrt(int(room / (self.train.per_pixel * batch + self.pool_per_pixel))))
        crop -= crop % multiple
        while crop >= multiple and self.training_bytes(crop, batch) > budget:  # float rounding
            crop -= multiple
        # the size rules only ever refuse crops below some size, so a refused crop has no smaller one
        return crop if crop >= multiple and _trainable(self.model, crop) else None

    def largest_batch(self, budget: float, crop: int) -> int:
        """The largest batch of ``crop`` px images whose training fits ``budget`` bytes (0: none)."""
        room = budget - self.train.fixed - self.pool_per_pixel * crop * crop
        return max(0, int(room // (self.train.per_pixel * crop * crop)))


def _trainable(model: ModelOptions, crop: int) -> bool:
    try:
        check_training_size(model, crop, crop)
    except CycleGANError:
        return False
    return True


def smallest_crop(model: ModelOptions) -> int:
    """The smallest square crop the four networks train on (the warm-up step's size)."""
    multiple = size_multiple(model.net)
    for crop in range(multiple, MAX_CROP + 1, multiple):
        if _trainable(model, crop):
            return crop
    raise CycleGANError(
        f"--netG {model.net.netG} --netD {model.net.netD} trains on no crop up to {MAX_CROP} px"
    )


def probe_sizes(model: ModelOptions) -> list[int]:
    """Two small crops the networks accept, far enough apart for a stable fit and large enough for the
    activations to dominate: below ~192 px a CPU step's peak grows slower than its pixels (the allocator
    reuses small blocks), so smaller probes under-predict large crops."""
    multiple = size_multiple(model.net)
    base = max(smallest_crop(model), math.ceil(192 / multiple) * multiple)
    larger = 3 * base // 2 // multiple * multiple
    return [base, larger if larger > base else 2 * base]


def plan(
    cfg: TrainConfig,
    variants: Sequence[Variant] | None = None,
    sizes: Sequence[int] | None = None,
    runs: DryRuns | None = None,
    translate: bool = True,
) -> list[Plan]:
    """Dry-run ``cfg`` at ``sizes`` (default :func:`probe_sizes`) for each variant (default:
    :func:`default_variants`) and fit its memory (of training, and with ``translate`` of translating one
    image)."""
    dataclasses.replace(cfg, dataroot=cfg.dataroot or "unused").validate()  # the data is not needed here
    device = resolve_device(cfg.device)
    variants = default_variants(cfg, device) if variants is None else variants
    check_training_size(cfg.model, cfg.crop_size, cfg.crop_size)
    sizes = sorted(set(sizes or probe_sizes(cfg.model)))
    if len(sizes) < 2:
        raise CycleGANError("the memory fit needs dry runs at two or more different sizes")
    for crop in sizes:
        if crop < 1:
            raise CycleGANError(f"--probe_sizes must be positive, got {crop}")
        check_training_size(cfg.model, crop, crop)
    for variant in variants:
        resolve_precision(variant.precision, device)
    if runs is None:
        with DryRuns(device) as runs:
            return plan(cfg, variants, sizes, runs, translate)
    pixels = [crop * crop for crop in sizes]
    with torch.device("meta"):
        pool_bytes = build_model(cfg.model).pool_bytes_per_pixel()
    plans = []
    for variant in variants:
        train = tuple(runs.train(cfg, variant, crop) for crop in sizes)
        peaks = [runs.translate(cfg, variant, crop).peak_bytes for crop in sizes] if translate else []
        plans.append(
            Plan(
                variant,
                cfg.model,
                Line.fit(pixels, [m.peak_bytes for m in train]),
                Line.fit(pixels, peaks) if translate else None,
                pool_bytes,
                train,
            )
        )
    return plans


class DryRuns:
    """Measures short training steps and translations on a device, each from a fresh state.

    On CUDA it measures in this process with the allocator's peak counters. On the CPU the only true peak
    is a process's peak resident size, which never goes down, so each measurement runs in a process of its
    own, forked from a helper that has imported PyTorch but run nothing: each starts clean, and quickly.
    Use it as a context manager; the helper ends with it.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.helper: subprocess.Popen[str] | None = None

    def __enter__(self) -> DryRuns:
        if self.device.type == "cpu":
            if not hasattr(os, "fork"):
                raise CycleGANError("measuring CPU memory needs a system with fork (Linux or macOS)")
            package_root = str(Path(__file__).resolve().parents[2])
            path = os.pathsep.join(filter(None, [package_root, os.getenv("PYTHONPATH")]))
            self.helper = subprocess.Popen(
                [sys.executable, "-c", "import cyclegan.training.planner as p; p.serve_dry_runs()"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                env={**os.environ, "PYTHONPATH": path},
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if self.helper is not None:
            assert self.helper.stdin is not None
            self.helper.stdin.close()
            self.helper.wait()
            self.helper = None

    def train(
        self, cfg: TrainConfig, variant: Variant, crop: int, batch: int = 1, steps: int = PROBE_STEPS
    ) -> Measurement:
        """The peak memory of training steps on batches of ``crop`` px images, and the fastest step's time
        (after a warm-up step at the smallest crop, so that Adam's state is there as in a real run)."""
        return self._run({"kind": "train", "crop": crop, "batch": batch, "steps": steps}, cfg, variant)

    def translate(self, cfg: TrainConfig, variant: Variant, crop: int) -> Measurement:
        """The peak memory of translating one ``crop`` px image with one generator, as translate does."""
        return self._run({"kind": "translate", "crop": crop, "batch": 1, "steps": 1}, cfg, variant)

    def _run(self, job: dict[str, Any], cfg: TrainConfig, variant: Variant) -> Measurement:
        job |= {"config": cfg.to_dict(), "variant": dataclasses.asdict(variant), "device": str(self.device)}
        if self.helper is None:
            answer = _answer(job)
        else:
            assert self.helper.stdin is not None and self.helper.stdout is not None
            try:
                self.helper.stdin.write(json.dumps(job) + "\n")
                self.helper.stdin.flush()
                answer = json.loads(self.helper.stdout.readline())
            except (OSError, ValueError):
                answer = {"error": "the measuring process stopped"}
        if "error" in answer:
            what = f"the {job['kind']} dry run at {job['crop']} px, batch {job['batch']} ({variant.label})"
            raise CycleGANError(f"{what} failed: {answer['error']}")
        return Measurement(**answer)


def serve_dry_runs() -> None:
    """The CPU helper: for each job (a JSON line on stdin) a forked child measures it and reports its peak
    resident size; each answer is a JSON line on stdout."""
    for line in sys.stdin:
        read, write = os.pipe()
        base = _max_rss()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(read)
                unshared = _max_rss()  # a forked child starts without the shared library pages
                answer = _answer(json.loads(line))
                if "peak_bytes" in answer:
                    answer["peak_bytes"] += base - unshared
                with os.fdopen(write, "w") as pipe:
                    pipe.write(json.dumps(answer))
                code = 0
            finally:
                os._exit(code)  # never back into the helper's loop
        os.close(write)
        with os.fdopen(read) as pipe:
            text = pipe.read()
        _, status = os.waitpid(pid, 0)
        if not text and os.WIFSIGNALED(status):
            text = json.dumps({"error": f"killed by signal {os.WTERMSIG(status)}, most likely out of memory"})
        elif not text:
            text = json.dumps({"error": f"the measuring process failed (exit status {status >> 8})"})
        print(text, flush=True)


def _answer(job: dict[str, Any]) -> dict[str, Any]:
    """A measurement as a dict, or the reason there is none (out of memory shows up here on CUDA)."""
    try:
        return dataclasses.asdict(_measure(job))
    except (RuntimeError, CycleGANError) as err:
        return {"error": first_line(err)}


def _measure(job: dict[str, Any]) -> Measurement:
    device, variant, crop = torch.device(job["device"]), Variant(**job["variant"]), job["crop"]
    cfg = dataclasses.replace(
        TrainConfig.from_dict(job["config"]),
        checkpoint_activations=variant.checkpointing,
        precision=variant.precision,
        compile="none",
    )
    net = cfg.model.net
    if job["kind"] == "translate":
        precision = Precision.on(variant.precision, device)
        kind = model_type(cfg.model.name)
        with _peak_memory(device) as peak:
            generator = kind.build(cfg.model, kind.directions[0].generator).to(device).eval()
            model = Autocast(generator, precision) if precision.mixed else generator
            start = time.perf_counter()
            Translator(model, net, device).translate_tensor(torch.zeros(net.input_nc, crop, crop))
            _sync(device)
            return Measurement(crop, 1, peak(), time.perf_counter() - start)
    trainer = build_model(cfg.model).to(device).train().trainer(cfg)
    _train_steps(trainer, cfg, 1, smallest_crop(cfg.model), device)  # Adam's state exists from now on
    with _peak_memory(device) as peak:
        seconds = _train_steps(trainer, cfg, job["batch"], crop, device, job["steps"])
        return Measurement(crop, job["batch"], peak(), seconds)


def _train_steps(
    trainer: Trainer,
    cfg: TrainConfig,
    batch: int,
    crop: int,
    device: torch.device,
    steps: int = 1,
) -> float:
    """The fastest of ``steps`` training steps on random images, in seconds (the trainer runs them in the
    variant's precision, as a real run would)."""
    a = torch.rand(batch, cfg.model.net.input_nc, crop, crop, device=device) * 2 - 1
    b = torch.rand(batch, cfg.model.net.output_nc, crop, crop, device=device) * 2 - 1
    best = math.inf
    for _ in range(steps):
        _sync(device)
        start = time.perf_counter()
        trainer.step(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def _peak_memory(device: torch.device) -> Iterator[Any]:
    """Yields a function giving the peak bytes since entry: CUDA's allocator peak, or the CPU process's peak
    resident size (which includes everything before entry: the process's own peak so far)."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        yield lambda: torch.cuda.max_memory_allocated(device)
        return
    yield _max_rss


def _max_rss() -> int:
    """This process's peak resident size in bytes."""
    import resource  # POSIX only, like the fork that CPU dry runs need

    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is in bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def format_plan(cfg: TrainConfig, plans: Sequence[Plan], budget: int | None = None) -> str:
    """A table of the predicted peaks, and with ``budget`` the largest crop and batch that fit."""
    m, crop, batch = cfg.model.net, cfg.crop_size, cfg.batch_size
    sizes = ", ".join(str(r.crop) for r in plans[0].measurements)
    lines = [
        f"Memory plan: --model {cfg.model.name} --netG {m.netG} --ngf {m.ngf} --netD {m.netD} --ndf {m.ndf},"
        f" {crop} px crops, batch {batch}, on {resolve_device(cfg.device)}",
        f"fitted from dry runs at {sizes} px: peak = fixed + per-pixel x pixels x batch (GiB)",
        "",
    ]
    header = ["variant", "fixed", "per Mpx", f"train {crop}px b{batch}", f"translate {crop}px"]
    if budget is not None:
        header += [f"largest crop (b{batch})", f"largest batch ({crop}px)"]
    rows = [header]
    for p in plans:
        row = [
            p.variant.label,
            _gib(p.train.fixed),
            _gib(p.train.per_pixel * 2**20),
            _gib(p.training_bytes(crop, batch)),
            _gib(p.translate_bytes(crop)),
        ]
        if budget is not None:
            largest = p.largest_crop(budget, batch)
            row += [f"{largest} px" if largest else "none", str(p.largest_batch(budget, crop))]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    if budget is not None:
        lines.append(f"budget: {_gib(budget)} GiB")
    return "\n".join(lines)


def check_budget(cfg: TrainConfig, budget: int, sizes: Sequence[int] | None = None) -> str:
    """A one-line summary when ``cfg`` trains within ``budget`` bytes, else a one-line error with the numbers
    and what would fit (with every memory saver on, measured only then)."""
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    own = Variant(cfg.checkpoint_activations, precision)
    where = f"{cfg.crop_size} px crops at batch {cfg.batch_size} ({own.label})"
    with DryRuns(device) as runs:
        mine = plan(cfg, [own], sizes, runs, translate=False)[0]
        need = mine.training_bytes(cfg.crop_size, cfg.batch_size)
        if need <= budget:
            return f"memory plan: {where} need about {_size(need)} of the {_size(budget)} budget"
        half = precision if precision != "fp32" else half_precision(device)
        all_savers = Variant(True, half)
        best = mine if own == all_savers else plan(cfg, [all_savers], sizes, runs, translate=False)[0]
    saved = best.training_bytes(cfg.crop_size, cfg.batch_size)
    if saved <= budget:
        hint = f"with checkpointing and {half} they need {_size(saved)}: add --checkpoint_activations"
        hint += f" and --precision {half}" if precision != half else ""
    else:
        largest = best.largest_crop(budget, cfg.batch_size)
        hint = f"even with checkpointing and {half} they need {_size(saved)}; " + (
            f"the largest crop that fits is {largest} px" if largest else "no crop fits"
        )
    raise CycleGANError(f"{where} need about {_size(need)}, over the {_size(budget)} budget; {hint}")


def _gib(n: float) -> str:
    return f"{n / GiB:.2f}"


def _size(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB / 10 else f"{n / 2**20:.0f} MiB"
