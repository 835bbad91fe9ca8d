"""Hostile and odd files: checkpoints, images, names and flags a clumsy user or an attacker might hand us.

Each gets a one-line error (or a skip with a warning) and never a traceback, an unpickled payload, a huge
allocation, or a file written outside the folder the user named.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch
from conftest import tiny_config, training_state, write_images
from PIL import Image
from safetensors.torch import load_file, save_file

from cyclegan.cli import main
from cyclegan.config import CycleGANOptions, NetConfig
from cyclegan.errors import CycleGANError
from cyclegan.models import checkpoints
from cyclegan.models.cycle_gan import CycleGAN
from cyclegan.networks import build_generator
from cyclegan.training.loop import train
from cyclegan.translation.bulk import translate_files
from cyclegan.translation.translator import Translator

TINY = NetConfig(ngf=4, ndf=4, netG="resnet_6blocks")


def one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.safetensors"
    model = CycleGAN(CycleGANOptions(net=TINY))
    checkpoints.save_weights(path, model.networks(), CycleGANOptions(net=TINY), {"step": 1})
    return path


def with_metadata(path: Path, **changes: str) -> Path:
    """The same tensors with some metadata replaced, as a hand-edited or hostile file would have."""
    tensors = load_file(str(path))
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        metadata = dict(f.metadata())
    metadata.update(changes)
    out = path.with_name("edited.safetensors")
    save_file(tensors, str(out), metadata=metadata)
    return out


@pytest.mark.parametrize(
    ("model_config", "problem"),
    [
        ({**TINY.__dict__, "ngf": 10**6}, "--ngf must be at most 1024"),
        ({**TINY.__dict__, "ngf": "64"}, "--ngf has the wrong type"),
        ({**TINY.__dict__, "netG": "resnet_900blocks"}, "--netG must be one of"),
        ({**TINY.__dict__, "ngf": 8}, "weights do not fit"),  # metadata lies about the tensors
        ({**TINY.__dict__, "depth": 3}, "unknown config fields: depth"),
    ],
)
def test_checkpoint_metadata_is_validated_before_anything_is_built(
    checkpoint: Path, model_config: dict, problem: str
) -> None:
    edited = with_metadata(checkpoint, model_config=json.dumps(model_config))
    with pytest.raises(CycleGANError, match=problem) as info:
        checkpoints.load_generator(edited)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("text", ["{not json", "[]", "null"])
def test_malformed_metadata_json_is_one_line(checkpoint: Path, text: str) -> None:
    with pytest.raises(CycleGANError, match="metadata") as info:
        checkpoints.load_generator(with_metadata(checkpoint, model_config=text))
    assert "\n" not in str(info.value)


def reference_state() -> dict[str, torch.Tensor]:
    return build_generator(TINY).state_dict()


def test_reference_weights_with_extra_missing_or_scalar_tensors_are_refused(tmp_path: Path) -> None:
    cases = {
        "extra": {**reference_state(), "model.99.weight": torch.zeros(3)},
        "missing": {k: v for k, v in reference_state().items() if k != "model.10.conv_block.1.weight"},
        "scalar": {**reference_state(), "model.10.conv_block.1.weight": torch.tensor(1.0)},
        "huge width": {**reference_state(), "model.1.weight": torch.zeros(5000, 3, 7, 7)},
        "not a generator": {"weight": torch.zeros(3)},
    }
    for name, state in cases.items():
        path = tmp_path / f"{name}.pth"
        torch.save(state, path)
        with pytest.raises(CycleGANError) as info:
            checkpoints.load_generator(path)
        assert "\n" not in str(info.value), name


def test_pickled_code_never_runs_and_no_message_suggests_unsafe_loading(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple:
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "latest_net_G_A.pth"
    path.write_bytes(pickle.dumps({"model.1.weight": Payload()}))
    torch_file = tmp_path / "torch.pth"
    torch.save({"w": Payload()}, torch_file)
    for bad in (path, torch_file):
        with pytest.raises(CycleGANError) as info:
            checkpoints.load_generator(bad)
        assert "weights_only" not in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_a_git_lfs_pointer_is_named_as_such(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"model{suffix}"
    path.write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 45000000\n"
    )
    with pytest.raises(CycleGANError, match="Git LFS pointer"):
        checkpoints.load_generator(path)


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that declares a huge size in a few bytes: the shape of a decompression bomb."""
    small = path.with_suffix(".tmp.png")
    Image.new("L", (1, 1)).save(small)
    data = bytearray(small.read_bytes())
    small.unlink()
    ihdr = 8 + 8  # signature, then length and type of the IHDR chunk
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[12 : ihdr + 13])))
    path.write_bytes(bytes(data))
    return path


