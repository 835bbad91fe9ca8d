"""``cyclegan report RUN_DIR``: one self-contained HTML page of a training run's results.

Everything — CSS, SVG charts, sample grids as base64 PNGs — is inline, so the page can be mailed, archived
or copied off a remote machine on its own, and it needs no JavaScript. Any input but ``config.json`` may be
missing or half-written (training still running, or killed mid-line): the page then says what is absent
instead of failing.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from cyclegan.errors import CycleGANError
from cyclegan.files import atomic_write_text

ADVERSARIAL = ("G_A", "G_B", "D_A", "D_B")
CYCLE_IDENTITY = ("cycle_A", "cycle_B", "idt_A", "idt_B")
GRID_COLUMNS = ("real A", "G_A(A)", "G_B(G_A(A))", "real B", "G_B(B)", "G_A(G_B(B))")
SAMPLE_NAME = re.compile(r"step_(\d+)\.png")
MAX_SAMPLES = 8
THUMB_WIDTH = 720  # px: two earlier grids a row on an 1100px page, still sharp on 1.3x screens
LATEST_WIDTH = 2200  # px: the full page width at 2x; larger grids only make the page heavy
# Okabe-Ito colours: distinguishable with colour-blindness. Losses of G_A/cycle_A/idt_A/D_A (the A->B
# pair) are blues and those of the B->A pair oranges; D and idt are dashed so they also differ in grey.
PALETTE = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#56b4e9", "#e69f00", "#000000")
LOSS_STYLES = {
    "G_A": ("#0072b2", ""),
    "cycle_A": ("#0072b2", ""),
    "D_A": ("#56b4e9", "6 3"),
    "idt_A": ("#56b4e9", "6 3"),
    "G_B": ("#d55e00", ""),
    "cycle_B": ("#d55e00", ""),
    "D_B": ("#e69f00", "6 3"),
    "idt_B": ("#e69f00", "6 3"),
    "lr": ("#009e73", ""),
}
LOWER_BETTER = ("FID", "KID", "L1")
HIGHER_BETTER = ("PSNR", "SSIM")

# Chart geometry, in SVG user units (= CSS px at the page's full width).
WIDTH, HEIGHT = 540, 280
LEFT, RIGHT, BOTTOM = 60, 16, 38
SMOOTH_FROM = 20  # points: below this every point is shown as is
MAX_POLYLINE_POINTS = 1200

Point = tuple[float, float]


@dataclass
class Series:
    name: str
    points: list[Point]
    color: str
    dash: str = ""


@dataclass
class Mark:
    """An annotated point on a chart, such as the best KID."""

    x: float
    y: float
    color: str
    text: str


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    """Render the run folder as one HTML page (default ``run_dir/report.html``) and return its path."""
    run_dir = Path(run_dir)
    out = run_dir / "report.html" if out is None else Path(out)
    atomic_write_text(out, render_report(run_dir))
    return out


def render_report(run_dir: Path) -> str:
    """The page as text; separate from writing so that a page is only ever written whole."""
    config = read_config(run_dir)
    log, log_skipped = read_jsonl(run_dir / "log.jsonl")
    eval_log, _ = read_jsonl(run_dir / "eval_log.jsonl")
    metrics = metric_series(eval_log)
    name = str(config.get("name") or run_dir.name)
    generated = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    body = "\n".join(
        (
            f"<header><h1>CycleGAN run <span class='name'>{esc(name)}</span></h1>",
            f"<p class='meta'>Generated {esc(generated)} from <code>{esc(str(run_dir))}</code></p>",
            f"<p class='summary'>{summary(config, log, metrics)}</p>",
            "<nav><a href='#evaluation'>Evaluation</a> <a href='#losses'>Loss curves</a> "
            "<a href='#samples'>Samples</a> <a href='#config'>Config</a></nav></header>",
            evaluation_section(run_dir, metrics),
            loss_section(log, log_skipped),
            samples_section(run_dir / "samples"),
            config_section(config),
        )
    )
    return (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>\n"
        f"<title>{esc(name)} · CycleGAN report</title>\n<style>{CSS}</style>\n</head>\n"
        f"<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


# --- reading the run folder ---------------------------------------------------------------------------


def read_config(run_dir: Path) -> dict[str, Any]:
    """The run's ``config.json``: the one file a report cannot do without, so its absence is an error."""
    if not run_dir.is_dir():
        raise CycleGANError(f"run folder not found: {run_dir}")
    path = run_dir / "config.json"
    if not path.is_file():
        raise CycleGANError(f"{run_dir} has no config.json; is it a run folder made by cyclegan train?")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise CycleGANError(f"cannot read {path}: {error}") from None
    if not isinstance(config, dict):
        raise CycleGANError(f"{path} does not hold a JSON object")
    return config


