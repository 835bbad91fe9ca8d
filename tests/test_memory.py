"""Activation checkpointing (the same step, less memory kept) and the memory planner (measured, fitted)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from conftest import floats, tiny_config

from cyclegan.cli import main
from cyclegan.config import CycleGANOptions, NetConfig, TrainConfig, changed_options, replace_options
from cyclegan.devices import parse_memory
from cyclegan.errors import CycleGANError
from cyclegan.models.base import check_training_size
from cyclegan.models.cycle_gan import CycleGAN, CycleGANTrainer
from cyclegan.networks import build_generator, set_checkpointing
from cyclegan.training.planner import DryRuns, Line, Plan, Variant, format_plan, plan, smallest_crop

CPU = torch.device("cpu")


def one_step(
    model_cfg: NetConfig, checkpointing: bool, size: int, bf16: bool = False
) -> tuple[dict[str, float], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Losses, gradients and updated state (running statistics included) after one step on batch 2."""
    torch.manual_seed(0)
    model = CycleGAN(CycleGANOptions(net=model_cfg))
    precision = "bf16" if bf16 else "fp32"
    cfg = TrainConfig.create(
        **asdict(model_cfg), pool_size=0, checkpoint_activations=checkpointing, precision=precision
    )
    trainer = CycleGANTrainer(model, cfg)
    inputs = torch.Generator().manual_seed(1)
    a, b = (torch.rand(2, 3, size, size, generator=inputs) * 2 - 1 for _ in range(2))
    torch.manual_seed(2)  # the dropout masks
    losses = floats(trainer.step(a, b))
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    return losses, grads, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "model_cfg, size",
    [
        (NetConfig(ngf=4, ndf=4, netG="resnet_6blocks", dropout=True), 32),
        (NetConfig(ngf=4, ndf=4, netG="unet_128", norm="batch", dropout=True), 128),
        (NetConfig(ngf=4, ndf=4, netG="unet_128", netD="pixel"), 128),
    ],
    ids=["resnet-dropout", "unet-batchnorm-dropout", "unet-pixelD"],
)
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_checkpointed_step_matches_the_plain_step(model_cfg: NetConfig, size: int, bf16: bool) -> None:
    plain_losses, plain_grads, plain_state = one_step(model_cfg, False, size, bf16)
    losses, grads, state = one_step(model_cfg, True, size, bf16)
    assert losses == pytest.approx(plain_losses, rel=1e-6)
    assert grads.keys() == plain_grads.keys() and state.keys() == plain_state.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], rtol=1e-5, atol=1e-8, msg=name)
    for name, value in state.items():  # batch-norm statistics are not updated twice by the recomputation
        torch.testing.assert_close(value, plain_state[name], rtol=1e-5, atol=1e-8, msg=name)


