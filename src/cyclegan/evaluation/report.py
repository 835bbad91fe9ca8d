"""``cyclegan report RUN_DIR``: one self-contained HTML page of a training run's results.

Everything (CSS, SVG charts, sample grids as base64 images) is inline, so the page can be mailed, archived
or copied off a remote machine on its own, and it needs no JavaScript. The page is a list of sections, each
rendered from the run as :mod:`cyclegan.runfiles` reads it; an input that is missing or half-written
(training still running, or killed mid-line) makes its section say so instead of failing the page.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from PIL import Image

from cyclegan.data import intensity
from cyclegan.data.images import DECODE_ERRORS
from cyclegan.errors import CycleGANError
from cyclegan.evaluation.charts import SMOOTH_FROM, Mark, Series, line_chart
from cyclegan.evaluation.results import ResultRow, ResultTable
from cyclegan.evaluation.runfiles import Point, Run, Unreadable, column, finite, read_run
from cyclegan.files import atomic_write
from cyclegan.layout import DEMO_FILE, EVAL_FILE, INTENSITY
from cyclegan.models import Model

MAX_SAMPLES = 8
THUMB_WIDTH = 720  # px: two earlier grids a row on an 1100px page, still sharp on 1.3x screens
LATEST_WIDTH = 2200  # px: the full page width at 2x; larger grids only make the page heavy
# Okabe-Ito colours, distinguishable with colour blindness. Each direction's losses share a hue (A->B blues,
# B->A oranges); its discriminator and identity losses are lighter and dashed, so they differ in grey too.
PALETTE = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#56b4e9", "#e69f00", "#000000")
DIRECTION_HUES = (("#0072b2", "#56b4e9"), ("#d55e00", "#e69f00"))
OTHER_HUES = ("#009e73", "#cc79a7", "#000000", "#f0e442")
LOWER_BETTER = ("FID", "KID", "L1")
HIGHER_BETTER = ("PSNR", "SSIM")


@dataclass(frozen=True)
class Section:
    """One titled part of the page, listed in its navigation bar. A new part (a timeline of training's
    health warnings, say) is a function from the :class:`Run` to its body, listed in ``render_report``."""

    anchor: str
    title: str
    body: str  # HTML

    def html(self) -> str:
        return f"<section id='{self.anchor}'>\n<h2>{esc(self.title)}</h2>\n{self.body}\n</section>"


@dataclass(frozen=True)
class RunStatus:
    """How far a run is, as its training process knows it: the live report's header shows it."""

    state: str  # training, finished, interrupted or stopped
    step: int
    total_steps: int
    epoch: int  # the current one, from 1
    total_epochs: int
    images_per_s: float | None = None
    seconds_left: float | None = None
    reason: str | None = None  # why a stopped run stopped


def write_report(run_dir: Path, out: Path | None = None, status: RunStatus | None = None) -> Path:
    """Render the run folder as one HTML page (default ``run_dir/report.html``) and return its path.

    Raises CycleGANError when ``run_dir`` is not a run folder (no readable ``config.json``) and OSError when
    the page cannot be written; anything else in the folder may be missing or broken.
    """
    run = read_run(Path(run_dir))
    out = run.folder / "report.html" if out is None else Path(out)
    page = render_report(run, status)

    def write(tmp: Path) -> None:
        tmp.write_text(page, encoding="utf-8")  # not the locale's: the page says it is UTF-8

    atomic_write(out, write)
    return out


def render_report(run: Run, status: RunStatus | None = None) -> str:
    """The page as text; separate from writing so that a page is only ever written whole."""
    sections = (
        Section("evaluation", "Evaluation", evaluation_section(run)),
        Section("losses", "Loss curves", loss_section(run)),
        Section("health", "Health", health_section(run)),
        Section("samples", "Samples", samples_section(run)),
        Section("config", "Config", config_section(run.config) + intensity_table(run.folder)),
    )
    generated = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    model = model_of(run)
    title = model.title if model else "Training"
    nav = " ".join(f"<a href='#{s.anchor}'>{esc(s.title)}</a>" for s in sections)
    header = (
        f"<header><h1>{esc(title)} run <span class='name'>{esc(run.name)}</span></h1>\n"
        f"<p class='meta'>Generated {esc(generated)} from <code>{esc(str(run.folder))}</code></p>\n"
        f"{status_line(status, run.folder) if status else ''}"
        f"<p class='summary'>{summary(run)}</p>\n<nav>{nav}</nav></header>"
    )
    body = "\n".join(section.html() for section in sections)
    return (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>\n"
        f"<title>{esc(run.name)} · {esc(title)} report</title>\n<style>{CSS}</style>\n</head>\n"
        f"<body>\n<main>\n{header}\n{body}\n</main>\n</body>\n</html>\n"
    )


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


