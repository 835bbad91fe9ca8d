from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import write_images

from cyclegan.cli import main


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str) -> Result:
    """The CLI in this process (as the console script runs it), with its output captured."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exit:  # argparse's usage errors and --help
            code = exit.code if isinstance(exit.code, int) else 2
    return Result(code, out.getvalue(), err.getvalue())


def one_line_error(result: Result) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_train_help_lists_the_reference_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["train", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for option in (
        "--n_epochs", "--n_epochs_decay", "--lambda_A", "--lambda_B", "--lambda_identity", "--pool_size",
        "--load_size", "--crop_size", "--preprocess", "--netG", "--netD", "--n_layers_D", "--ngf", "--ndf",
        "--norm", "--no_dropout", "--init_type", "--init_gain", "--batch_size", "--lr", "--beta1",
        "--gan_mode", "--direction", "--serial_batches", "--no_flip", "--gpu_ids", "--device", "--seed",
        "--resume", "--domain_a", "--domain_b",
    ):  # fmt: skip
        assert option in text, option
    assert "weight of the cycle loss A->B->A (default: 10.0)" in text


def test_bad_flags_and_missing_folders_give_one_line_errors(tmp_path: Path) -> None:
    assert "--netG must be one of" in one_line_error(
        run_cli("train", "--dataroot", "x", "--netG", "resnet_7blocks")
    )
    assert "unrecognized arguments" in one_line_error(run_cli("train", "--dataroot", "x", "--bogus"))
    line = one_line_error(
        run_cli("train", "--dataroot", str(tmp_path / "missing"), "--checkpoints_dir", str(tmp_path))
    )
    assert "image folder not found" in line and "missing" in line
    assert "--dataroot" in one_line_error(run_cli("train"))
    assert "not a run folder" in one_line_error(run_cli("train", "--resume", str(tmp_path)))
    assert "--gpu_ids" in one_line_error(run_cli("train", "--dataroot", "x", "--gpu_ids", "0,1"))
    device = run_cli("translate", str(tmp_path), "--checkpoint", "x", "--out", "o", "--device", "cuda:3")
    assert "CUDA" in one_line_error(device)


def test_translate_cli_reports_a_wrong_checkpoint_in_one_line(tmp_path: Path) -> None:
    write_images(tmp_path / "in", 1)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"nope")
    line = one_line_error(
        run_cli("translate", str(tmp_path / "in"), "--checkpoint", str(bad), "--out", str(tmp_path / "o"))
    )
    assert "bad.pth" in line
    assert "input not found" in one_line_error(
        run_cli(
            "translate", str(tmp_path / "none.png"), "--checkpoint", str(bad), "--out", str(tmp_path / "o")
        )
    )


def test_train_resume_and_translate_end_to_end(dataroot: Path, tmp_path: Path) -> None:
    common = [
        "--ngf",
        "4",
        "--ndf",
        "4",
        "--netG",
        "resnet_6blocks",
        "--load_size",
        "36",
        "--crop_size",
        "32",
        "--num_workers",
        "0",
    ]
    common += ["--gpu_ids", "-1", "--seed", "1", "--print_freq", "1"]
    first = run_cli("train", "--dataroot", str(dataroot), "--checkpoints_dir", str(tmp_path), "--name", "r",
                    "--max_steps", "2", *common)  # fmt: skip
    assert first.returncode == 0, first.stderr
    run = tmp_path / "r"
    assert json.loads((run / "config.json").read_text())["device"] == "cpu"
    again = run_cli(
        "train", "--dataroot", str(dataroot), "--checkpoints_dir", str(tmp_path), "--name", "r", *common
    )
    assert "already exists" in one_line_error(again)
    assert "--ngf cannot change" in one_line_error(run_cli("train", "--resume", str(run), "--ngf", "8"))
    resumed = run_cli("train", "--resume", str(run), "--max_steps", "3")
    assert resumed.returncode == 0, resumed.stderr
    assert len((run / "log.jsonl").read_text().splitlines()) == 3
    out = run_cli(
        "translate", str(dataroot / "testA"), "--checkpoint", str(run), "--out", str(tmp_path / "o")
    )
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["img_000.png", "img_001.png"]
    report = run_cli("report", str(run))
    assert report.returncode == 0 and (run / "report.html").is_file()


def test_download_and_data_check_commands(tmp_path: Path, dataroot: Path) -> None:
    listing = run_cli("download", "--list")
    assert listing.returncode == 0 and "horse2zebra" in listing.stdout and "style_monet" in listing.stdout
    assert "unknown pretrained model" in one_line_error(
        run_cli("download", "model", "nope", "--root", str(tmp_path))
    )
    check = run_cli("data", "check", str(dataroot))
    assert check.returncode == 0 and "will train" in check.stdout
    (tmp_path / "half" / "trainA").mkdir(parents=True)
    write_images(tmp_path / "half" / "trainA", 1)
    failing = run_cli("data", "check", str(tmp_path / "half"))
    assert failing.returncode == 1 and "will not train" in failing.stdout