def test_tiny_images_translate_at_their_own_size(tmp_path: Path, checkpoint: Path) -> None:
    for size in ((1, 1), (2, 3), (4, 4), (5, 2)):
        Image.new("RGB", size, (200, 10, 10)).save(tmp_path / f"tiny_{size[0]}x{size[1]}.png")
    written = translate_files([tmp_path], checkpoint, tmp_path / "out", show_progress=False)
    assert sorted(Image.open(p).size for p in written.written) == [(1, 1), (2, 3), (4, 4), (5, 2)]


def test_huge_and_bomb_images_are_skipped_with_a_count(
    tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "in"
    write_images(folder, 1, size=(16, 16))
    png_header(folder / "huge.png", 20000, 20000)
    code = main(["translate", str(folder), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert "huge.png" in err and "too large" in err and "Traceback" not in err
    assert (tmp_path / "out" / "img_000.png").is_file()  # the rest was translated


def test_training_skips_huge_images_and_data_check_names_them(
    dataroot: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png_header(dataroot / "trainA" / "bomb.png", 30000, 30000)
    result = train(tiny_config(dataroot, tmp_path, max_steps=1), show_progress=False, report=False)
    assert str(dataroot / "trainA" / "bomb.png") in result.skipped_files
    capsys.readouterr()
    main(["data", "check", str(dataroot)])
    out = capsys.readouterr().out
    assert "bomb.png" in out and "too large" in out


def test_images_whose_channels_differ_from_the_model(tmp_path: Path) -> None:
    grey = NetConfig(ngf=4, input_nc=1, output_nc=1)
    path = tmp_path / "grey.safetensors"
    checkpoints.save_weights(
        path, CycleGAN(CycleGANOptions(net=grey)).networks(), CycleGANOptions(net=grey), {}
    )
    write_images(tmp_path / "rgb", 1, size=(12, 8))
    (out,) = translate_files([tmp_path / "rgb"], path, tmp_path / "out", show_progress=False).written
    assert Image.open(out).mode == "L" and Image.open(out).size == (12, 8)  # RGB is converted to grey
    four = build_generator(NetConfig(ngf=4, input_nc=4, output_nc=3))
    with pytest.raises(CycleGANError, match="only 1 and 3 are supported"):
        Translator(four, NetConfig(ngf=4, input_nc=4))


def test_output_paths_of_the_wrong_kind(tmp_path: Path, checkpoint: Path) -> None:
    write_images(tmp_path / "in", 1)
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(CycleGANError, match="is not a folder"):
        translate_files([tmp_path / "in"], checkpoint, tmp_path / "file", show_progress=False)
    (tmp_path / "out" / "img_000.png").mkdir(parents=True)
    with pytest.raises(CycleGANError, match="a folder or link is in the way"):
        translate_files([tmp_path / "in"], checkpoint, tmp_path / "out", show_progress=False)


def test_data_check_prints_any_file_name_on_any_stdout(dataroot: Path) -> None:
    folder = os.fsencode(dataroot / "trainA")
    (dataroot / "trainA" / "img_000.png").rename(os.fsdecode(folder + b"/bad\xff\nname.png"))
    (dataroot / "trainB" / "img_000.png").rename(dataroot / "trainB" / "zèbre.png")
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    result = subprocess.run(
        [sys.executable, "-m", "cyclegan.cli", "data", "check", str(dataroot)],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "Verdict: will train" in result.stdout


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"crop_size": 20}, "20x20 training images do not fit"),
        ({"num_workers": -1}, "--num_workers must not be negative"),
        ({"lr": 0.0}, "--lr must be in"),
        ({"beta1": 1.0}, "--beta1"),
        ({"save_epoch_freq": 0}, "--save_epoch_freq must be at least 1"),
        ({"max_dataset_size": 0}, "--max_dataset_size must be at least 1"),
        ({"name": "../escape"}, "--name must be a plain folder name"),
        ({"name": ".hidden"}, "--name must be a plain folder name"),
        ({"seed": -1}, "--seed must be in"),
        ({"lambda_A": float("nan")}, "--lambda_A"),
    ],
)
def test_options_that_would_crash_later_are_refused_up_front(
    dataroot: Path, tmp_path: Path, overrides: dict, problem: str
) -> None:
    cfg = tiny_config(dataroot, tmp_path / "runs", **overrides)
    with pytest.raises(CycleGANError, match=problem):
        train(cfg, show_progress=False)
    assert not (tmp_path / "escape").exists() and not (tmp_path / "runs" / "run").exists()


@pytest.mark.parametrize(
    ("model", "problem"),
    [
        ({"n_layers_D": 9}, "--n_layers_D must be at most 8"),
        ({"netD": "n_layers", "n_layers_D": 5}, "do not fit"),
        ({"input_nc": 2}, "--input_nc must be 1 \\(grey\\) or 3"),
        ({"ngf": 0}, "--ngf must be at least 1"),
    ],
)
def test_architectures_that_would_crash_later_are_refused_up_front(
    dataroot: Path, tmp_path: Path, model: dict, problem: str
) -> None:
    cfg = tiny_config(dataroot, tmp_path, lambda_identity=0.0)
    for key, value in model.items():
        setattr(cfg.model.net, key, value)
    with pytest.raises(CycleGANError, match=problem):
        train(cfg, show_progress=False)


def test_images_of_mixed_sizes_train_checkpoint_and_resume(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for i, size in enumerate(((32, 24), (40, 36), (28, 44))):
        write_images(root / "trainA", 1, size=size, seed=i)
        (root / "trainA" / "img_000.png").rename(root / "trainA" / f"a{i}.png")
        write_images(root / "trainB", 1, size=size[::-1], seed=10 + i)
        (root / "trainB" / "img_000.png").rename(root / "trainB" / f"b{i}.png")
    for preprocess in ("none", "scale_width"):
        cfg = tiny_config(root, tmp_path / preprocess, preprocess=preprocess, load_size=32, crop_size=24,
                          max_steps=4, save_latest_freq=2, pool_size=3)  # fmt: skip
        run_dir = train(cfg, show_progress=False, report=False).run_dir
        pool = training_state(run_dir / "checkpoints" / "latest.safetensors")["trainer"]["pool_A"]
        assert len({tuple(image.shape) for image in pool["images"]}) > 1  # the pool holds mixed sizes


def test_batches_of_mixed_sizes_are_refused_up_front(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_images(root / "trainA", 2, size=(32, 24))
    write_images(root / "trainB", 2, size=(40, 20))
    cfg = tiny_config(root, tmp_path, preprocess="scale_width", load_size=32, crop_size=16, batch_size=2)
    with pytest.raises(CycleGANError, match="cannot share a batch"):
        train(cfg, show_progress=False)


def test_a_full_disk_while_translating_is_one_line_and_leaves_no_partial_file(
    tmp_path: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_images(tmp_path / "in", 2)

    def full(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        Path(str(fp)).write_bytes(b"\x89PNG partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    with pytest.raises(CycleGANError, match="disk is full"):
        translate_files([tmp_path / "in"], checkpoint, tmp_path / "out", show_progress=False)
    assert not list((tmp_path / "out").iterdir())


def test_eval_of_images_too_small_for_its_metrics_is_one_line(
    tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for split in ("testA", "testB"):
        (tmp_path / "data" / split).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (3, 2), (i * 90, 20, 20)).save(tmp_path / "data" / split / f"{i}.png")
    code = main(["eval", str(checkpoint), "--dataroot", str(tmp_path / "data"), "--paired",
                 "--out", str(tmp_path / "eval"), "--kid_subsets", "2"])  # fmt: skip
    assert code == 2
    assert "SSIM needs images of at least" in one_line(capsys)


def test_the_pixel_limit_is_a_flag(
    tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_images(tmp_path / "in", 1, size=(40, 30))
    args = [
        "translate",
        str(tmp_path / "in"),
        "--checkpoint",
        str(checkpoint),
        "--out",
        str(tmp_path / "out"),
    ]
    assert main([*args, "--max_pixels", "1000"]) == 2
    assert "above the limit of 0.001 megapixels" in capsys.readouterr().err
    assert main([*args, "--max_pixels", "1200"]) == 0


@pytest.mark.parametrize(
    "error",
    [
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory"),
    ],
    ids=["cuda", "cpu"],
)
def test_running_out_of_memory_in_a_step_is_one_line_and_keeps_the_checkpoint(
    dataroot: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    error: RuntimeError,
) -> None:
    cfg = tiny_config(dataroot, tmp_path, max_steps=2, save_latest_freq=1)
    run = train(cfg, show_progress=False, report=False).run_dir
    saved = (run / "checkpoints" / "latest.safetensors").read_bytes()

    def out_of_memory(*args: object) -> None:
        raise error

    monkeypatch.setattr("cyclegan.models.cycle_gan.CycleGANTrainer.step", out_of_memory)
    assert main(["train", "--resume", str(run), "--max_steps", "4"]) == 2
    lines = capsys.readouterr().err.splitlines()  # "Resuming ..." first, then the error alone
    assert [line for line in lines if "error" in line] == lines[-1:]
    assert lines[-1].startswith("cyclegan train: error: out of memory in training step 3 (32 px crops, batch")
    assert "try --checkpoint_activations, --precision bf16, a smaller --crop_size" in lines[-1]
    assert (run / "checkpoints" / "latest.safetensors").read_bytes() == saved