def best_point(points: Sequence[Point], direction: str | None) -> Point | None:
    if direction is None:
        return None
    return (min if direction == "lower" else max)(points, key=lambda point: point[1])


# --- summary --------------------------------------------------------------------------------------------


def summary(run: Run) -> str:
    """One line: how far training got, where the losses ended, and the best KID seen during training."""
    parts = []
    names = loss_names(run)
    last = next((row for row in reversed(run.log) if any(k in row for k in names)), None)
    if last is None:
        parts.append("no losses recorded yet")
    else:
        if (step := finite(last.get("step"))) is not None:
            parts.append(f"{step:,.0f} step{'s' * (step != 1)}")
        if (epoch := finite(last.get("epoch"))) is not None:
            model = run.config.get("model")
            recipe = model if isinstance(model, dict) and "name" in model else run.config
            epochs = [finite(recipe.get(k)) for k in ("n_epochs", "n_epochs_decay")]
            of = "" if None in epochs else f" of {sum(e or 0 for e in epochs):g}"
            parts.append(f"epoch {epoch:g}{of}")
        if (seconds := finite(last.get("time"))) is not None:
            parts.append(fmt_duration(seconds))
        losses = [(k, finite(last.get(k))) for k in names]
        if any(value is not None for _, value in losses):
            parts.append(
                "last losses " + ", ".join(f"{k} {fmt_number(v)}" for k, v in losses if v is not None)
            )
    for name, points in run.metrics.items():
        if "KID" in name.upper() and (best := best_point(points, "lower")):
            parts.append(f"best {name} {fmt_number(best[1])} (step {best[0]:,.0f})")
    return " · ".join(esc(part) for part in parts)


def status_line(status: RunStatus, folder: Path) -> str:
    """A progress bar and one line: step, epoch, images/s and, while training, the time left."""
    total = max(status.total_steps, 1)
    parts = [
        f"step {status.step:,} of {status.total_steps:,} ({status.step / total:.0%})",
        f"epoch {status.epoch} of {status.total_epochs}",
    ]
    if status.images_per_s:
        parts.append(f"{status.images_per_s:.3g} images/s")
    if status.state == "training" and status.seconds_left is not None:
        parts.append(f"about {fmt_duration(status.seconds_left)} left")
    if status.state == "interrupted":
        parts.append(f"resume with: cyclegan train --resume {folder}")
    if status.reason:
        parts.append(status.reason)
    text = f"<strong>{esc(status.state.capitalize())}</strong> · " + esc(" · ".join(parts))
    bar = f"<progress max='{total}' value='{min(status.step, total)}'></progress>"
    return f"<div class='status {esc(status.state)}'>{bar}<p>{text}</p></div>\n"


# --- sections -------------------------------------------------------------------------------------------


def evaluation_section(run: Run) -> str:
    parts = [
        results_table(run.evaluation, EVAL_FILE, "Latest evaluation"),
        triplets_figure(run.triplets) if run.triplets else "",
        metric_charts(run.metrics) if run.metrics else "",
        results_table(run.demo, DEMO_FILE, "Demo: scores against known answers"),
    ]
    return "".join(parts) or absent("No evaluation recorded (no eval.json, eval_log.jsonl or demo.json).")


def triplets_figure(path: Path) -> str:
    """The test images of a paired evaluation beside their translations and true targets."""
    caption = "Test images: input | output | target"
    image = image_data_uri(path, LATEST_WIDTH, lossless=True)
    if image is None:
        caption += f": {esc(path.name)} could not be read"
        return f"<figure class='sample'><figcaption>{caption}</figcaption></figure>"
    body = f"<figcaption>{caption}</figcaption><img src='{image[0]}' alt='{caption}'>"
    return f"<figure class='sample latest'>{body}</figure>"


