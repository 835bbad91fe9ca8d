"""Line charts against training step, drawn with matplotlib and returned as SVG text to inline in a page.

Each chart is its own ``matplotlib.figure.Figure``: pyplot, its registry of open figures and the backend
are never touched, and rcParams change only inside ``rc_context`` while a chart is drawn, so drawing a
report leaves the caller's matplotlib as it was. The SVG is deterministic (fixed id salt, no date), so the
same run gives the same page, and long runs are decimated so that their page stays small.
"""

from __future__ import annotations

import html
import io
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import matplotlib as mpl
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, MaxNLocator

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType

Point = tuple[float, float]
SMOOTH_FROM = 20  # points: fewer are drawn as they are, with a dot at each
MAX_POINTS = 800  # per raw line: two per horizontal pixel of the plot as a page column shows it, at 2x
TREND_POINTS = 300  # per moving average: it is smooth, so more would not show
LARGEST = 1e100  # values beyond are left out: their differences and squares overflow in the transforms
SIZE = (5.6, 3.1)  # inches; shown at the width of a page column, so this sets the text's relative size
INK, MUTED, RULE = "#333333", "#777777", "#e8e8e8"
STYLE: dict[RcKeyType, Any] = {
    "svg.fonttype": "none",  # text stays text, styled by the page, instead of a path per glyph
    "text.parse_math": False,  # a metric named "$x" is plain text, not (possibly invalid) TeX
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Arial", "Helvetica"],
    "font.size": 9,
    "text.color": INK,
    "axes.edgecolor": "#aaaaaa",
    "axes.labelcolor": MUTED,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "xtick.color": "#aaaaaa",
    "ytick.color": "#aaaaaa",
    "xtick.labelcolor": INK,
    "ytick.labelcolor": INK,
    "legend.frameon": False,
    "legend.handlelength": 2.2,
    "path.simplify_threshold": 0.2,
}


@dataclass(frozen=True)
class Series:
    name: str
    points: Sequence[Point]  # (step, value), sorted by step, all finite
    color: str
    dashed: bool = False


@dataclass(frozen=True)
class Mark:
    """A point to ring, such as the best KID; what it means belongs in the series' name or the caption."""

    x: float
    y: float
    color: str


def line_chart(
    label: str, series: Sequence[Series], marks: Sequence[Mark] = (), smooth: bool = True
) -> str | None:
    """An inline ``<svg>`` of ``series`` against step; None when there is no point to draw.

    With ``smooth``, a series of many (noisy) points is drawn faint, with its moving average bold on top;
    otherwise each is drawn as it is, with a dot at each point when there are few. ``label`` names the
    chart for screen readers and must be unique within a page: it also salts the SVG's element ids.
    """
    series = [replace(s, points=[p for p in s.points if _plottable(p)]) for s in series]
    series = [s for s in series if s.points]
    if not series:
        return None
    with mpl.rc_context({**STYLE, "svg.hashsalt": label}):
        figure = Figure(figsize=SIZE)
        axes = figure.add_subplot()
        drawn = [_draw(axes, s, smooth and len(s.points) >= SMOOTH_FROM) for s in series]
        for mark in marks:
            if _plottable((mark.x, mark.y)):
                _draw_mark(axes, mark)
        _style_axes(axes, _y_limits(min(d[1] for d in drawn), max(d[2] for d in drawn)))
        _legend(figure, axes, [d[0] for d in drawn], [s.name for s in series])
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg", metadata=dict.fromkeys(("Date", "Creator", "Format", "Type")))
    return _inline(buffer.getvalue(), label)


def _plottable(point: Point) -> bool:
    return abs(point[0]) < LARGEST and abs(point[1]) < LARGEST


def _draw(axes: Axes, series: Series, smooth: bool) -> tuple[Line2D, float, float]:
    """Plot one series; returns its line for the legend and the range of values the y axis must show."""
    xs, ys = np.asarray(series.points, dtype=float).T
    line: dict[str, Any] = {"color": series.color, "linestyle": (0, (5, 2.5)) if series.dashed else "-"}
    if not smooth:
        dots: dict[str, Any] = {"marker": "o", "markersize": 3.5} if len(xs) < SMOOTH_FROM else {}
        (handle,) = axes.plot(*decimate(xs, ys), linewidth=1.6, zorder=3, **line, **dots)
        return handle, float(ys.min()), float(ys.max())
    trend = moving_average(ys)
    axes.plot(*decimate(xs, ys), color=series.color, linewidth=0.6, alpha=0.25, zorder=1)
    every = np.unique(np.linspace(0, len(xs) - 1, TREND_POINTS).round().astype(int))
    (handle,) = axes.plot(xs[every], trend[every], linewidth=1.8, zorder=3, **line)  # over all raw lines
    # One outlier in a thousand must not flatten the rest: raw values beyond these are clipped.
    low, high = np.quantile(ys, (0.005, 0.995))
    return handle, float(min(low, trend.min())), float(max(high, trend.max()))


