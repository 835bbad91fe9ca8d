"""Health diagnostics: the signal logic on synthetic numbers, and deliberately broken short runs."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest
import torch
from conftest import training_state
from PIL import Image

from cyclegan.cli import main
from cyclegan.config import NetConfig, TrainConfig
from cyclegan.data.demo_scenes import make_demo_dataset
from cyclegan.errors import CycleGANError
from cyclegan.evaluation.report import render_report
from cyclegan.evaluation.runfiles import read_run
from cyclegan.layout import LOG
from cyclegan.models import checkpoints, model_type
from cyclegan.models.cycle_gan import CycleGAN
from cyclegan.training import health, runs
from cyclegan.training.hooks import Hook, RunState
from cyclegan.training.loop import default_hooks, train

# --- synthetic signals ----------------------------------------------------------------------------------

HEALTHY_LOSSES = {"D_A": 0.23, "G_A": 0.3, "cycle_A": 1.3, "idt_A": 0.3} | {
    "D_B": 0.22, "G_B": 0.27, "cycle_B": 0.7, "idt_B": 0.57
}  # fmt: skip
HEALTHY_PROBE = {"change_A": 0.85, "gap_A": 0.83, "diversity_A": 0.95, "colour_A": 0.03} | {
    "change_B": 0.88, "gap_B": 0.83, "diversity_B": 0.9, "colour_B": 0.1
}  # fmt: skip
FIRST_CYCLE = {"cycle_A": 2.2, "cycle_B": 1.5}


@pytest.mark.parametrize(
    ("losses", "probe", "expected"),
    [
        ({}, {}, set()),
        ({"D_A": 0.004}, {}, {"discriminator_wins/D_A"}),
        ({}, {"change_B": 0.05}, {"generator_idle/G_B"}),  # G_B(x) ≈ x; its colours are then not judged
        ({}, {"change_B": 0.05, "gap_B": 0.05}, set()),  # … unless the domains do not differ
        ({"idt_A": 8.0}, {}, {"identity_dominates/G_A"}),
        ({}, {"diversity_A": 0.05}, {"mode_collapse/G_A"}),
        ({}, {"colour_B": 0.6}, {"colour_drift/G_B"}),
        ({"cycle_A": 2.0}, {}, {"cycle_stagnant/cycle_A"}),
    ],
)
def test_each_signal_fires_on_its_own_symptom_only(
    losses: dict[str, float], probe: dict[str, float], expected: set[str]
) -> None:
    found = health.find_problems(
        CycleGAN.directions, HEALTHY_LOSSES | losses, HEALTHY_PROBE | probe, FIRST_CYCLE
    )
    assert set(found) == expected


def test_the_idle_generator_advice_names_the_loss_that_rewards_doing_nothing() -> None:
    stats = {"change_A": 0.01, "gap_A": 0.3}
    for model, options, network, fix in (
        ("cycle_gan", {}, "G_A", "a smaller --lambda_identity (now 0.5)"),
        ("cycle_gan", {"lambda_identity": 0.0}, "G_A", "a smaller --lambda_A (now 10)"),
        ("cut", {}, "G", "a smaller --lambda_NCE (now 1)"),
        ("fastcut", {}, "G", "a smaller --lambda_NCE (now 10)"),
        ("pix2pix", {}, "G", "--lr 0.0004"),  # its L1 ties outputs to the targets, not to the inputs
    ):
        run = cast(
            RunState, SimpleNamespace(cfg=TrainConfig.create(model, **options), model=model_type(model))
        )
        message = health.warning_message(run, "generator_idle", network, 0.01, stats)
        assert f"try {fix}, or check" in message, (model, message)


def test_divergence_is_a_non_finite_or_exploded_adversarial_loss() -> None:
    names = CycleGAN.loss_names
    explodable = torch.tensor([name in ("D_A", "D_B", "G_A", "G_B") for name in names])

    def flagged(changes: dict[str, float]) -> set[str]:
        values = torch.tensor([(HEALTHY_LOSSES | changes)[name] for name in names])
        bad = health.diverging(values, explodable).tolist()
        return {name for name, flag in zip(names, bad, strict=True) if flag}

    assert flagged({}) == set()
    assert flagged({"cycle_B": math.nan}) == {"cycle_B"}
    assert flagged({"G_A": math.inf}) == {"G_A"}
    assert flagged({"D_B": 5e3}) == {"D_B"}
    assert flagged({"cycle_A": 5e3}) == set()  # a large cycle loss early in a run is no divergence


def test_a_warning_needs_patience_checks_and_comes_once_per_episode() -> None:
    hook = health.Health()
    pattern = [1, 1, 1, 1, 1, 0, 1, 0, 0, 0, 1, 1, 0, 1, 1, 1]  # problem present (1) or not at each check
    began = [i for i, present in enumerate(pattern) if hook._update_episode("x/G_A", bool(present), 3)]
    # begins at the 3rd check in a row; a gap shorter than 3 checks continues the episode; after 3 clear
    # checks it is over, and the next one needs 3 checks in a row again
    assert began == [2, 15]


class StandIn(torch.nn.Module):
    """A model whose "generators" are fixed functions, to test what the probe measures."""

    directions = CycleGAN.directions

    def __init__(self, g_a: Any, g_b: Any) -> None:
        super().__init__()
        self.G_A, self.G_B = g_a, g_b

    def generator(self, direction: str) -> Any:
        return self.G_A if direction == "AtoB" else self.G_B


def _images(seed: int, mean: torch.Tensor) -> torch.Tensor:
    """Eight 16x16 images of uniform noise ±0.3 around per-channel means."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(8, 3, 16, 16, generator=g) * 0.6 - 0.3 + mean.view(1, 3, 1, 1)


