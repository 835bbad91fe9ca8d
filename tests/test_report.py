"""The run report must be one self-contained, well-formed page that survives half-written or missing
inputs, escapes everything it quotes, and shows the numbers and images it was given."""

from __future__ import annotations

import base64
import io
import json
import math
import re
import shutil
import subprocess
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pytest
from PIL import Image

from cyclegan.errors import CycleGANError
from cyclegan.evaluation import charts, report
from cyclegan.evaluation.runfiles import column, read_jsonl

LOSSES = ("D_A", "G_A", "cycle_A", "idt_A", "D_B", "G_B", "cycle_B", "idt_B")
VOID = {"meta", "img", "br", "hr", "link", "input"}
EVAL = {
    "title": "Test split",
    "protocol": {"network": "Inception-v3 pool3", "images": 120},
    "columns": ["FID", "KID", "SSIM", "time"],
    "rows": [
        {"method": "CycleGAN", "direction": "A→B", "FID": 78.2345, "KID": 0.014321, "SSIM": 0.5, "time": 3},
        {"method": "untranslated input", "direction": "A→B", "FID": 171.98, "KID": 0.1112, "SSIM": 0.61},
        {"method": "CycleGAN", "direction": "B→A", "FID": 139.5, "KID": None, "SSIM": 0.7},
    ],
    "notes": ["FID is biased upwards with few images."],
}


