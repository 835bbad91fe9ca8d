from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cyclegan.data.datasets import list_images
from cyclegan.demo import DemoSettings, format_scores, run_demo
from cyclegan.errors import CycleGANError
from cyclegan.evaluate.metrics import psnr
from cyclegan.evaluate.results import ResultTable
from cyclegan.models import checkpoints
from cyclegan.train.loop import train


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
