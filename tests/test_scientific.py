"""16-bit, float and medical images end to end: lossless reading and writing, intensity mappings saved with
the model, training on DICOM and NIfTI slices, and one-line refusals of what cannot be used.

The medical files are the samples pydicom and nibabel ship for their own tests (a CT and an MR slice,
NIfTI volumes); the 16-bit PNG and TIFF files are made here with numpy.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
from pathlib import Path

import numpy as np
import png
import pytest
import tifffile
import torch
from conftest import StandInInception, tiny_config, write_images
from PIL import Image
from torch import nn

from cyclegan.cli import main
from cyclegan.config import NetConfig
from cyclegan.data import formats
from cyclegan.data.check import check_data
from cyclegan.data.datasets import scan_domain
from cyclegan.data.intensity import Intensities, Intensity, resolve
from cyclegan.errors import CycleGANError
from cyclegan.evaluation import metrics
from cyclegan.evaluation.results import ResultTable
from cyclegan.evaluation.scoring import evaluate
from cyclegan.evaluation.values import FID_NOTE, WINDOWED_FID_NOTE
from cyclegan.layout import INTENSITY
from cyclegan.models import checkpoints
from cyclegan.training import resume_config, train
from cyclegan.translation.bulk import UnreadableImages, translate_files
from cyclegan.translation.export import export_onnx
from cyclegan.translation.translator import Translator

pydicom = pytest.importorskip("pydicom")
nibabel = pytest.importorskip("nibabel")
DICOM = Path(pydicom.__file__).parent / "data" / "test_files"
NIFTI = Path(nibabel.__file__).parent / "tests" / "data"


def _identity(channels: int) -> nn.Module:
    """A test double of the generator that returns its input exactly (a 1x1 convolution by the identity)."""
    conv = nn.Conv2d(channels, channels, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(channels)[:, :, None, None])
        conv.bias.zero_()
    return conv.eval()


def _translator(mapping: Intensity, axis: int = 2, tile: int | None = None) -> Translator:
    both = Intensities(mapping, mapping, axis)
    return Translator(_identity(mapping.channels), NetConfig(), tile=tile, conversion=both.direction("AtoB"))


def _write_png16(path: Path, array: np.ndarray) -> None:
    height, width = array.shape[:2]
    channels = 1 if array.ndim == 2 else array.shape[2]
    with open(path, "wb") as f:
        png.Writer(width, height, greyscale=channels == 1, bitdepth=16).write(f, array.reshape(height, -1))


def test_sixteen_bit_and_float_images_come_back_exactly_through_an_identity_generator(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 65536, (37, 45), dtype=np.uint16)
    grey[0, :2] = (0, 65535)
    rgb = rng.integers(0, 65536, (21, 30, 3), dtype=np.uint16)
    floats = (rng.standard_normal((26, 33)) * 1e3).astype(np.float32)
    (tmp_path / "grey").mkdir()
    _write_png16(tmp_path / "grey" / "a.png", grey)
    tifffile.imwrite(tmp_path / "grey" / "b.tif", grey)
    (tmp_path / "rgb").mkdir()
    _write_png16(tmp_path / "rgb" / "c.png", rgb)
    (tmp_path / "float").mkdir()
    tifffile.imwrite(tmp_path / "float" / "d.tiff", floats)
    window = (-4096.0, 4096.0)
    cases = [
        ("grey", Intensity(0.0, 65535.0, "uint16", 1), None),
        ("grey", Intensity(0.0, 65535.0, "uint16", 1), 16),  # in exact tiles
        ("rgb", Intensity(0.0, 65535.0, "uint16", 3), None),
        ("float", Intensity(*window, "float32", 1), None),
    ]
    for i, (folder, mapping, tile) in enumerate(cases):
        out = tmp_path / f"out{i}"
        translate_files([tmp_path / folder], _translator(mapping, tile=tile), out, show_progress=False)
        for source in sorted((tmp_path / folder).iterdir()):
            written = out / source.name
            assert written.is_file(), f"{written} keeps the input's kind and name"
            expected, got = formats.read(source), formats.read(written)
            if mapping.dtype == "uint16":
                assert formats.probe(written).kind == formats.probe(source).kind
                np.testing.assert_array_equal(got, expected)
            else:
                assert tifffile.imread(written).dtype == np.float32
                np.testing.assert_allclose(got, expected, rtol=0, atol=(window[1] - window[0]) * 2**-24)
    previews = translate_files(
        [tmp_path / "grey" / "a.png"], _translator(cases[0][1]), tmp_path / "preview", image_format="jpg",
        show_progress=False,
    )  # fmt: skip
    assert previews.written == [tmp_path / "preview" / "a.jpg"]


def test_dicom_and_nifti_are_written_back_with_their_headers(tmp_path: Path) -> None:
    shutil.copy(DICOM / "CT_small.dcm", tmp_path / "ct.dcm")
    shutil.copy(NIFTI / "anatomical.nii", tmp_path / "anat.nii")
    ct_range = formats.probe(tmp_path / "ct.dcm").range
    assert ct_range is not None
    translate_files(
        [tmp_path / "ct.dcm"], _translator(Intensity(*ct_range, "int16", 1)), tmp_path / "out",
        show_progress=False,
    )  # fmt: skip
    source, written = pydicom.dcmread(tmp_path / "ct.dcm"), pydicom.dcmread(tmp_path / "out" / "ct.dcm")
    np.testing.assert_array_equal(written.pixel_array, source.pixel_array)
    assert (written.RescaleSlope, written.RescaleIntercept) == (source.RescaleSlope, source.RescaleIntercept)
    assert written.SOPInstanceUID != source.SOPInstanceUID
    assert written.file_meta.MediaStorageSOPInstanceUID == written.SOPInstanceUID
    assert (written.PatientName, written.StudyInstanceUID) == (source.PatientName, source.StudyInstanceUID)

    for axis in (0, 2):
        translator = _translator(Intensity(-32768.0, 32767.0, "int16", 1), axis)
        out = tmp_path / f"nifti{axis}"
        translate_files([tmp_path / "anat.nii"], translator, out, batch_size=4, show_progress=False)
        before, after = nibabel.load(tmp_path / "anat.nii"), nibabel.load(out / "anat.nii")
        assert after.get_data_dtype() == before.get_data_dtype()
        np.testing.assert_array_equal(np.asarray(after.dataobj), np.asarray(before.dataobj))
        np.testing.assert_array_equal(after.affine, before.affine)


def _medical_dataset(root: Path) -> None:
    """Domain A: a CT slice (DICOM, Hounsfield units); domain B: the slices of a float NIfTI volume."""
    for split in ("train", "test"):
        (root / f"{split}A").mkdir(parents=True)
        (root / f"{split}B").mkdir()
        shutil.copy(DICOM / "CT_small.dcm", root / f"{split}A" / "ct.dcm")
        shutil.copy(NIFTI / "reoriented_anat_moved.nii", root / f"{split}B" / "mr.nii")


def test_training_on_dicom_and_nifti_slices_resumes_and_translates_back(tmp_path: Path) -> None:
    _medical_dataset(tmp_path / "data")
    shutil.copy(DICOM / "rtplan.dcm", tmp_path / "data" / "testA" / "plan.dcm")
    report = check_data(tmp_path / "data")
    assert report.will_train and report.splits[0].modes == {"1-channel int16": 1}
    assert [why for _, why in report.splits[2].unreadable] == ["the DICOM file holds no pixel data"]
    (tmp_path / "data" / "testA" / "plan.dcm").unlink()
    cfg = tiny_config(
        tmp_path / "data", tmp_path / "runs", input_nc=1, output_nc=1, window_a="-1000,1000", max_steps=2,
        sample_freq=2,
    )  # fmt: skip
    run = train(cfg, show_progress=False).run_dir
    saved = Intensities.from_json((run / INTENSITY).read_text(), "cache")
    assert (saved.a.low, saved.a.high, saved.a.dtype) == (-1000.0, 1000.0, "int16")
    assert saved.b.dtype == "float32" and "percentiles 0.5-99.5 of 22" in saved.b.how
    resumed = train(resume_config(run, {"max_steps": 3}), run, show_progress=False)
    assert resumed.progress.step == 3 and Intensities.from_json((run / INTENSITY).read_text(), "") == saved
    latest = run / "checkpoints" / "latest.safetensors"
    assert checkpoints.read_intensity(latest) == saved.to_json()
    assert "percentiles 0.5-99.5 of 22 training images" in (run / "report.html").read_text()

    translate_files([tmp_path / "data" / "trainA"], run, tmp_path / "AtoB", show_progress=False)
    ct = pydicom.dcmread(tmp_path / "AtoB" / "ct.dcm")
    assert ct.pixel_array.shape == (128, 128) and ct.Modality == "CT"
    translate_files(
        [tmp_path / "data" / "trainB"], run, tmp_path / "BtoA", direction="BtoA", show_progress=False
    )
    mr = nibabel.load(tmp_path / "BtoA" / "mr.nii")
    assert mr.shape == (21, 26, 22)
    values = np.asarray(mr.dataobj)
    assert np.isfinite(values).all() and values.min() >= saved.a.low and values.max() <= saved.a.high

    scores = evaluate(run, tmp_path / "data", out_dir=tmp_path / "eval", show_progress=False)
    assert "FID" not in scores.columns and scores.notes[0] == FID_NOTE
    assert all(np.isfinite(v) for row in scores.rows for v in row.scores.values() if v is not None)
    assert (tmp_path / "eval" / "AtoB" / "ct.dcm").is_file() and (
        tmp_path / "eval" / "BtoA" / "mr.nii"
    ).is_file()

    onnx = export_onnx(run, tmp_path / "model.onnx")
    translate_files(
        [tmp_path / "data" / "trainA"], onnx, tmp_path / "onnx", backend="onnxruntime", show_progress=False
    )
    by_onnx = pydicom.dcmread(tmp_path / "onnx" / "ct.dcm").pixel_array.astype(int)
    assert np.abs(by_onnx - ct.pixel_array.astype(int)).max() <= 1  # float32 rounding of the network alone


def test_bad_scientific_input_is_refused_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def one_line(match: str) -> pytest.RaisesContext:
        return pytest.raises((CycleGANError, formats.UnreadableImage), match=match)

    assert main(["train", "--dataroot", "x", "--window_a", "-1000,1000", "--window_b", "9,1"]) == 2
    error = "--window_b 9,1: the low end must be below the high end (both finite numbers)"
    assert capsys.readouterr().err == f"cyclegan train: error: {error}\n"
    with one_line("no pixel data"):
        formats.probe(DICOM / "rtplan.dcm")
    with one_line("no installed handler decodes its transfer syntax JPEG Extended"):
        formats.read(DICOM / "JPEG-lossy.dcm")
    with one_line("a 4-D volume"):
        formats.probe(NIFTI / "example4d.nii.gz")
    mixed = tmp_path / "data"
    _medical_dataset(mixed)
    runs = str(tmp_path / "runs")
    grey = ["--input_nc", "1", "--output_nc", "1"]
    assert (
        main(["train", "--dataroot", str(mixed), "--checkpoints_dir", runs, *grey, "--eval_every", "1"]) == 2
    )
    error = capsys.readouterr().err
    assert error.startswith("cyclegan train: error: --eval_every scores FID/KID") and error.count("\n") == 1
    assert "not 8-bit; leave it out and score with cyclegan eval" in error
    tifffile.imwrite(mixed / "trainA" / "floats.tif", np.zeros((32, 32), np.float32))
    cfg = tiny_config(mixed, tmp_path / "runs", input_nc=1, output_nc=1)
    with one_line(r"ct\.dcm is 1-channel int16 and .*floats\.tif is 1-channel float32"):
        train(cfg, show_progress=False)
    assert not any((tmp_path / "runs").iterdir())  # the failed start left no run folder

    nan = np.ones((16, 16), np.float32)
    nan[3, 4] = np.nan
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "nan.tif", nan)
    shutil.copy(DICOM / "rtplan.dcm", tmp_path / "in" / "plan.dcm")
    with pytest.raises(UnreadableImages, match=r"0 translated, 0 skipped \(already done\), 2 unreadable"):
        translate_files(
            [tmp_path / "in"], _translator(Intensity(0.0, 1.0, "float32", 1)), tmp_path / "out",
            show_progress=False,
        )  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "in", "runs"]  # nothing written elsewhere
    infinite = np.zeros((16, 16), np.float32)
    infinite[0, 0], infinite[5, 9] = np.inf, -np.inf
    tifffile.imwrite(tmp_path / "in" / "inf.tif", infinite)
    with one_line(r"inf\.tif holds NaN or infinite values; replace them \(e\.g\. numpy\.nan_to_num\) first$"):
        formats.read(tmp_path / "in" / "inf.tif")

    monkeypatch.setitem(sys.modules, "pydicom", None)
    with one_line(r"reading DICOM needs pydicom, which is not installed: pip install 'cyclegan\[medical\]'"):
        formats.probe(mixed / "trainA" / "ct.dcm")
    monkeypatch.setitem(sys.modules, "nibabel", None)
    with one_line(
        r"^reading NIfTI needs nibabel, which is not installed: pip install 'cyclegan\[medical\]'$"
    ):
        formats.probe(mixed / "trainB" / "mr.nii")


def _float_domains_with_a_nan_image(data: Path) -> Path:
    """trainA and trainB of one good float TIFF each, and trainA/b.tif with one NaN pixel."""
    for split in ("trainA", "trainB"):
        (data / split).mkdir(parents=True)
        tifffile.imwrite(data / split / "a.tif", np.arange(1024, dtype=np.float32).reshape(32, 32))
    nan = np.ones((32, 32), np.float32)
    nan[7, 3] = np.nan
    tifffile.imwrite(data / "trainA" / "b.tif", nan)
    return data


def test_a_training_domain_with_nan_or_mixed_channel_counts_is_refused_before_training(
    tmp_path: Path,
) -> None:
    data = _float_domains_with_a_nan_image(tmp_path / "data")
    cfg = tiny_config(data, tmp_path / "runs", input_nc=1, output_nc=1)  # auto: float data's percentiles
    with pytest.raises(
        CycleGANError, match=r"^--window_a percentile: cannot read .*b\.tif: .* holds NaN"
    ) as info:
        train(cfg, show_progress=False)
    assert "\n" not in str(info.value)

    rng = np.random.default_rng(2)
    for split in ("trainA", "trainB"):
        for path in (data / split).iterdir():
            path.unlink()
        _write_png16(data / split / "grey.png", rng.integers(0, 65536, (32, 32), np.uint16))
    _write_png16(data / "trainA" / "rgb.png", rng.integers(0, 65536, (32, 32, 3), np.uint16))
    mixed = (
        r"^--window_a needs one kind of image per domain, but .*grey\.png is 1-channel uint16 and .*rgb\.png"
    )
    with pytest.raises(CycleGANError, match=mixed + " is 3-channel uint16; convert them") as info:
        train(cfg, show_progress=False)
    assert "\n" not in str(info.value)
    assert not any((tmp_path / "runs").iterdir())  # neither failed start left a run folder


def test_serve_takes_and_returns_sixteen_bit_png_and_tiff(tmp_path: Path) -> None:
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from cyclegan.config import CycleGANOptions
    from cyclegan.models.cycle_gan import CycleGAN
    from cyclegan.translation import serve

    model = CycleGAN(
        CycleGANOptions(net=NetConfig(ngf=4, ndf=4, netG="resnet_6blocks", input_nc=1, output_nc=1))
    )
    grey16 = Intensity(0.0, 65535.0, "uint16", 1)
    path = tmp_path / "model.safetensors"
    mapping = Intensities(grey16, grey16).to_json()
    checkpoints.save_weights(path, model.networks(), model.options, {"step": 0}, intensity=mapping)
    image = np.random.default_rng(1).integers(0, 65536, (24, 20), dtype=np.uint16)
    _write_png16(tmp_path / "in.png", image)
    tifffile.imwrite(tmp_path / "in.tif", image)
    with TestClient(serve.create_app(path)) as client:
        for name, kind in (("in.png", "image/png"), ("in.tif", "image/tiff")):
            files = {"image": (name, (tmp_path / name).read_bytes(), kind)}
            reply = client.post("/translate", files=files)
            assert reply.status_code == 200, reply.text
            assert reply.headers["content-type"] == kind
            (tmp_path / f"out_{name}").write_bytes(reply.content)
            header = formats.probe(tmp_path / f"out_{name}")
            assert header.kind == formats.Kind("uint16", 1) and header.size == (20, 24)


def test_windows_on_eight_bit_images_and_the_rule_for_mixed_bit_depths(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    write_images(folder, 2, size=(8, 6))
    _write_png16(folder / "deep.png", np.full((6, 8), 40000, np.uint16))
    cfg = tiny_config(tmp_path, tmp_path / "runs", window_a="percentile:0,100")
    domain = scan_domain(folder, cfg, 3, 4)[0]
    mapping, note = resolve("--window_a", "auto", domain.headers, domain.paths, 3, 2)
    assert mapping.eight_bit and note is not None and "deep.png (1-channel uint16) is read as 8-bit" in note
    with pytest.raises(CycleGANError, match=r"deep\.png is 1-channel uint16 and .*img_000\.png is 8-bit"):
        resolve("--window_a", "dtype", domain.headers, domain.paths, 3, 2)
    (folder / "deep.png").unlink()
    domain = scan_domain(folder, cfg, 3, 4)[0]
    mapping, _ = resolve("--window_a", "percentile:0,100", domain.headers, domain.paths, 3, 2)
    pixels = np.stack([np.asarray(Image.open(p)) for p in domain.paths])
    assert (mapping.low, mapping.high, mapping.dtype) == (pixels.min(), pixels.max(), "uint8")
    x = dataclasses.replace(domain, intensity=mapping).read(domain.paths[0])
    assert isinstance(x, torch.Tensor) and x.shape == (3, 6, 8) and x.min() >= -1 and x.max() <= 1


def test_sample_grids_of_sixteen_bit_data_show_each_domain_through_its_window(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    windows = {"A": (1000, 1255), "B": (30000, 30255)}  # 255 wide: each raw value inside is one 8-bit level
    raw: dict[str, list[np.ndarray]] = {}
    for split in ("trainA", "trainB", "testA", "testB"):
        (tmp_path / "data" / split).mkdir(parents=True)
        low, high = windows[split[-1]]
        raw[split] = [rng.integers(low - 300, high + 300, (32, 32)).astype(np.uint16) for _ in range(2)]
        for i, values in enumerate(raw[split]):
            _write_png16(tmp_path / "data" / split / f"{i}.png", values)
    cfg = tiny_config(
        tmp_path / "data", tmp_path / "runs", input_nc=1, output_nc=1, window_a="1000,1255",
        window_b="30000,30255", max_steps=1,
    )  # fmt: skip
    run = train(cfg, show_progress=False, report=False).run_dir
    (drawn,) = (run / "samples").iterdir()  # the end's grid: rows of real A, G_A(A), .., real B, ...
    grid = np.asarray(Image.open(drawn))
    assert grid.shape == (2 + 2 * 34, 2 + 6 * 34, 3)  # 2 rows, 6 columns of 32-px tiles, 2-px padding
    for row in range(2):
        for column, side in ((0, "A"), (3, "B")):
            tile = grid[2 + row * 34 : 34 + row * 34, 2 + column * 34 : 34 + column * 34]
            low, _ = windows[side]
            shown = np.clip(raw[f"test{side}"][row].astype(int) - low, 0, 255)  # the test images, windowed
            assert (shown == 0).any() and (shown == 255).any()
            np.testing.assert_array_equal(tile, np.repeat(shown[..., None], 3, axis=2))


def test_eval_fid_on_sixteen_bit_data_scores_the_windowed_slices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(3)
    levels: dict[str, list[np.ndarray]] = {}
    for split in ("trainA", "trainB", "testA", "testB"):
        (tmp_path / "data" / split).mkdir(parents=True)
        levels[split] = [rng.integers(0, 256, (40, 40)) for _ in range(3)]
        for i, grey in enumerate(levels[split]):  # 257 × an 8-bit level: the window shows that level exactly
            _write_png16(tmp_path / "data" / split / f"{i}.png", (grey * 257).astype(np.uint16))
    cfg = tiny_config(tmp_path / "data", tmp_path / "runs", input_nc=1, output_nc=1, max_steps=1)
    run = train(cfg, show_progress=False).run_dir
    plain = evaluate(run, tmp_path / "data", out_dir=tmp_path / "plain", kid_subsets=2, show_progress=False)
    stand_in = StandInInception()
    monkeypatch.setattr(metrics, "load_inception", lambda *args, **kwargs: stand_in)
    data, out = str(tmp_path / "data"), str(tmp_path / "fid")
    latest = str(run / "checkpoints" / "latest.safetensors")
    assert (
        main(["eval", str(run), latest, "--dataroot", data, "--out", out, "--kid_subsets", "2", "--fid"]) == 0
    )
    scored = ResultTable.load(tmp_path / "fid" / "run" / "eval.json")
    ranking = ResultTable.load(tmp_path / "fid" / "ranking.json")
    assert {row.method for row in ranking.rows} == {"run", "latest"}
    assert all(np.isfinite(row.scores["mean KID"]) for row in ranking.rows)

    assert scored.notes[0] == WINDOWED_FID_NOTE and plain.notes[0] == FID_NOTE
    assert scored.columns == ["FID", "KID", "KID std", *plain.columns]
    fed = [batch.shape for batch in stand_in.inputs]  # twice: 3 real A, 3 real B, 3 G(A), 3 F(B)
    assert sum(shape[0] for shape in fed) == 24 and {shape[1:] for shape in fed} == {(3, 299, 299)}
    for with_fid, without in zip(scored.rows, plain.rows, strict=True):
        assert {c: with_fid.scores[c] for c in plain.columns} == without.scores
        assert all(np.isfinite(with_fid.scores[c]) for c in ("FID", "KID"))

    def features(split: str) -> torch.Tensor:
        pictures = [torch.from_numpy(grey / 255.0).float().expand(3, -1, -1) for grey in levels[split]]
        return metrics.inception_features(StandInInception(), pictures)

    baseline = next(r for r in scored.rows if r.method == "untranslated input" and r.direction == "A→B")
    assert baseline.scores["FID"] == pytest.approx(
        metrics.fid(features("testA"), features("testB")), rel=1e-9
    )


def test_with_a_fixed_window_a_nan_image_is_skipped_in_training_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _float_domains_with_a_nan_image(tmp_path / "data")
    windows = dict(window_a="0,1024", window_b="0,1024", serial_batches=True, max_steps=2)
    result = train(
        tiny_config(data, tmp_path / "runs", input_nc=1, output_nc=1, **windows), show_progress=False
    )
    assert result.progress.step == 2 and result.skipped_files == {str(data / "trainA" / "b.tif")}
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]
    assert len(warnings) == 1 and "b.tif holds NaN or infinite values" in warnings[0]
