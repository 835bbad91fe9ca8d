"""Data parallelism on CPU: two gloo processes against one process that trains on the whole batch."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import tiny_config
from torch import nn

from cyclegan.cli import main
from cyclegan.config import CycleGANOptions, NetConfig, TrainConfig
from cyclegan.data.datasets import EpochSampler, RankBatches
from cyclegan.distributed import World
from cyclegan.errors import CycleGANError
from cyclegan.models import build_model, checkpoints
from cyclegan.models.cycle_gan import CycleGAN, CycleGANTrainer
from cyclegan.training.hooks import Hook, RunState
from cyclegan.training.loop import train

STEPS = 4
# Two processes of batch 1 sum their gradients in another order than one process of batch 2: the first
# step's gradients differ by float32 rounding (measured: 3e-6 of each network's gradient norm). Adam then
# divides each update by the root of its running squared gradient, so a rounding difference in a near-zero
# component (such as the bias of a conv before instance norm, whose true gradient is 0) moves a weight by up
# to lr. The losses of steps 1-4 were measured to differ by 1e-7, 6e-7, 2e-5 and 2e-4 (relative): about
# tenfold per step. The bounds leave a tenfold margin for other CPUs' kernels.
GRAD_ROUNDING = 3e-5
LOSS_DRIFT = (1e-5, 1e-5, 2e-4, 2e-3)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(3)
    return [
        (
            torch.rand(2, 3, 32, 32, generator=generator) * 2 - 1,
            torch.rand(2, 3, 32, 32, generator=generator) * 2 - 1,
        )
        for _ in range(STEPS)
    ]


def _trajectory(pool_size: int, world: World | None, part: slice) -> dict[str, Any]:
    """Losses of every step, the gradients of the first, and the final weights. The processes recompute
    activations (checkpointing); one process alone keeps them: the arithmetic is the same."""
    model_cfg = NetConfig(ngf=4, ndf=4, netG="resnet_6blocks")
    torch.manual_seed(0)
    model = CycleGAN(CycleGANOptions(net=model_cfg))
    cfg = TrainConfig.create(
        **asdict(model_cfg), pool_size=pool_size, batch_size=2, checkpoint_activations=world is not None
    )
    trainer = CycleGANTrainer(model, cfg, 5, world)
    losses, grads = [], {}
    for step, (a, b) in enumerate(_batches()):
        losses.append({k: v.item() for k, v in trainer.step(a[part], b[part]).items()})
        if step == 0:
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {
        "losses": losses,
        "grads": grads,
        "weights": {k: v.clone() for k, v in model.state_dict().items()},
    }


# Models whose D update runs inside the generator objective's forward (the reference's D-first step), each
# set up so that two processes see what one does: CUT with flips (every draw shared by the ranks), pix2pix
# with instance norm and no dropout (batch norm or dropout would give each process other statistics or masks).
D_FIRST = {
    "cut": dict(netF_nc=16, num_patches=32, flip_equivariance=True),
    "pix2pix": dict(norm="instance", dropout=False),
}


def _d_first_trajectory(name: str, world: World | None, part: slice) -> dict[str, Any]:
    """As ``_trajectory``, for a model of ``D_FIRST``."""
    cfg = TrainConfig.create(
        name, ngf=4, ndf=4, netG="resnet_6blocks", batch_size=2, checkpoint_activations=world is not None,
        **D_FIRST[name],
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model(cfg.model)
    trainer = model.trainer(cfg, 5, world)
    losses, grads = [], {}
    for step, (a, b) in enumerate(_batches()):
        losses.append({k: v.item() for k, v in trainer.step(a[part], b[part]).items()})
        if step == 0:
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {"losses": losses, "grads": grads}


def _worker(rank: int, ports: list[int], tmp: str, dataroot: str) -> None:
    """One of two processes: the trainer against its half of each batch, then whole runs through train()."""
    torch.set_num_threads(1)
    env = {"MASTER_ADDR": "127.0.0.1", "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2"}
    os.environ.update(env, MASTER_PORT=str(ports[0]))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    world = World(rank, 2, torch.device("cpu"), distributed=True)
    results: dict[str | int, Any] = {pool: _trajectory(pool, world, slice(rank, rank + 1)) for pool in (0, 3)}
    for name in D_FIRST:
        results[name] = _d_first_trajectory(name, world, slice(rank, rank + 1))
    if rank == 0:
        torch.save(results, Path(tmp) / "ranks.pt")
    dist.destroy_process_group()

    # train() joins its own process group from the environment, as under torchrun.
    for name, steps, port in (("whole", 6, ports[1]), ("split", 3, ports[2])):
        os.environ["MASTER_PORT"] = str(port)
        log_to = "tensorboard" if name == "whole" else "none"
        cfg = tiny_config(
            Path(dataroot), Path(tmp) / name, max_steps=steps, batch_size=2, save_latest_freq=2, log_to=log_to
        )
        train(cfg, show_progress=False, report=False)
    run = Path(tmp) / "split" / "run"
    if rank == 0:
        shutil.copytree(run, Path(tmp) / "split_copy" / "run")
    os.environ["MASTER_PORT"] = str(ports[3])
    cfg = tiny_config(Path(dataroot), Path(tmp) / "split", max_steps=6, batch_size=2, save_latest_freq=2)
    train(cfg, run, show_progress=False, report=False)

    os.environ["MASTER_PORT"] = str(ports[4])  # rank 0 refuses to reuse a run folder: every rank hears why
    try:
        train(tiny_config(Path(dataroot), Path(tmp) / "whole", batch_size=2), show_progress=False)
    except CycleGANError as err:
        (Path(tmp) / f"refusal_{rank}.txt").write_text(str(err))

    os.environ["MASTER_PORT"] = str(ports[5])  # in file order, rank 1 alone reads the damaged image
    data, out = Path(tmp) / "damaged", Path(tmp) / "damaged_run"
    cfg = tiny_config(data, out, batch_size=2, serial_batches=True, max_steps=1)
    result = train(cfg, show_progress=False, report=False)
    (Path(tmp) / f"skipped_{rank}.txt").write_text("\n".join(sorted(result.skipped_files)))


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest import write_images

    tmp = tmp_path_factory.mktemp("ddp")
    root = tmp / "data"
    write_images(root / "trainA", 5, seed=1)
    write_images(root / "trainB", 6, seed=2)
    damaged = tmp / "damaged"
    shutil.copytree(root, damaged)
    good = damaged / "trainB" / "img_000.png"
    (damaged / "trainB" / "img_000_truncated.png").write_bytes(good.read_bytes()[:200])
    mp.spawn(_worker, args=([_free_port() for _ in range(6)], str(tmp), str(root)), nprocs=2)
    return tmp


@pytest.mark.parametrize("pool_size", [0, 3])
def test_two_processes_of_batch_one_equal_one_process_of_batch_two(
    two_processes: Path, pool_size: int
) -> None:
    ranks = torch.load(two_processes / "ranks.pt", weights_only=True)[pool_size]
    alone = _trajectory(pool_size, None, slice(0, 2))
    assert ranks["grads"].keys() == alone["grads"].keys()
    for net in ("G_A", "G_B", "D_A", "D_B"):
        names = [n for n in alone["grads"] if n.startswith(net + ".")]
        got, want = (torch.cat([g[n].flatten() for n in names]) for g in (ranks["grads"], alone["grads"]))
        assert ((got - want).norm() / want.norm()).item() < GRAD_ROUNDING, net
    for step, (got, want) in enumerate(zip(ranks["losses"], alone["losses"], strict=True)):
        for name, value in want.items():
            assert got[name] == pytest.approx(value, rel=LOSS_DRIFT[step], abs=1e-7), (step, name)


@pytest.mark.parametrize("name", sorted(D_FIRST))
def test_d_first_models_train_on_two_processes_as_on_one(two_processes: Path, name: str) -> None:
    ranks = torch.load(two_processes / "ranks.pt", weights_only=True)[name]
    alone = _d_first_trajectory(name, None, slice(0, 2))
    assert ranks["grads"].keys() == alone["grads"].keys()
    for net in sorted({n.split(".")[0] for n in alone["grads"]}):  # D's from its update in G's objective
        names = [n for n in alone["grads"] if n.startswith(net + ".")]
        got, want = (torch.cat([g[n].flatten() for n in names]) for g in (ranks["grads"], alone["grads"]))
        assert ((got - want).norm() / want.norm()).item() < GRAD_ROUNDING, net
    for step, (got, want) in enumerate(zip(ranks["losses"], alone["losses"], strict=True)):
        for name, value in want.items():
            assert got[name] == pytest.approx(value, rel=LOSS_DRIFT[step], abs=1e-7), (step, name)


def _translations(run_dir: Path) -> list[torch.Tensor]:
    """Both generators' outputs on a fixed input: weights whose gradient is rounding noise (biases before
    instance norm) drift apart by up to lr per step, but cancel out of the outputs."""
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(9)) * 2 - 1
    states, options, _ = checkpoints.read_weights(run_dir / "checkpoints" / "latest.safetensors")
    model = CycleGAN(options)
    for name, net in model.networks().items():
        net.load_state_dict(states[name])
    with torch.no_grad():
        return [model.G_A(x), model.G_B(x)]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    states, _, info = checkpoints.read_weights(run_dir / "checkpoints" / "latest.safetensors")
    return {f"{n}.{k}": v for n, s in states.items() for k, v in s.items()} | {
        "step": torch.tensor(info["step"])
    }


def test_stopped_and_resumed_two_process_run_equals_an_uninterrupted_one(two_processes: Path) -> None:
    whole, resumed = _weights(two_processes / "whole" / "run"), _weights(two_processes / "split" / "run")
    assert whole["step"].item() == resumed["step"].item() == 6
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    log = (two_processes / "split" / "run" / "log.jsonl").read_text().splitlines()
    assert len(log) == 3  # rank 0 alone writes: steps 2, 4, 6
    assert len(list((two_processes / "whole" / "run").glob("events.out.tfevents.*"))) == 1  # and tracks


def test_rank_zeros_refusal_reaches_every_process(two_processes: Path) -> None:
    refusals = [(two_processes / f"refusal_{rank}.txt").read_text() for rank in range(2)]
    assert refusals[0] == refusals[1] and "already exists" in refusals[0]


def test_an_image_only_another_process_could_not_read_is_counted(two_processes: Path) -> None:
    skipped = [(two_processes / f"skipped_{rank}.txt").read_text() for rank in range(2)]
    assert skipped[0] == skipped[1] == str(two_processes / "damaged" / "trainB" / "img_000_truncated.png")


def test_a_two_process_run_resumes_on_one_process(two_processes: Path) -> None:
    run = two_processes / "split_copy" / "run"
    cfg = TrainConfig.load(run / "config.json")
    cfg.max_steps = 6
    train(cfg, run, show_progress=False, report=False)
    outputs = [_translations(two_processes / name / "run") for name in ("whole", "split_copy")]
    # Measured: 6e-4 of the [-1, 1] output range after 3 steps on 2 processes and 3 on 1.
    assert max((a - b).abs().max().item() for a, b in zip(*outputs, strict=True)) < 5e-3


def test_torchrun_with_one_process_takes_the_process_group_path(
    dataroot: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "RANK": "0", "WORLD_SIZE": "1"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    worlds: list[World] = []

    class Spy(Hook):
        def start(self, run: RunState) -> None:
            worlds.append(run.world)
            assert isinstance(run.trainer.generators, nn.parallel.DistributedDataParallel)

    result = train(
        tiny_config(dataroot, tmp_path, max_steps=2), hooks=[Spy()], show_progress=False, report=False
    )
    assert result.progress.step == 2 and worlds[0].distributed and worlds[0].size == 1
    assert not dist.is_initialized()  # the group it joined is left again


def test_rank_batches_split_each_global_batch_and_pad_the_last() -> None:
    order = EpochSampler(7, seed=1, epoch=0, shuffle=True)
    one = list(RankBatches(order, 4))
    two = [list(RankBatches(order, 4, rank, 2)) for rank in range(2)]
    assert [len(b) for b in one] == [4, 3]
    assert two[0][0] + two[1][0] == one[0]
    last = two[0][1] + two[1][1]
    assert last[:3] == one[1] and last[3] == order.order()[0]
    assert list(RankBatches(order, 4, 1, 2, start=1)) == [two[1][1]]
    assert len(RankBatches(order, 4, start=1)) == 1


def test_global_batch_must_divide_by_the_processes(
    dataroot: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "runs"
    argv = ["train", "--dataroot", str(dataroot), "--checkpoints_dir", str(out), "--batch_size", "3"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "cyclegan train: error: --batch_size 3 is the global batch and must be divisible by the 2 processes"
    )
    assert not out.exists()


def test_a_hung_peer_stops_the_others_with_one_line(dataroot: Path, tmp_path: Path) -> None:
    port = _free_port()
    argv = [
        sys.executable, "-m", "cyclegan", "train", "--dataroot", str(dataroot), "--checkpoints_dir",
        str(tmp_path), "--name", "run", "--ngf", "4", "--ndf", "4", "--netG", "resnet_6blocks",
        "--load_size", "36", "--crop_size", "32", "--num_workers", "0", "--batch_size", "2",
        "--print_freq", "1", "--seed", "3", "--device", "cpu", "--dist_timeout", "3",
    ]  # fmt: skip
    procs = []
    for rank in range(2):
        env = os.environ | {
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1",
        }  # fmt: skip
        procs.append(
            subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    try:
        log = tmp_path / "run" / "log.jsonl"
        deadline = time.time() + 60
        while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 2):
            time.sleep(0.1)
        procs[1].send_signal(signal.SIGSTOP)  # alive but silent: only the timeout can notice
        _, err = procs[0].communicate(timeout=60)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    assert procs[0].returncode == 2
    lines = [line for line in err.splitlines() if line.startswith("cyclegan train:")]
    assert len(lines) == 1 and "another training process stopped or did not answer" in lines[0]
