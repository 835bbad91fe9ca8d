"""Crash-proof runs: kills at any instant, Ctrl-C, full disks, torn logs and damaged files never lose a
resumable checkpoint, and every problem is one line naming the file."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_config, write_images

from cyclegan.cli import main
from cyclegan.config import TrainConfig, replace_options
from cyclegan.data.datasets import ignore_interrupts
from cyclegan.errors import CycleGANError
from cyclegan.layout import LATEST, PREVIOUS
from cyclegan.models import checkpoints
from cyclegan.models.cycle_gan import CycleGAN, CycleGANTrainer
from cyclegan.training import runs
from cyclegan.training.interrupts import SIGNALS, Interrupts
from cyclegan.training.loop import train

HERE = Path(__file__).parent


def weights(run_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    return checkpoints.read_weights(run_dir / "checkpoints" / "latest.safetensors")[0]


def same_weights(a: dict, b: dict) -> bool:
    return all(torch.equal(a[n][k], b[n][k]) for n in a for k in a[n])


def test_kills_at_every_point_of_a_commit_leave_a_complete_checkpoint(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(HERE / "kill_saves.py"), str(tmp_path), "12"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 12
    for row in rows:
        assert "error" not in row, row
        assert row["step"] >= row["reported"] >= 1  # never older than the last commit reported done
        assert row["hook_step"] == row["step"]  # weights and state come from the same commit
        assert row["after_cleanup"] == []
    exact = {row["kill_at"]: row for row in rows if row["kill_at"] is not None}
    # killed between the two renames: the staged file is complete and the newest, and the next start makes it
    # the latest (the older one stays as previous)
    assert exact[6]["file"] == ".latest.safetensors.staged" and exact[6]["step"] == 2
    assert exact[6]["recovered"] == {"latest": 2, "previous": 1}
    assert any(row["leftovers"] for row in rows)  # kills did land inside writes, and were cleaned up


def test_a_training_run_killed_mid_save_resumes_to_the_same_weights(dataroot: Path, tmp_path: Path) -> None:
    steps = 14
    straight = train(
        tiny_config(dataroot, tmp_path / "a", max_steps=steps), show_progress=False, report=False
    )
    cmd = [
        sys.executable, "-m", "cyclegan.cli", "train", "--dataroot", str(dataroot), "--checkpoints_dir",
        str(tmp_path / "b"), "--name", "run", "--ngf", "4", "--ndf", "4", "--netG", "resnet_6blocks",
        "--load_size", "36", "--crop_size", "32", "--n_epochs", "1", "--n_epochs_decay", "3", "--pool_size",
        "3", "--num_workers", "0", "--seed", "7", "--print_freq", "2", "--sample_freq", "5",
        "--save_epoch_freq", "1", "--save_latest_freq", "1", "--max_steps", str(steps),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = tmp_path / "b" / "run" / "log.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 3):
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    run_dir = tmp_path / "b" / "run"
    resumed = train(runs.resume_config(run_dir), run_dir, show_progress=False, report=False)
    assert resumed.progress.step == steps
    assert same_weights(weights(straight.run_dir), weights(run_dir))
    assert [r["step"] for r in runs.read_rows(log)] == [
        r["step"] for r in runs.read_rows(straight.run_dir / "log.jsonl")
    ]


def test_a_second_interrupt_waits_for_the_checkpoint_commit() -> None:
    interrupts = Interrupts()
    interrupts.handle(signal.SIGINT, None)
    assert interrupts.requested
    committed = False
    with pytest.raises(KeyboardInterrupt), interrupts.protect():
        interrupts.handle(signal.SIGINT, None)  # must not cut the commit in two
        committed = True
    assert committed
    with pytest.raises(KeyboardInterrupt):
        interrupts.handle(signal.SIGINT, None)


def test_loader_workers_leave_ctrl_c_and_sigterm_to_the_main_process() -> None:
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    try:
        ignore_interrupts(0)
        assert {s: signal.getsignal(s) for s in SIGNALS} == dict.fromkeys(SIGNALS, signal.SIG_IGN)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def test_sigterm_to_the_process_group_with_loader_workers_stops_once_saves_and_says_how_to_resume(
    dataroot: Path, tmp_path: Path
) -> None:
    """Sent to the whole process group, as SLURM, systemd or docker stop send SIGTERM (and a terminal sends
    Ctrl-C, whose SIGINT takes the same path, above): the loader workers get it too, and must leave it to
    the main process."""
    cmd = [
        sys.executable, "-m", "cyclegan.cli", "train", "--dataroot", str(dataroot),
        "--checkpoints_dir", str(tmp_path), "--name", "run", "--ngf", "4", "--ndf", "4",
        "--netG", "resnet_6blocks", "--load_size", "36", "--crop_size", "32", "--num_workers", "2",
        "--print_freq", "1", "--seed", "3",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    log = tmp_path / "run" / "log.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 2):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert err.count("Stopping after this step") == 1
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert f"Resume with: cyclegan train --resume {tmp_path / 'run'}" in out
    assert (
        checkpoints.read_weights(tmp_path / "run" / "checkpoints" / "latest.safetensors", ())[2]["step"] >= 2
    )


def test_the_stop_callback_is_asked_once_per_step(dataroot: Path, tmp_path: Path) -> None:
    asked = []

    def should_stop() -> bool:
        asked.append(1)
        return len(asked) == 3

    result = train(
        tiny_config(dataroot, tmp_path), should_stop=should_stop, show_progress=False, report=False
    )
    assert result.interrupted and result.progress.step == 3 and len(asked) == 3


def test_resume_survives_a_torn_log_line(dataroot: Path, tmp_path: Path) -> None:
    first = train(tiny_config(dataroot, tmp_path, max_steps=4), show_progress=False, report=False)
    log = first.run_dir / "log.jsonl"
    log.write_text(log.read_text() + '{"step": 5, "G_A": 0.')
    resumed = train(runs.resume_config(first.run_dir, {"max_steps": 6}), first.run_dir, show_progress=False)
    assert [r["step"] for r in runs.read_rows(log)] == [2, 4, 6]
    assert resumed.progress.step == 6


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("", "cannot read the run config"),
        ("[1, 2]", "not a JSON object"),
        ('{"seed": null}', "seed is missing"),
        ('{"seed": 3, "dataroot": "d", "lr": "fast"}', "--lr has the wrong type"),
        ('{"seed": 3, "dataroot": "d", "model": {"ngf": 4.5}}', "--ngf has the wrong type"),
        ('{"seed": 3, "colour": 1}', "unknown config fields: colour"),
    ],
)
def test_a_damaged_run_config_is_one_line_naming_the_file(tmp_path: Path, content: str, problem: str) -> None:
    (tmp_path / "config.json").write_text(content)
    with pytest.raises(CycleGANError, match=problem) as info:
        runs.resume_config(tmp_path)
    assert str(tmp_path / "config.json") in str(info.value) and "\n" not in str(info.value)


def test_damaged_checkpoints_fall_back_to_the_previous_one_or_fail_in_one_line(
    dataroot: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tiny_config(dataroot, tmp_path, max_steps=4, save_latest_freq=2)
    run_dir = train(cfg, show_progress=False, report=False).run_dir
    folder = run_dir / "checkpoints"
    assert checkpoints.read_weights(folder / "previous.safetensors", ())[2]["step"] == 2
    latest = folder / "latest.safetensors"
    latest.write_bytes(latest.read_bytes()[:1000])  # torn by a disk failure
    capsys.readouterr()
    resumed = train(runs.resume_config(run_dir, {"max_steps": 5}), run_dir, show_progress=False, report=False)
    err = capsys.readouterr().err
    assert "at step 2 from checkpoints/previous.safetensors" in err and "latest.safetensors" in err
    assert resumed.progress.step == 5
    for name in ("latest.safetensors", "previous.safetensors"):
        (folder / name).write_bytes(b"")
    with pytest.raises(CycleGANError, match="no complete checkpoint to resume from") as info:
        train(runs.resume_config(run_dir, {"max_steps": 6}), run_dir, show_progress=False)
    assert "\n" not in str(info.value)


def test_a_checkpoint_of_another_run_is_refused(dataroot: Path, tmp_path: Path) -> None:
    a = train(tiny_config(dataroot, tmp_path, name="a", max_steps=2), show_progress=False, report=False)
    b_cfg = tiny_config(dataroot, tmp_path, name="b", max_steps=2)
    b_cfg.model.net.ngf = 8
    b = train(b_cfg, show_progress=False, report=False)
    (b.run_dir / "checkpoints" / "latest.safetensors").write_bytes(
        (a.run_dir / "checkpoints" / "latest.safetensors").read_bytes()
    )
    with pytest.raises(CycleGANError, match="another architecture"):
        train(runs.resume_config(b.run_dir, {"max_steps": 3}), b.run_dir, show_progress=False)


def test_resume_refuses_changes_to_the_model_and_saves_nothing_unvalidated(
    dataroot: Path, tmp_path: Path
) -> None:
    run_dir = train(tiny_config(dataroot, tmp_path, max_steps=2), show_progress=False, report=False).run_dir
    before = (run_dir / "config.json").read_text()
    with pytest.raises(CycleGANError, match="--lr cannot change when resuming"):
        runs.resume_config(run_dir, {"lr": 0.1})
    with pytest.raises(CycleGANError, match="--ngf cannot change"):
        runs.resume_config(run_dir, {"ngf": 8})
    with pytest.raises(CycleGANError, match="--print_freq must be at least 1"):
        runs.resume_config(run_dir, {"print_freq": 0})
    cfg = replace_options(TrainConfig.load(run_dir / "config.json"), {"lambda_A": 3.0})
    with pytest.raises(CycleGANError, match="--lambda_A cannot change"):
        train(cfg, run_dir, show_progress=False)  # the API applies the policy, not only the CLI
    assert (run_dir / "config.json").read_text() == before


def test_a_failed_start_leaves_no_run_folder(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "missing", tmp_path / "runs")
    with pytest.raises(CycleGANError, match="image folder not found"):
        train(cfg, show_progress=False)
    assert not (tmp_path / "runs" / "run").exists()
    write_images(tmp_path / "data" / "trainA", 2)
    write_images(tmp_path / "data" / "trainB", 2)
    cfg = tiny_config(tmp_path / "data", tmp_path / "runs", max_steps=1)
    assert train(cfg, show_progress=False, report=False).progress.step == 1  # the name is free


def test_two_processes_cannot_train_one_run(dataroot: Path, tmp_path: Path) -> None:
    run_dir = train(tiny_config(dataroot, tmp_path, max_steps=1), show_progress=False, report=False).run_dir
    cfg = runs.resume_config(run_dir, {"max_steps": 2})
    with (
        runs.locked(run_dir, created=False),
        pytest.raises(CycleGANError, match="another process is training"),
    ):
        train(cfg, run_dir, show_progress=False)


def test_a_full_disk_during_a_save_is_one_line_and_keeps_the_previous_checkpoint(
    dataroot: Path, tmp_path: Path
) -> None:
    run_dir = train(tiny_config(dataroot, tmp_path, max_steps=2), show_progress=False, report=False).run_dir
    latest = run_dir / "checkpoints" / "latest.safetensors"
    before = latest.read_bytes()
    script = (
        "import resource, signal, sys\n"
        "from cyclegan.cli import main\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({len(before) // 2}, {resource.RLIM_INFINITY}))\n"
        f"sys.exit(main(['train', '--resume', {str(run_dir)!r}, '--max_steps', '3']))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(lines) == 1 and "disk is full" in lines[0] and "Traceback" not in result.stderr
    assert latest.read_bytes() == before
    assert not [p for p in latest.parent.iterdir() if p.name.startswith(".")]


def test_cli_resume_of_a_folder_that_is_not_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_a_damaged_latest_never_replaces_a_good_previous_and_a_staged_commit_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = TrainConfig.create(ngf=2, ndf=2, netG="resnet_6blocks", pool_size=2)
    model = CycleGAN(cfg.model)
    trainer = CycleGANTrainer(model, cfg)
    folder = tmp_path / runs.CHECKPOINTS
    folder.mkdir()

    def commit(step: int) -> None:
        runs.save_checkpoint(tmp_path, model, trainer, runs.Progress(step=step), {})

    def steps() -> dict[str, int]:
        return {p.name: checkpoints.read_weights(p, ())[2]["step"] for p in sorted(folder.iterdir())}

    commit(1)
    commit(2)
    (folder / LATEST).write_bytes((folder / LATEST).read_bytes()[:1000])  # torn by a disk failure
    assert checkpoints.newest_resumable(folder)[0].name == PREVIOUS  # resume falls back to step 1 ...
    commit(3)  # ... and the next commit keeps that good file instead of renaming the torn one over it
    assert steps() == {LATEST: 3, PREVIOUS: 1}

    def killed(folder: Path) -> None:
        raise SystemExit  # a kill after the new checkpoint was written whole, before its renames

    with monkeypatch.context() as patch:
        patch.setattr(checkpoints, "_promote", killed)
        with pytest.raises(SystemExit):
            commit(4)
    assert checkpoints.newest_resumable(folder)[1]["step"] == 4  # the staged file counts as the newest
    with runs.locked(tmp_path, created=False):  # the next start completes the commit, deletes nothing
        pass
    assert steps() == {LATEST: 4, PREVIOUS: 3}