def test_probe_tells_a_good_translation_from_inversion_identity_and_collapse() -> None:
    day_mean, night_mean = torch.tensor((0.5, 0.1, -0.4)), torch.tensor((-0.5, -0.5, -0.3))
    day, night = _images(0, day_mean), _images(1, night_mean)
    shift = (night_mean - day_mean).view(1, 3, 1, 1)
    cases = {  # G_A; G_B always inverts colours, which moves them 0.7 off day's
        "good": lambda x: x + shift,
        "identity": lambda x: x,
        "constant": lambda x: torch.zeros_like(x) + night_mean.view(1, 3, 1, 1),
    }
    results = {}
    for name, g_a in cases.items():
        stats = health.probe(cast(CycleGAN, StandIn(g_a, lambda x: -x)), day, night)
        results[name] = health.find_problems(CycleGAN.directions, HEALTHY_LOSSES, stats, FIRST_CYCLE)
    assert results["good"] == {"colour_drift/G_B": pytest.approx(0.7, abs=0.05)}
    assert set(results["identity"]) == {"generator_idle/G_A", "colour_drift/G_B"}
    assert set(results["constant"]) == {"mode_collapse/G_A", "colour_drift/G_B"}


def test_health_options_are_validated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for option, value in (("health_every", 0), ("health_patience", 0), ("health_warmup", -1)):
        cfg = TrainConfig(dataroot=str(tmp_path))
        setattr(cfg, option, value)
        with pytest.raises(CycleGANError, match=f"--{option} must"):
            cfg.validate()
    assert main(["train", "--dataroot", str(tmp_path), "--health_every", "0"]) == 2
    assert capsys.readouterr().err == "cyclegan train: error: --health_every must be at least 1, got 0\n"
    assert "health" in [h.name for h in default_hooks(TrainConfig())]
    assert "health" not in [h.name for h in default_hooks(TrainConfig(no_health=True))]


# --- short real runs ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "data", size=32, n_train=24, n_test=8)


def run_config(dataroot: Path, out: Path, **overrides: Any) -> TrainConfig:
    """A small CycleGAN that learns the 32-pixel day/night demo in tens of steps; judged every 10 steps."""
    model = overrides.pop(
        "model", NetConfig(ngf=8, ndf=8, netG="resnet_6blocks", netD="n_layers", n_layers_D=2)
    )
    options: dict[str, Any] = dict(
        dataroot=str(dataroot), checkpoints_dir=str(out), name="run", load_size=36, crop_size=32,
        n_epochs=100, n_epochs_decay=0, num_workers=0, seed=0, print_freq=10, sample_freq=10**6,
        save_latest_freq=10**6, save_epoch_freq=10**6, health_every=10, health_patience=3, health_warmup=30,
    )  # fmt: skip
    return TrainConfig.create(**asdict(model), **(options | overrides))


def signals(run_dir: Path) -> list[tuple[int, str, str]]:
    return [(e["step"], e["signal"], e["network"]) for e in health.health_events(run_dir)]


def test_a_healthy_run_raises_no_warning(demo: Path, tmp_path: Path) -> None:
    result = train(run_config(demo, tmp_path, max_steps=60), report=False, show_progress=False)
    assert result.stopped is None
    assert signals(result.run_dir) == []


