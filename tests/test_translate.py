from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_images
from PIL import Image

from cyclegan.config import CycleGANOptions, NetConfig
from cyclegan.errors import CycleGANError
from cyclegan.models import checkpoints
from cyclegan.models.cycle_gan import CycleGAN
from cyclegan.networks import build_discriminator
from cyclegan.networks.resnet import ResnetGenerator
from cyclegan.translation.bulk import translate_files
from cyclegan.translation.translator import Translator


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = CycleGAN(CycleGANOptions(net=NetConfig(ngf=4, ndf=4, netG="resnet_6blocks")))
    path = tmp_path / "model.safetensors"
    checkpoints.save_weights(path, model.networks(), model.options, {"step": 0})
    return path


@pytest.fixture
def reference_pth(tmp_path: Path) -> Path:
    torch.manual_seed(1)
    path = tmp_path / "latest_net_G_A.pth"
    torch.save(ResnetGenerator(3, 3, 4, "instance", False, 9).state_dict(), path)
    return path


def test_images_keep_their_size_and_name_and_match_the_reference_conversion(
    tmp_path: Path, checkpoint: Path
) -> None:
    write_images(tmp_path / "in", 2, size=(37, 29))
    Image.new("L", (20, 24), 100).save(tmp_path / "gray.jpg")
    done = translate_files(
        [tmp_path / "in", tmp_path / "gray.jpg"], checkpoint, tmp_path / "out", show_progress=False
    )
    assert sorted(p.name for p in done.written) == ["gray.png", "img_000.png", "img_001.png"]  # lossless
    out = Image.open(tmp_path / "out" / "img_000.png")
    assert out.size == (37, 29)
    assert Image.open(tmp_path / "out" / "gray.png").size == (20, 24)
    translator = Translator.load(checkpoint)
    source = np.asarray(Image.open(tmp_path / "in" / "img_000.png"), dtype=np.float32)
    x = torch.from_numpy(source).permute(2, 0, 1) / 255 * 2 - 1
    padded = torch.nn.functional.pad(x.unsqueeze(0), (0, 3, 0, 3), mode="reflect")
    with torch.no_grad():
        y = translator.generator(padded)[0, :, :29, :37]
    reference = ((y.permute(1, 2, 0).numpy() + 1) / 2 * 255).astype(np.uint8)  # the reference truncates
    assert np.abs(np.asarray(out).astype(int) - reference.astype(int)).max() <= 1


def test_reference_generator_files_and_run_folders_are_accepted(
    tmp_path: Path, reference_pth: Path, checkpoint: Path
) -> None:
    write_images(tmp_path / "in", 1, size=(32, 32))
    translator = Translator.load(reference_pth)
    assert (translator.config.netG, translator.config.ngf) == ("resnet_9blocks", 4)
    translate_files([tmp_path / "in"], reference_pth, tmp_path / "out", show_progress=False)
    run = tmp_path / "run" / "checkpoints"
    run.mkdir(parents=True)
    (run / "latest.safetensors").write_bytes(checkpoint.read_bytes())
    backward = translate_files(
        [tmp_path / "in"], tmp_path / "run", tmp_path / "out2", direction="BtoA", show_progress=False
    )
    assert len(backward.written) == 1
    a, b = Translator.load(checkpoint, "AtoB"), Translator.load(checkpoint, "BtoA")
    assert not torch.equal(next(a.generator.parameters()), next(b.generator.parameters()))


def test_translation_errors_are_one_line(tmp_path: Path, checkpoint: Path) -> None:
    write_images(tmp_path / "in", 1)
    with pytest.raises(CycleGANError, match="input not found"):
        translate_files([tmp_path / "missing.png"], checkpoint, tmp_path / "out", show_progress=False)
    disc = tmp_path / "netD.pth"
    torch.save(build_discriminator(NetConfig(ndf=4), 3).state_dict(), disc)
    with pytest.raises(CycleGANError, match="not a CycleGAN generator"):
        translate_files([tmp_path / "in"], disc, tmp_path / "out", show_progress=False)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CycleGANError, match=r"cannot read .*junk\.pth"):
        translate_files([tmp_path / "in"], junk, tmp_path / "out", show_progress=False)
    with pytest.raises(CycleGANError, match="checkpoint not found"):
        translate_files([tmp_path / "in"], tmp_path / "nope.pth", tmp_path / "out", show_progress=False)
    with pytest.raises(CycleGANError, match="would overwrite the input"):
        translate_files([tmp_path / "in"], checkpoint, tmp_path / "in", show_progress=False)


def test_unreadable_images_are_reported_after_the_rest_are_written(tmp_path: Path, checkpoint: Path) -> None:
    write_images(tmp_path / "in", 2)
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(CycleGANError, match=r"2 translated, 0 skipped .*, 1 unreadable"):
        translate_files([tmp_path / "in"], checkpoint, tmp_path / "out", show_progress=False)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["img_000.png", "img_001.png"]


def test_existing_outputs_are_kept_unless_overwrite(tmp_path: Path, checkpoint: Path) -> None:
    write_images(tmp_path / "in", 1)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "img_000.png").write_bytes(b"mine")
    done = translate_files([tmp_path / "in"], checkpoint, tmp_path / "out", show_progress=False)
    assert done.written == [] and done.skipped == [tmp_path / "out" / "img_000.png"]
    assert (tmp_path / "out" / "img_000.png").read_bytes() == b"mine"
    translate_files([tmp_path / "in"], checkpoint, tmp_path / "out", overwrite=True, show_progress=False)
    assert Image.open(tmp_path / "out" / "img_000.png").size == (40, 40)


def test_unet_inputs_are_padded_to_its_size_multiple(tmp_path: Path) -> None:
    model = CycleGAN(CycleGANOptions(net=NetConfig(ngf=2, ndf=2, netG="unet_128")))
    path = tmp_path / "unet.safetensors"
    checkpoints.save_weights(path, model.networks(), model.options, {})
    y = Translator.load(path).translate_tensor(torch.zeros(3, 50, 70))
    assert y.shape == (3, 50, 70)