def model_of(run: Run) -> type[Model] | None:
    """The run's model class, from its config (a config of an earlier version is a CycleGAN run)."""
    model = run.config.get("model")
    name = model.get("name", "cycle_gan") if isinstance(model, dict) else "cycle_gan"
    return Model.registry.get(name) if isinstance(name, str) else None


def loss_names(run: Run) -> tuple[str, ...]:
    """The losses the run's model logs; for a model this version does not know, every logged number."""
    model = model_of(run)
    if model is not None:
        return model.loss_names
    keys = dict.fromkeys(k for row in run.log for k, v in row.items() if finite(v) is not None)
    return tuple(k for k in keys if k not in ("step", "epoch", "lr", "time"))


def loss_styles(run: Run) -> dict[str, tuple[str, bool]]:
    """(colour, dashed) per loss: a hue per direction, discriminator and identity losses light and dashed."""
    model, styles = model_of(run), {"lr": ("#009e73", False)}
    for d, (dark, light) in zip(model.directions if model else (), DIRECTION_HUES, strict=False):
        styles |= {name: (dark, False) for name in d.losses if name != d.identity}
        styles |= {name: (light, True) for name in (d.critic, d.identity) if name}
    others = [name for name in loss_names(run) if name not in styles]
    return styles | {name: (OTHER_HUES[i % len(OTHER_HUES)], False) for i, name in enumerate(others)}


def loss_section(run: Run) -> str:
    if not run.log:
        return absent("No losses recorded (no log.jsonl).")
    styles = loss_styles(run)

    def chart(title: str, keys: Sequence[str], smooth: bool = True) -> str:
        series = [Series(k, column(run.log, k), *styles[k]) for k in keys]
        noisy = smooth and any(len(s.points) >= SMOOTH_FROM for s in series)
        caption = "Faint: logged means; bold: their moving average." if noisy else ""
        return figure(title, plot(title, series, smooth=smooth), caption)

    model = model_of(run)
    groups = model.chart_groups if model else (("Losses", loss_names(run)),)
    charts = [chart(title, keys) for title, keys in groups] + [chart("Learning rate", ("lr",), smooth=False)]
    roles = [
        f"{d.generator} maps {d.source}→{d.target} and {d.discriminator} judges domain {d.target}"
        for d in (model.directions if model else ())
    ]
    intro = note("Mean losses over each logged interval." + (" " + "; ".join(roles) + "." if roles else ""))
    skipped = note(f"{run.log_skipped} unreadable line(s) of log.jsonl skipped.") if run.log_skipped else ""
    return f"{intro}<div class='plots'>{''.join(charts)}</div>{skipped}"


def health_section(run: Run) -> str:
    """The warnings training raised (``"event": "health"`` rows of log.jsonl), with the step each began."""
    events = [row for row in run.log if row.get("event") == "health"]
    if not events:
        checked = not run.config.get("no_health", False)
        return note("No health warnings: the run looked healthy." if checked else "Health checks were off.")
    rows = "".join(
        f"<tr><td class='num'>{esc(str(row.get('step', '')))}</td><td>{esc(str(row.get('signal', '')))}</td>"
        f"<td>{esc(str(row.get('network', '')))}</td><td>{esc(str(row.get('message', '')))}</td></tr>"
        for row in events
    )
    head = "<tr><th>step</th><th>signal</th><th>network</th><th>warning and likely fix</th></tr>"
    intro = note(
        "Each warning is raised once per episode, at the step where the problem had lasted long enough."
    )
    return f"{intro}<table><thead>{head}</thead><tbody>{rows}</tbody></table>"


def metric_charts(metrics: dict[str, list[Point]]) -> str:
    """One chart per metric kind (FID, KID, …), as their scales differ by orders of magnitude."""
    kinds: dict[str, list[str]] = {}
    for name in metrics:
        kinds.setdefault((name.split() or [name])[0], []).append(name)
    charts = []
    for kind, names in kinds.items():
        direction = better(kind)
        series, marks, bests = [], [], []
        for i, name in enumerate(names):
            color, best = PALETTE[i % len(PALETTE)], best_point(metrics[name], direction)
            if best is None:
                series.append(Series(name, metrics[name], color))
                continue
            series.append(Series(f"{name}, best {fmt_number(best[1])}", metrics[name], color))
            marks.append(Mark(*best, color))
            bests.append(f"best {name}: {fmt_number(best[1])} at step {best[0]:,.0f}")
        title = f"{kind} during training" + (f" ({direction} is better)" if direction else "")
        charts.append(figure(title, plot(title, series, marks, smooth=False), esc("; ".join(bests))))
    return f"<div class='plots'>{''.join(charts)}</div>"


