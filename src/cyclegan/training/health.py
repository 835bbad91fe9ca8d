"""Is training working? Cheap health signals during a run, and one-line warnings that name the likely fix.

Every step's losses are watched for divergence (NaN, inf or an exploded adversarial loss) on the device,
and read back at each check and before anything is saved, which then stops the run without saving its
weights. Every ``health_every`` steps the
window's mean losses and a fixed probe batch (a few images of each domain, translated in eval mode under
``no_grad``, so training's random numbers and weights are untouched) are judged for: a discriminator that
wins completely, a generator that does nothing, mode collapse, output colours off the target domain's,
and a cycle loss that does not fall. A problem must persist for ``health_patience`` checks in a row to
be reported, is reported once per episode, and its episode ends after as many checks without it. Before
``health_warmup`` steps only divergence is judged: for its first few hundred steps every CycleGAN's
colours and cycle loss look broken.

The signals come from the model's declared directions (:class:`cyclegan.models.Direction`): each
generator with its discriminator, source and target domain, and its identity and cycle losses where it has
them. A one-sided model (CUT) has no cycle loss and no identity L1 term, so ``cycle_stagnant`` and
``identity_dominates`` do not apply to it; every other signal does.

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
from cyclegan.layout import CHECKPOINTS, LOG
from cyclegan.models import Direction, Model, checkpoints, evaluating
from cyclegan.training import runs
from cyclegan.training.hooks import Hook, RunState, Scalars, StopRun, Text, note
from cyclegan.training.samples import run_images

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


class Health(Hook):
    """Watches a run for the usual ways GAN training fails; see the module docstring."""

    name = "health"

    def __init__(self) -> None:
        self.count = 0
        self.first_cycle: dict[str, float] = {}  # mean cycle losses of the run's first window
        # "signal/network" -> [checks in a row with the problem, checks in a row without, active (0/1)]
        self.episodes: dict[str, list[int]] = {}
        self.saved: dict[str, Any] = {}

    def start(self, run: RunState) -> None:
        real_A, real_B = run_images(run, PROBE_IMAGES)
        self.probe_A, self.probe_B = real_A.to(run.device), real_B.to(run.device)
        model = run.model
        self.names = model.loss_names
        explodable = {name for d in model.directions for name in (d.adversarial, d.critic)}
        self.explodable = torch.tensor([n in explodable for n in self.names], device=run.device)
        self.sums = torch.zeros(len(self.names), device=run.device)
        self.bad_step = torch.full((len(self.names),), -1, dtype=torch.long, device=run.device)
        self.bad_value = torch.zeros(len(self.names), device=run.device)
        if self.saved:
            self.sums = torch.tensor([float(self.saved["sums"][k]) for k in self.names], device=run.device)
            self.count = int(self.saved["count"])
            self.first_cycle = {k: float(v) for k, v in self.saved["first_cycle"].items()}
            self.episodes = {k: [int(n) for n in v] for k, v in self.saved["episodes"].items()}

    def after_step(self, run: RunState, losses: dict[str, torch.Tensor]) -> None:
        values = torch.stack([losses[k].float() for k in self.names])
        first = diverging(values, self.explodable) & (self.bad_step < 0)
        self.bad_step = torch.where(first, run.progress.step, self.bad_step)
        self.bad_value = torch.where(first, values, self.bad_value)
        self.sums += values
        self.count += 1
        cfg = run.cfg
        checking = run.progress.step % cfg.health_every == 0
        if checking or run.saving:
            self._stop_if_diverged(run)
        if not checking:
            return
        means = dict(zip(self.names, (self.sums / self.count).tolist(), strict=True))
        if not self.first_cycle and self.count == run.progress.step:  # the run's own first window only
            self.first_cycle = {d.cycle: means[d.cycle] for d in run.model.directions if d.cycle}
        self.sums.zero_()
        self.count = 0
        if run.progress.step < cfg.health_warmup:
            return
        stats = probe(run.model, self.probe_A, self.probe_B)
        run.publish(Scalars(run.progress.step, "health", stats))
        found = find_problems(run.model.directions, means, stats, self.first_cycle)
        for key in sorted(set(found) | set(self.episodes)):
            if self._update_episode(key, key in found, cfg.health_patience):
                signal, network = key.split("/")
                value = found[key]
                message = warning_message(run, signal, network, value, stats)
                self._emit(run, signal, network, value, message)

    def after_epoch(self, run: RunState) -> None:
        self._stop_if_diverged(run)  # before an epoch's snapshot or evaluation saves these weights

    def _stop_if_diverged(self, run: RunState) -> None:
        steps = self.bad_step.tolist()
        bad = [(step, i) for i, step in enumerate(steps) if step >= 0]
        if not bad:
            return
        step, i = min(bad)
        name, value = self.names[i], float(self.bad_value[i])
        message = diverged_message(run, name, value, step)
        self._emit(run, "diverged", name, value, message)
        raise StopRun(message)

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
        runs.append_row(run.run_dir / LOG, row | {"value": shown, "message": message})
        run.publish(Text(run.progress.step, f"health/{signal}/{network}", message))

    def state_dict(self) -> dict[str, Any]:
        return {
            "sums": dict(zip(self.names, self.sums.tolist(), strict=True)),
            "count": self.count,
            "first_cycle": dict(self.first_cycle),
            "episodes": {k: list(v) for k, v in self.episodes.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.saved = state


def health_events(run_dir: Path) -> list[dict[str, Any]]:
    """The health warnings of a run folder, oldest first (for the report's timeline)."""
    return [row for row in runs.read_rows(Path(run_dir) / LOG) if row.get("event") == "health"]


# --- the signals ----------------------------------------------------------------------------------------


def diverging(losses: torch.Tensor, explodable: torch.Tensor) -> torch.Tensor:
    """Which of a step's losses show divergence: non-finite, or (``explodable``: the adversarial ones)
    above ``EXPLODED_LOSS``. Computed on the device, read only at checks."""
    return ~torch.isfinite(losses) | (explodable & (losses > EXPLODED_LOSS))


@torch.no_grad()
def probe(model: Model, real_A: torch.Tensor, real_B: torch.Tensor) -> dict[str, float]:
    """Per direction: how much G changes its input, the domains' colour gap, output diversity, colour drift.

    Statistics are keyed by the direction's source domain ("change_A" for the generator from A). Eval
    mode: dropout draws no random numbers and batch norm leaves its running statistics alone.
    """
    images = {"A": real_A, "B": real_B}
    stats: dict[str, float] = {}
    with evaluating(model):
        for d in model.directions:
            fake = model.generator(d.name)(images[d.source])
            stats |= translation_stats(d.source, images[d.source], fake, images[d.target])
    return stats


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
    directions: tuple[Direction, ...],
    means: dict[str, float],
    stats: dict[str, float],
    first_cycle: dict[str, float],
) -> dict[str, float]:
    """The problems of one check: "signal/network" -> the value that crossed its threshold.

    ``means`` are the window's mean losses, ``stats`` the probe's (:func:`probe`), ``first_cycle`` the
    mean cycle losses of the run's first window.
    """
    found: dict[str, float] = {}
    for d in directions:
        s, gen, disc = d.source, d.generator, d.discriminator
        if means[d.critic] < D_WINS_LOSS:
            found[f"discriminator_wins/{disc}"] = means[d.critic]
        gap, change = stats.get(f"gap_{s}", 0.0), stats.get(f"change_{s}", 0.0)
        idle = gap >= MIN_GAP and change < IDLE_CHANGE * gap
        if idle:
            found[f"generator_idle/{gen}"] = change / gap
        generator_loss = sum(means[name] for name in d.losses)
        if d.identity and generator_loss > 0 and means[d.identity] / generator_loss > IDENTITY_SHARE:
            found[f"identity_dominates/{gen}"] = means[d.identity] / generator_loss
        if stats[f"diversity_{s}"] < COLLAPSE_DIVERSITY:
            found[f"mode_collapse/{gen}"] = stats[f"diversity_{s}"]
        if not idle and stats[f"colour_{s}"] > COLOUR_DRIFT:  # an idle G's colours are its input's
            found[f"colour_drift/{gen}"] = stats[f"colour_{s}"]
        if (
            d.cycle
            and first_cycle.get(d.cycle, 0) > 0
            and means[d.cycle] / first_cycle[d.cycle] > STAGNANT_CYCLE
        ):
            found[f"cycle_stagnant/{d.cycle}"] = means[d.cycle] / first_cycle[d.cycle]
    return found


