from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_images
from PIL import Image
from torch import nn

from cyclegan.cli import main
from cyclegan.config import CycleGANOptions, NetConfig
from cyclegan.errors import CycleGANError
from cyclegan.models import checkpoints
from cyclegan.models.cycle_gan import CycleGAN
from cyclegan.networks.layers import init_weights
from cyclegan.networks.resnet import ResnetGenerator
from cyclegan.networks.structure import Chain, Concat, FixedConv, Residual
from cyclegan.networks.unet import UnetGenerator
from cyclegan.translation.tiling import choose_tile, estimate_memory, translate_tiled
from cyclegan.translation.translator import Translator

TOLERANCE = 1e-4  # in [-1, 1] output units


def resnet(n_blocks: int, ngf: int = 4, norm: str = "instance", padding: str = "reflect") -> nn.Module:
    torch.manual_seed(0)
    return initialised(ResnetGenerator(3, 3, ngf, norm, False, n_blocks, padding), norm)


def unet(num_downs: int, norm: str = "instance") -> nn.Module:
    torch.manual_seed(0)
    return initialised(UnetGenerator(3, 3, num_downs, 4, norm), norm)


def initialised(net: nn.Module, norm: str) -> nn.Module:
    """In eval mode, with weights large enough for a varied output without instance norm, and batch norms
    with running statistics as after training (so that they are not the identity)."""
    init_weights(net, "normal", 0.02 if norm == "instance" else 0.1)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.05)
            m.running_var.uniform_(0.001, 0.01)
    return net.eval()


def image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Smooth colour gradients with noise: instance statistics differ from one region to another."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 6, 8, generator=g) * 2 - 1
    smooth = nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    return (smooth + 0.2 * torch.randn(1, 3, height, width, generator=g)).clamp(-1, 1)


