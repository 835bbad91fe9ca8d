"""The run report must be one self-contained, well-formed page that survives half-written or missing
inputs, escapes everything it quotes, and shows the numbers and images it was given."""

from __future__ import annotations

import base64
import io
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from cyclegan import report
from cyclegan.errors import CycleGANError

LOSSES = ("D_A", "G_A", "cycle_A", "idt_A", "D_B", "G_B", "cycle_B", "idt_B")
VOID = {"meta", "img", "br", "hr", "link", "input"}
EVAL = {
    "title": "Test split",
    "protocol": {"network": "Inception-v3 pool3", "images": 120},
    "columns": ["FID", "KID", "SSIM", "comment"],
    "rows": [
        {
            "method": "CycleGAN",
            "direction": "A→B",
            "FID": 78.2345,
            "KID": 0.014321,
            "SSIM": 0.5,
            "comment": "x",
        },
        {"method": "untranslated input", "direction": "A→B", "FID": 171.98, "KID": 0.1112, "SSIM": 0.61},
        {"method": "CycleGAN", "direction": "B→A", "FID": 139.5, "KID": None, "SSIM": 0.7},
    ],
    "notes": ["FID is biased upwards with few images."],
}


class Page(HTMLParser):
    """Checks that every opened element is closed in order, and collects what could fetch from outside."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.mismatched: list[str] = []
        self.sources: list[str] = []
        self.external: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "link", "iframe", "object"):
            self.external.append(tag)
        self.sources += [value or "" for name, value in attrs if name in ("src", "href") and tag != "a"]
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


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> str:
    run = write_run(tmp_path_factory.mktemp("report") / "run")
    path = report.write_report(run)
    assert path == run / "report.html"
    return path.read_text()


def test_page_is_self_contained_and_well_formed(page: str) -> None:
    parsed = Page(page)
    assert parsed.stack == [] and parsed.mismatched == []
    assert parsed.external == []
    assert parsed.sources and all(src.startswith("data:image/png;base64,") for src in parsed.sources)
    assert "http" not in " ".join(parsed.sources)
    for section in ("Evaluation", "Loss curves", "Samples", "Config"):
        assert f"<h2>{section}</h2>" in page


def test_at_most_eight_samples_are_embedded_first_and_last_included(page: str) -> None:
    assert page.count("data:image/png;base64,") == report.MAX_SAMPLES
    assert "step 400<" in page and "Latest: step 4,800" in page
    assert "8 of 12 sample grids" in page
    encoded = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)[1]
    assert Image.open(io.BytesIO(base64.b64decode(encoded))).size == (60, 20)
    assert all(label in page for label in ("G_B(G_A(A))", "G_A(G_B(B))"))


def test_losses_lr_and_metrics_are_charted(page: str) -> None:
    charts = re.findall(r"<svg class='chart'.*?</svg>", page, re.S)
    assert len(charts) == 5  # adversarial, cycle/identity, learning rate, KID, FID
    assert all("<polyline" in chart for chart in charts)
    adversarial = next(chart for chart in charts if "aria-label='adversarial losses'" in chart)
    assert all(f">{name}</text>" in adversarial for name in ("G_A", "G_B", "D_A", "D_B"))
    assert not any("nan" in chart.lower() or "inf" in chart.lower() for chart in charts)
    assert "1 unreadable line(s) of log.jsonl skipped" in page
    assert "best KID A→B: 0.0200 at step 2,000" in page


def test_summary_line(page: str) -> None:
    summary = re.search(r"<p class='summary'>(.*?)</p>", page)[1]
    assert "3,000 steps" in summary and "epoch 4 of 5" in summary and "best KID A→B 0.0200" in summary


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
    (run / "demo.json").write_text(json.dumps({"rows": [{"method": evil, "direction": evil, evil: 1.0}]}))
    text = report.write_report(run).read_text()
    assert "<script" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert Page(text).mismatched == []


def test_run_with_only_a_config_says_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"name": "empty", "model": {}}))
    text = report.write_report(tmp_path).read_text()
    assert "No losses recorded" in text and "No samples recorded" in text and "No evaluation recorded" in text
    assert "no losses recorded yet" in text and "<svg" not in text
    parsed = Page(text)
    assert parsed.stack == [] and parsed.mismatched == []


def test_single_points_and_unreadable_files_still_render(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", n_rows=1, n_samples=1)
    (run / "eval.json").write_text("{not json")
    (run / "eval_log.jsonl").write_text(json.dumps({"step": 5, "metrics": {"KID A→B": 0.1}}) + "\n")
    text = report.write_report(run).read_text()
    assert "eval.json could not be read" in text
    assert text.count("data:image/png;base64,") == 1 and "Latest: step 400" in text
    assert "<circle" in text and "<polyline" not in text


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
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert [p.name for p in out.parent.iterdir()] == ["run.html"]
    assert not (run / "report.html").exists()
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_chart_handles_one_point_non_finite_values_and_many_points() -> None:
    one = report.svg_chart("a", "one", [report.Series("x", [(3.0, 0.5)], "#000")])
    assert "<circle" in one and "<polyline" not in one
    assert "No finite values" in report.svg_chart("b", "none", [report.Series("x", [], "#000")])
    many = [(float(i), math.sin(i / 100) + (i % 7) / 10) for i in range(50_000)]
    chart = report.svg_chart("c", "many", [report.Series("x", many, "#000")])
    lines = re.findall(r"points='([^']*)'", chart)
    assert len(lines) == 2  # raw, faint, and its moving average
    assert all(len(line.split()) <= report.MAX_POLYLINE_POINTS for line in lines)


def test_read_jsonl_skips_what_does_not_parse(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 1, "G_A": NaN}\n\n[1]\n{"step": 2, "G_A": 0.5}\n{"step": 3, "G_')
    rows, skipped = report.read_jsonl(path)
    assert [r["step"] for r in rows] == [1, 2] and skipped == 2
    assert report.column(rows, "G_A") == [(2.0, 0.5)]
    assert report.read_jsonl(tmp_path / "missing.jsonl") == ([], 0)


def test_wide_sample_grids_are_scaled_down(tmp_path: Path) -> None:
    path = tmp_path / "wide.png"
    Image.new("RGB", (1000, 100)).save(path)
    embedded = report.png_data_uri(path, 500)
    assert embedded is not None and embedded[1] == 500
    image = Image.open(io.BytesIO(base64.b64decode(embedded[0].split(",", 1)[1])))
    assert image.size == (500, 50)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    assert report.png_data_uri(tmp_path / "broken.png", 500) is None


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (85.1234, "85.12"),
        (171.98, "172.0"),
        (0.012345, "0.0123"),
        (0.5, "0.500"),
        (2e-5, "2.00e-05"),
        (0, "0"),
    ],
)
def test_numbers_are_rounded_for_reading(value: float, text: str) -> None:
    assert report.fmt_number(value) == text


def test_which_way_is_better() -> None:
    assert [report.better(n) for n in ("FID", "KID A→B", "L1", "PSNR", "SSIM", "time")] == [
        "lower",
        "lower",
        "lower",
        "higher",
        "higher",
        None,
    ]