def plot(label: str, series: Sequence[Series], marks: Sequence[Mark] = (), smooth: bool = True) -> str:
    chart = line_chart(label, series, marks, smooth)
    return absent("No finite values to plot.") if chart is None else chart


def figure(title: str, chart: str, caption: str = "") -> str:
    """A chart under its title; ``caption`` is HTML."""
    note = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f"<figure class='plot'><h3>{esc(title)}</h3>{chart}{note}</figure>"


def results_table(result: ResultTable | Unreadable | None, file: str, unreadable_title: str) -> str:
    """An ``eval.json``-style table, the best value per column and direction in bold, and its protocol."""
    if result is None:
        return ""
    if isinstance(result, Unreadable):
        return f"<h3>{esc(unreadable_title)}</h3>{absent(f'{file} could not be read: {result.problem}')}"
    header = "".join(
        f"<th class='num' title='{better(c)} is better'>{esc(c)} {'↓' if better(c) == 'lower' else '↑'}</th>"
        if better(c)
        else f"<th class='num'>{esc(c)}</th>"
        for c in result.columns
    )
    groups: dict[str, list[ResultRow]] = {}
    for row in result.rows:
        groups.setdefault(row.direction, []).append(row)
    bodies = "".join(direction_rows(direction, rows, result.columns) for direction, rows in groups.items())
    table = (
        "<div class='scroll'><table class='results'><thead><tr><th>Direction</th><th>Method</th>"
        f"{header}</tr></thead>{bodies}</table></div>"
        if result.rows
        else absent("No result rows.")
    )
    return f"<h3>{esc(result.title)} <small>({esc(file)})</small></h3>{table}{protocol(result)}"


def direction_rows(direction: str, rows: list[ResultRow], columns: Sequence[str]) -> str:
    best = {c: best_value([row.scores.get(c) for row in rows], better(c)) for c in columns}
    out = []
    for i, row in enumerate(rows):
        head = f"<th rowspan='{len(rows)}' scope='rowgroup'>{esc(direction)}</th>" if i == 0 else ""
        cells = "".join(score_cell(row.scores.get(c), best[c]) for c in columns)
        out.append(f"<tr>{head}<td>{esc(row.method)}</td>{cells}</tr>")
    return f"<tbody>{''.join(out)}</tbody>"


def score_cell(value: float | None, best: float | None) -> str:
    if value is None:
        return "<td class='num'>—</td>"
    emphasis = " best" if best is not None and value == best else ""
    return f"<td class='num{emphasis}'>{esc(fmt_number(value))}</td>"


def best_value(values: Sequence[float | None], direction: str | None) -> float | None:
    """The best of a column within one direction; None when there is nothing to compare."""
    numbers = [number for v in values if (number := finite(v)) is not None]
    if direction is None or len(numbers) < 2:
        return None
    return min(numbers) if direction == "lower" else max(numbers)


def protocol(result: ResultTable) -> str:
    """The protocol as a definition list and the notes as a list: how to reproduce and read the numbers."""
    out = ""
    if result.protocol:
        items = "".join(f"<dt>{esc(k)}</dt><dd>{exact(v)}</dd>" for k, v in result.protocol.items())
        out += f"<dl class='protocol'>{items}</dl>"
    if result.notes:
        out += "<ul class='notes'>" + "".join(f"<li>{esc(n)}</li>" for n in result.notes) + "</ul>"
    return out


def samples_section(run: Run) -> str:
    """The last grid large, and up to ``MAX_SAMPLES`` - 1 earlier ones evenly spread from the first."""
    found = run.samples
    if not found:
        return absent("No samples recorded (no samples/step_*.png).")
    n = len(found)
    picks = sorted({round(i * (n - 1) / (MAX_SAMPLES - 1)) for i in range(MAX_SAMPLES)}) if n > 1 else [0]
    *earlier, latest = [found[i] for i in picks]
    shown = f"{len(picks)} of {n} sample grids" if n > len(picks) else f"{n} sample grid{'s' * (n > 1)}"
    model = model_of(run)
    columns = model.sample_columns if model else ()
    rows = f"; each row: {' | '.join(columns)}" if columns else ""
    body = note(f"{shown}{rows}.") + sample_figure(*latest, columns, latest=True)
    if earlier:
        figures = "".join(sample_figure(step, path, columns, latest=False) for step, path in earlier)
        body += f"<h3>Over the run</h3><div class='samples'>{figures}</div>"
    return body


