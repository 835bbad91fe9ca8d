#!/usr/bin/env bash
# The GPU checks in one run on one GPU; each step has a time limit, together at most 10 minutes:
#   1. the CUDA tests (pytest -m cuda: bf16 step, fp16 loss-scale resume, NCCL/DDP group of one, pinned memory);
#   2. benchmarks/speed.py at 256 px (exact fp32 step against bf16/fp16, channels_last, batches, compile);
#   3. a short horse2zebra training at 256 px with the fast path (bf16, channels_last), stopped by SIGINT
#      after TRAIN_SECONDS, then testA/testB translated and packed for FID/KID elsewhere;
#   4. benchmarks/memory.py: peak memory and step time at 256/512/1024 px, fp32/bf16, with and without
#      activation checkpointing, beside the planner's prediction (its table and JSON go to the log).
#
#   benchmarks/gpu_check.sh OUT_DIR DATAROOT [TRAIN_SECONDS]
#
# DATAROOT holds trainA/, trainB/ (and testA/, testB/ for the translations). OUT_DIR receives at most 8
# files, each under 16 MB: gpu_check.log, speed_cuda.json, train_log.jsonl, train_config.json and
# translations_{AtoB,BtoA}_{0,1}.npz (one uint8 H x W x 3 array per translated image, keyed by file name). The run itself
# (checkpoints) goes to WORK (default: a temporary folder), not to OUT_DIR.
set -u -o pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 OUT_DIR DATAROOT [TRAIN_SECONDS]" >&2
    exit 2
fi
out=$1
data=$2
train_seconds=${3:-90}
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
    "$py" -c "import torchvision, PIL, numpy, safetensors, tqdm, matplotlib, pytest" \
        || echo "MISSING DEPENDENCIES: install cyclegan's dependencies and pytest first"

    echo "== 1. CUDA tests"
    timeout 100 "$py" -m pytest -q -m cuda tests/test_cuda.py

    echo "== 2. step speed at 256 px"
    timeout 180 "$py" benchmarks/speed.py --device cuda --size 256 --rounds 3 --steps 10 --deadline 140 \
        --out "$out/speed_cuda.json"

    echo "== 3. horse2zebra at 256 px with the fast path, ${train_seconds} s"
    timeout -s INT -k 30 "$train_seconds" "$py" -m cyclegan train --dataroot "$data" \
        --checkpoints_dir "$work" --name h2z_fast --device cuda --precision bf16 --channels_last \
        --num_workers 8 --seed 0 --print_freq 100 --sample_freq 1000000 --save_latest_freq 1000000
    echo "training exit status: $? (124: stopped by the time limit, with a checkpoint)"
    "$py" -c "import json, sys; r = [r for r in map(json.loads, open(sys.argv[1])) if 'event' not in r][-1]
print(f\"{r['step']} steps in {r['time']:.0f} s: {r['step'] / r['time']:.1f} steps/s (batch 1)\")" \
        "$work/h2z_fast/log.jsonl"
    cp "$work/h2z_fast/log.jsonl" "$out/train_log.jsonl"
    cp "$work/h2z_fast/config.json" "$out/train_config.json"
    for direction in AtoB BtoA; do
        split=$([ "$direction" = AtoB ] && echo testA || echo testB)
        [ -d "$data/$split" ] || { echo "no $data/$split: $direction not translated"; continue; }
        timeout 45 "$py" -m cyclegan translate "$data/$split" --checkpoint "$work/h2z_fast" \
            --out "$work/$direction" --direction "$direction" --device cuda
        "$py" - "$work/$direction" "$out/translations_$direction" <<'EOF'
import sys
from pathlib import Path

import numpy as np
from PIL import Image

folder, prefix = Path(sys.argv[1]), sys.argv[2]
paths = sorted(folder.glob("*.png"))
half = -(-len(paths) // 2)  # two files of at most 70 images of 256x256x3: under 14 MB each uncompressed
for part, chunk in enumerate(c for c in (paths[:half], paths[half:]) if c):
    np.savez_compressed(f"{prefix}_{part}.npz", **{p.name: np.asarray(Image.open(p).convert("RGB")) for p in chunk})
    print(f"{prefix}_{part}.npz: {len(chunk)} images")
EOF
    done

    echo "== 4. peak training memory at 256, 512 and 1024 px"
    timeout 110 "$py" benchmarks/memory.py --device cuda --crops 256 512 1024 --steps 2
    date
} 2>&1 | tee "$out/gpu_check.log"
