from __future__ import annotations

import contextlib
import errno
import io
import itertools
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import fixture_path, tiny_config, training_state

from cyclegan.config import CycleGANOptions, TrainConfig
from cyclegan.errors import CycleGANError
from cyclegan.models import checkpoints
from cyclegan.models.base import lr_factor
from cyclegan.models.cycle_gan import CycleGANTrainer
from cyclegan.models.losses import ImagePool
from cyclegan.training import runs
from cyclegan.training.loop import train

# The reference trajectory was recorded with AVX2 kernels. Adam turns last-bit differences in near-zero
# gradients into visibly different updates, so the comparison runs in a child process pinned to the same ISA.
TRAJECTORY_SCRIPT = """
import json, sys, torch
from cyclegan.config import TrainConfig
from cyclegan.networks import load_weights
from cyclegan.models.cycle_gan import CycleGAN, CycleGANTrainer

ref = torch.load(sys.argv[1], weights_only=True)
c = ref["config"]
cfg = TrainConfig.create(
    ngf=c["ngf"], ndf=c["ndf"], netG=c["netG"], n_layers_D=c["n_layers_D"], pool_size=0,
    lambda_A=c["lambda_A"], lambda_B=c["lambda_B"], lambda_identity=c["lambda_identity"],
    gan_mode=c["gan_mode"],
)
model = CycleGAN(cfg.model)
for name, net in model.networks().items():
    load_weights(net, ref["init"][name])
trainer = CycleGANTrainer(model, cfg)
errors = []
for (a, b), expected in zip(ref["inputs"], ref["losses"], strict=True):
    got = {k: v.item() for k, v in trainer.step(a, b).items()}
    errors.append(max(abs(got[k] - v) / abs(v) for k, v in expected.items()))
ratios = {}
for name, net in model.networks().items():
    final, init = ref["final"][name], ref["init"][name]
    state = net.state_dict()
    gap = sum(((state[k] - final[k]) ** 2).sum() for k in final) ** 0.5
    travel = sum(((init[k] - final[k]) ** 2).sum() for k in final) ** 0.5
    ratios[name] = float(gap / travel)
print(json.dumps({"loss_errors": errors, "weight_ratios": ratios}))
"""


