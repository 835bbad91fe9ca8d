from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FIXTURES, tiny_config, write_images
from PIL import Image

from cyclegan.config import TrainConfig
from cyclegan.data.datasets import (
    UnpairedDataset,
    domain_folders,
    list_images,
    pad_to_multiple,
    scan_domain,
    train_transform,
)
from cyclegan.data.images import load_image
from cyclegan.errors import CycleGANError
from cyclegan.training.loop import train


def test_only_image_files_are_listed_recursively(tmp_path: Path) -> None:
    write_images(tmp_path, 2)
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / ".hidden.png").write_bytes(b"x")
    write_images(tmp_path / "sub", 1)
    Image.new("RGB", (4, 4)).save(tmp_path / "UPPER.JPG")
    names = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert names == ["UPPER.JPG", "img_000.png", "img_001.png", "sub/img_000.png"]


def test_grayscale_palette_and_alpha_images_become_rgb(tmp_path: Path) -> None:
    Image.new("L", (6, 4), 77).save(tmp_path / "gray.jpg")
    assert np.asarray(load_image(tmp_path / "gray.jpg")).shape == (4, 6, 3)
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    rgba.save(tmp_path / "alpha.png")
    pixels = np.asarray(load_image(tmp_path / "alpha.png"))
    assert tuple(pixels[0, 0]) == (255, 0, 0)
    assert tuple(pixels[1, 1]) == (255, 255, 255)  # transparent shows white, not the stored black
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([10, 20, 30] + [0] * 765)
    palette.save(tmp_path / "pal.png")
    assert tuple(np.asarray(load_image(tmp_path / "pal.png"))[0, 0]) == (10, 20, 30)
    assert np.asarray(load_image(tmp_path / "pal.png", channels=1)).shape == (4, 4)


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path: Path) -> None:
    array = np.array([[0, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(array).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    pixels = np.asarray(load_image(tmp_path / "deep.png"))[0, :, 0]
    assert list(pixels) == [0, 128, 255]


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    image = Image.new("RGB", (8, 4), (0, 0, 255))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    image.save(tmp_path / "rotated.jpg", exif=exif)
    assert load_image(tmp_path / "rotated.jpg").size == (4, 8)


@pytest.mark.parametrize(
    ("preprocess", "size", "expected"),
    [
        ("resize_and_crop", (50, 30), (32, 32)),
        ("crop", (50, 40), (32, 32)),
        ("scale_width", (72, 36), (32, 36)),
        ("scale_width", (36, 72), (72, 36)),
        ("scale_width_and_crop", (72, 36), (32, 32)),
        ("none", (37, 29), (32, 40)),
    ],
)
def test_preprocess_modes_give_the_references_sizes(
    preprocess: str, size: tuple[int, int], expected: tuple[int, int]
) -> None:
    cfg = TrainConfig(preprocess=preprocess, load_size=36, crop_size=32)
    x = train_transform(cfg, 3, 4)(Image.new("RGB", size, (255, 0, 0)))
    assert tuple(x.shape[1:]) == expected
    assert x[0].min() == 1.0 and x[1].max() == -1.0  # scaled to [-1, 1]


def test_no_flip_is_deterministic_and_flip_happens_half_the_time() -> None:
    image = Image.fromarray(np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3))
    fixed = TrainConfig(preprocess="none", no_flip=True)
    flipping = TrainConfig(preprocess="none")
    assert torch.equal(train_transform(fixed, 3, 4)(image), train_transform(fixed, 3, 4)(image))
    torch.manual_seed(0)
    outputs = [train_transform(flipping, 3, 4)(image) for _ in range(40)]
    flipped = sum(not torch.equal(o, outputs[0]) for o in outputs)
    assert 5 < flipped < 35


def test_padding_to_a_multiple_of_four_keeps_the_original_pixels() -> None:
    x = torch.randn(3, 5, 7)
    padded, (h, w) = pad_to_multiple(x, 4)
    assert padded.shape == (3, 8, 8) and (h, w) == (5, 7)
    assert torch.equal(padded[:, :5, :7], x)


def test_unpaired_sampling_is_random_and_serial_batches_pairs_in_order(
    dataroot: Path, tmp_path: Path
) -> None:
    cfg = tiny_config(dataroot, tmp_path)
    a, _, _ = scan_domain(dataroot / "trainA", cfg, 3, 4)
    b, _, _ = scan_domain(dataroot / "trainB", cfg, 3, 4)
    partners = {UnpairedDataset(a, b, cfg, s, 4)[0]["B_path"] for s in range(12)}
    assert len(partners) > 2
    cfg.serial_batches = True
    serial = UnpairedDataset(a, b, cfg, 0, 4)
    assert len(serial) == 6
    assert [Path(serial[i]["B_path"]).name for i in range(6)] == [p.name for p in b.paths]
    assert Path(serial[5]["A_path"]).name == a.paths[0].name  # A wraps around


def test_direction_and_two_folder_layouts(tmp_path: Path) -> None:
    cfg = TrainConfig(dataroot=str(tmp_path), direction="BtoA")
    assert domain_folders(cfg) == (tmp_path / "trainB", tmp_path / "trainA")
    cfg = TrainConfig(domain_a="x", domain_b="y")
    assert domain_folders(cfg) == (Path("x"), Path("y"))


def test_bad_files_are_skipped_with_a_warning_and_counted(dataroot: Path, tmp_path: Path, capsys) -> None:
    (dataroot / "trainA" / "not_an_image.jpg").write_bytes(b"garbage")
    good = dataroot / "trainB" / "img_000.png"
    truncated = dataroot / "trainB" / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:200])
    result = train(
        tiny_config(dataroot, tmp_path / "out", max_steps=12, serial_batches=True), show_progress=False
    )
    assert result.progress.step == 12
    assert {Path(p).name for p in result.skipped_files} == {"not_an_image.jpg", "truncated.png"}
    err = capsys.readouterr().err
    assert err.count("not_an_image.jpg") == 1 and err.count("truncated.png") == 1
    assert f"warning: skipping {truncated}: not a readable image" in err.splitlines()