def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The JSON objects of a log, and how many lines were skipped (a run killed mid-write leaves one)."""
    if not path.is_file():
        return [], 0
    rows, skipped = [], 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        else:
            skipped += 1
    return rows, skipped


def is_number(value: Any) -> bool:
    return type(value) in (int, float)  # JSON numbers, not booleans


def is_finite(value: Any) -> bool:
    return is_number(value) and math.isfinite(value)


def column(rows: Iterable[dict[str, Any]], key: str) -> list[Point]:
    """(step, value) of one logged quantity, sorted by step; NaN, inf and non-numbers left out."""
    return sorted(
        (float(row["step"]), float(row[key]))
        for row in rows
        if is_finite(row.get("step")) and is_finite(row.get(key))
    )


def metric_series(eval_log: Iterable[dict[str, Any]]) -> dict[str, list[Point]]:
    """Metric name -> (step, value) from ``eval_log.jsonl``."""
    series: dict[str, list[Point]] = {}
    for row in eval_log:
        metrics = row.get("metrics")
        if not is_finite(row.get("step")) or not isinstance(metrics, dict):
            continue
        for name, value in metrics.items():
            if is_finite(value):
                series.setdefault(str(name), []).append((float(row["step"]), float(value)))
    return {name: sorted(points) for name, points in series.items()}


# --- formatting -----------------------------------------------------------------------------------------


def esc(text: str) -> str:
    return html.escape(text, quote=True)


def fmt_number(value: float) -> str:
    """2-4 significant decimals: FID 85.12, KID 0.0123, SSIM 0.712, tiny values 2.00e-05."""
    if isinstance(value, int):
        return str(value)
    size = abs(value)
    if size == 0:
        return "0"
    if not math.isfinite(value):
        return str(value)
    if size >= 100:
        return f"{value:.1f}"
    if size >= 1:
        return f"{value:.2f}"
    if size >= 1e-4:
        return f"{value:.{2 - math.floor(math.log10(size))}f}"
    return f"{value:.2e}"


def fmt_step(value: float) -> str:
    for size, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:g}{suffix}"
    return f"{value:g}"


def fmt_duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min" if minutes else f"{seconds:.0f} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def exact(value: Any) -> str:
    """A value as written in its file (config options and protocol entries are not rounded)."""
    if value is None:
        return "—"
    return esc(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))


def cell(value: Any) -> str:
    """A results cell's escaped text: numbers rounded for reading, null as a dash, anything else as is."""
    if is_number(value):
        return esc(fmt_number(value))
    return exact(value)


def better(name: str) -> str | None:
    """'lower' or 'higher' when a metric's name says which way is better, else None."""
    upper = name.upper()
    if upper.endswith(" STD"):
        return None  # a spread, not a score
    if any(key in upper for key in LOWER_BETTER):
        return "lower"
    if any(key in upper for key in HIGHER_BETTER):
        return "higher"
    return None


# --- summary --------------------------------------------------------------------------------------------


def summary(config: dict[str, Any], log: list[dict[str, Any]], metrics: dict[str, list[Point]]) -> str:
    """One line: how far training got, where the losses ended, and the best KID seen during training."""
    parts = []
    if log:
        last = log[-1]
        if is_number(last.get("step")):
            parts.append(f"{last['step']:,} step{'s' * (last['step'] != 1)}")
        if is_number(last.get("epoch")):
            total = [config.get(k) for k in ("n_epochs", "n_epochs_decay")]
            of = f" of {sum(total)}" if all(is_number(t) for t in total) else ""
            parts.append(f"epoch {last['epoch']}{of}")
        if is_finite(last.get("time")):
            parts.append(fmt_duration(last["time"]))
        losses = [
            f"{k} {fmt_number(last[k])}" for k in ADVERSARIAL + CYCLE_IDENTITY if is_number(last.get(k))
        ]
        if losses:
            parts.append("last losses " + ", ".join(losses))
    else:
        parts.append("no losses recorded yet")
    for name, points in metrics.items():
        if "KID" in name.upper():
            step, value = min(points, key=lambda p: p[1])
            parts.append(f"best {name} {fmt_number(value)} (step {step:,.0f})")
    return " · ".join(esc(part) for part in parts)


