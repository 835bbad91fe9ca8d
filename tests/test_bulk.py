"""Bulk translation: batching, resuming, counting failures, output-path checks and sharding by rank."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_images
from PIL import Image

from cyclegan.cli import main
from cyclegan.config import CycleGANOptions, NetConfig
from cyclegan.devices import resolve_device
from cyclegan.distributed import TorchrunEnv
from cyclegan.errors import CycleGANError
from cyclegan.models import checkpoints
from cyclegan.models.cycle_gan import CycleGAN
from cyclegan.translation import bulk
from cyclegan.translation.bulk import UnreadableImages, same_size_batches, translate_files
from cyclegan.translation.translator import Translator


def save_model(path: Path, **config: int) -> Path:
    torch.manual_seed(0)
    model = CycleGAN(CycleGANOptions(net=NetConfig(ngf=4, ndf=4, netG="resnet_6blocks", **config)))
    checkpoints.save_weights(path, model.networks(), model.options, {"step": 0})
    return path


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    return save_model(tmp_path / "model.safetensors")


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.int16)


def files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_batches_of_mixed_sizes_match_one_by_one_translation(tmp_path: Path, checkpoint: Path) -> None:
    """Batched convolutions may sum in another order than single ones (the backend picks its algorithm by
    shape), so a value near a rounding boundary can land on the neighbouring grey level: at most 1 apart.
    Instance norm works per image, so nothing else about an image depends on its batch."""
    write_images(tmp_path / "in", 5, size=(32, 32), seed=1)
    write_images(tmp_path / "in" / "wide", 3, size=(40, 24), seed=2)
    translator = Translator.load(checkpoint)
    shapes: list[tuple[int, ...]] = []
    translate_tensor = translator.translate_tensor

    def spy(x: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(x.shape))
        return translate_tensor(x)

    translator.translate_tensor = spy  # type: ignore[method-assign]
    done = translate_files([tmp_path / "in"], translator, tmp_path / "out", batch_size=4, show_progress=False)
    assert sorted(shapes) == [(1, 3, 32, 32), (3, 3, 24, 40), (4, 3, 32, 32)]
    assert len(done.written) == 8 and done.skipped == [] and done.unreadable == []
    one_by_one = Translator.load(checkpoint)
    for src in sorted((tmp_path / "in").rglob("*.png")):
        alone = np.asarray(one_by_one(Image.open(src).convert("RGB")), dtype=np.int16)
        batched = pixels(tmp_path / "out" / src.relative_to(tmp_path / "in"))
        assert batched.shape == alone.shape
        assert np.abs(batched - alone).max() <= 1


def test_same_size_batches_hold_a_bounded_number_of_images() -> None:
    sizes = [8, 8, 9, 10, 8, 11, 12, 9, 8, 13, 9, 9]
    consumed = emitted = 0

    def items():  # counts what the batcher has taken, to see how many images wait inside it
        nonlocal consumed
        for i, size in enumerate(sizes):
            consumed += 1
            yield i, torch.zeros(1, size, size)

    batches = []
    for batch in same_size_batches(items(), batch_size=3, hold=1):
        emitted += len(batch)
        assert consumed - emitted <= 3
        assert len({x.shape for _, x in batch}) == 1 and 1 <= len(batch) <= 3
        batches.append([i for i, _ in batch])
    assert sorted(i for batch in batches for i in batch) == list(range(len(sizes)))
    two_sizes = [(i, torch.zeros(1, 8 + i % 2, 8)) for i in range(12)]
    assert [[i for i, _ in b] for b in same_size_batches(iter(two_sizes), 3)] == [
        [0, 2, 4], [1, 3, 5], [6, 8, 10], [7, 9, 11]
    ]  # fmt: skip


def test_an_interrupted_run_resumes_and_overwrite_redoes_everything(
    tmp_path: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_images(tmp_path / "in", 5)
    out = tmp_path / "out"
    save = bulk.saver("png", 95)
    calls = []

    def failing_save(dst: Path, y: torch.Tensor) -> None:
        calls.append(dst)
        if len(calls) == 3:
            raise CycleGANError(f"cannot write {dst}: the disk is full")
        save(dst, y)

    monkeypatch.setattr(bulk, "saver", lambda *_: failing_save)
    with pytest.raises(CycleGANError, match="the disk is full"):
        translate_files([tmp_path / "in"], checkpoint, out, batch_size=1, num_workers=1, show_progress=False)
    monkeypatch.undo()
    first = files(out)
    assert 2 <= len(first) < 5 and all(name.endswith(".png") for name in first)  # no temporary files
    (out / first[0]).write_bytes(b"mine")
    done = translate_files([tmp_path / "in"], checkpoint, out, show_progress=False)
    assert sorted(p.name for p in done.skipped) == first
    assert len(done.written) == 5 - len(first) and files(out) == [f"img_{i:03d}.png" for i in range(5)]
    assert (out / first[0]).read_bytes() == b"mine"  # an existing output is never replaced silently
    again = translate_files([tmp_path / "in"], checkpoint, out, overwrite=True, show_progress=False)
    assert len(again.written) == 5 and again.skipped == []
    assert Image.open(out / first[0]).size == (40, 40)


def test_unreadable_images_are_warned_once_each_and_counted(
    tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_images(tmp_path / "in", 3)
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG broken")
    (tmp_path / "in" / "empty.jpg").write_bytes(b"")
    (tmp_path / "out").mkdir()
    write_images(tmp_path / "out", 1)  # img_000 is already done
    with pytest.raises(UnreadableImages) as failure:
        translate_files([tmp_path / "in"], checkpoint, tmp_path / "out", batch_size=2, show_progress=False)
    assert str(failure.value).startswith("2 translated, 1 skipped (already done), 2 unreadable")
    assert sorted(p.name for p in failure.value.done.unreadable) == ["broken.png", "empty.jpg"]
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == 2 and all(w.startswith("warning: cannot read") for w in warnings)
    assert files(tmp_path / "out") == ["img_000.png", "img_001.png", "img_002.png"]

    code = main(["translate", str(tmp_path / "in"), "--checkpoint", str(checkpoint), "--out",
                 str(tmp_path / "out")])  # fmt: skip
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and lines[-1].startswith("cyclegan translate: error: 0 translated, 3 skipped")
    assert len(lines) == 3 and "first unreadable" in lines[-1]


def test_output_path_problems_are_one_line_errors_before_anything_is_written(
    tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_images(tmp_path / "in" / "sub", 2)
    write_images(tmp_path / "in", 1)

    def translate(out: Path) -> str:
        code = main(["translate", str(tmp_path / "in"), "--checkpoint", str(checkpoint), "--out", str(out)])
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(lines) == 1, lines
        return lines[0]

    (tmp_path / "file").write_bytes(b"x")
    assert "exists and is not a folder" in translate(tmp_path / "file")
    assert main(["translate", str(tmp_path / "in"), "--checkpoint", str(checkpoint), "--out", "o",
                 "--batch_size", "0"]) == 2  # fmt: skip
    assert (
        capsys.readouterr().err.strip() == "cyclegan translate: error: --batch_size must be at least 1, got 0"
    )
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "sub").write_bytes(b"mine")
    assert "is not a folder" in translate(blocked)
    assert files(blocked) == ["sub"] and (blocked / "sub").read_bytes() == b"mine"
    (blocked / "sub").unlink()
    (blocked / "sub").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere").mkdir()
    assert "leads out of" in translate(blocked)
    assert files(tmp_path / "elsewhere") == [] and files(blocked) == []
    (blocked / "sub").unlink()
    (blocked / "img_000.png").mkdir()
    assert "a folder or link is in the way" in translate(blocked)
    assert files(blocked) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_a_read_only_output_folder_is_refused(tmp_path: Path, checkpoint: Path) -> None:
    write_images(tmp_path / "in", 1)
    (tmp_path / "out").mkdir(mode=0o555)
    with pytest.raises(CycleGANError, match="is read-only"):
        translate_files([tmp_path / "in"], checkpoint, tmp_path / "out", show_progress=False)


def test_images_are_converted_to_the_channels_the_model_takes(tmp_path: Path) -> None:
    grey_model = save_model(tmp_path / "grey.safetensors", input_nc=1, output_nc=1)
    write_images(tmp_path / "in", 1, size=(36, 28))
    Image.new("L", (20, 24), 90).save(tmp_path / "in" / "grey.png")
    translate_files([tmp_path / "in"], grey_model, tmp_path / "grey", show_progress=False)
    assert {Image.open(p).mode for p in (tmp_path / "grey").iterdir()} == {"L"}
    luminance = Image.open(tmp_path / "in" / "img_000.png").convert("L")
    assert np.array_equal(pixels(tmp_path / "grey" / "img_000.png"), Translator.load(grey_model)(luminance))
    rgb_model = save_model(tmp_path / "rgb.safetensors")
    translate_files([tmp_path / "in"], rgb_model, tmp_path / "rgb", show_progress=False)
    assert Image.open(tmp_path / "rgb" / "grey.png").mode == "RGB"
    assert Image.open(tmp_path / "rgb" / "grey.png").size == (20, 24)


def test_shards_come_from_torchruns_variables() -> None:
    assert TorchrunEnv.read({}) == TorchrunEnv(0, 1, 0, launched=False)
    env = TorchrunEnv.read({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert env == TorchrunEnv(3, 4, 1, launched=True) and env.label == "rank 3/4"
    with pytest.raises(CycleGANError, match="must be integers"):
        TorchrunEnv.read({"RANK": "one", "WORLD_SIZE": "2"})
    for bad in ({"RANK": "2", "WORLD_SIZE": "2"}, {"WORLD_SIZE": "0"}, {"LOCAL_RANK": "-1"}):
        with pytest.raises(CycleGANError, match=r"WORLD_SIZE must be at least 1, RANK in 0\.\.WORLD_SIZE-1"):
            TorchrunEnv.read(bad)
    assert resolve_device("cpu", local_rank=1) == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(CycleGANError, match="CUDA is not available"):
            resolve_device("cuda", local_rank=1)
    elif torch.cuda.device_count() == 1:
        assert resolve_device("auto", local_rank=0) == resolve_device("cuda:0", local_rank=1)
        with pytest.raises(CycleGANError, match="LOCAL_RANK 1 has no GPU"):
            resolve_device("cuda", local_rank=1)


def test_two_ranks_split_the_inputs_without_overlap(
    tmp_path: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rank 0 runs as torchrun would start it (``python -m cyclegan`` in a child process with RANK and
    WORLD_SIZE set) while rank 1 runs here at the same time; batch size 1 makes outputs bit-comparable."""
    write_images(tmp_path / "in", 4, size=(32, 32))
    write_images(tmp_path / "in" / "more", 3, size=(24, 32), seed=1)
    args = ["translate", str(tmp_path / "in"), "--checkpoint", str(checkpoint),
            "--out", str(tmp_path / "two"), "--batch_size", "1", "--device", "cpu"]  # fmt: skip
    ranks = {"WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(
        [sys.executable, "-m", "cyclegan", *args],
        env={**os.environ, **ranks, "RANK": "0", "LOCAL_RANK": "0"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for name, value in {**ranks, "RANK": "1", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(name, value)
    assert main(args) == 0
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    tail = f"0 skipped (already done), 0 unreadable; outputs in {tmp_path / 'two'}"
    assert out.strip() == f"rank 0/2: 4 translated, {tail}"
    assert capsys.readouterr().out.strip() == f"rank 1/2: 3 translated, {tail}"  # 4 + 3: no overlap
    whole = translate_files(
        [tmp_path / "in"], checkpoint, tmp_path / "one", batch_size=1, show_progress=False
    )
    assert len(whole.written) == 7 and files(tmp_path / "two") == files(tmp_path / "one")
    for name in files(tmp_path / "one"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"image_format": "gif"}, "--format must be one of png, jpg, webp, got 'gif'"),
        ({"quality": 0}, "--quality must be between 1 and 100, got 0"),
        ({"batch_size": 0}, "--batch_size must be at least 1, got 0"),
        ({"num_workers": 0}, "--num_workers must be at least 1, got 0"),
        ({"max_pixels": 0}, "--max_pixels must be at least 1, got 0"),
    ],
)
def test_bad_options_are_refused_before_anything_is_read(tmp_path: Path, option: dict, message: str) -> None:
    write_images(tmp_path / "in", 1)
    with pytest.raises(CycleGANError, match=message):
        translate_files([tmp_path / "in"], tmp_path / "no model", tmp_path / "out", **option)
    assert not (tmp_path / "out").exists()
