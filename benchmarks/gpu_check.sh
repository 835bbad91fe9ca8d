#!/usr/bin/env bash
# The GPU checks in one run on one GPU; each step has a time limit, together at most 10 minutes:
#   1. the CUDA tests (pytest -m cuda: bf16 step, fp16 loss-scale resume, NCCL/DDP group of one, pinned memory)
#      and whether this PyTorch computes instance norm's gradients right in the channels-last layout here;
#   2. benchmarks/speed.py at 256 px for CycleGAN (exact fp32 step against bf16/fp16, channels_last,
#      batches 1-16, compile), then CUT and FastCUT (exact and bf16, batches 1 and 8);
#   3. the precision decision: two short horse2zebra runs at 256 px of the same STEPS (equal images seen),
#      fp32 and bf16, seed 0; testA/testB of each translated and packed for FID/KID elsewhere (the 87 MB
#      Inception file does not travel): benchmarks/gpu_kid.py OUT_DIR DATAROOT scores them;
#   4. benchmarks/memory.py: peak memory and step time at 256/512/1024 px, fp32/bf16, with and without
#      activation checkpointing, beside the planner's prediction;
#   5. translation throughput of the trained generator at 256 px, fp32 and bf16, batches of 16.
#
#   benchmarks/gpu_check.sh OUT_DIR DATAROOT [STEPS]
#
# DATAROOT holds trainA/, trainB/, testA/, testB/ (a 48 MB subset of horse2zebra travels: 400 + 400 training
# images and the whole test split). OUT_DIR receives at most 8 files, each under 16 MB: gpu_check.log,
# speed_cuda.json, speed_cut.json, and translations_{fp32,bf16}_{AtoB,BtoA}.npz (uint8 H x W x 3 arrays keyed
# by file name, the first 90 test images of each direction). Runs go to WORK (default: a temporary folder).
set -u -o pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 OUT_DIR DATAROOT [STEPS]" >&2
    exit 2
fi
out=$1
data=$2
steps=${3:-1500}
here=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
work=${WORK:-$(mktemp -d)}
export PYTHONPATH="$here/src${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$out" "$work"
cd "$here" || exit 2

{
    date
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    "$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
    nproc
    # the package's dependencies and pytest must be installed (the GPU machine may have no network)
    "$py" -c "import torchvision, PIL, numpy, safetensors, tqdm, matplotlib, pytest, tifffile, png" \
        || echo "MISSING DEPENDENCIES: install cyclegan's dependencies and pytest first (carry wheels)"

    echo "== 1. CUDA tests; channels-last instance-norm gradients"
    timeout 100 "$py" -m pytest -q -m cuda tests/test_cuda.py
    "$py" -c "import torch; from cyclegan.precision import channels_last_gradient_error as e
print('channels-last instance-norm gradient error on cuda:', e(torch.device('cuda')))"

    echo "== 2. step speed at 256 px: CycleGAN, then CUT and FastCUT"
    timeout 150 "$py" benchmarks/speed.py --device cuda --size 256 --rounds 3 --steps 10 --deadline 120 \
        --out "$out/speed_cuda.json"
    for model in cut fastcut; do
        timeout 45 "$py" benchmarks/speed.py --device cuda --model "$model" --size 256 --rounds 2 --steps 10 \
            --batches 1 8 --only exact bf16 --no-compile --deadline 35 --out "$out/speed_$model.json"
    done

    echo "== 3. horse2zebra at 256 px, $steps steps in fp32 and in bf16 (equal images seen)"
    for precision in fp32 bf16; do
        timeout 120 "$py" -m cyclegan train --dataroot "$data" --checkpoints_dir "$work" --name "h2z_$precision" \
            --device cuda --precision "$precision" --num_workers 8 --seed 0 --max_steps "$steps" \
            --print_freq 100 --sample_freq 1000000 --save_latest_freq 1000000 --no_health
        "$py" -c "import json, sys; r = [r for r in map(json.loads, open(sys.argv[1])) if 'event' not in r][-1]
print(f\"$precision: {r['step']} steps in {r['time']:.0f} s: {r['step'] / r['time']:.1f} images/s (batch 1)\")" \
            "$work/h2z_$precision/log.jsonl"
        for direction in AtoB BtoA; do
            split=$([ "$direction" = AtoB ] && echo testA || echo testB)
            timeout 30 "$py" -m cyclegan translate "$data/$split" --checkpoint "$work/h2z_$precision" \
                --out "$work/${precision}_$direction" --direction "$direction" --device cuda
            "$py" - "$work/${precision}_$direction" "$out/translations_${precision}_$direction.npz" <<'EOF'
import sys
from pathlib import Path

import numpy as np
from PIL import Image

folder, target = Path(sys.argv[1]), sys.argv[2]
paths = sorted(folder.glob("*.png"))[:90]  # 90 images of 256x256x3: under 16 MB even uncompressed
np.savez_compressed(target, **{p.name: np.asarray(Image.open(p).convert("RGB")) for p in paths})
print(f"{target}: {len(paths)} images")
EOF
        done
    done

    echo "== 4. peak training memory at 256, 512 and 1024 px"
    timeout 110 "$py" benchmarks/memory.py --device cuda --crops 256 512 1024 --steps 2

    echo "== 5. translation throughput at 256 px: the trained generator, batches of 16, fp32 and bf16"
    timeout 60 "$py" - "$work/h2z_fp32" <<'EOF'
import sys
import time

import torch

from cyclegan.translation.translator import load_translator

batch = torch.rand(16, 3, 256, 256, device="cuda") * 2 - 1
for precision in ("fp32", "bf16"):
    translator = load_translator(sys.argv[1], device="cuda", precision=precision)
    for _ in range(3):
        translator.translate_tensor(batch)
    torch.cuda.synchronize()
    began = time.perf_counter()
    for _ in range(20):
        translator.translate_tensor(batch)
    torch.cuda.synchronize()
    print(f"translate {precision}: {20 * 16 / (time.perf_counter() - began):.0f} images/s (256 px, batch 16)")
EOF
    date
} 2>&1 | tee "$out/gpu_check.log"