# --- SVG charts -----------------------------------------------------------------------------------------


def nice_step(span: float, target: int = 5) -> float:
    """A round tick spacing (1, 2, 2.5 or 5 times a power of ten) giving about ``target`` ticks."""
    raw = span / target
    magnitude = 10 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * (1 - 1e-9))


def axis_range(values: Sequence[float]) -> tuple[float, float]:
    """The range to show: from zero when the data is near it (losses, steps); padded around one value."""
    lo, hi = min(values), max(values)
    if 0 < lo < hi / 3:
        lo = 0.0
    if hi - lo <= 1e-9 * max(abs(lo), abs(hi)):  # constant, up to rounding
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    return lo, hi


def ticks_within(lo: float, hi: float, step: float) -> list[float]:
    first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
    return [i * step for i in range(first, last + 1)]


def tick_label(value: float, step: float) -> str:
    if abs(value) < step * 1e-6:
        return "0"
    if step < 1e-3 or abs(value) >= 1e5:
        return f"{value:.1e}"
    decimals = next(d for d in range(10) if abs(step * 10**d - round(step * 10**d)) < 1e-6)
    return f"{value:.{decimals}f}"


def moving_average(points: Sequence[Point]) -> list[Point]:
    """A centred running mean over ~1/30 of the points: shows the trend through GAN-loss noise."""
    n = len(points)
    half = max(1, n // 60)
    sums = list(itertools.accumulate((y for _, y in points), initial=0.0))
    out = []
    for i, (x, _) in enumerate(points):
        lo, hi = max(0, i - half), min(n, i + half + 1)
        out.append((x, (sums[hi] - sums[lo]) / (hi - lo)))
    return out


def decimate(points: Sequence[Point], limit: int = MAX_POLYLINE_POINTS) -> list[Point]:
    """At most ``limit`` points, keeping each bucket's lowest and highest so spikes stay visible."""
    if len(points) <= limit:
        return list(points)
    size = math.ceil(len(points) / (limit // 2))
    out: list[Point] = []
    for i in range(0, len(points), size):
        bucket = points[i : i + size]
        extremes = (min(bucket, key=lambda p: p[1]), max(bucket, key=lambda p: p[1]))
        out.extend(dict.fromkeys(sorted(extremes)))
    return out


def y_range(series: Sequence[Series], trends: Sequence[list[Point]]) -> tuple[float, float]:
    """Covers the trends and all but the most extreme 1% of raw values, so one spike does not flatten
    the rest (spikes are clipped at the chart's edge)."""
    ys = sorted(y for s in series for _, y in s.points)
    cut = len(ys) // 200
    values = [ys[cut], ys[-1 - cut]] + [y for trend in trends for _, y in trend]
    return axis_range(values)


def legend(series: Sequence[Series]) -> tuple[str, int]:
    """The legend above the plot, wrapped into rows, and the height it takes."""
    items, x, row = [], LEFT, 0
    for s in series:
        width = 30 + 7 * len(s.name)
        if x + width > WIDTH - RIGHT and x > LEFT:
            x, row = LEFT, row + 1
        y = 14 + 18 * row
        items.append(
            f"<line x1='{x}' y1='{y}' x2='{x + 20}' y2='{y}' stroke='{s.color}' stroke-width='2.5'"
            f" stroke-dasharray='{s.dash}'/><text x='{x + 25}' y='{y + 4}'>{esc(s.name)}</text>"
        )
        x += width + 12
    return f"<g class='legend'>{''.join(items)}</g>", 14 + 18 * row + 16


def svg_points(points: Iterable[Point], px: Any, py: Any) -> str:
    return " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in points)


def svg_chart(
    chart_id: str, label: str, series: Sequence[Series], marks: Sequence[Mark] = (), smooth: bool = True
) -> str:
    """A line chart against training step. With ``smooth``, many (noisy) points are drawn faint with their
    moving average bold on top; otherwise they are drawn as they are, with a dot at each when few."""
    series = [s for s in series if s.points]
    if not series:
        return "<p class='absent'>No finite values to plot.</p>"
    trends = [moving_average(s.points) if smooth and len(s.points) >= SMOOTH_FROM else [] for s in series]
    legend_svg, top = legend(series)
    x_lo, x_hi = axis_range([x for s in series for x, _ in s.points])
    y_lo, y_hi = y_range(series, trends)
    y_step = nice_step(y_hi - y_lo)
    y_lo, y_hi = math.floor(y_lo / y_step + 1e-9) * y_step, math.ceil(y_hi / y_step - 1e-9) * y_step
    x_step = max(1.0, nice_step(x_hi - x_lo))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - top - BOTTOM

    def px(x: float) -> float:
        return LEFT + (x - x_lo) / (x_hi - x_lo) * plot_w

    def py(y: float) -> float:
        return top + (y_hi - y) / (y_hi - y_lo) * plot_h

    bottom = top + plot_h
    grid = [
        f"<line class='grid' x1='{LEFT}' y1='{py(y):.1f}' x2='{LEFT + plot_w}' y2='{py(y):.1f}'/>"
        f"<text class='ytick' x='{LEFT - 6}' y='{py(y) + 4:.1f}'>{tick_label(y, y_step)}</text>"
        for y in ticks_within(y_lo, y_hi, y_step)
    ] + [
        f"<line class='tick' x1='{px(x):.1f}' y1='{bottom}' x2='{px(x):.1f}' y2='{bottom + 5}'/>"
        f"<text class='xtick' x='{px(x):.1f}' y='{bottom + 18}'>{fmt_step(x)}</text>"
        for x in ticks_within(x_lo, x_hi, x_step)
    ]
    lines, dots = [], []
    for s, trend in zip(series, trends, strict=True):
        drawn = svg_points(decimate(s.points), px, py)
        style = f"stroke='{s.color}' stroke-dasharray='{s.dash}'"
        if trend:
            lines.append(f"<polyline class='raw' stroke='{s.color}' points='{drawn}'/>")
            lines.append(f"<polyline class='trend' {style} points='{svg_points(decimate(trend), px, py)}'/>")
            continue
        if len(s.points) > 1:
            lines.append(f"<polyline class='trend' {style} points='{drawn}'/>")
        if len(s.points) < SMOOTH_FROM:
            dots += [
                f"<circle cx='{px(x):.1f}' cy='{py(y):.1f}' r='3' fill='{s.color}'/>" for x, y in s.points
            ]
    return (
        f"<svg class='chart' viewBox='0 0 {WIDTH} {HEIGHT}' role='img' aria-label='{esc(label)}'>"
        f"<defs><clipPath id='clip-{chart_id}'>"
        f"<rect x='{LEFT}' y='{top}' width='{plot_w}' height='{plot_h}'/></clipPath></defs>{''.join(grid)}"
        f"<line class='axis' x1='{LEFT}' y1='{bottom}' x2='{LEFT + plot_w}' y2='{bottom}'/>"
        f"<text class='xlabel' x='{LEFT + plot_w}' y='{HEIGHT - 4}'>step</text>"
        f"<g clip-path='url(#clip-{chart_id})'>{''.join(lines)}</g>{''.join(dots)}"
        f"{''.join(svg_mark(m, px, py) for m in marks)}{legend_svg}</svg>"
    )


def svg_mark(mark: Mark, px: Any, py: Any) -> str:
    x, y = px(mark.x), py(mark.y)
    right_half = x > LEFT + (WIDTH - LEFT - RIGHT) / 2
    anchor, dx = ("end", -9) if right_half else ("start", 9)
    return (
        f"<circle class='mark' cx='{x:.1f}' cy='{y:.1f}' r='6' stroke='{mark.color}'/>"
        f"<text class='mark' x='{x + dx:.1f}' y='{y - 9:.1f}' text-anchor='{anchor}'>{esc(mark.text)}</text>"
    )


def figure(title: str, chart: str, caption: str = "") -> str:
    note = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f"<figure class='plot'><h3>{esc(title)}</h3>{chart}{note}</figure>"


# --- sections -------------------------------------------------------------------------------------------


def loss_section(log: list[dict[str, Any]], skipped: int) -> str:
    if not log:
        return section("losses", "Loss curves", "<p class='absent'>No losses recorded (no log.jsonl).</p>")

    def series(keys: Sequence[str]) -> list[Series]:
        return [Series(k, column(log, k), *LOSS_STYLES[k]) for k in keys]

    noisy = "Faint: logged means; bold: their moving average." if len(log) >= SMOOTH_FROM else ""
    charts = [
        figure("Adversarial losses", svg_chart("adv", "adversarial losses", series(ADVERSARIAL)), noisy),
        figure("Cycle and identity losses", svg_chart("cyc", "cycle losses", series(CYCLE_IDENTITY)), noisy),
        figure("Learning rate", svg_chart("lr", "learning rate", series(("lr",)), smooth=False)),
    ]
    note = f"<p class='note'>{skipped} unreadable line(s) of log.jsonl skipped.</p>" if skipped else ""
    intro = (
        "<p class='note'>Mean losses over each logged interval. G_A maps A→B and D_A judges domain B; "
        "G_B maps B→A and D_B judges domain A.</p>"
    )
    return section("losses", "Loss curves", intro + f"<div class='plots'>{''.join(charts)}</div>" + note)


def metric_charts(metrics: dict[str, list[Point]]) -> str:
    """One chart per metric kind (FID, KID, …), as their scales differ by orders of magnitude."""
    kinds: dict[str, list[str]] = {}
    for name in metrics:
        kinds.setdefault((name.split() or [name])[0], []).append(name)
    charts = []
    for i, (kind, names) in enumerate(kinds.items()):
        series = [Series(n, metrics[n], PALETTE[j % len(PALETTE)]) for j, n in enumerate(names)]
        marks, caption = [], ""
        if "KID" in kind.upper():
            best = [(s, min(s.points, key=lambda p: p[1])) for s in series]
            marks = [Mark(x, y, s.color, f"best {fmt_number(y)}") for s, (x, y) in best]
            caption = "; ".join(f"best {esc(s.name)}: {fmt_number(y)} at step {x:,.0f}" for s, (x, y) in best)
        hint = f" ({better(kind)} is better)" if better(kind) else ""
        charts.append(
            figure(f"{kind} during training{hint}", svg_chart(f"m{i}", kind, series, marks), caption)
        )
    return f"<div class='plots'>{''.join(charts)}</div>"


def evaluation_section(run_dir: Path, metrics: dict[str, list[Point]]) -> str:
    parts = [
        results_table(run_dir / "eval.json", "Latest evaluation"),
        metric_charts(metrics) if metrics else "",
        results_table(run_dir / "demo.json", "Demo: scores against known answers"),
    ]
    body = "".join(parts) or (
        "<p class='absent'>No evaluation recorded (no eval.json, eval_log.jsonl or demo.json).</p>"
    )
    return section("evaluation", "Evaluation", body)


def results_table(path: Path, default_title: str) -> str:
    """An ``eval.json``-style file as a table, best value per column and direction in bold."""
    if not path.is_file():
        return ""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        return unreadable(default_title, path, str(error))
    if not isinstance(data, dict):
        return unreadable(default_title, path, "not a JSON object")
    rows = [row for row in as_list(data.get("rows")) if isinstance(row, dict)]
    columns = [str(c) for c in as_list(data.get("columns"))] or list(
        dict.fromkeys(k for row in rows for k in row if k not in ("method", "direction"))
    )
    title = data["title"] if isinstance(data.get("title"), str) else default_title
    header = "".join(
        f"<th class='num' title='{better(c)} is better'>{esc(c)} {'↓' if better(c) == 'lower' else '↑'}</th>"
        if better(c)
        else f"<th class='num'>{esc(c)}</th>"
        for c in columns
    )
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(str(row.get("direction", "")), []).append(row)
    bodies = "".join(direction_rows(direction, group, columns) for direction, group in groups.items())
    table = (
        "<div class='scroll'><table class='results'><thead><tr><th>Direction</th><th>Method</th>"
        f"{header}</tr></thead>{bodies}</table></div>"
        if rows
        else "<p class='absent'>No result rows.</p>"
    )
    return f"<h3>{esc(title)} <small>({esc(path.name)})</small></h3>{table}{protocol(data)}"


def unreadable(title: str, path: Path, problem: str) -> str:
    return f"<h3>{esc(title)}</h3><p class='absent'>{esc(path.name)} could not be read: {esc(problem)}</p>"


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def direction_rows(direction: str, rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    best = {c: best_value([row.get(c) for row in rows], better(c)) for c in columns}
    out = []
    for i, row in enumerate(rows):
        head = f"<th rowspan='{len(rows)}' scope='rowgroup'>{esc(direction)}</th>" if i == 0 else ""
        cells = "".join(
            f"<td class='num{' best' if is_best(row.get(c), best[c]) else ''}'>{cell(row.get(c))}</td>"
            for c in columns
        )
        out.append(f"<tr>{head}<td>{cell(row.get('method'))}</td>{cells}</tr>")
    return f"<tbody>{''.join(out)}</tbody>"


def is_best(value: Any, best: float | None) -> bool:
    return best is not None and is_finite(value) and value == best


def best_value(values: Sequence[Any], direction: str | None) -> float | None:
    """The best of a column within one direction; None when there is nothing to compare."""
    numbers = [v for v in values if is_finite(v)]
    if direction is None or len(numbers) < 2:
        return None
    return min(numbers) if direction == "lower" else max(numbers)


def protocol(data: dict[str, Any]) -> str:
    """The protocol as a definition list and the notes as a list: how to reproduce the numbers."""
    out = ""
    if isinstance(data.get("protocol"), dict) and data["protocol"]:
        items = "".join(f"<dt>{esc(str(k))}</dt><dd>{exact(v)}</dd>" for k, v in data["protocol"].items())
        out += f"<dl class='protocol'>{items}</dl>"
    notes = as_list(data.get("notes"))
    if notes:
        out += "<ul class='notes'>" + "".join(f"<li>{esc(str(n))}</li>" for n in notes) + "</ul>"
    return out


def samples_section(folder: Path) -> str:
    """The last grid large, and up to ``MAX_SAMPLES`` - 1 earlier ones evenly spread from the first."""
    found = sorted(
        (int(match[1]), path)
        for path in (folder.glob("step_*.png") if folder.is_dir() else ())
        if (match := SAMPLE_NAME.fullmatch(path.name))
    )
    if not found:
        return section(
            "samples", "Samples", "<p class='absent'>No samples recorded (no samples/step_*.png).</p>"
        )
    n = len(found)
    picks = sorted({round(i * (n - 1) / (MAX_SAMPLES - 1)) for i in range(MAX_SAMPLES)}) if n > 1 else [0]
    *earlier, latest = [found[i] for i in picks]
    shown = f"{len(picks)} of {n} sample grids" if n > len(picks) else f"{n} sample grid{'s' * (n > 1)}"
    body = f"<p class='note'>{shown}; each row: {esc(' | '.join(GRID_COLUMNS))}.</p>"
    body += sample_figure(*latest, latest=True)
    if earlier:
        figures = "".join(sample_figure(step, path, latest=False) for step, path in earlier)
        body += f"<h3>Over the run</h3><div class='samples'>{figures}</div>"
    return section("samples", "Samples", body)


def sample_figure(step: int, path: Path, latest: bool) -> str:
    caption = f"Latest: step {step:,}" if latest else f"step {step:,}"
    kind = "sample latest" if latest else "sample"
    image = png_data_uri(path, LATEST_WIDTH if latest else THUMB_WIDTH)
    if image is None:
        problem = f"{caption}: {esc(path.name)} could not be read"
        return f"<figure class='{kind}'><figcaption>{problem}</figcaption></figure>"
    uri, width = image
    labels = "".join(f"<span>{esc(c)}</span>" for c in GRID_COLUMNS)
    # The latest grid is shown at up to twice its size (small grids stay legible), never wider than the page.
    size = f" width='{2 * width}'" if latest else ""
    return (
        f"<figure class='{kind}'><figcaption>{caption}</figcaption><div class='cols'>{labels}</div>"
        f"<img src='{uri}'{size} alt='sample grid at step {step}'></figure>"
    )


def png_data_uri(path: Path, max_width: int) -> tuple[str, int] | None:
    """The image as a ``data:`` PNG scaled down to ``max_width``, and its width; None if it is unreadable."""
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "PNG" or image.width > max_width:
                image.load()
                scale = min(1.0, max_width / image.width)
                size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
                buffer = io.BytesIO()
                image.resize(size, Image.Resampling.LANCZOS).save(buffer, format="PNG")
                data, width = buffer.getvalue(), size[0]
            else:
                image.verify()
                width = image.width
    except (OSError, UnidentifiedImageError, ValueError):
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii"), width


def config_section(config: dict[str, Any]) -> str:
    model = config.get("model")
    options = {k: v for k, v in config.items() if k != "model" or not isinstance(model, dict)}
    tables = key_value_table("Training options", options)
    if isinstance(model, dict):
        tables += key_value_table("Model (architecture)", model)
    return section("config", "Config", f"<div class='config'>{tables}</div>")


def key_value_table(title: str, values: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><th scope='row'>{esc(str(k))}</th><td>{exact(v)}</td></tr>" for k, v in values.items()
    )
    return f"<table class='kv'><caption>{esc(title)}</caption><tbody>{rows}</tbody></table>"


def section(anchor: str, title: str, body: str) -> str:
    return f"<section id='{anchor}'>\n<h2>{esc(title)}</h2>\n{body}\n</section>"


CSS = """
:root { color-scheme: light; --rule: #e3e3e3; --muted: #666; }
* { box-sizing: border-box; }
body { margin: 0; background: #fff; color: #1d1d1f; line-height: 1.45;
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 20px 48px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h1 .name { font-family: ui-monospace, Menlo, Consolas, monospace; }
h2 { font-size: 20px; margin: 36px 0 12px; padding-bottom: 6px; border-bottom: 2px solid var(--rule); }
h3 { font-size: 15px; margin: 18px 0 8px; }
h3 small { color: var(--muted); font-weight: normal; }
code { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 13px; }
.meta, .note, figcaption, .absent { color: var(--muted); font-size: 13px; }
.summary { font-size: 15px; margin: 10px 0; padding: 10px 14px; background: #f5f7fa; border-radius: 6px; }
nav a { margin-right: 16px; font-size: 14px; color: #0b5cad; text-decoration: none; }
.absent { font-style: italic; }
table { border-collapse: collapse; font-size: 14px; }
th, td { padding: 5px 12px; border-bottom: 1px solid var(--rule); text-align: left; vertical-align: top; }
thead th { border-bottom: 2px solid #ccc; white-space: nowrap; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
.results tbody + tbody { border-top: 2px solid #ccc; }
.results tbody th { font-weight: 600; }
.best { font-weight: 700; background: #e7f4ea; }
.scroll { overflow-x: auto; }
.protocol { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; font-size: 12px;
  color: var(--muted); margin: 12px 0; }
.protocol dt { font-weight: 600; }
.protocol dd { margin: 0; overflow-wrap: anywhere; }
.notes { font-size: 13px; color: #444; padding-left: 20px; }
.plots, .samples { display: grid; gap: 8px 24px;
  grid-template-columns: repeat(auto-fill, minmax(min(420px, 100%), 1fr)); }
figure { margin: 0; }
.plot h3 { margin-bottom: 2px; }
svg.chart { width: 100%; height: auto; display: block; }
.chart text { font-size: 12px; fill: #444; }
.chart .ytick { text-anchor: end; }
.chart .xtick { text-anchor: middle; }
.chart .xlabel { text-anchor: end; fill: var(--muted); }
.chart .grid { stroke: #ececec; }
.chart .axis, .chart .tick { stroke: #999; }
.chart polyline { fill: none; stroke-linejoin: round; stroke-linecap: round; }
.chart .raw { stroke-width: 1; stroke-opacity: 0.22; }
.chart .trend { stroke-width: 2; }
.chart circle.mark { fill: none; stroke-width: 2; }
.chart text.mark { font-weight: 600; fill: #222; paint-order: stroke; stroke: #fff; stroke-width: 3px; }
.sample img { max-width: 100%; height: auto; display: block; }
.samples .sample img { width: 100%; }
.sample .cols { display: grid; grid-template-columns: repeat(6, 1fr); font-size: 11px; color: var(--muted);
  text-align: center; white-space: nowrap; overflow: hidden; }
.sample.latest { margin-bottom: 16px; width: fit-content; max-width: 100%; }
.sample.latest figcaption { font-size: 15px; font-weight: 600; color: #1d1d1f; margin-bottom: 4px; }
.samples { row-gap: 18px; }
.config { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
.kv caption { text-align: left; font-weight: 600; padding: 0 0 6px; }
.kv th, .kv td { padding: 3px 12px 3px 0; vertical-align: baseline; font-size: 13px; }
.kv th { font-weight: normal; color: #444; font-family: ui-monospace, Menlo, Consolas, monospace;
  font-size: 13px; }
.kv td { overflow-wrap: anywhere; max-width: 420px; }
"""
