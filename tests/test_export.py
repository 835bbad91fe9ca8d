from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_images
from PIL import Image

from cyclegan.cli import main
from cyclegan.config import CycleGANOptions, NetConfig
from cyclegan.errors import CycleGANError
from cyclegan.models import checkpoints
from cyclegan.networks import build_generator
from cyclegan.translation.export import OnnxTranslator, export_onnx
from cyclegan.translation.translator import Translator, load_translator

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def save_checkpoint(path: Path, config: NetConfig) -> Path:
    """Our checkpoint format with the two generators (G_B maps B's channels to A's)."""
    torch.manual_seed(0)
    generators = {
        "G_A": build_generator(config),
        "G_B": build_generator(config, config.output_nc, config.input_nc),
    }
    checkpoints.save_weights(path, generators, CycleGANOptions(net=config), {"step": 0})
    return path


@pytest.fixture
def resnet(tmp_path: Path) -> Path:
    return save_checkpoint(tmp_path / "resnet.safetensors", NetConfig(ngf=4, netG="resnet_6blocks"))


@pytest.mark.parametrize(
    ("netG", "norm", "shapes"),
    [
        ("resnet_6blocks", "instance", [(1, 32, 48), (2, 40, 24), (1, 8, 8)]),
        ("unet_128", "batch", [(1, 128, 128), (2, 128, 256)]),
    ],
)
def test_onnxruntime_matches_pytorch_at_every_size_and_batch(
    tmp_path: Path, netG: str, norm: str, shapes: list[tuple[int, int, int]]
) -> None:
    config = NetConfig(ngf=4, netG=netG, norm=norm)
    path = export_onnx(save_checkpoint(tmp_path / "m.safetensors", config), tmp_path / "m.onnx")
    generator, _ = checkpoints.load_generator(tmp_path / "m.safetensors")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    torch.manual_seed(1)
    for n, h, w in shapes:
        x = torch.rand(n, 3, h, w) * 2 - 1
        (y,) = session.run(None, {"image": x.numpy()})
        with torch.no_grad():
            expected = generator(x).numpy()
        assert y.shape == expected.shape
        assert np.abs(y - expected).max() <= 1e-4, (n, h, w)
    # sizes that are not multiples are padded and cropped back exactly as the torch Translator does
    torch_translator, onnx_translator = Translator(generator, config), OnnxTranslator(path)
    for shape in [(3, 37, 29), (2, 3, 30, 45)]:
        x = torch.rand(shape) * 2 - 1
        y, expected = onnx_translator.translate_tensor(x), torch_translator.translate_tensor(x)
        assert y.shape == x.shape
        assert (y - expected).abs().max() <= 1e-4


def test_metadata_documents_architecture_direction_and_contract(tmp_path: Path) -> None:
    config = NetConfig(input_nc=1, output_nc=3, ngf=4, netG="resnet_6blocks")
    checkpoint = save_checkpoint(tmp_path / "m.safetensors", config)
    model = onnx.load(str(export_onnx(checkpoint, tmp_path / "b2a.onnx", direction="BtoA")))
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["model_config"]) == dataclasses.asdict(config)
    assert (meta["direction"], meta["in_channels"], meta["out_channels"]) == ("BtoA", "3", "1")
    assert meta["size_multiple"] == "4"
    assert "127.5" in meta["input"] and "multiples of 4" in meta["input"] and "[-1, 1]" in meta["output"]
    assert model.opset_import[0].version >= 17
    for value in (model.graph.input[0], model.graph.output[0]):
        dims = value.type.tensor_type.shape.dim
        assert [d.dim_param != "" for d in dims] == [True, False, True, True]  # batch, height, width free
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    translator = OnnxTranslator(tmp_path / "b2a.onnx")
    assert (translator.in_channels, translator.multiple, translator.direction) == (3, 4, "BtoA")