def test_missing_empty_and_too_small_inputs_are_clear_errors(dataroot: Path, tmp_path: Path) -> None:
    with pytest.raises(CycleGANError, match=r"image folder not found: .*nowhere"):
        train(tiny_config(tmp_path / "nowhere", tmp_path / "out"), show_progress=False)
    (tmp_path / "empty" / "trainA").mkdir(parents=True)
    (tmp_path / "empty" / "trainB").mkdir()
    with pytest.raises(CycleGANError, match=r"no readable images in .*trainA"):
        train(tiny_config(tmp_path / "empty", tmp_path / "out2"), show_progress=False)
    with pytest.raises(CycleGANError, match="smaller than --crop_size 64"):
        train(tiny_config(dataroot, tmp_path / "out3", preprocess="crop", crop_size=64), show_progress=False)


def test_single_channel_domains_train(dataroot: Path, tmp_path: Path) -> None:
    cfg = tiny_config(dataroot, tmp_path, max_steps=2, lambda_identity=0.0)
    cfg.model.net.input_nc = cfg.model.net.output_nc = 1
    assert train(cfg, show_progress=False).progress.step == 2


def test_grayscale_jpegs_of_horse2zebra_load_as_rgb() -> None:
    folder = FIXTURES.parent / "datasets" / "horse2zebra" / "trainB"
    path = folder / "n02391049_226.jpg"
    if not path.is_file():
        pytest.skip(f"{path} is not present (../shared/datasets is optional)")
    assert Image.open(path).mode == "L"
    x = train_transform(TrainConfig(), 3, 4)(load_image(path))
    assert x.shape == (3, 256, 256)