def test_training_step_reproduces_the_reference_trajectory() -> None:
    path = fixture_path("reference_trajectory.pt")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    done = subprocess.run(
        [sys.executable, "-c", TRAJECTORY_SCRIPT, str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    # where the kernels can be pinned to the recording's AVX2 (any x86-64 with AVX2), nothing may differ
    exact = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    assert len(result["loss_errors"]) == 6
    assert max(result["loss_errors"]) <= (0.0 if exact else 1e-5)
    assert set(result["weight_ratios"]) == {"G_A", "G_B", "D_A", "D_B"}
    assert max(result["weight_ratios"].values()) <= (0.0 if exact else 1e-3)


def test_learning_rate_is_constant_then_decays_linearly_to_zero() -> None:
    factors = [lr_factor(e, 100, 100) for e in range(200)]
    assert factors[:100] == [1.0] * 100
    assert factors[100] == pytest.approx(1 - 1 / 101)
    assert factors[199] == pytest.approx(1 / 101)
    steps = [a - b for a, b in itertools.pairwise(factors[100:])]
    assert all(s == pytest.approx(1 / 101) for s in steps)


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step")
def test_trainer_schedule_and_defaults_follow_the_paper(tmp_path: Path) -> None:
    from cyclegan.models.cycle_gan import CycleGAN

    cfg = TrainConfig.create(n_epochs=2, n_epochs_decay=2)
    o = cfg.model
    assert (cfg.lr, cfg.beta1, o.lambda_A, o.lambda_B, o.lambda_identity, o.pool_size) == (
        2e-4,
        0.5,
        10.0,
        10.0,
        0.5,
        50,
    )
    assert (o.gan_mode, cfg.load_size, cfg.crop_size, cfg.batch_size) == ("lsgan", 286, 256, 1)
    trainer = CycleGANTrainer(CycleGAN(cfg.model), cfg)
    lrs = []
    for _ in range(4):
        lrs.append(trainer.lr)
        trainer.end_epoch()
    assert lrs == pytest.approx([2e-4, 2e-4, 2e-4 * 2 / 3, 2e-4 / 3])
    assert trainer.optimizers["D"].param_groups[0]["betas"] == (0.5, 0.999)


def test_image_pool_fills_then_swaps_half_the_time_and_resumes_exactly() -> None:
    pool = ImagePool(4, seed=1)
    first = torch.arange(4.0).view(4, 1, 1, 1)
    assert torch.equal(pool.query(first), first)
    returned_old = 0
    for i in range(400):
        new = torch.full((1, 1, 1, 1), 100.0 + i)
        returned_old += int(pool.query(new).item() != new.item())
    assert 150 < returned_old < 250
    clone = ImagePool(4, seed=99)
    clone.load_state_dict(pool.state_dict())
    batch = torch.randn(8, 1, 1, 1)
    assert torch.equal(pool.query(batch), clone.query(batch))
    assert torch.equal(ImagePool(0).query(batch), batch)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    states, _, _ = checkpoints.read_weights(run_dir / "checkpoints" / "latest.safetensors")
    return {f"{n}.{k}": v for n, s in states.items() for k, v in s.items()}


def test_stop_and_resume_gives_the_same_weights_as_one_run(dataroot: Path, tmp_path: Path) -> None:
    # 6 batches per epoch: stop mid-epoch 2, resume across epoch boundaries where the learning rate decays.
    straight = train(tiny_config(dataroot, tmp_path / "a", max_steps=15), show_progress=False)
    cfg = tiny_config(dataroot, tmp_path / "b", max_steps=8)
    first = train(cfg, show_progress=False)
    assert first.progress.step == 8 and first.progress.epoch == 1
    cfg.max_steps = 15
    cfg.num_workers = 2
    resumed = train(cfg, first.run_dir, show_progress=False)
    assert resumed.progress.step == 15
    a, b = _weights(straight.run_dir), _weights(resumed.run_dir)
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    log = [json.loads(line) for line in (resumed.run_dir / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [2, 4, 6, 8, 10, 12, 14]
    assert (resumed.run_dir / "checkpoints" / "epoch_002.safetensors").is_file()


def test_run_folder_holds_config_log_samples_and_self_describing_checkpoints(
    dataroot: Path, tmp_path: Path
) -> None:
    result = train(tiny_config(dataroot, tmp_path, max_steps=10), show_progress=False)
    run = result.run_dir
    saved = TrainConfig.load(run / "config.json")
    assert saved.seed == 7 and saved.model.net.ngf == 4
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and {"step", "epoch", "lr", "G_A", "D_B", "cycle_A", "idt_B"} <= set(rows[0])
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step_0000005.png", "step_0000010.png"]
    _, model_cfg, info = checkpoints.read_weights(run / "checkpoints" / "latest.safetensors")
    assert model_cfg == saved.model and info["step"] == 10
    state = training_state(run / "checkpoints" / "latest.safetensors")
    assert {"optimizers", "schedulers", "pool_A", "pool_B"} <= set(state["trainer"])
    assert set(state["trainer"]["optimizers"]) == {"G", "D"}
    assert len(state["trainer"]["pool_A"]["images"]) == 3


def test_existing_run_folder_is_never_reused(dataroot: Path, tmp_path: Path) -> None:
    train(tiny_config(dataroot, tmp_path, max_steps=1), show_progress=False)
    with pytest.raises(CycleGANError, match="already exists"):
        train(tiny_config(dataroot, tmp_path, max_steps=1), show_progress=False)


def test_a_failed_save_leaves_the_previous_checkpoint_intact(
    dataroot: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = train(tiny_config(dataroot, tmp_path, max_steps=2), show_progress=False)
    latest = result.run_dir / "checkpoints" / "latest.safetensors"
    before = latest.read_bytes()

    def crash(tensors: dict, path: str, metadata: dict) -> None:
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoints, "save_file", crash)
    with pytest.raises(CycleGANError, match="disk is full"):
        checkpoints.save_weights(latest, {}, TrainConfig().model, {})
    assert latest.read_bytes() == before
    assert [p.name for p in latest.parent.iterdir() if p.name.startswith(".")] == []


def test_eval_every_logs_fid_kid_and_keeps_the_best_checkpoint(
    dataroot: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conftest import StandInInception

    from cyclegan.evaluation import metrics

    monkeypatch.setattr(metrics, "load_inception", lambda path=None, device="cpu": StandInInception())
    result = train(tiny_config(dataroot, tmp_path, max_steps=12, eval_every=1), show_progress=False)
    rows = [json.loads(line) for line in (result.run_dir / "eval_log.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]
    assert set(rows[0]["metrics"]) == {"FID A→B", "KID A→B", "FID B→A", "KID B→A"}
    kids = [(r["metrics"]["KID A→B"] + r["metrics"]["KID B→A"]) / 2 for r in rows]
    _, _, info = checkpoints.read_weights(result.run_dir / "checkpoints" / "best.safetensors")
    assert info["best_kid"] == pytest.approx(min(kids))
    assert info["epoch"] == 1 + kids.index(min(kids))
    assert result.progress.best_kid == pytest.approx(min(kids))
    with pytest.raises(CycleGANError, match="--eval_every needs --dataroot"):
        cfg = tiny_config(dataroot, tmp_path / "x", eval_every=1)
        cfg.dataroot, cfg.domain_a, cfg.domain_b = None, str(dataroot / "trainA"), str(dataroot / "trainB")
        train(cfg, show_progress=False)


def test_an_evaluation_after_the_checkpoint_at_an_epochs_last_step_is_not_logged_twice(
    dataroot: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conftest import StandInInception

    from cyclegan.evaluation import metrics

    monkeypatch.setattr(metrics, "load_inception", lambda path=None, device="cpu": StandInInception())
    steps = itertools.count(1)  # stopped at step 6, the first epoch's last: saved before the epoch closes
    cfg = tiny_config(dataroot, tmp_path, max_steps=12, eval_every=1)
    stopped = train(cfg, show_progress=False, should_stop=lambda: next(steps) >= 6)
    assert (stopped.progress.step, stopped.progress.epoch) == (6, 0)
    eval_log = stopped.run_dir / "eval_log.jsonl"
    assert not eval_log.exists() or eval_log.read_text() == ""
    # what a resumed session killed between the epoch's evaluation and its commit leaves behind
    runs.append_row(eval_log, {"epoch": 1, "step": 6, "metrics": {"KID A→B": 9.0}})
    train(runs.resume_config(stopped.run_dir), stopped.run_dir, show_progress=False)
    rows = runs.read_rows(eval_log)
    assert [(row["epoch"], row["step"]) for row in rows] == [(1, 6), (2, 12)]
    assert rows[0]["metrics"]["KID A→B"] != 9.0


def test_a_batch_normalises_each_image_alone() -> None:
    from cyclegan.config import NetConfig
    from cyclegan.models.cycle_gan import CycleGAN

    torch.manual_seed(0)
    model = CycleGAN(CycleGANOptions(net=NetConfig(ngf=4, ndf=4, netG="resnet_6blocks"))).train()
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        together = model.G_A(x)
        alone = torch.cat([model.G_A(x[i : i + 1]) for i in range(3)])
    assert (together - alone).abs().max().item() < 1e-5


def test_batches_of_two_keep_the_epoch_and_learning_rate_rule(dataroot: Path, tmp_path: Path) -> None:
    # 6 items (the larger domain) in batches of 2: 3 steps per epoch; the rate decays once per epoch.
    cfg = tiny_config(dataroot, tmp_path, batch_size=2, n_epochs=1, n_epochs_decay=1, print_freq=1)
    result = train(cfg, show_progress=False, report=False)
    assert (result.progress.step, result.progress.epoch) == (6, 2)
    rows = [json.loads(line) for line in (result.run_dir / "log.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 1, 1, 2, 2, 2]
    assert [row["lr"] for row in rows] == pytest.approx([2e-4] * 3 + [1e-4] * 3)
    state = training_state(result.run_dir / "checkpoints" / "latest.safetensors")
    assert len(state["trainer"]["pool_A"]["images"]) == 3  # the pool holds images, not batches


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal", [False, True], ids=["redirected", "terminal"])
def test_progress_is_a_bar_on_a_terminal_and_a_line_per_interval_elsewhere(
    dataroot: Path, tmp_path: Path, terminal: bool
) -> None:
    """Redirected (CI, nohup, a job scheduler), stderr gets no bar redraws but one line per print interval."""
    cfg = tiny_config(dataroot, tmp_path, max_steps=6, print_freq=2, no_health=True)
    with Terminal() if terminal else open(tmp_path / "stderr.txt", "w+") as stderr:
        with contextlib.redirect_stderr(stderr):
            train(cfg, report=False)
        stderr.seek(0)
        text = stderr.read()
    lines = [line.split(" ")[:3] for line in text.splitlines() if line.startswith("step ")]
    if terminal:
        assert "\r" in text and "6/6" in text and not lines
    else:
        assert "\r" not in text
        assert lines == [["step", "2/6", "epoch"], ["step", "4/6", "epoch"], ["step", "6/6", "epoch"]]
        assert text.count("D_A ") == 3


def test_a_run_that_ends_with_an_epoch_commits_the_closed_epoch(dataroot: Path, tmp_path: Path) -> None:
    """Six B images, batch 1: six steps are one whole epoch. The last commit comes after the epoch closed
    (its schedule stepped), so resuming starts the next epoch cleanly."""
    first = train(tiny_config(dataroot, tmp_path, max_steps=6), show_progress=False, report=False)
    info = checkpoints.read_weights(first.run_dir / "checkpoints" / "latest.safetensors", ())[2]
    assert (info["epoch"], info["batch"], info["step"]) == (1, 0, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "lr_scheduler.step() before optimizer.step()"
        cfg = runs.resume_config(first.run_dir, {"max_steps": 7})
        resumed = train(cfg, first.run_dir, show_progress=False, report=False)
    assert (resumed.progress.epoch, resumed.progress.step) == (1, 7)
