"""The model registry: a model defined outside the package plugs in without touching the trainer.

The model here (one generator pulled towards a target colour by an L1 loss, plus a GAN loss) exists only in
this test. Its networks and losses have names of their own, so anything that still expects CycleGAN's
``G_A`` or ``cycle_A`` fails here.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from conftest import StandInInception, tiny_config
from PIL import Image
from torch import nn

from cyclegan.cli import main
from cyclegan.config import TRACKERS, ModelOptions, TrainConfig
from cyclegan.distributed import World
from cyclegan.errors import CycleGANError
from cyclegan.evaluation.report import write_report
from cyclegan.evaluation.scoring import evaluate
from cyclegan.layout import LOG, SAMPLES
from cyclegan.models import Direction, Model, Trainer, checkpoints
from cyclegan.models.losses import GANLoss
from cyclegan.networks import build_discriminator, build_generator
from cyclegan.training import resume_config, train
from cyclegan.training.tracking import BACKENDS
from cyclegan.translation.translator import Translator

NAME = "tiny_test_model"


def define_tiny_model() -> None:
    """Defining the three classes is all it takes to register the model."""

    @dataclass
    class TinyOptions(ModelOptions):
        name: ClassVar[str] = NAME

        colour: float = field(
            default=0.5, metadata={"help": "the grey level G is pulled towards, in [-1, 1]"}
        )
        lambda_colour: float = field(default=1.0, metadata={"help": "weight of the colour loss"})

    class TinyModel(Model):
        name = NAME
        title = "Tiny test model"
        network_names = ("gen", "critic")
        directions = (
            Direction(
                "AtoB", generator="gen", discriminator="critic", source="A", target="B",
                adversarial="gen_gan", critic="critic", losses=("gen_gan", "gen_colour"),
                anchor="lambda_colour",
            ),
        )  # fmt: skip
        loss_names = ("gen_gan", "gen_colour", "critic")
        chart_groups = (("Tiny losses", loss_names),)
        sample_columns = ("real A", "gen(A)")
        options: TinyOptions
        gen: nn.Module
        critic: nn.Module

        @classmethod
        def build(cls, options: ModelOptions, name: str) -> nn.Module:
            net = options.net
            return build_generator(net) if name == "gen" else build_discriminator(net, net.output_nc)

        def sample_row(self, real_A: torch.Tensor, real_B: torch.Tensor) -> list[torch.Tensor]:
            return [real_A, self.gen(real_A)]

        def trial_forward(self, real_A: torch.Tensor, real_B: torch.Tensor) -> None:
            self.critic(self.gen(real_A))

        def trainer(self, cfg: TrainConfig, seed: int = 0, world: World | None = None) -> Trainer:
            return TinyTrainer(self, cfg, seed, world)

    class TinyTrainer(Trainer):
        model: TinyModel

        def __init__(self, model: TinyModel, cfg: TrainConfig, seed: int, world: World | None) -> None:
            super().__init__(model, cfg, {"gen": [model.gen], "critic": [model.critic]}, seed, world)
            self.gan = GANLoss(model.options.gan_mode)

        def step(self, real_A: torch.Tensor, real_B: torch.Tensor) -> dict[str, torch.Tensor]:
            m, o = self.model, self.model.options
            self.zero_grad("gen")
            fake = m.gen(self.batch(real_A))
            losses = {
                "gen_gan": self.gan(m.critic(fake), True),
                "gen_colour": (fake - o.colour).abs().mean() * o.lambda_colour,
            }
            self.update("gen", losses["gen_gan"] + losses["gen_colour"])
            self.zero_grad("critic")
            on_real, on_fake = m.critic(self.batch(real_B)), m.critic(fake.detach())
            losses["critic"] = 0.5 * (self.gan(on_real, True) + self.gan(on_fake, False))
            self.update("critic", losses["critic"])
            return self.losses(losses)


@pytest.fixture(scope="module")
def tiny_model() -> Iterator[type[Model]]:
    """The model, registered for this module's tests only (the CLI of other tests lists the real ones)."""
    define_tiny_model()
    yield Model.registry[NAME]
    del Model.registry[NAME], ModelOptions.registry[NAME]