def test_translate_with_onnxruntime_writes_the_same_pngs_as_torch(
    tmp_path: Path, resnet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_images(tmp_path / "in", 2, size=(37, 29))
    grey = np.random.default_rng(0).integers(0, 256, (24, 20), dtype=np.uint8)  # not flat: InstanceNorm
    Image.fromarray(grey, "L").save(tmp_path / "in" / "gray.png")  # would amplify mere rounding noise
    assert main(["export", str(resnet), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    assert "m.onnx" in capsys.readouterr().out
    common = [str(tmp_path / "in"), "--device", "cpu"]
    assert main(["translate", *common, "--checkpoint", str(resnet), "--out", str(tmp_path / "pt")]) == 0
    onnx_args = ["--backend", "onnxruntime", "--checkpoint", str(tmp_path / "m.onnx")]
    assert main(["translate", *common, *onnx_args, "--out", str(tmp_path / "ort")]) == 0
    names = sorted(p.name for p in (tmp_path / "pt").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "ort").iterdir()) == ["gray.png", *[
        f"img_00{i}.png" for i in range(2)
    ]]  # fmt: skip
    for name in names:
        a = np.asarray(Image.open(tmp_path / "pt" / name), dtype=int)
        b = np.asarray(Image.open(tmp_path / "ort" / name), dtype=int)
        assert a.shape == b.shape and np.abs(a - b).max() <= 1


def test_bf16_on_cpu_runs_at_reduced_precision_close_to_fp32(resnet: Path) -> None:
    x = torch.rand(3, 40, 36) * 2 - 1
    fp32 = load_translator(resnet, device="cpu").translate_tensor(x)
    bf16 = load_translator(resnet, device="cpu", precision="bf16").translate_tensor(x)
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
    difference = (bf16 - fp32).abs().max().item()
    assert 0 < difference < 0.1  # it did run in bfloat16 (8-bit mantissa), and stays close


def test_export_refuses_to_overwrite_and_reports_bad_input_in_one_line(
    tmp_path: Path, resnet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.onnx"
    out.write_text("mine")
    cases = [
        (["export", str(resnet), "--out", str(out)], "pass --overwrite"),
        (["export", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "x.onnx")], "not found"),
        (["export", str(resnet), "--out", str(tmp_path)], "is a folder"),
        (["export", str(resnet), "--out", str(resnet), "--overwrite"], "overwrite the checkpoint"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert out.read_text() == "mine"
    assert main(["export", str(resnet), "--out", str(out), "--overwrite"]) == 0
    assert onnx.load(str(out)).graph.input[0].name == "image"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "resnet.safetensors"]  # no temporaries


def test_translate_backend_and_precision_errors_are_one_line(
    tmp_path: Path, resnet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_images(tmp_path / "in", 1)
    model = export_onnx(resnet, tmp_path / "m.onnx")
    foreign = tmp_path / "foreign.onnx"
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    onnx.save(onnx.helper.make_model(graph), str(foreign))
    ort_backend = ["--backend", "onnxruntime"]
    cases = [
        ([*ort_backend, "--checkpoint", str(resnet)], "as an ONNX model"),
        ([*ort_backend, "--checkpoint", str(foreign)], "not written by cyclegan export"),
        ([*ort_backend, "--checkpoint", str(model), "--direction", "BtoA"], "pass --direction AtoB"),
        ([*ort_backend, "--checkpoint", str(model), "--precision", "bf16"], "apply to the torch backend"),
        (["--checkpoint", str(model)], "--backend onnxruntime"),
        (["--checkpoint", str(resnet), "--precision", "fp16"], "needs a CUDA device"),
    ]
    for extra, message in cases:
        argv = ["translate", str(tmp_path / "in"), "--device", "cpu", "--out", str(tmp_path / "o"), *extra]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("module", ["onnx", "onnxruntime"])
def test_missing_optional_dependency_names_the_install_command(
    tmp_path: Path, resnet: Path, module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = export_onnx(resnet, tmp_path / "m.onnx")
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(CycleGANError, match=rf"{module} is not installed.*pip install -e '\.\[export\]'"):
        if module == "onnx":
            export_onnx(resnet, tmp_path / "again.onnx")
        else:
            load_translator(model, backend="onnxruntime")
    assert not (tmp_path / "again.onnx").exists()