def test_a_diverging_learning_rate_stops_the_run_and_keeps_the_last_good_checkpoint(
    demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = run_config(demo, tmp_path, lr=0.5, save_latest_freq=1, sample_freq=1, max_steps=50)
    result = train(cfg, show_progress=False)
    assert result.stopped is not None and "diverged at step 2" in result.stopped
    assert result.progress.step == 2
    latest = result.run_dir / "checkpoints" / checkpoints.LATEST
    states, _, info = checkpoints.read_weights(latest)
    assert info["step"] == 1  # the diverged weights of step 2 were not saved over it
    assert all(torch.isfinite(t).all() for s in states.values() for t in s.values())
    assert [p.name for p in (result.run_dir / "samples").iterdir()] == ["step_0000001.png"]
    assert signals(result.run_dir) == [(2, "diverged", "D_A")]
    assert {e["signal"] for e in health.health_events(result.run_dir)} <= set(health.SIGNALS)
    err = capsys.readouterr().err
    assert err.count("warning: training diverged") == 1
    assert f"{latest} (step 1), is kept" in err and "--lr (now 0.5), e.g. 0.05" in err
    page = render_report(read_run(result.run_dir))  # a log that ends in an event row still reads
    assert "<td class='num'>2</td><td>diverged</td><td>D_A</td>" in page


class StrongDiscriminator(Hook):
    """A discriminator made too strong: it learns 1,000 times as fast as the generators."""

    name = "strong_discriminator"

    def start(self, run: RunState) -> None:
        trainer = run.trainer
        for optimizer, scheduler, factor in (
            (trainer.optimizers["G"], trainer.schedulers[0], 0.01),
            (trainer.optimizers["D"], trainer.schedulers[1], 10.0),
        ):
            for group in optimizer.param_groups:
                group["lr"] *= factor
            scheduler.base_lrs = [lr * factor for lr in scheduler.base_lrs]


def test_a_too_strong_discriminator_is_reported(demo: Path, tmp_path: Path) -> None:
    cfg = run_config(demo, tmp_path, max_steps=70)  # its D losses fall below 0.01 from step ~40 on
    result = train(cfg, hooks=[StrongDiscriminator()], report=False, show_progress=False)
    events = health.health_events(result.run_dir)
    wins = [e for e in events if e["signal"] == "discriminator_wins"]
    assert wins and wins[0]["value"] < health.D_WINS_LOSS
    assert "gets no signal; try --lr 0.0001" in wins[0]["message"]


@pytest.fixture(scope="module")
def identity_run(demo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 steps with an identity loss weighted 20, not 0.5: it drowns out everything else G learns."""
    cfg = run_config(demo, tmp_path_factory.mktemp("identity"), lambda_identity=20.0, max_steps=60)
    return train(cfg, report=False, show_progress=False).run_dir


def test_a_huge_identity_weight_is_reported_once(identity_run: Path) -> None:
    assert signals(identity_run) == [(50, "identity_dominates", "G_A"), (50, "identity_dominates", "G_B")]
    assert "try a smaller --lambda_identity (now 20" in health.health_events(identity_run)[0]["message"]


def _colour_swapped(demo: Path, root: Path) -> Path:
    """Domain A: the day renders tinted orange; domain B: the same renders with their channels reversed."""
    tint = np.array([1.0, 0.55, 0.3])
    for split in ("train", "test"):
        for side in "AB":
            (root / f"{split}{side}").mkdir(parents=True)
            for path in sorted((demo / f"{split}A").iterdir()):
                image = np.asarray(Image.open(path).convert("RGB")) * tint
                image = image if side == "A" else image[:, :, ::-1]
                Image.fromarray(np.ascontiguousarray(image.astype(np.uint8))).save(
                    root / f"{split}{side}" / path.name
                )
    return root


def test_output_colours_off_a_colour_swapped_target_are_reported(demo: Path, tmp_path: Path) -> None:
    # A normal-width CycleGAN learns a channel swap within ~50 steps (measured: its colour gap falls to
    # 0.06, no warning), so the generator here is too narrow (ngf 1) to carry the colours across.
    data = _colour_swapped(demo, tmp_path / "swapped")
    narrow = NetConfig(ngf=1, ndf=8, netG="resnet_6blocks", netD="n_layers", n_layers_D=2)
    result = train(run_config(data, tmp_path, model=narrow, max_steps=50), report=False, show_progress=False)
    drift = [e for e in health.health_events(result.run_dir) if e["signal"] == "colour_drift"]
    assert [(e["step"], e["network"]) for e in drift][:1] == [(50, "G_A")]
    assert drift[0]["value"] > health.COLOUR_DRIFT and "try a larger --ngf (now 1)" in drift[0]["message"]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    states, _, _ = checkpoints.read_weights(run_dir / "checkpoints" / checkpoints.LATEST)
    return {f"{n}.{k}": v for n, s in states.items() for k, v in s.items()}


def test_health_state_survives_a_resume_exactly(
    demo: Path, identity_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = run_config(demo, tmp_path, lambda_identity=20.0, max_steps=55)  # mid-window, after a warning
    first = train(cfg, report=False, show_progress=False)
    capsys.readouterr()
    cfg.max_steps = 60
    resumed = train(cfg, first.run_dir, report=False, show_progress=False)
    assert "warning" not in capsys.readouterr().err  # the warning of step 50 is not repeated
    assert signals(resumed.run_dir) == signals(identity_run) != []
    state = training_state(resumed.run_dir / "checkpoints" / checkpoints.LATEST)["hooks"]["health"]
    assert state == training_state(identity_run / "checkpoints" / checkpoints.LATEST)["hooks"]["health"]
    a, b = _weights(identity_run), _weights(resumed.run_dir)
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    loss_rows = [r for r in runs.read_rows(resumed.run_dir / LOG) if "event" not in r]
    assert [r["step"] for r in loss_rows] == list(range(10, 61, 10))
    assert set(CycleGAN.loss_names) <= set(loss_rows[0])