def sample_figure(step: int, path: Path, columns: Sequence[str], latest: bool) -> str:
    caption = f"Latest: step {step:,}" if latest else f"step {step:,}"
    kind = "sample latest" if latest else "sample"
    image = image_data_uri(path, LATEST_WIDTH if latest else THUMB_WIDTH, lossless=latest)
    if image is None:
        problem = f"{caption}: {esc(path.name)} could not be read"
        return f"<figure class='{kind}'><figcaption>{problem}</figcaption></figure>"
    uri, width = image
    labels = "".join(f"<span>{esc(c)}</span>" for c in columns)
    # The latest grid is shown at up to twice its size (small grids stay legible), never wider than the page.
    size = f" width='{2 * width}'" if latest else ""
    return (
        f"<figure class='{kind}'><figcaption>{caption}</figcaption>"
        f"<div class='cols' style='grid-template-columns: repeat({max(len(columns), 1)}, 1fr)'>{labels}</div>"
        f"<img src='{uri}'{size} alt='sample grid at step {step}'></figure>"
    )


def image_data_uri(path: Path, max_width: int, lossless: bool) -> tuple[str, int] | None:
    """The image as a ``data:`` URI scaled down to ``max_width``, and its width; None if it is unreadable.

    The latest grid is a lossless PNG, to judge artifacts by; the earlier ones, shown small to follow the
    run's progress, are JPEG: a quarter of the size, which halves the page for grids of photos.
    """
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            scale = min(1.0, max_width / image.width)
            width = max(1, round(image.width * scale))
            if scale < 1 or image.format != "PNG" or not lossless:
                resized = image.resize((width, max(1, round(image.height * scale))), Image.Resampling.LANCZOS)
                buffer = io.BytesIO()
                if lossless:
                    resized.save(buffer, format="PNG")
                else:
                    resized.convert("RGB").save(buffer, format="JPEG", quality=90, subsampling=0)
                data = buffer.getvalue()
    except DECODE_ERRORS:
        return None
    kind = "png" if lossless else "jpeg"
    return f"data:image/{kind};base64," + base64.b64encode(data).decode("ascii"), width


def config_section(config: dict[str, Any]) -> str:
    model = config.get("model")
    options = {k: v for k, v in config.items() if k != "model" or not isinstance(model, dict)}
    tables = key_value_table("Training options", options)
    if isinstance(model, dict):
        tables += key_value_table("Model (architecture)", model)
    return f"<div class='config'>{tables}</div>"


def intensity_table(folder: Path) -> str:
    """How the run's data maps to [-1, 1] (``intensity.json``; 8-bit runs have none): the sample grids show
    each domain through this window."""
    try:
        mapping = intensity.load(folder / INTENSITY)
    except CycleGANError as err:
        return note(str(err))
    if mapping is None:
        return ""
    rows = {
        f"domain {side}": side_map.how
        if side_map.eight_bit
        else f"{side_map.low:g} .. {side_map.high:g}"
        f" ({side_map.how}; {side_map.channels}-channel {side_map.dtype})"
        for side, side_map in (("A", mapping.a), ("B", mapping.b))
    }
    return key_value_table(
        "Intensity windows (samples are shown through them)", rows | {"slice axis": mapping.slice_axis}
    )


def key_value_table(title: str, values: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><th scope='row'>{esc(str(k))}</th><td>{exact(v)}</td></tr>" for k, v in values.items()
    )
    return f"<table class='kv'><caption>{esc(title)}</caption><tbody>{rows}</tbody></table>"


def note(text: str) -> str:
    return f"<p class='note'>{esc(text)}</p>"


def absent(text: str) -> str:
    return f"<p class='absent'>{esc(text)}</p>"


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
.status p { margin: 4px 0 10px; font-size: 15px; }
.status progress { width: 100%; height: 10px; accent-color: #0072b2; }
.status.stopped strong { color: #d55e00; }
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
.sample .cols { display: grid; font-size: 11px; color: var(--muted);
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