def whole(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        y = net(x)
    assert y.std() > 0.02, "output too flat for the comparison to mean anything"
    return y


def independent_tiles(net: nn.Module, x: torch.Tensor, tile: int, context: int) -> torch.Tensor:
    """The naive approach: each tile (with ``context`` pixels around it) through the generator alone."""
    _, _, h, w = x.shape
    y = torch.empty_like(x)
    with torch.inference_mode():
        for r in range(0, h, tile):
            for c in range(0, w, tile):
                r0, c0 = max(r - context, 0), max(c - context, 0)
                part = net(x[..., r0 : min(r + tile + context, h), c0 : min(c + tile + context, w)])
                y[..., r : r + tile, c : c + tile] = part[..., r - r0 : r - r0 + tile, c - c0 : c - c0 + tile]
    return y


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def test_resnet_9_tiles_equal_the_whole_image_and_independent_tiles_do_not() -> None:
    net, x = resnet(9), image(768, 1024)
    expected = whole(net, x)
    assert max_diff(translate_tiled(net, x, 200), expected) < TOLERANCE
    # Per-tile instance statistics shift each tile's colours, even with 64 pixels of context around it.
    assert max_diff(independent_tiles(net, x, 256, 0), expected) > 0.1
    assert max_diff(independent_tiles(net, x, 256, 64), expected) > 0.05


@pytest.mark.parametrize(
    ("padding", "tiles"), [("reflect", (4, 12)), ("replicate", (8, 20)), ("zero", (4, 28))]
)
def test_resnet_6_tiles_smaller_than_the_halo_are_exact_with_every_padding(
    padding: str, tiles: tuple[int, ...]
) -> None:
    net, x = resnet(6, padding=padding), image(44, 60, seed=1)
    expected = whole(net, x)
    for tile in tiles:
        assert max_diff(translate_tiled(net, x, tile), expected) < TOLERANCE, tile


def test_anti_aliased_resnet_tiles_equal_the_whole_image() -> None:
    """CUT's layout: the blur after each stride-1 down conv and the fixed-filter up-sampler tile exactly."""
    torch.manual_seed(0)
    net = initialised(ResnetGenerator(3, 3, 4, n_blocks=6, antialias=True, antialias_up=True), "instance")
    x = image(44, 60, seed=5)
    expected = whole(net, x)
    for tile in (4, 12, 32):
        assert max_diff(translate_tiled(net, x, tile), expected) < TOLERANCE, tile


@pytest.mark.parametrize(
    ("num_downs", "size", "tiles"), [(7, (384, 256), (128, 256)), (8, (512, 768), (256, 512))]
)
def test_unet_tiles_equal_the_whole_image(
    num_downs: int, size: tuple[int, int], tiles: tuple[int, ...]
) -> None:
    net, x = unet(num_downs), image(*size, seed=2)
    expected = whole(net, x)
    for tile in tiles:
        assert max_diff(translate_tiled(net, x, tile), expected) < TOLERANCE, tile
    assert max_diff(independent_tiles(net, x, tiles[0], 0), expected) > 0.1


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_batch_norm_and_no_norm_are_exact(norm: str) -> None:
    net, x = resnet(6, ngf=8, norm=norm), image(60, 84, seed=3)
    expected = whole(net, x)
    assert max_diff(translate_tiled(net, x, 16), expected) < TOLERANCE
    u = unet(7, norm=norm)
    x = image(256, 384, seed=4)
    assert max_diff(translate_tiled(u, x, 128), whole(u, x)) < TOLERANCE


def test_bad_tiles_images_and_layers_are_refused_in_one_line() -> None:
    net, x = resnet(6), image(32, 32)
    for tile in (0, -4, 6, 2, 8.0, True):
        with pytest.raises(CycleGANError, match="tile must be a positive multiple of 4"):
            translate_tiled(net, x, tile)  # type: ignore[arg-type]
    with pytest.raises(CycleGANError, match="multiple of 256"):
        translate_tiled(unet(8), image(256, 256), 128)
    with pytest.raises(CycleGANError, match="multiples of 4, got 30x32"):
        translate_tiled(net, image(32, 30), 8)
    with pytest.raises(CycleGANError, match="one 1xCxHxW image"):
        translate_tiled(net, torch.cat([x, x]), 8)
    with pytest.raises(CycleGANError, match="does not support Upsample"):
        translate_tiled(nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.Upsample(scale_factor=2)), x, 8)
    dropout = ResnetGenerator(3, 3, 4, "instance", True, 6).train()
    with pytest.raises(CycleGANError, match=r"eval mode \(call .eval\(\)\): its Dropout"):
        translate_tiled(dropout, x, 8)