class Page(HTMLParser):
    """Checks that every opened element is closed in order, and collects ids, references and whatever
    could fetch from outside the page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.mismatched: list[str] = []
        self.sources: list[str] = []  # src, href and xlink:href values
        self.external: list[str] = []  # elements that run or fetch something, and absolute URLs
        self.ids: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "link", "iframe", "object", "embed"):
            self.external.append(tag)
        for name, value in attrs:
            value = value or ""
            if name.endswith("src") or name.endswith("href"):
                self.sources.append(value)
            if "://" in value and not name.startswith("xmlns"):
                self.external.append(f"{tag} {name}={value}")
            if name == "id":
                self.ids.append(value)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack.pop() != tag:
            self.mismatched.append(tag)


def write_run(run: Path, name: str = "horse2zebra", n_rows: int = 300, n_samples: int = 12) -> Path:
    """A fake run folder as ``cyclegan train`` leaves it, with a NaN, an inf and a half-written last line."""
    (run / "samples").mkdir(parents=True)
    config = {"name": name, "n_epochs": 2, "n_epochs_decay": 3, "lr": 0.0002, "model": {"ngf": 64}}
    (run / "config.json").write_text(json.dumps(config))
    rows = []
    for i in range(1, n_rows + 1):
        row = {"step": 10 * i, "epoch": 1 + i // 100, "lr": 2e-4, "time": 0.5 * i, "extra": "ignored"}
        row.update({k: 1 / math.sqrt(i) + (0.05 if i % 2 else 0) for k in LOSSES})
        if i == 11:
            row["G_A"], row["D_B"] = math.nan, math.inf
        rows.append(row)
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 99999, "G_')
    metrics = [{"KID A→B": 0.05, "FID A→B": 150.0}, {"KID A→B": 0.02, "FID A→B": 90.0}, {"KID A→B": 0.03}]
    eval_log = [{"epoch": 1, "step": 1000 * (i + 1), "metrics": m} for i, m in enumerate(metrics)]
    (run / "eval_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in eval_log))
    (run / "eval.json").write_text(json.dumps(EVAL))
    for i in range(n_samples):
        image = Image.new("RGB", (6 * 10, 2 * 10), (20 * i, 100, 200))
        image.save(run / "samples" / f"step_{400 * (i + 1):07d}.png")
    return run


def charts_of(page: str) -> list[str]:
    return re.findall(r"<svg class='chart'.*?</svg>", page, re.S)


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> str:
    run = write_run(tmp_path_factory.mktemp("report") / "run")
    path = report.write_report(run)
    assert path == run / "report.html"
    return path.read_text(encoding="utf-8")


def test_page_is_self_contained_and_well_formed(page: str) -> None:
    parsed = Page(page)
    assert parsed.stack == [] and parsed.mismatched == []
    assert parsed.external == []
    assert parsed.sources and all(src.startswith(("data:image/", "#")) for src in parsed.sources)
    for section in ("Evaluation", "Loss curves", "Samples", "Config"):
        assert f"<h2>{section}</h2>" in page
        assert f">{section}</a>" in page.split("</nav>")[0]  # listed in the navigation bar


def test_ids_are_unique_across_charts_and_every_reference_resolves(page: str) -> None:
    ids = Page(page).ids
    assert ids and [i for i, n in Counter(ids).items() if n > 1] == []
    references = re.findall(r"url\(#([^)]+)\)", page) + re.findall(r"href=[\"']#([^\"']+)", page)
    assert references and set(references) <= set(ids)


def test_at_most_eight_samples_are_embedded_first_and_last_included(page: str) -> None:
    images = re.findall(r"data:image/(png|jpeg);base64,([A-Za-z0-9+/=]+)", page)
    assert len(images) == report.MAX_SAMPLES
    assert [kind for kind, _ in images] == ["png"] + ["jpeg"] * (report.MAX_SAMPLES - 1)  # latest lossless
    assert "step 400<" in page and "Latest: step 4,800" in page
    assert "8 of 12 sample grids" in page
    latest = Image.open(io.BytesIO(base64.b64decode(images[0][1])))
    assert latest.size == (60, 20) and latest.getpixel((0, 0)) == (220, 100, 200)
    assert all(label in page for label in ("G_B(G_A(A))", "G_A(G_B(B))"))


def test_losses_lr_and_metrics_are_charted(page: str) -> None:
    charts = charts_of(page)
    labels = [re.search(r"aria-label='([^']*)'", chart)[1] for chart in charts]
    assert labels == [
        "KID during training (lower is better)",
        "FID during training (lower is better)",
        "Adversarial losses",
        "Cycle and identity losses",
        "Learning rate",
    ]
    adversarial = charts[2]
    assert all(f">{name}</text>" in adversarial for name in ("G_A", "G_B", "D_A", "D_B"))
    assert adversarial.count("<path") > 8  # four raw lines and four moving averages, and the axes
    assert not any(re.search(r"\b(nan|inf)\b", chart.lower()) for chart in charts)
    assert "1 unreadable line(s) of log.jsonl skipped" in page
    assert ">KID A→B, best 0.0200</text>" in charts[0]
    assert "best KID A→B: 0.0200 at step 2,000" in page and "best FID A→B: 90.00 at step 2,000" in page


def test_summary_line(page: str) -> None:
    summary = re.search(r"<p class='summary'>(.*?)</p>", page)[1]
    assert "3,000 steps" in summary and "epoch 4 of 5" in summary and "best KID A→B 0.0200" in summary
    assert "G_A 0.0577" in summary


def test_evaluation_table_shows_numbers_and_best_per_direction(page: str) -> None:
    table = re.search(r"<table class='results'>.*?</table>", page, re.S)[0]
    for text in ("78.23", "172.0", "0.0143", "0.111", "0.500", "—", "untranslated input", "FID ↓", "SSIM ↑"):
        assert text in table
    best = re.findall(r"<td class='num best'>([^<]*)</td>", table)
    assert best == ["78.23", "0.0143", "0.610"]  # B→A has one CycleGAN row: nothing to compare
    assert "<dt>images</dt><dd>120</dd>" in page and "FID is biased upwards" in page


def test_everything_quoted_from_files_is_escaped(tmp_path: Path) -> None:
    evil = "<script>alert(1)</script>"
    run = write_run(tmp_path / "run", name=evil, n_rows=3, n_samples=1)
    demo = {"title": evil, "protocol": {evil: evil}, "columns": [evil], "notes": [evil]}
    demo["rows"] = [{"method": evil, "direction": evil, evil: 1.0}]
    (run / "demo.json").write_text(json.dumps(demo))
    (run / "eval_log.jsonl").write_text(json.dumps({"step": 1, "metrics": {evil: 0.5, "$\\frac{": 1}}))
    text = report.write_report(run).read_text(encoding="utf-8")
    assert "<script" not in text
    assert text.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 9
    assert ">$\\frac{</text>" in text  # a metric's name is not read as TeX
    assert Page(text).mismatched == []


def test_run_with_only_a_config_says_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"name": "empty", "model": {}}))
    text = report.write_report(tmp_path).read_text(encoding="utf-8")
    assert "No losses recorded" in text and "No samples recorded" in text and "No evaluation recorded" in text
    assert "no losses recorded yet" in text and "<svg" not in text
    parsed = Page(text)
    assert parsed.stack == [] and parsed.mismatched == []


def test_single_points_and_unreadable_files_still_render(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", n_rows=1, n_samples=1)
    (run / "eval.json").write_text("{not json")
    (run / "demo.json").write_text(json.dumps({**EVAL, "columns": ["FID", 3]}))
    (run / "eval_log.jsonl").write_text(json.dumps({"step": 5, "metrics": {"KID A→B": 0.1}}) + "\n")
    text = report.write_report(run).read_text(encoding="utf-8")
    assert "eval.json could not be read: not valid JSON" in text
    assert "demo.json could not be read: columns[1] must be a string, not a number" in text
    assert text.count("data:image/png;base64,") == 1 and "Latest: step 400" in text
    assert len(charts_of(text)) == 4 and "Faint: logged means" not in text


def test_garbage_in_every_file_still_makes_a_page(tmp_path: Path) -> None:
    """A report is written when training ends: whatever it reads, it must not fail the run."""
    (tmp_path / "samples" / "step_0000001.png").mkdir(parents=True)
    (tmp_path / "samples" / "step_0000002.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (tmp_path / "samples" / "step_x.png").write_bytes(b"")
    config = {"name": ["x"], "n_epochs": "many", "n_epochs_decay": True, "model": [1, {"a": None}]}
    (tmp_path / "config.json").write_text(json.dumps(config))
    rows = [
        {"step": "1", "G_A": [1], "lr": {"x": 1}, "epoch": None},
        {"step": True, "G_A": 1, "D_A": 10**400},
        {"step": 10**400, "G_A": 1.0},
        {"step": 3, "G_A": 1e308, "G_B": -1e308, "D_A": 1e-320, "time": -5, "epoch": 1e300},
        {"step": 4, "kind": "health", "warnings": ["G_A exploded"]},
        [1, 2],
        "\ud800",
    ]
    log = "\n".join(json.dumps(row) if not isinstance(row, str) else row for row in rows)
    (tmp_path / "log.jsonl").write_bytes(log.encode("utf-8", "surrogatepass") + b"\n\xff\xfe{" + b"[" * 10**5)
    eval_log = [{"step": 1, "metrics": [1]}, {"step": 2, "metrics": {"": 1, "KID": "x", "FID": None}}]
    (tmp_path / "eval_log.jsonl").write_text("\n".join(map(json.dumps, eval_log)))
    (tmp_path / "eval.json").write_bytes(b"\xff\xfe\x00")
    (tmp_path / "demo.json").write_text("[" * 10**5)
    text = report.write_report(tmp_path).read_text(encoding="utf-8")
    assert "step_0000002.png could not be read" in text and "3 unreadable line(s)" in text
    assert "eval.json could not be read" in text and "demo.json could not be read" in text
    assert Page(text).mismatched == []


def test_missing_run_folder_or_config_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(CycleGANError, match="run folder not found"):
        report.write_report(tmp_path / "nope")
    with pytest.raises(CycleGANError, match=r"no config\.json"):
        report.write_report(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2")
    with pytest.raises(CycleGANError, match="cannot read"):
        report.write_report(tmp_path)
    assert list(tmp_path.iterdir()) == [tmp_path / "config.json"]


def test_write_is_atomic_and_goes_where_asked(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", n_rows=5, n_samples=2)
    out = tmp_path / "pages" / "run.html"
    out.parent.mkdir()
    out.write_text("old")
    assert report.write_report(run, out) == out
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in out.parent.iterdir()] == ["run.html"]
    assert not (run / "report.html").exists()
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_charts_are_deterministic_and_leave_matplotlib_as_it_was() -> None:
    watched = [*charts.STYLE, "svg.hashsalt", "font.size"]
    before = {key: mpl.rcParams[key] for key in watched}
    series = [charts.Series("x", [(float(i), math.sin(i)) for i in range(40)], "#000")]
    first = charts.line_chart("a", series)
    assert first == charts.line_chart("a", series)
    assert first != charts.line_chart("b", series)  # another label salts the ids apart
    assert {key: mpl.rcParams[key] for key in watched} == before
    assert first.startswith("<svg class='chart'") and "<?xml" not in first and "<dc:date>" not in first


def test_chart_of_one_point_none_and_many_points() -> None:
    one = charts.line_chart("one", [charts.Series("x", [(3.0, 0.5)], "#000")])
    assert one is not None and "<use" in one  # a dot: a single point makes no line
    assert charts.line_chart("none", [charts.Series("x", [], "#000"), charts.Series("y", [], "#000")]) is None
    assert charts.line_chart("huge", [charts.Series("x", [(0.0, 1e300)], "#000")]) is None
    many = [(float(i), math.sin(i / 100) + (i % 7) / 10) for i in range(50_000)]
    chart = charts.line_chart("many", [charts.Series("x", many, "#000")])
    vertices = [path.count("L") + 1 for path in re.findall(r' d="([^"]*)"', chart)]
    assert max(vertices) <= charts.MAX_POINTS
    assert len(chart) < 60_000


def test_decimation_keeps_spikes_and_moving_average_follows_the_trend() -> None:
    xs, ys = np.arange(50_000.0), np.zeros(50_000)
    ys[12_345], ys[40_000] = 9.0, -9.0
    kept_x, kept_y = charts.decimate(xs, ys, 1000)
    assert len(kept_x) <= 1000 and {12_345.0, 40_000.0} <= set(kept_x) and kept_y.max() == 9.0
    assert np.all(np.diff(kept_x) > 0)
    noisy = np.linspace(0, 1, 6000) + np.where(np.arange(6000) % 2, 0.5, -0.5)
    assert np.abs(charts.moving_average(noisy) - np.linspace(0, 1, 6000))[200:-200].max() < 0.01


def test_read_jsonl_skips_what_does_not_parse(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text(
        '{"step": 1, "G_A": NaN}\n\n[1]\n{"step": 2, "G_A": 0.5}\n{"step": 3, "G_A": true}\n{"step'
    )
    rows, skipped = read_jsonl(path)
    assert [r["step"] for r in rows] == [1, 2, 3] and skipped == 2
    assert column(rows, "G_A") == [(2.0, 0.5)]
    assert read_jsonl(tmp_path / "missing.jsonl") == ([], 0)


def test_sample_grids_are_scaled_down_and_earlier_ones_compressed(tmp_path: Path) -> None:
    path = tmp_path / "wide.png"
    Image.new("RGB", (1000, 100), (10, 200, 30)).save(path)
    for lossless, kind in ((True, "png"), (False, "jpeg")):
        embedded = report.image_data_uri(path, 500, lossless)
        assert embedded is not None and embedded[1] == 500
        header, data = embedded[0].split(",", 1)
        assert header == f"data:image/{kind};base64"
        image = Image.open(io.BytesIO(base64.b64decode(data)))
        assert image.size == (500, 50) and image.format.lower() == kind
    (tmp_path / "broken.png").write_bytes(b"not a png")
    assert report.image_data_uri(tmp_path / "broken.png", 500, True) is None


def test_headless_browser_draws_the_page(page: str, tmp_path: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (apt install chromium)")
    (tmp_path / "report.html").write_text(page, encoding="utf-8")
    shot = tmp_path / "shot.png"
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    command += [f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1100,1800", f"--screenshot={shot}"]
    subprocess.run(
        [*command, (tmp_path / "report.html").as_uri()], capture_output=True, timeout=60, check=True
    )
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
    assert (pixels < 128).all(axis=1).mean() > 0.003  # dark text and lines drawn
    blue = (pixels == (0, 114, 178)).all(axis=1).mean()  # the A->B colour: the charts were drawn
    assert blue > 0.0002


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (85.1234, "85.12"),
        (171.98, "172.0"),
        (0.012345, "0.0123"),
        (0.5, "0.500"),
        (2e-5, "2.00e-05"),
        (0, "0"),
        (3, "3"),
    ],
)
def test_numbers_are_rounded_for_reading(value: float, text: str) -> None:
    assert report.fmt_number(value) == text


def test_which_way_is_better() -> None:
    names = ("FID", "KID A→B", "KID std", "L1", "PSNR", "SSIM", "time")
    assert [report.better(n) for n in names] == ["lower", "lower", None, "lower", "higher", "higher", None]