def grey_images(folder: Path, count: int, low: int, seed: int) -> None:
    """Noise images between ``low`` and ``low + 60``: A dark, B bright, so colours tell them apart."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        pixels = rng.integers(low, low + 60, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")


@pytest.fixture(scope="module")
def trained(tiny_model: type[Model], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TrainConfig]:
    """Four steps of a run with health checks every two steps from the start; the same config."""
    root = tmp_path_factory.mktemp("tiny")
    for split, count in (("train", 4), ("test", 3)):
        grey_images(root / "data" / f"{split}A", count, 0, seed=len(split))
        grey_images(root / "data" / f"{split}B", count, 195, seed=len(split) + 1)
    cfg = tiny_config(
        root / "data", root / "runs", NAME, colour=0.25, max_steps=4, print_freq=2, sample_freq=2,
        health_every=2, health_warmup=0, health_patience=1,
    )  # fmt: skip
    train(cfg, show_progress=False)
    return root / "runs" / "run", cfg


def test_options_are_routed_to_the_new_model_and_others_refused(tiny_model: type[Model]) -> None:
    cfg = TrainConfig.create(NAME, dataroot="d", lambda_colour=3.0, ngf=8)
    assert (type(cfg.model).name, cfg.model.lambda_colour, cfg.model.net.ngf) == (NAME, 3.0, 8)  # type: ignore[attr-defined]
    with pytest.raises(CycleGANError, match="--lambda_A does not apply to --model tiny_test_model"):
        TrainConfig.create(NAME, dataroot="d", lambda_A=1.0)
    with pytest.raises(CycleGANError, match="--colour does not apply to --model cycle_gan"):
        TrainConfig.create("cycle_gan", dataroot="d", colour=1.0)


def test_it_trains_with_its_own_networks_losses_and_samples(trained: tuple[Path, TrainConfig]) -> None:
    run_dir, _ = trained
    states, options, info = checkpoints.read_weights(run_dir / "checkpoints" / "latest.safetensors")
    assert set(states) == {"gen", "critic"} and options.name == NAME and info["step"] == 4
    assert options.colour == 0.25  # type: ignore[attr-defined]
    rows = [json.loads(line) for line in (run_dir / LOG).read_text().splitlines()]
    losses = [row for row in rows if "event" not in row]
    assert [row["step"] for row in losses] == [2, 4]
    assert all(set(row) >= {"gen_gan", "gen_colour", "critic"} and "G_A" not in row for row in losses)
    grid = Image.open(run_dir / SAMPLES / "step_0000004.png")
    assert grid.width < 2 * grid.height  # two columns (real A, gen(A)) of three test images


def test_health_judges_its_generator(trained: tuple[Path, TrainConfig]) -> None:
    """An untrained generator's outputs are mid-grey, far from the bright B images: colour drift of gen,
    reported at the first check under the model's own network name."""
    run_dir, _ = trained
    events = [json.loads(line) for line in (run_dir / LOG).read_text().splitlines() if '"event"' in line]
    assert (events[0]["step"], events[0]["signal"], events[0]["network"]) == (2, "colour_drift", "gen")
    assert "gen's output colours have been off domain B's" in events[0]["message"]


def test_resume_continues_it_exactly(trained: tuple[Path, TrainConfig], tmp_path: Path) -> None:
    """Four steps and two more after a resume equal six straight: optimizers, schedules, RNG and hook
    states of the model's own groups and losses all come back."""
    saved, cfg = trained
    run_dir = shutil.copytree(saved, tmp_path / "resumed")
    continued = train(resume_config(run_dir, {"max_steps": 6}), run_dir, show_progress=False)
    fresh = dataclasses.replace(cfg, checkpoints_dir=str(tmp_path / "straight"), max_steps=6)
    straight = train(fresh, show_progress=False)
    assert continued.progress.step == straight.progress.step == 6
    resumed, _, _ = checkpoints.read_weights(continued.checkpoint)
    reference, _, _ = checkpoints.read_weights(straight.checkpoint)
    for name in ("gen", "critic"):
        for key, value in reference[name].items():
            assert torch.equal(resumed[name][key], value), f"{name}.{key}"


def test_translate_report_and_eval_work_with_it(trained: tuple[Path, TrainConfig], tmp_path: Path) -> None:
    run_dir, cfg = trained
    test_a = Path(cfg.dataroot or "") / "testA"
    out = tmp_path / "out"
    assert (
        main(["translate", str(test_a), "--checkpoint", str(run_dir), "--out", str(out), "--device", "cpu"])
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == ["0.png", "1.png", "2.png"]
    translator = Translator.load(run_dir, device="cpu")
    assert np.array_equal(
        np.asarray(Image.open(out / "0.png")), np.asarray(translator(Image.open(test_a / "0.png")))
    )
    with pytest.raises(CycleGANError, match="translates AtoB only"):
        Translator.load(run_dir, "BtoA")

    page = write_report(run_dir).read_text(encoding="utf-8")
    assert "Tiny test model run" in page and "Tiny losses" in page
    assert "gen maps A→B and critic judges domain B" in page and "colour_drift" in page

    result = evaluate(
        run_dir,
        Path(cfg.dataroot or ""),
        out_dir=tmp_path / "eval",
        inception=StandInInception(),
        kid_subsets=2,
    )
    assert [(row.method, row.direction) for row in result.rows] == [
        ("Tiny test model", "A→B"), ("untranslated input", "A→B")
    ]  # fmt: skip
    assert result.rows[0].scores["FID"] is not None and result.rows[0].scores["cycle L1"] is None


def test_every_tracker_log_to_accepts_has_a_backend_and_the_other_way_round() -> None:
    assert sorted(BACKENDS) == sorted(TRACKERS)  # config.py cannot import the trackers: the two lists agree
