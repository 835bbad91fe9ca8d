"""The CUDA-only paths; each test skips without a GPU. Run them with ``pytest -m cuda``."""

from __future__ import annotations

import socket
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from conftest import floats, tiny_config, training_state
from torch import nn

from cyclegan.config import CycleGANOptions, NetConfig, TrainConfig
from cyclegan.distributed import World
from cyclegan.models.cycle_gan import CycleGAN, CycleGANTrainer
from cyclegan.training import runs
from cyclegan.training.hooks import Hook, RunState
from cyclegan.training.loop import epoch_loader, train, training_data

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
MODEL = NetConfig(ngf=8, ndf=8, netG="resnet_6blocks")


def _trainer(**options: object) -> CycleGANTrainer:
    torch.manual_seed(0)
    model = CycleGAN(CycleGANOptions(net=MODEL)).to("cuda")
    return CycleGANTrainer(model, TrainConfig.create(**asdict(MODEL), pool_size=2, **options), seed=1)


def _batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    a, b = (torch.rand(2, 3, 64, 64, generator=generator) * 2 - 1 for _ in range(2))
    return a.cuda(), b.cuda()


def test_bf16_step_on_cuda() -> None:
    trainer = _trainer(precision="bf16", channels_last=True)
    seen: dict[str, set[torch.dtype]] = {"conv": set(), "norm": set()}
    for module in trainer.model.modules():
        if isinstance(module, nn.InstanceNorm2d):
            module.register_forward_hook(lambda m, args, out: seen["norm"].add(args[0].dtype))
        elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            module.register_forward_hook(lambda m, args, out: seen["conv"].add(out.dtype))
    for step in range(3):
        losses = floats(trainer.step(*_batch(step)))
    assert seen == {"conv": {torch.bfloat16}, "norm": {torch.float32}}
    assert all(v == v and abs(v) < 1e3 for v in losses.values())
    assert trainer.optimizers["G"].defaults["fused"] is True
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())


def test_fp16_loss_scale_resumes_from_the_checkpoint(tmp_path: Path) -> None:
    trainer = _trainer(precision="fp16")
    for step in range(3):
        trainer.step(*_batch(step))
    assert trainer.scaler.is_enabled()
    runs.save_checkpoint(tmp_path, trainer.model, trainer, runs.Progress(step=3), {})
    saved = training_state(tmp_path / "checkpoints" / "latest.safetensors")["trainer"]["grad_scaler"]
    assert saved["scale"] == trainer.scaler.get_scale()
    resumed = _trainer(precision="fp16")
    runs.load_checkpoint(tmp_path, resumed.model, resumed, torch.device("cuda"))
    assert resumed.scaler.state_dict() == trainer.scaler.state_dict()
    want, got = floats(trainer.step(*_batch(7))), floats(resumed.step(*_batch(7)))
    assert got == pytest.approx(want, rel=1e-5)


def test_nccl_process_group_of_one_trains_through_ddp(
    dataroot: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    seen: list[RunState] = []

    class Spy(Hook):
        def start(self, run: RunState) -> None:
            seen.append(run)
            assert dist.get_backend() == "nccl"
            assert isinstance(run.trainer.generators, nn.parallel.DistributedDataParallel)

    cfg = tiny_config(dataroot, tmp_path, max_steps=3, device="cuda", precision="bf16", batch_size=2)
    result = train(cfg, hooks=[Spy()], show_progress=False, report=False)
    assert result.progress.step == 3 and seen[0].world.device == torch.device("cuda", 0)
    assert not dist.is_initialized()


def test_batches_are_pinned_for_asynchronous_copies(dataroot: Path, tmp_path: Path) -> None:
    cfg = tiny_config(dataroot, tmp_path, batch_size=2, num_workers=1)
    dataset, _ = training_data(cfg)
    batch = next(iter(epoch_loader(dataset, cfg, runs.Progress(), World(device=torch.device("cuda")))))
    assert batch["A"].is_pinned() and batch["B"].is_pinned()
    assert torch.equal(batch["A"].to("cuda", non_blocking=True).cpu(), batch["A"])