def saved_bytes(net: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes the autograd graph keeps outside checkpointed segments for one forward pass."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(x).sum().backward()
    return total


@pytest.mark.parametrize("netG, size", [("resnet_9blocks", 64), ("unet_128", 128)])
def test_checkpointing_keeps_far_fewer_activations_and_the_same_weights(netG: str, size: int) -> None:
    net = build_generator(NetConfig(ngf=8, netG=netG)).train()
    keys = list(net.state_dict())
    x = torch.rand(1, 3, size, size)
    plain, expected = saved_bytes(net, x), net(x)
    set_checkpointing(net, True)
    assert list(net.state_dict()) == keys  # reference weights and checkpoints still load
    assert saved_bytes(net, x) < plain / 2
    assert torch.equal(net(x), expected)


def test_checkpointing_may_change_when_resuming() -> None:
    saved = TrainConfig.create(dataroot="x")
    changed = list(changed_options(saved, replace_options(saved, {"checkpoint_activations": True})))
    assert changed == [("checkpoint_activations", False, True, True)]


@pytest.fixture(scope="module")
def cpu_dry_runs() -> Iterator[DryRuns]:
    """One helper process for the module's CPU dry runs: starting it (importing PyTorch) is most of a run."""
    with DryRuns(CPU) as dry_runs:
        yield dry_runs


def test_planner_fit_predicts_a_larger_crop_and_batch_on_cpu(cpu_dry_runs: DryRuns) -> None:
    """Dry runs at 64 and 128 px predict a 160 px, batch 2 run's peak within 20% of its activation memory
    (the part that grows; the fixed part is mostly the Python process itself). Measured: 5-9%."""
    cfg = TrainConfig.create(device="cpu", crop_size=160, pool_size=0, ngf=8, ndf=8)
    (fitted,) = plan(cfg, [Variant()], sizes=[64, 128], runs=cpu_dry_runs)
    actual = cpu_dry_runs.train(cfg, Variant(), 160, batch=2).peak_bytes
    predicted = fitted.training_bytes(160, 2)
    assert fitted.train.fixed > 0 and fitted.translate_bytes(160) < predicted
    assert abs(predicted - actual) <= 0.2 * (actual - fitted.train.fixed)


def test_the_memory_planner_fits_a_cut_run_from_small_dry_runs(cpu_dry_runs: DryRuns) -> None:
    """CUT's own trainer and generator in the planner's dry runs (the accuracy: the test above)."""
    cfg = TrainConfig.create(
        "cut", device="cpu", crop_size=160, ngf=8, ndf=8, netG="resnet_6blocks", netF_nc=16, num_patches=16
    )
    (fitted,) = plan(cfg, [Variant(True, "bf16")], sizes=[64, 128], runs=cpu_dry_runs)
    assert fitted.model.name == "cut" and fitted.pool_per_pixel == 0  # no image pool
    assert [(m.crop, m.batch) for m in fitted.measurements] == [(64, 1), (128, 1)]
    assert fitted.train.fixed > 0 and 0 < fitted.translate_bytes(160) < fitted.training_bytes(160)
    lines = format_plan(cfg, [fitted], 2**40).splitlines()
    assert lines[0].startswith("Memory plan: --model cut --netG resnet_6blocks --ngf 8 --netD basic")
    assert lines[4].startswith("bf16 + checkpointing") and lines[-1] == "budget: 1024.00 GiB"


def test_largest_crop_and_batch_follow_the_budget_and_the_size_rules() -> None:
    per_pixel = Line(fixed=2**30, per_pixel=20_000.0)
    unet = Plan(
        Variant(),
        CycleGANOptions(net=NetConfig(ngf=4, ndf=4, netG="unet_256")),
        per_pixel,
        per_pixel,
        0.0,
        (),
    )
    crop = unet.largest_crop(12 * 2**30)
    assert crop is not None and crop % 256 == 0 and unet.training_bytes(crop) <= 12 * 2**30
    assert unet.training_bytes(crop + 256) > 12 * 2**30
    assert unet.largest_crop(2**30) is None  # nothing left after the fixed part
    assert unet.largest_batch(12 * 2**30, 512) == 11 * 2**30 // (20_000 * 512 * 512)
    # a deep discriminator refuses small crops that the generator's multiple of 4 would allow
    deep = CycleGANOptions(net=NetConfig(ngf=4, ndf=4, netG="resnet_6blocks", netD="n_layers", n_layers_D=6))
    smallest = smallest_crop(deep)
    assert smallest > 4 and smallest % 4 == 0
    with pytest.raises(CycleGANError):
        check_training_size(deep, smallest - 4, smallest - 4)
    area = Plan(Variant(), deep, Line(0.0, 1.0), None, 0.0, ())
    assert area.largest_crop(float(smallest - 4) ** 2) is None
    assert area.largest_crop(float(smallest + 7) ** 2) == smallest + 4
    pooled = Plan(Variant(), CycleGANOptions(), per_pixel, None, 1200.0, ())
    assert pooled.training_bytes(512) == pytest.approx(per_pixel(512 * 512) + 1200 * 512 * 512)


def test_parse_memory() -> None:
    assert parse_memory("12GB") == parse_memory("12 GiB") == parse_memory("12g") == 12 * 2**30
    assert parse_memory("800MB") == 800 * 2**20
    assert parse_memory("1.5T") == int(1.5 * 2**40)
    assert parse_memory("4096") == 4096
    for bad in ("lots", "", "-1GB", "0", "12XB"):
        with pytest.raises(CycleGANError):
            parse_memory(bad)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--memory", "lots"], "a memory size looks like"),
        (["--crop_size", "30"], "30x30 training images do not fit"),
        (["--ngf", "0"], "--ngf must be at least 1"),
        (["--probe_sizes", "64", "--crop_size", "64"], "two or more different sizes"),
    ],
)
def test_plan_refuses_bad_input_in_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", "--device", "cpu", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_plan_on_missing_cuda_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "CUDA is not available" in err and err.count("\n") == 1


def test_train_memory_budget_stops_before_training_with_the_numbers(
    dataroot: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The budget is checked for the run as asked: its own precision and checkpointing."""
    cfg = tiny_config(dataroot, tmp_path / "runs")
    args = ["train", "--dataroot", str(dataroot), "--checkpoints_dir", str(tmp_path / "runs")]
    args += ["--ngf", "4", "--ndf", "4", "--netG", "resnet_6blocks", "--crop_size", str(cfg.crop_size)]
    args += ["--load_size", "36", "--num_workers", "0", "--device", "cpu", "--memory_budget", "1MB"]
    args += ["--precision", "bf16", "--checkpoint_activations"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "over the 1 MiB budget" in err and "no crop fits" in err
    assert "batch 1 (bf16 + checkpointing) need about" in err
    assert not (tmp_path / "runs").exists()  # nothing was started
