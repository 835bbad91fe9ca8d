"""Reading a run folder as ``cyclegan train`` leaves it: the config, the logs, results and sample grids.

Training may still be running or may have been killed mid-write, so every file but ``config.json`` may be
missing, torn or otherwise unreadable: it is then read as far as it parses and the rest is counted or
described, never raised, so that a report of a live or crashed run can still be made.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cyclegan.errors import CycleGANError
from cyclegan.evaluation.results import ResultTable
from cyclegan.files import read_jsonl
from cyclegan.layout import CONFIG, DEMO_FILE, EVAL_FILE, EVAL_LOG, LOG, SAMPLES, TRIPLETS

SAMPLE_NAME = re.compile(r"step_(\d+)\.png")

Point = tuple[float, float]  # (step, value)


@dataclass(frozen=True)
class Unreadable:
    """Why a file that exists could not be used."""

    problem: str


@dataclass(frozen=True)
class Run:
    """Everything a report shows, read from one run folder."""

    folder: Path
    config: dict[str, Any]
    log: list[dict[str, Any]]  # log.jsonl: mean losses, lr and time per logged interval
    log_skipped: int  # lines of log.jsonl that did not parse (a torn last line, typically)
    metrics: dict[str, list[Point]]  # eval_log.jsonl: "KID A→B" -> (step, value), sorted by step
    evaluation: ResultTable | Unreadable | None  # eval.json, None when absent
    demo: ResultTable | Unreadable | None  # demo.json, None when absent
    samples: list[tuple[int, Path]]  # samples/step_*.png by step
    triplets: Path | None = None  # triplets.png of a paired evaluation: input | output | target

    @property
    def name(self) -> str:
        return str(self.config.get("name") or self.folder.name)


def read_run(run_dir: Path) -> Run:
    """Read the run folder; only a missing or unreadable ``config.json`` is an error."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    log, log_skipped = read_jsonl(run_dir / LOG)
    eval_log, _ = read_jsonl(run_dir / EVAL_LOG)
    return Run(
        folder=run_dir,
        config=config,
        log=log,
        log_skipped=log_skipped,
        metrics=metric_series(eval_log),
        evaluation=read_results(run_dir / EVAL_FILE),
        demo=read_results(run_dir / DEMO_FILE),
        samples=sample_grids(run_dir / SAMPLES),
        triplets=run_dir / TRIPLETS if (run_dir / TRIPLETS).is_file() else None,
    )


def read_config(run_dir: Path) -> dict[str, Any]:
    """The run's ``config.json``: the one file a report cannot do without, so its absence is an error."""
    if not run_dir.is_dir():
        raise CycleGANError(f"run folder not found: {run_dir}")
    path = run_dir / CONFIG
    if not path.is_file():
        raise CycleGANError(f"{run_dir} has no config.json; is it a run folder made by cyclegan train?")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise CycleGANError(f"cannot read {path}: {error}") from None
    if not isinstance(config, dict):
        raise CycleGANError(f"{path} does not hold a JSON object")
    return config


def read_results(path: Path) -> ResultTable | Unreadable | None:
    if not path.is_file():
        return None
    try:
        return ResultTable.load(path)
    except CycleGANError as error:
        return Unreadable(str(error).removeprefix(f"{path}: "))


def finite(value: Any) -> float | None:
    """A JSON number as a finite float; None for NaN, inf, huge integers, booleans and non-numbers."""
    if type(value) is float:  # the common case first: a log has a million of them
        return value if math.isfinite(value) else None
    if type(value) is not int:
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def column(rows: Iterable[dict[str, Any]], key: str) -> list[Point]:
    """(step, value) of one logged quantity, sorted by step; rows where either is not finite left out."""
    points = ((finite(row.get("step")), finite(row.get(key))) for row in rows)
    return sorted((x, y) for x, y in points if x is not None and y is not None)


def metric_series(eval_log: Iterable[dict[str, Any]]) -> dict[str, list[Point]]:
    """Metric name -> (step, value) from the rows of ``eval_log.jsonl``, {"step", "metrics": {...}}."""
    series: dict[str, list[Point]] = {}
    for row in eval_log:
        step, metrics = finite(row.get("step")), row.get("metrics")
        if step is None or not isinstance(metrics, dict):
            continue
        for name, value in metrics.items():
            if (number := finite(value)) is not None:
                series.setdefault(str(name), []).append((step, number))
    return {name: sorted(points) for name, points in series.items()}


def sample_grids(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of the sample grids training saved, by step."""
    if not folder.is_dir():
        return []
    matches = ((SAMPLE_NAME.fullmatch(path.name), path) for path in folder.glob("step_*.png"))
    return sorted((int(match[1]), path) for match, path in matches if match)
