from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cyclegan.cli import main
from cyclegan.config import TrainConfig
from cyclegan.data.datasets import list_images
from cyclegan.data.paired import PairedDataset
from cyclegan.demo import DemoSettings, format_scores, run_demo
from cyclegan.errors import CycleGANError
from cyclegan.evaluation.metrics import psnr
from cyclegan.evaluation.results import ResultTable
from cyclegan.models import checkpoints
from cyclegan.training.loop import train, training_data


def tiny(out: Path, **overrides) -> DemoSettings:
    return DemoSettings(
        **{"out": out, "steps": 3, "size": 32, "ngf": 4, "ndf": 4, "device": "cpu", **overrides}
    )


def test_demo_resumes_an_interrupted_run_scores_it_and_writes_the_page(tmp_path: Path) -> None:
    settings = tiny(tmp_path / "demo")
    data = tmp_path / "demo" / "data"
    from cyclegan.data.demo_scenes import make_demo_dataset

    cfg = settings.train_config(make_demo_dataset(data, seed=0, size=32))
    stopped = train(cfg, should_stop=lambda: True, show_progress=False)
    assert stopped.interrupted and stopped.progress.step == 1

    page = run_demo(settings, show_progress=False)
    run = tmp_path / "demo" / "day2night"
    assert page == run / "report.html"
    assert checkpoints.read_weights(run / "checkpoints" / "latest.safetensors")[2]["step"] == 3
    scores = ResultTable.load(run / "demo.json")
    methods = {(row.method, row.direction) for row in scores.rows}
    assert methods == {
        (m, d) for m in ("CycleGAN", "colour transfer", "untranslated input") for d in ("A→B", "B→A")
    }
    day = np.stack([np.asarray(Image.open(p)) for p in list_images(data / "testA")])
    night = np.stack([np.asarray(Image.open(p)) for p in list_images(data / "testB")])
    as_unit = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).double() / 255  # noqa: E731
    expected = psnr(as_unit(day), as_unit(night)).mean().item()
    assert scores.row("untranslated input", "A→B").scores["PSNR"] == pytest.approx(expected)
    html = page.read_text()
    assert "colour transfer" in html and "day ↔ night" in html
    table = format_scores(scores).splitlines()
    for row, line in zip(scores.rows, table[1:], strict=True):
        assert line.split()[0] == row.direction and row.method in line
        assert line.split()[-2:] == [f"{row.scores['PSNR']:.2f}", f"{row.scores['SSIM']:.3f}"]


def test_demo_reruns_without_retraining_and_refuses_other_settings(tmp_path: Path) -> None:
    run_demo(tiny(tmp_path), show_progress=False)
    latest = tmp_path / "day2night" / "checkpoints" / "latest.safetensors"
    before = latest.stat().st_mtime_ns
    run_demo(tiny(tmp_path), show_progress=False)
    assert latest.stat().st_mtime_ns == before
    with pytest.raises(CycleGANError, match="other demo settings"):
        run_demo(tiny(tmp_path, ngf=8), show_progress=False)


def test_cli_demo_trains_pix2pix_on_the_paired_renders_and_scores_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["demo", "--model", "pix2pix", "--out", str(tmp_path), "--steps", "2", "--size", "32"]
    assert main([*args, "--ngf", "4", "--ndf", "4", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    run, data = tmp_path / "day2night_pix2pix", tmp_path / "data_paired"
    cfg = TrainConfig.load(run / "config.json")
    assert cfg.model.name == "pix2pix" and cfg.dataroot == str(data)
    assert not (tmp_path / "data").exists()  # the unpaired renders were not made
    assert json.loads((data / "demo_dataset.json").read_text())["paired"] is True
    names = [p.name for p in list_images(data / "trainA")]
    assert names == [p.name for p in list_images(data / "trainB")]  # trainB/x.png is trainA/x.png by night
    dataset, skipped = training_data(cfg)
    assert isinstance(dataset, PairedDataset) and len(dataset) == len(names) and not skipped
    states, options, info = checkpoints.read_weights(run / "checkpoints" / "latest.safetensors")
    assert set(states) == {"G", "D"} and options.name == "pix2pix" and info["step"] == 2
    scores = ResultTable.load(run / "demo.json")
    assert [(row.method, row.direction) for row in scores.rows] == [
        (method, "A→B") for method in ("pix2pix", "colour transfer", "untranslated input")
    ]
    assert all(math.isfinite(row.scores[k]) for row in scores.rows for k in ("PSNR", "SSIM"))
    assert "pix2pix" in out and f"Report: {run / 'report.html'}" in out
