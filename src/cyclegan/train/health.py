"""Is training working? Cheap health signals during a run, and one-line warnings that name the likely fix.

Every step the losses the step already returned are checked for divergence (NaN, inf or an exploded
adversarial loss), which stops the run without saving its weights. Every ``health_every`` steps the
window's mean losses and a fixed probe batch (a few images of each domain, translated in eval mode under
``no_grad``, so training's random numbers and weights are untouched) are judged for: a discriminator that
wins completely, a generator that does nothing, mode collapse, output colours off the target domain's,
and a cycle loss that does not fall. A problem must persist for ``health_patience`` checks in a row to
be reported, is reported once per episode, and its episode ends after as many checks without it. Before
``health_warmup`` steps only divergence is judged: for its first few hundred steps every CycleGAN's
colours and cycle loss look broken.

Warnings go to stderr and to the run's ``log.jsonl`` as ``{"step", "event": "health", "signal",
"network", "value", "message"}`` rows (loss rows have no ``"event"`` key); :func:`health_events` reads
them back for the report.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from cyclegan.config import TrainConfig
from cyclegan.errors import CycleGANError
from cyclegan.models import checkpoints
from cyclegan.models.cycle_gan import LOSS_NAMES, CycleGAN
from cyclegan.train import runs
from cyclegan.train.hooks import Hook, RunState, StopRun, note, sample_images

# Thresholds, each far from what healthy runs show. Healthy figures: the demo's config (64 px, ngf/ndf 32,
# 2,400 steps), after the default 1,000-step warm-up, as benchmarks/health.py records them (its docstring
# has the command), and 32-pixel runs with ngf/ndf 8 after their 30-step warm-up; broken figures: the
# deliberately broken runs of tests/test_health.py. The ±1 scale is the networks' image range.
PROBE_IMAGES = 8  # per domain: the channel means of two disjoint sets of 8 demo renders differ by <= 0.043
# single-step D or G adversarial loss: healthy demo <= 0.61; --lr 0.5 reaches 4.8e3 at step 2
EXPLODED_LOSS = 100.0
# window mean D loss: healthy demo 0.19-0.23, 32 px runs >= 0.12; a D learning 1,000x faster than G: 0.007
D_WINS_LOSS = 0.01
# mean |G(x) - x| / the domains' mean colour gap: healthy demo 0.93-1.05 (pixels change at least by the
# gap when the output takes the target's colours); a G that returns its input: 0
IDLE_CHANGE = 0.25
MIN_GAP = 0.1  # a mean colour gap below this (±1 scale) says nothing about how much G should change pixels
# identity term / G's whole loss: healthy demo <= 0.36, 32 px runs <= 0.43 (lambda_identity 0.5); 0.8 with
# lambda_identity 5, 0.95 with 20
IDENTITY_SHARE = 0.7
# pairwise L1 spread of G's outputs / of real target images: healthy demo >= 0.90 (>= 0.73 before the
# warm-up), 32 px runs >= 0.34; a G with one output for all inputs: 0
COLLAPSE_DIVERSITY = 0.15
# largest gap between a channel mean of G's outputs and of the target images (±1 scale): healthy demo
# <= 0.08 (probe noise 0.043), 32 px runs <= 0.11; ngf 1 on a colour-swapped target: 0.4-0.7
COLOUR_DRIFT = 0.25
# cycle loss / its mean over the run's first window: healthy demo <= 0.50, 32 px runs <= 0.64; a G that
# cannot learn (frozen, or ngf 1): 0.86-0.99
STAGNANT_CYCLE = 0.8

SIGNALS = (
    "diverged",
    "discriminator_wins",
    "generator_idle",
    "identity_dominates",
    "mode_collapse",
    "colour_drift",
    "cycle_stagnant",
)
DIRECTIONS = {  # direction -> (generator, its discriminator, source domain, target domain)
    "A": ("G_A", "D_A", "A", "B"),
    "B": ("G_B", "D_B", "B", "A"),
}


class Health(Hook):
    """Watches a run for the usual ways CycleGAN training fails; see the module docstring."""

    name = "health"

    def __init__(self) -> None:
        self.sums: dict[str, float] = dict.fromkeys(LOSS_NAMES, 0.0)
        self.count = 0
        self.first_cycle: dict[str, float] = {}  # mean cycle losses of the run's first window
        # "signal/network" -> [checks in a row with the problem, checks in a row without, active (0/1)]
        self.episodes: dict[str, list[int]] = {}

    def start(self, run: RunState) -> None:
        real_A, real_B = sample_images(run.cfg, PROBE_IMAGES)
        self.probe_A, self.probe_B = real_A.to(run.device), real_B.to(run.device)

    def after_step(self, run: RunState, losses: dict[str, float]) -> None:
        bad = divergence(losses)
        if bad is not None:
            message = diverged_message(run, *bad)
            self._emit(run, "diverged", bad[0], bad[1], message)
            raise StopRun(message)
        for k, v in losses.items():
            self.sums[k] += v
        self.count += 1
        cfg = run.cfg
        if run.progress.step % cfg.health_every:
            return
        means = {k: v / self.count for k, v in self.sums.items()}
        if not self.first_cycle and self.count == run.progress.step:  # the run's own first window only
            self.first_cycle = {k: means[k] for k in ("cycle_A", "cycle_B")}
        self.sums, self.count = dict.fromkeys(LOSS_NAMES, 0.0), 0
        if run.progress.step < cfg.health_warmup:
            return
        stats = probe(run.model, self.probe_A, self.probe_B)
        found = find_problems(means, stats, self.first_cycle)
        for key in sorted(set(found) | set(self.episodes)):
            if self._update_episode(key, key in found, cfg.health_patience):
                signal, network = key.split("/")
                value = found[key]
                message = warning_message(run, signal, network, value, stats)
                self._emit(run, signal, network, value, message)

    def _update_episode(self, key: str, present: bool, patience: int) -> bool:
        """Count checks with and without the problem; True when an episode has just begun."""
        present_run, absent_run, active = self.episodes.get(key, [0, 0, 0])
        if present:
            present_run, absent_run = present_run + 1, 0
        else:
            present_run, absent_run = 0, absent_run + 1
        begins = not active and present_run >= patience
        active = int((active and absent_run < patience) or begins)
        if active or present_run:
            self.episodes[key] = [present_run, absent_run, active]
        else:
            self.episodes.pop(key, None)
        return begins

    def _emit(self, run: RunState, signal: str, network: str, value: float, message: str) -> None:
        note(f"warning: {message}")
        row = {"step": run.progress.step, "event": "health", "signal": signal, "network": network}
        shown = round(value, 6) if math.isfinite(value) else str(value)  # JSON has no NaN or inf
        runs.append_row(run.run_dir / runs.LOG, row | {"value": shown, "message": message})

    def state_dict(self) -> dict[str, Any]:
        return {
            "sums": dict(self.sums),
            "count": self.count,
            "first_cycle": dict(self.first_cycle),
            "episodes": {k: list(v) for k, v in self.episodes.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.sums = {k: float(state["sums"][k]) for k in LOSS_NAMES}
            self.count = int(state["count"])
            self.first_cycle = {k: float(v) for k, v in state["first_cycle"].items()}
            self.episodes = {k: [int(n) for n in v] for k, v in state["episodes"].items()}


def health_events(run_dir: Path) -> list[dict[str, Any]]:
    """The health warnings of a run folder, oldest first (for the report's timeline)."""
    return [row for row in runs.read_rows(Path(run_dir) / runs.LOG) if row.get("event") == "health"]


# --- the signals ----------------------------------------------------------------------------------------


def divergence(losses: dict[str, float]) -> tuple[str, float] | None:
    """(loss name, value) of the first non-finite or exploded loss of a step, or None."""
    for name in LOSS_NAMES:
        value = losses[name]
        if not math.isfinite(value):
            return name, value
    for name in ("D_A", "D_B", "G_A", "G_B"):
        if losses[name] > EXPLODED_LOSS:
            return name, losses[name]
    return None


@torch.no_grad()
def probe(model: CycleGAN, real_A: torch.Tensor, real_B: torch.Tensor) -> dict[str, float]:
    """Per direction: how much G changes its input, the domains' colour gap, output diversity, colour drift.

    Eval mode: dropout draws no random numbers and batch norm leaves its running statistics alone.
    """
    was_training = model.training
    model.eval()
    try:
        fake_B, fake_A = model.G_A(real_A), model.G_B(real_B)
    finally:
        model.train(was_training)
    return {
        **translation_stats("A", real_A, fake_B, real_B),
        **translation_stats("B", real_B, fake_A, real_A),
    }


def translation_stats(
    direction: str, source: torch.Tensor, fake: torch.Tensor, target: torch.Tensor
) -> dict[str, float]:
    """Statistics of one generator's outputs ``fake`` = G(``source``) against real ``target`` images.

    ``change``: mean |G(x) - x|. ``gap``: mean over channels of |source mean - target mean|; a generator
    whose outputs had the target's channel means changes pixels by at least this much on average.
    ``diversity``: mean pairwise L1 between outputs over that between target images. ``colour``: the largest
    gap between a channel mean of the outputs and of the target images. Images are in [-1, 1].
    """
    target_means = target.mean((0, 2, 3))
    stats = {
        f"diversity_{direction}": _spread(fake) / max(_spread(target), 1e-8),
        f"colour_{direction}": (fake.mean((0, 2, 3)) - target_means).abs().max().item(),
    }
    if source.shape == fake.shape:
        stats[f"change_{direction}"] = (fake - source).abs().mean().item()
        stats[f"gap_{direction}"] = (source.mean((0, 2, 3)) - target_means).abs().mean().item()
    return stats


def _spread(images: torch.Tensor) -> float:
    """Mean L1 distance per pixel between two different images of the batch."""
    flat = images.flatten(1).double()
    n = len(flat)
    if n < 2:
        return 0.0
    distances = torch.cdist(flat, flat, p=1) / flat.shape[1]
    return (distances.sum() / (n * (n - 1))).item()


def find_problems(
    means: dict[str, float], stats: dict[str, float], first_cycle: dict[str, float]
) -> dict[str, float]:
    """The problems of one check: "signal/network" -> the value that crossed its threshold.

    ``means`` are the window's mean losses, ``stats`` the probe's (:func:`probe`), ``first_cycle`` the
    mean cycle losses of the run's first window.
    """
    found: dict[str, float] = {}
    for d, (gen, disc, _, _) in DIRECTIONS.items():
        if means[disc] < D_WINS_LOSS:
            found[f"discriminator_wins/{disc}"] = means[disc]
        gap, change = stats.get(f"gap_{d}", 0.0), stats.get(f"change_{d}", 0.0)
        idle = gap >= MIN_GAP and change < IDLE_CHANGE * gap
        if idle:
            found[f"generator_idle/{gen}"] = change / gap
        generator_loss = means[f"idt_{d}"] + means[f"G_{d}"] + means[f"cycle_{d}"]
        if generator_loss > 0 and means[f"idt_{d}"] / generator_loss > IDENTITY_SHARE:
            found[f"identity_dominates/{gen}"] = means[f"idt_{d}"] / generator_loss
        if stats[f"diversity_{d}"] < COLLAPSE_DIVERSITY:
            found[f"mode_collapse/{gen}"] = stats[f"diversity_{d}"]
        if not idle and stats[f"colour_{d}"] > COLOUR_DRIFT:  # an idle G's colours are its input's
            found[f"colour_drift/{gen}"] = stats[f"colour_{d}"]
        cycle = f"cycle_{d}"
        if first_cycle.get(cycle, 0) > 0 and means[cycle] / first_cycle[cycle] > STAGNANT_CYCLE:
            found[f"cycle_stagnant/{cycle}"] = means[cycle] / first_cycle[cycle]
    return found


# --- the warnings ---------------------------------------------------------------------------------------


def warning_message(run: RunState, signal: str, network: str, value: float, stats: dict[str, float]) -> str:
    """One line: what is wrong, for how long, with the numbers, and the likely fix."""
    cfg = run.cfg
    steps = f"{cfg.health_patience * cfg.health_every:,} steps"
    d = network[-1]
    gen, disc, source, target = DIRECTIONS[d]
    if signal == "discriminator_wins":
        smaller = f"--ndf (now {cfg.model.ndf})"
        if cfg.model.netD == "n_layers":
            smaller = f"--n_layers_D (now {cfg.model.n_layers_D}) or {smaller}"
        return (
            f"{disc} has been winning completely for {steps} ({disc} loss {value:.2g} < {D_WINS_LOSS}):"
            f" the generator {gen} gets no signal; try --lr {cfg.lr / 2:g}, a smaller {smaller}, or more data"
        )
    if signal == "generator_idle":
        identity = cfg.lambda_identity
        fix = f"a smaller --lambda_identity (now {identity:g})" if identity > 0 else f"--lr {cfg.lr * 2:g}"
        return (
            f"{gen} has been returning its input nearly unchanged for {steps} (it changes pixels by"
            f" {stats[f'change_{d}']:.3f} on average, while the mean colours of {source} and {target} differ"
            f" by {stats[f'gap_{d}']:.3f}): try {fix}, or check that trainA and trainB really differ"
        )
    if signal == "identity_dominates":
        return (
            f"the identity loss has been {value:.0%} of {gen}'s loss for {steps}: {gen} is mostly taught to"
            f" leave {target} images unchanged, which pulls it towards doing nothing; try a smaller"
            f" --lambda_identity (now {cfg.lambda_identity:g}; the paper uses 0.5)"
        )
    if signal == "mode_collapse":
        return (
            f"{gen} has been giving nearly the same output for every input for {steps} (outputs vary"
            f" {value:.2f}x as much as real {target} images): mode collapse; try --lr {cfg.lr / 2:g}"
            f" or a larger --lambda_{source} (now {getattr(cfg, f'lambda_{source}'):g})"
        )
    if signal == "colour_drift":
        keep = " or --lambda_identity 0.5 to keep colours" if cfg.lambda_identity == 0 else ""
        return (
            f"{gen}'s output colours have been off domain {target}'s for {steps} (a channel mean differs"
            f" by {value:.2f} on the -1..1 scale): colour drift or inversion; try a larger --ngf"
            f" (now {cfg.model.ngf}){keep}, or check that the test{target} images match train{target}"
        )
    fix = (
        f"a larger --lr (now {cfg.lr:g})"
        if cfg.lr < TrainConfig.lr
        else f"a larger --ngf (now {cfg.model.ngf})"
    )
    return (
        f"the {network} loss has stayed at {value:.0%} of its starting value for {steps}: the generators"
        f" are not learning to reconstruct {source} images; try {fix}, or check the images in {source}"
    )


def diverged_message(run: RunState, loss: str, value: float) -> str:
    folder = run.run_dir / runs.CHECKPOINTS
    try:
        path, info, _ = checkpoints.newest_resumable(folder)
        kept = f"the last good checkpoint, {path} (step {info['step']:,}), is kept"
    except CycleGANError:
        kept = "no checkpoint had been saved yet"
    return (
        f"training diverged at step {run.progress.step:,} ({loss} loss {value:.3g}): stopped without"
        f" saving these weights; {kept}. Start a new run with a smaller --lr (now {run.cfg.lr:g}),"
        f" e.g. {run.cfg.lr / 10:g}"
    )
