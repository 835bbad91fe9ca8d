"""The fast path on CPU: bf16 autocast, fused Adam, channels-last, the fp16 loss scale, and the refusals."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from conftest import floats, tiny_config
from torch import nn

from cyclegan import precision
from cyclegan.cli import main
from cyclegan.config import CycleGANOptions, NetConfig, TrainConfig
from cyclegan.errors import CycleGANError
from cyclegan.models.cycle_gan import CycleGAN, CycleGANTrainer
from cyclegan.training import runs

MODEL = NetConfig(ngf=4, ndf=4, netG="resnet_6blocks")


def _trainer(**options: object) -> CycleGANTrainer:
    torch.manual_seed(0)
    return CycleGANTrainer(
        CycleGAN(CycleGANOptions(net=MODEL)),
        TrainConfig.create(**asdict(MODEL), pool_size=2, **options),
        seed=1,
    )


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.rand(1, 3, 32, 32, generator=generator) * 2 - 1 for _ in range(2))  # type: ignore[return-value]


def test_bf16_runs_convs_in_bf16_and_keeps_norms_losses_weights_and_adam_in_float32() -> None:
    trainer = _trainer(precision="bf16")
    seen: dict[str, set[torch.dtype]] = {"conv out": set(), "norm in": set(), "norm out": set()}

    def record(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        if isinstance(module, nn.InstanceNorm2d):
            seen["norm in"].add(args[0].dtype)
            seen["norm out"].add(out.dtype)
        else:
            seen["conv out"].add(out.dtype)

    for module in trainer.model.modules():
        if isinstance(module, (nn.InstanceNorm2d, nn.Conv2d, nn.ConvTranspose2d)):
            module.register_forward_hook(record)
    losses = floats(trainer.step(*_batch()))
    assert seen == {"conv out": {torch.bfloat16}, "norm in": {torch.float32}, "norm out": {torch.float32}}
    assert all(isinstance(v, float) and v == v for v in losses.values())
    for optimizer in (trainer.optimizers["G"], trainer.optimizers["D"]):
        assert optimizer.defaults["fused"] is True
        for group in optimizer.param_groups:
            for p in group["params"]:
                assert p.dtype == p.grad.dtype == optimizer.state[p]["exp_avg"].dtype == torch.float32


def test_fp32_is_the_reference_path_untouched() -> None:
    trainer = _trainer()  # precision auto: fp32 on CPU
    assert trainer.precision.name == "fp32"
    assert not trainer.optimizers["G"].defaults["fused"]
    assert not trainer.scaler.is_enabled()
    assert not any(m._forward_pre_hooks for m in trainer.model.modules())


def test_bf16_losses_stay_close_to_fp32() -> None:
    exact, fast = _trainer(), _trainer(precision="bf16")
    for step in range(3):
        batch = _batch(step)
        want, got = floats(exact.step(*batch)), floats(fast.step(*batch))
        for name, value in want.items():
            assert got[name] == pytest.approx(value, rel=0.1, abs=1e-2), (step, name)


def test_compiled_checkpointed_step_matches_the_eager_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--compile step`` with activation checkpointing inside the compiled graphs trains as the plain eager
    step does, batch-norm statistics included (updated once, not again by the recomputation).

    The graphs are captured by TorchDynamo and differentiated by AOTAutograd, as with the default backend,
    but run by the ``aot_eager`` backend: inductor's C++ code generation would take minutes on 2 cores, and
    it is PyTorch's own part (``benchmarks/speed.py`` times it)."""
    compile_module = nn.Module.compile
    monkeypatch.setattr(nn.Module, "compile", lambda self: compile_module(self, backend="aot_eager"))

    model_cfg, size = NetConfig(ngf=4, ndf=4, netG="resnet_6blocks", norm="batch"), 32

    def trainer(**options: object) -> CycleGANTrainer:
        torch.manual_seed(0)
        cfg = TrainConfig.create(**asdict(model_cfg), pool_size=2, batch_size=2, **options)
        return CycleGANTrainer(CycleGAN(CycleGANOptions(net=model_cfg)), cfg, seed=1)

    eager, compiled = trainer(), trainer(compile="step", checkpoint_activations=True)
    inputs = torch.Generator().manual_seed(3)
    for step in range(2):
        a, b = (torch.rand(2, 3, size, size, generator=inputs) * 2 - 1 for _ in range(2))
        want, got = floats(eager.step(a, b)), floats(compiled.step(a, b))
        for name, value in want.items():
            assert got[name] == pytest.approx(value, rel=1e-4, abs=1e-6), (step, name)
    for name, value in eager.model.state_dict().items():
        if "running" in name:
            torch.testing.assert_close(compiled.model.state_dict()[name], value, msg=name)
    x = torch.rand(1, 3, size, size, generator=inputs) * 2 - 1
    for net in ("G_A", "G_B"):
        with torch.no_grad():
            want_y = getattr(eager.model, net).eval()(x)
            got_y = getattr(compiled.model, net).eval()(x)
        torch.testing.assert_close(got_y, want_y, rtol=0, atol=1e-3, msg=net)


