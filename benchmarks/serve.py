"""Serving benchmark: start ``cyclegan serve`` on loopback with the paper's generator (resnet_9blocks,
ngf 64, random weights), send REQUESTS uploads of SIZE x SIZE images, CONCURRENCY at a time, and report
requests/s and latency percentiles as JSON (stdout, and --out when given).

Each request is timed from sending the upload to receiving the PNG, so latency includes queueing, decoding,
the generator and PNG encoding; two requests warm the server up first and are not counted.

    .venv/bin/python benchmarks/serve.py --size 256 --requests 40 --concurrency 8 --max_batch 8
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from PIL import Image

import cyclegan
from cyclegan.config import CycleGANOptions, NetConfig
from cyclegan.files import atomic_write_text
from cyclegan.models.checkpoints import save_weights
from cyclegan.networks import build_generator


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=256, help="image side in pixels (default: 256)")
    p.add_argument("--requests", type=int, default=40, help="timed requests (default: 40)")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight at once (default: 8)")
    p.add_argument("--max_batch", type=int, default=8, help="the server's --max_batch (default: 8)")
    p.add_argument("--ngf", type=int, default=64, help="generator width (default: 64, the paper's)")
    p.add_argument("--out", type=Path, help="also write the JSON result here")
    return p.parse_args(argv)


def write_checkpoint(path: Path, ngf: int) -> None:
    config = NetConfig(ngf=ngf)
    torch.manual_seed(0)
    generators = {name: build_generator(config, 3, 3) for name in ("G_A", "G_B")}
    save_weights(path, generators, CycleGANOptions(net=config), {})


def start_server(checkpoint: Path, max_batch: int, log: Path) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "cyclegan.cli", "serve", str(checkpoint), "--port", "0"]
    command += ["--device", "cpu", "--max_batch", str(max_batch), "--max_queued", "1000"]
    env = {**os.environ, "PYTHONPATH": str(Path(cyclegan.__file__).parents[1])}
    with open(log, "w") as stderr:
        server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, env=env, text=True)
    line = server.stdout.readline() if server.stdout else ""
    if not line.startswith("Serving"):
        server.kill()
        sys.exit(f"the server did not start: {line}{log.read_text()}")
    return server, line.split(" at ")[1].split()[0].rstrip("/")


def random_pngs(count: int, size: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    images = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, format="PNG")
        images.append(buffer.getvalue())
    return images


async def load(url: str, uploads: list[bytes], concurrency: int) -> tuple[float, list[float]]:
    """(wall seconds, latency of each request in seconds); every answer must be a PNG."""
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:

        async def one(data: bytes) -> float:
            async with gate:
                start = time.perf_counter()
                response = await client.post("/translate", files={"image": ("x.png", data)})
                response.raise_for_status()
                return time.perf_counter() - start

        await asyncio.gather(*(one(data) for data in uploads[:2]))
        start = time.perf_counter()
        latencies = await asyncio.gather(*(one(data) for data in uploads))
        return time.perf_counter() - start, list(latencies)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cyclegan-serve-bench-") as scratch:
        checkpoint = Path(scratch) / "paper.safetensors"
        write_checkpoint(checkpoint, args.ngf)
        server, url = start_server(checkpoint, args.max_batch, Path(scratch) / "server.log")
        try:
            uploads = random_pngs(args.requests, args.size)
            seconds, latencies = asyncio.run(load(url, uploads, args.concurrency))
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=60)
    ms = np.array(latencies) * 1000
    result = {
        "size": args.size,
        "ngf": args.ngf,
        "requests": args.requests,
        "concurrency": args.concurrency,
        "max_batch": args.max_batch,
        "seconds": round(seconds, 2),
        "requests_per_s": round(args.requests / seconds, 3),
        "latency_ms": {f"p{q}": round(float(np.percentile(ms, q)), 1) for q in (50, 90, 99)},
        "device": "cpu",
        "cpu_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