def _draw_mark(axes: Axes, mark: Mark) -> None:
    axes.plot(
        mark.x,
        mark.y,
        marker="o",
        markersize=11,
        fillstyle="none",
        markeredgewidth=2,
        color=mark.color,
        zorder=4,
        clip_on=False,
    )


def _legend(figure: Figure, axes: Axes, handles: list[Line2D], names: list[str]) -> None:
    """The legend in rows above the plot. Margins are fixed rather than fitted by a layout engine: that
    takes half the time, and puts the axes of every chart in a page column at the same place."""
    columns = 4 if max(map(len, names)) <= 12 else 2
    rows = -(-len(names) // columns)
    top = 1 - (8 + 14 * rows) / (SIZE[1] * 72)
    figure.subplots_adjust(left=0.115, right=0.975, bottom=0.15, top=top)
    # Handles and names given explicitly: matplotlib would leave out a name starting with "_".
    axes.legend(handles, names, loc="lower left", bbox_to_anchor=(0, 1.02), ncols=columns, borderaxespad=0)


def _style_axes(axes: Axes, y_limits: tuple[float, float]) -> None:
    axes.set_ylim(*y_limits)
    axes.yaxis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]))
    if max(map(abs, y_limits)) < 1e-3:  # a learning rate: 2.0e-04 reads better than 0.000200
        axes.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:.1e}" if y else "0"))
    axes.margins(x=0.02)
    axes.grid(axis="y", color=RULE, linewidth=0.8)
    axes.set_axisbelow(True)
    axes.xaxis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10], integer=True))
    axes.xaxis.set_major_formatter(FuncFormatter(lambda step, _: format_step(step)))
    axes.set_xlabel("step", loc="right", labelpad=1)


def _y_limits(low: float, high: float) -> tuple[float, float]:
    """From zero when the values are near it (losses, learning rates), padded a little, never empty."""
    if 0 < low < high / 3:
        low = 0.0
    if high - low <= 1e-9 * max(abs(low), abs(high)):  # constant, up to rounding
        pad = abs(low) * 0.1 or 1.0
        return low - pad, high + pad
    pad = 0.06 * (high - low)
    return (low if low == 0 else low - pad), high + pad


def moving_average(ys: np.ndarray) -> np.ndarray:
    """A centred running mean over about 1/30 of the points: the trend through GAN-loss noise."""
    n = len(ys)
    half = max(1, n // 60)
    sums = np.concatenate(([0.0], np.cumsum(ys)))
    index = np.arange(n)
    low, high = np.maximum(index - half, 0), np.minimum(index + half + 1, n)
    return (sums[high] - sums[low]) / (high - low)


def decimate(xs: np.ndarray, ys: np.ndarray, limit: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most ``limit`` points, keeping each bucket's lowest and highest so that spikes stay visible."""
    if len(xs) <= limit:
        return xs, ys
    edges = np.linspace(0, len(xs), limit // 2 + 1).astype(int)
    keep: set[int] = set()
    for low, high in itertools.pairwise(edges):
        keep.update((low + int(np.argmin(ys[low:high])), low + int(np.argmax(ys[low:high]))))
    index = np.array(sorted(keep))
    return xs[index], ys[index]


def format_step(step: float) -> str:
    """Compact step counts for axis ticks: 500, 2.5k, 100k, 1.2M."""
    for size, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(step) >= size:
            return f"{step / size:g}{suffix}"
    return f"{step:g}"


def _inline(svg: str, label: str) -> str:
    """The SVG file's text made fit to sit inside an HTML page among other charts.

    Drops the XML prolog, the artists' ids (the same in every chart, and ids must be unique within a page)
    and the precision of path coordinates beyond a tenth of a point, which takes 40% off a long run's chart.
    """
    svg = svg[svg.index("<svg") :]
    svg = re.sub(r'<g id="[^"]*">', "<g>", svg)
    svg = re.sub(r' d="([^"]*)"', lambda path: f' d="{_round_numbers(path[1])}"', svg)
    return svg.replace("<svg ", f"<svg class='chart' role='img' aria-label='{html.escape(label)}' ", 1)


def _round_numbers(path: str) -> str:
    rounded = re.sub(r"-?\d+\.\d+", lambda number: f"{float(number[0]):.1f}", path)
    return " ".join(rounded.split())