def test_fp16_loss_scale_is_saved_and_resumed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # fp16 is refused on CPU for training; its loss scaling works there, which is what is checked here.
    monkeypatch.setattr(precision, "resolve_precision", lambda name, device: name)
    trainer = _trainer(precision="fp16")
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=3)
    for step in range(3):
        trainer.step(*_batch(step))
    assert trainer.scaler.get_scale() == 2.0**11  # grew after 3 steps without overflow
    runs.save_checkpoint(tmp_path, trainer.model, trainer, runs.Progress(step=3), {})
    resumed = _trainer(precision="fp16")
    resumed.scaler = torch.amp.GradScaler("cpu", growth_interval=3)
    runs.load_checkpoint(tmp_path, resumed.model, resumed, torch.device("cpu"))
    assert resumed.scaler.state_dict() == trainer.scaler.state_dict()
    for step in range(
        3, 5
    ):  # this model's fp16 gradients overflow at 2^11: the step is skipped, scale halved
        assert floats(trainer.step(*_batch(step))) == floats(resumed.step(*_batch(step)))
    assert resumed.scaler.get_scale() == trainer.scaler.get_scale() == 2.0**10


def test_channels_last_is_refused_where_instance_norm_gradients_are_wrong(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cpu = torch.device("cpu")
    error = precision.channels_last_gradient_error(cpu)
    if error > 1e-4:  # PyTorch 2.14's CPU kernel (the one this suite was written on) is wrong
        with pytest.raises(CycleGANError, match="computes instance norm's gradients wrongly"):
            _trainer(precision="bf16", channels_last=True)
    monkeypatch.setattr(precision, "channels_last_gradient_error", lambda device: 0.5)
    with pytest.raises(CycleGANError, match=r"--channels_last: .*relative error 0.5"):
        _trainer(channels_last=True)


def test_channels_last_bf16_resumes_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the layout's state handling, whatever this PyTorch's kernels compute (see the test above)
    monkeypatch.setattr(precision, "channels_last_gradient_error", lambda device: 0.0)
    trainer = _trainer(precision="bf16", channels_last=True)
    weight = trainer.model.G_A.model[1].weight
    assert weight.is_contiguous(memory_format=torch.channels_last)
    for step in range(2):
        trainer.step(*_batch(step))
    runs.save_checkpoint(tmp_path, trainer.model, trainer, runs.Progress(step=2), {})
    resumed = _trainer(precision="bf16", channels_last=True)
    runs.load_checkpoint(tmp_path, resumed.model, resumed, torch.device("cpu"))
    p = resumed.model.G_A.model[1].weight
    assert resumed.optimizers["G"].state[p]["exp_avg"].stride() == p.stride()
    assert floats(trainer.step(*_batch(5))) == floats(resumed.step(*_batch(5)))
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name


def _train_argv(dataroot: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "--dataroot", str(dataroot), "--checkpoints_dir", str(out), "--name", "run", "--ngf", "4",
        "--ndf", "4", "--netG", "resnet_6blocks", "--load_size", "36", "--crop_size", "32",
        "--num_workers", "0", "--seed", "1", "--device", "cpu", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--precision", "fp16"], "--precision fp16 needs a CUDA device; on CPU use --precision bf16"),
        (["--exact", "--precision", "bf16"], "--exact means --precision fp32; leave out --precision bf16"),
        (["--compile", "step"], "--compile: torch.compile does not work here (no C++ compiler)"),
        (
            ["--compile", "networks", "--checkpoint_activations", "--norm", "batch"],
            "--compile networks cannot recompute batch-norm networks (--checkpoint_activations);"
            " use --compile step",
        ),
    ],
)
def test_unsupported_fast_paths_are_one_line_errors(
    dataroot: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    extra: list[str],
    message: str,
) -> None:
    def no_compiler(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no C++ compiler\nmore detail")

    monkeypatch.setattr(torch, "compile", no_compiler)
    assert main(_train_argv(dataroot, tmp_path / "runs", *extra)) == 2
    assert capsys.readouterr().err == f"cyclegan train: error: {message}\n"
    assert not (tmp_path / "runs").exists()


def test_exact_trains_with_the_references_arithmetic(dataroot: Path, tmp_path: Path) -> None:
    assert main(_train_argv(dataroot, tmp_path, "--exact", "--max_steps", "1")) == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (saved["precision"], saved["channels_last"], saved["compile"]) == ("fp32", False, "none")


def test_precision_may_change_on_resume(dataroot: Path, tmp_path: Path) -> None:
    from cyclegan.training.loop import train

    first = train(tiny_config(dataroot, tmp_path, max_steps=2), show_progress=False, report=False)
    cfg = runs.resume_config(first.run_dir, {"precision": "bf16", "max_steps": 3})
    assert train(cfg, first.run_dir, show_progress=False, report=False).progress.step == 3