def test_choose_tile_fits_the_budget_and_whole_images_when_they_fit() -> None:
    net = resnet(9, ngf=64)
    whole_bytes = estimate_memory(net, 2048, 2048)
    assert choose_tile(net, 2048, 2048, whole_bytes) is None
    tile = choose_tile(net, 2048, 2048, whole_bytes // 4)
    assert tile is not None and tile % 4 == 0
    assert estimate_memory(net, 2048, 2048, tile) <= whole_bytes // 4
    assert estimate_memory(net, 2048, 2048, tile * 2) > whole_bytes // 4 or tile * 2 > 2048
    with pytest.raises(CycleGANError, match=r"needs about [\d.]+ MiB even in 64-pixel tiles"):
        choose_tile(net, 2048, 2048, 2**20)


def test_translator_tiles_on_request_or_when_over_the_memory_limit() -> None:
    net, x = resnet(6), image(250, 318, seed=5)[0]
    config = NetConfig(ngf=4, netG="resnet_6blocks")
    plain = Translator(net, config).translate_tensor(x)
    assert max_diff(Translator(net, config, tile=44).translate_tensor(x), plain) < TOLERANCE
    budget = estimate_memory(net, 252, 320, 64)
    assert budget < estimate_memory(net, 252, 320)
    limited = Translator(net, config, max_memory=budget)
    assert limited.tile_for(252, 320) == 64
    assert max_diff(limited.translate_tensor(x), plain) < TOLERANCE
    assert Translator(net, config, max_memory=2**30).tile_for(252, 320) is None
    with pytest.raises(CycleGANError, match="multiple of 4"):
        Translator(net, config, tile=10)
    with pytest.raises(CycleGANError, match="max_memory must be a positive"):
        Translator(net, config, max_memory=0)


def test_translate_cli_tiles_exactly_and_rejects_bad_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(0)
    model = CycleGAN(CycleGANOptions(net=NetConfig(ngf=4, ndf=4, netG="resnet_6blocks")))
    ckpt = tmp_path / "model.safetensors"
    checkpoints.save_weights(ckpt, model.networks(), model.options, {"step": 0})
    write_images(tmp_path / "in", 1, size=(45, 38))

    def run(out: str, *args: str) -> int:
        return main(
            [
                "translate",
                str(tmp_path / "in"),
                "--checkpoint",
                str(ckpt),
                "--out",
                str(tmp_path / out),
                *args,
            ]
        )

    assert run("plain") == 0
    assert run("tiled", "--tile", "8", "--max_memory", "1GB") == 0
    plain = np.asarray(Image.open(tmp_path / "plain" / "img_000.png"), dtype=int)
    tiled = np.asarray(Image.open(tmp_path / "tiled" / "img_000.png"), dtype=int)
    assert np.abs(plain - tiled).max() <= 1  # rounding to 8 bits may differ by one grey level
    capsys.readouterr()
    for args, message in (
        (("--tile", "6"), "tile must be a positive multiple of 4 for this generator, got 6"),
        (("--max_memory", "3XB"), "a memory size looks like 12GB or 800MB, got '3XB'"),
        (("--max_memory", "1KB"), "translating a 48x40 image needs about"),
    ):
        assert run("bad", *args) == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert error.startswith("cyclegan translate: error: ") and message in error, error


def test_a_translation_the_cpu_cannot_allocate_is_one_line_naming_tiles() -> None:
    class Greedy(torch.nn.Module):
        """A generator whose forward asks the CPU allocator for 256 TiB, past any address space."""

        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.empty(2**48, dtype=torch.uint8)

    translator = Translator(Greedy(), NetConfig(ngf=4, netG="resnet_6blocks"))
    with pytest.raises(CycleGANError, match="not enough memory to translate a 40x36 image on cpu; translate"):
        translator.translate_tensor(image(36, 40, seed=1)[0])


class _Sharpen(nn.Module):
    """A residual block the tiler has never seen, saying what it is."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)

    def structure(self) -> Residual:
        return Residual(self.body)


class _Widen(nn.Module):
    """A skip connection by concatenation."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.LeakyReLU(0.2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], 1)

    def structure(self) -> Concat:
        return Concat(self.body)


class _Blur(nn.Module):
    """A fixed 2x2 box filter with stride 2."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pad, self.filt = nn.ReplicationPad2d((0, 1, 0, 1)), torch.full((channels, 1, 2, 2), 0.25)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.conv2d(self.pad(x), self.filt, stride=2, groups=self.filt.shape[0])

    def structure(self) -> Chain:
        return Chain([self.pad, FixedConv(self.filt, stride=2, padding=0)])


class _NewGenerator(nn.Module):
    """A generator of new blocks, test-only: it tiles exactly without any change to the tiler."""

    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            _Blur(8),
            _Sharpen(8),
            _Widen(8),
            nn.ConvTranspose2d(16, 3, 4, 2, 1),
        )
        self.tail = nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.model(x))

    def structure(self) -> Chain:
        return Chain([self.model, self.tail])


def test_a_new_generator_whose_blocks_say_what_they_are_tiles_exactly() -> None:
    torch.manual_seed(0)
    net, x = initialised(_NewGenerator(), "none"), image(40, 56, seed=6)
    expected = whole(net, x)
    for tile in (8, 16):
        assert max_diff(translate_tiled(net, x, tile), expected) < TOLERANCE, tile
    assert max_diff(independent_tiles(net, x, 16, 0), expected) > 0.05  # instance norm: tiles alone differ
