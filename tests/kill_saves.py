"""Run by test_crashes.py: kill real processes at many instants of a checkpoint commit, report what is left.

One interpreter builds a tiny model once, then forks writers. Each writer commits checkpoints of increasing
step in a loop and is killed with SIGKILL, either after a random delay or exactly at the k-th file-system
call of a commit (write, fsync, rename). After each kill the folder must hold a complete, loadable checkpoint
no older than the last commit the writer reported. Prints one JSON line per kill.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from pathlib import Path

import torch
from conftest import training_state

from cyclegan import files
from cyclegan.config import TrainConfig
from cyclegan.layout import LATEST, PREVIOUS
from cyclegan.models import checkpoints
from cyclegan.models.cycle_gan import CycleGAN, CycleGANTrainer
from cyclegan.training import runs

CALLS_PER_COMMIT = 7  # save_file, fsync, rename to staged, fsync folder, 2 renames, fsync folder


def writer(
    run_dir: Path, model: CycleGAN, trainer: CycleGANTrainer, kill_at: int | None, report: int
) -> None:
    """Commit checkpoints forever; with ``kill_at``, die at that file-system call of the second commit."""
    calls, armed = 0, False
    if kill_at is not None:
        for module, name in ((os, "replace"), (os, "fsync"), (checkpoints, "save_file")):
            original = getattr(module, name)

            def counted(*args: object, _original=original, **kwargs: object) -> object:
                nonlocal calls
                calls += armed
                if calls == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
                return _original(*args, **kwargs)

            setattr(module, name, counted)
    step = 0
    while True:
        step += 1
        armed = step == 2  # count calls within the second commit only: the first one makes a latest
        runs.save_checkpoint(run_dir, model, trainer, runs.Progress(step=step), {"probe": {"step": step}})
        os.write(report, f"{step}\n".encode())


def main() -> None:
    out, kills = Path(sys.argv[1]), int(sys.argv[2])
    cfg = TrainConfig.create(ngf=2, ndf=2, netG="resnet_6blocks", pool_size=2)
    model = CycleGAN(cfg.model)
    trainer = CycleGANTrainer(model, cfg)
    rng = random.Random(0)
    for i in range(kills):
        run_dir = out / f"run{i}"
        (run_dir / runs.CHECKPOINTS).mkdir(parents=True)
        kill_at = i + 1 if i < CALLS_PER_COMMIT else None  # each call of a commit, then random instants
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            try:
                writer(run_dir, model, trainer, kill_at, write)
            finally:
                os._exit(1)
        os.close(write)
        reported, buffer = 0, b""
        if kill_at is None:
            deadline = time.time() + 10
            while reported < 1 and time.time() < deadline:
                buffer += os.read(read, 64)
                reported = max([int(x) for x in buffer.split()] or [0])
            time.sleep(rng.uniform(0, 0.08))
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        while chunk := os.read(read, 4096):
            buffer += chunk
        os.close(read)
        reported = max([int(x) for x in buffer.split()] or [0])
        folder = run_dir / runs.CHECKPOINTS
        leftovers = sorted(p.name for p in folder.iterdir() if p.name.endswith(files.TEMP_SUFFIX))
        row: dict[str, object] = {"kill_at": kill_at, "reported": reported, "leftovers": leftovers}
        try:
            path, info, _ = checkpoints.newest_resumable(folder)
            state = training_state(path)
            fresh = CycleGAN(cfg.model)
            fresh_trainer = CycleGANTrainer(fresh, cfg)
            runs.load_checkpoint(run_dir, fresh, fresh_trainer, torch.device("cpu"))
            row |= {"step": info["step"], "hook_step": state["hooks"]["probe"]["step"], "file": path.name}
        except Exception as err:  # reported to the test, which fails on it
            row["error"] = f"{type(err).__name__}: {err}"
        checkpoints.recover(folder)
        files.remove_stale_temporaries(folder)
        row["recovered"] = {
            name.split(".")[0]: checkpoints.read_weights(folder / name, ())[2]["step"]
            for name in (LATEST, PREVIOUS)
            if (folder / name).exists()
        }
        row["after_cleanup"] = sorted(p.name for p in folder.iterdir() if p.name.endswith(files.TEMP_SUFFIX))
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
