"""Render docs/tiling_seams.png: a day scene translated to night in independent tiles beside the exact tiling.

The generator is a small ResNet fitted briefly (hence blurry) to the paired day/night renders of the demo
dataset (no download), at the scale of the test image. The independent tiles each go through the generator
alone, so instance norm sees each tile's own statistics and the convolutions see padding at tile edges:
brightness jumps between tiles and seams appear. ``translate_tiled`` gives the whole-image result.

    PYTHONPATH=src .venv/bin/python docs/tiling_figure.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from cyclegan.data.demo_scenes import random_scene, render
from cyclegan.files import atomic_write
from cyclegan.networks.layers import init_weights
from cyclegan.networks.resnet import ResnetGenerator
from cyclegan.translation.tiling import translate_tiled

SIZE, TILE, CROP = 256, 64, 64
OUT = Path(__file__).resolve().parent / "tiling_seams.png"


def as_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array).permute(2, 0, 1).float().div(127.5).sub(1)


def fitted_generator(steps: int = 700, scenes: int = 24) -> ResnetGenerator:
    """Day -> night, fitted with an L1 loss on random crops of paired renders."""
    rng = np.random.default_rng(0)
    pairs = [random_scene(rng) for _ in range(scenes)]
    day = torch.stack([as_tensor(render(s, False, SIZE)) for s in pairs])
    night = torch.stack([as_tensor(render(s, True, SIZE)) for s in pairs])
    net = ResnetGenerator(3, 3, 8, "instance", False, 6)
    init_weights(net)
    optimiser = torch.optim.Adam(net.parameters(), 2e-3)
    for _ in range(steps):
        i = torch.randint(0, scenes, (8,))
        r, c = torch.randint(0, SIZE - CROP + 1, (2,)).tolist()
        loss = (net(day[i, :, r : r + CROP, c : c + CROP]) - night[i, :, r : r + CROP, c : c + CROP]).abs()
        optimiser.zero_grad()
        loss.mean().backward()
        optimiser.step()
    return net.eval()


def independent_tiles(net: torch.nn.Module, x: torch.Tensor, tile: int) -> torch.Tensor:
    y = torch.empty_like(x)
    for r in range(0, x.shape[2], tile):
        for c in range(0, x.shape[3], tile):
            y[..., r : r + tile, c : c + tile] = net(x[..., r : r + tile, c : c + tile])
    return y


def panel(y: torch.Tensor, caption: str) -> Image.Image:
    array = ((y[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    image = Image.new("RGB", (SIZE, SIZE + 22), "white")
    image.paste(Image.fromarray(array), (0, 22))
    ImageDraw.Draw(image).text((4, 5), caption, fill="black")
    return image


def main() -> None:
    torch.manual_seed(0)
    net = fitted_generator()
    x = as_tensor(render(random_scene(np.random.default_rng(123)), False, SIZE))[None]
    with torch.inference_mode():
        naive, exact, whole = independent_tiles(net, x, TILE), translate_tiled(net, x, TILE), net(x)
    print(f"exact tiles vs whole image: max difference {(exact - whole).abs().max():.1e}")
    print(f"independent tiles vs whole image: max difference {(naive - whole).abs().max():.2f}")
    panels = [
        panel(x, "input (day)"),
        panel(naive, f"independent {TILE}px tiles"),
        panel(exact, f"translate_tiled, {TILE}px tiles (= whole image)"),
    ]
    figure = Image.new("RGB", (3 * SIZE + 16, SIZE + 22), "white")
    for i, p in enumerate(panels):
        figure.paste(p, (i * (SIZE + 8), 0))
    atomic_write(OUT, lambda tmp: figure.save(tmp, format="PNG", optimize=True))
    print(f"wrote {OUT} ({OUT.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