# --- the warnings ---------------------------------------------------------------------------------------


def warning_message(run: RunState, signal: str, network: str, value: float, stats: dict[str, float]) -> str:
    """One line: what is wrong, for how long, with the numbers, and the likely fix."""
    cfg, options, net = run.cfg, run.cfg.model, run.cfg.model.net
    steps = f"{cfg.health_patience * cfg.health_every:,} steps"
    d = next(d for d in run.model.directions if network in (d.generator, d.discriminator, d.cycle))
    gen, disc, source, target = d.generator, d.discriminator, d.source, d.target
    identity = getattr(options, "lambda_identity", None)
    if signal == "discriminator_wins":
        smaller = f"--ndf (now {net.ndf})"
        if net.netD == "n_layers":
            smaller = f"--n_layers_D (now {net.n_layers_D}) or {smaller}"
        return (
            f"{disc} has been winning completely for {steps} ({disc} loss {value:.2g} < {D_WINS_LOSS}):"
            f" the generator {gen} gets no signal; try --lr {cfg.lr / 2:g}, a smaller {smaller}, or more data"
        )
    if signal == "generator_idle":
        if identity:
            fix = f"a smaller --lambda_identity (now {identity:g})"
        elif d.anchor and not run.model.paired:  # the loss tying outputs to inputs rewards doing nothing
            fix = f"a smaller --{d.anchor} (now {getattr(options, d.anchor):g})"
        else:
            fix = f"--lr {cfg.lr * 2:g}"
        return (
            f"{gen} has been returning its input nearly unchanged for {steps} (it changes pixels by"
            f" {stats[f'change_{source}']:.3f} on average, while the mean colours of {source} and {target}"
            f" differ by {stats[f'gap_{source}']:.3f}): try {fix}, or check that trainA and trainB really"
            " differ"
        )
    if signal == "identity_dominates":
        return (
            f"the identity loss has been {value:.0%} of {gen}'s loss for {steps}: {gen} is mostly taught to"
            f" leave {target} images unchanged, which pulls it towards doing nothing; try a smaller"
            f" --lambda_identity (now {identity:g}; the paper uses 0.5)"
        )
    if signal == "mode_collapse":
        anchor = f" or a larger --{d.anchor} (now {getattr(options, d.anchor):g})" if d.anchor else ""
        return (
            f"{gen} has been giving nearly the same output for every input for {steps} (outputs vary"
            f" {value:.2f}x as much as real {target} images): mode collapse; try --lr {cfg.lr / 2:g}{anchor}"
        )
    if signal == "colour_drift":
        keep = " or --lambda_identity 0.5 to keep colours" if identity == 0 else ""
        return (
            f"{gen}'s output colours have been off domain {target}'s for {steps} (a channel mean differs"
            f" by {value:.2f} on the -1..1 scale): colour drift or inversion; try a larger --ngf"
            f" (now {net.ngf}){keep}, or check that the test{target} images match train{target}"
        )
    fix = f"a larger --lr (now {cfg.lr:g})" if cfg.lr < TrainConfig.lr else f"a larger --ngf (now {net.ngf})"
    return (
        f"the {network} loss has stayed at {value:.0%} of its starting value for {steps}: the generators"
        f" are not learning to reconstruct {source} images; try {fix}, or check the images in {source}"
    )


def diverged_message(run: RunState, loss: str, value: float, step: int) -> str:
    folder = run.run_dir / CHECKPOINTS
    try:
        path, info, _ = checkpoints.newest_resumable(folder)
        kept = f"the last good checkpoint, {path} (step {info['step']:,}), is kept"
    except CycleGANError:
        kept = "no checkpoint had been saved yet"
    return (
        f"training diverged at step {step:,} ({loss} loss {value:.3g}): stopped without"
        f" saving these weights; {kept}. Start a new run with a smaller --lr (now {run.cfg.lr:g}),"
        f" e.g. {run.cfg.lr / 10:g}"
    )
