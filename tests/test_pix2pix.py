"""pix2pix: the reference's step to float32 rounding, paired data, and its refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from conftest import fixture_path

# Recorded with ATen's AVX2 kernels on 2 threads (the fixture's README); oneDNN's convolutions were left to
# pick their own ISA. Adam turns last-bit differences into visibly different updates, so the replay runs in a
# child process pinned the same way. On an AVX-512 machine it then reproduces the recording bit for bit
# (measured: every loss, weight and running statistic equal); capping oneDNN at AVX2 as well, as an AVX2-only
# CPU would, moves the final weights by 7e-4 of their travel and the losses by 2e-6: the bounds allow that.
REPLAY_SCRIPT = """
import json, sys, torch
from cyclegan.config import TrainConfig
from cyclegan.models.pix2pix import Pix2Pix, Pix2PixTrainer
from cyclegan.nets import load_weights

torch.set_num_threads(2)
ref = torch.load(sys.argv[1], weights_only=True)
c = ref["config"]
cfg = TrainConfig.create(
    "pix2pix", ngf=c["ngf"], ndf=c["ndf"], netG=c["netG"], norm=c["norm"], dropout=c["dropout"],
    gan_mode=c["gan_mode"], lambda_L1=c["lambda_L1"], n_layers_D=c["n_layers_D"], crop_size=c["size"],
)
model = Pix2Pix(cfg.model).train()
for name, net in model.networks().items():
    load_weights(net, ref["init"][name])
trainer = model.trainer(cfg)
errors = []
for seed, (a, b), expected in zip(ref["step_seeds"], ref["inputs"], ref["losses"], strict=True):
    torch.manual_seed(seed)
    got = {k: v.item() for k, v in trainer.step(a, b).items()}
    errors.append(max(abs(got[k] - v) / abs(v) for k, v in expected.items()))
    assert abs(got["D"] - (got["D_fake"] + got["D_real"]) / 2) <= 1e-6 * got["D"]
weights = {}
for name, net in model.networks().items():
    state, final, init = net.state_dict(), ref["final"][name], ref["init"][name]
    floats = [k for k in final if final[k].is_floating_point()]
    gap = sum(((state[k] - final[k]) ** 2).sum() for k in floats) ** 0.5
    travel = sum(((init[k] - final[k]) ** 2).sum() for k in floats) ** 0.5
    stats = [k for k in floats if "running_" in k]
    weights[name] = {
        "ratio": float(gap / travel),
        "stats": max(float((state[k] - final[k]).abs().max()) for k in stats) if stats else 0.0,
        "counts": all(torch.equal(state[k], final[k]) for k in final if k not in floats),
    }
with torch.no_grad():
    gap = float((model.eval().G(ref["eval_input"]) - ref["eval_output"]).abs().max())
print(json.dumps({"losses": errors, "weights": weights, "eval": gap}))
"""


def test_training_steps_reproduce_the_reference_pix2pix_run() -> None:
    path = fixture_path("pix2pix/pix2pix_shared.pt")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "OMP_NUM_THREADS": "2"}
    done = subprocess.run(
        [sys.executable, "-c", REPLAY_SCRIPT, str(path)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert len(result["losses"]) == 5
    assert max(result["losses"]) <= 1e-5
    assert set(result["weights"]) == {"G", "D"}
    for name, got in result["weights"].items():
        assert got["ratio"] <= 1e-3, name
        assert got["stats"] <= 1e-4, name  # batch norm's running statistics
        assert got["counts"], name  # num_batches_tracked: G ran once per step, D three times
    assert result["eval"] <= 1e-4
