"""A scores table as ``cyclegan eval`` writes it to ``eval.json`` and ``cyclegan demo`` to ``demo.json``.

Both files share one shape, so the terminal and the report page read them the same way. The files may
come from another version or be edited by hand, so :meth:`ResultTable.from_json` checks every field and
names what is wrong in one line, instead of a reader failing later on a missing key or a wrong type.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cyclegan.errors import CycleGANError
from cyclegan.files import atomic_write_text

KEYS = ("title", "protocol", "columns", "rows", "notes")
ROW_KEYS = ("method", "direction")
NUMBER = (int, float)  # a JSON number: bool is excluded because these checks compare exact types
JSON_NAMES = {
    str: "a string",
    int: "a number",
    float: "a number",
    dict: "an object",
    list: "an array",
    bool: "true/false",
    type(None): "null",
}


@dataclass(frozen=True)
class ResultRow:
    """The scores of one method in one direction by column; None (or absent) where it was not measured."""

    method: str
    direction: str
    scores: dict[str, float | None]


@dataclass(frozen=True)
class ResultTable:
    """Rows of scores, the protocol that makes them reproducible, and notes on how to read them."""

    title: str
    protocol: dict[str, str | float]
    columns: list[str]
    rows: list[ResultRow]
    notes: list[str]

    def row(self, method: str, direction: str) -> ResultRow:
        """The one row of ``method`` in ``direction``."""
        for row in self.rows:
            if (row.method, row.direction) == (method, direction):
                return row
        raise KeyError((method, direction))

    def to_dict(self) -> dict[str, Any]:
        """The file's content: rows are flat objects, {"method", "direction", column: score, ...}."""
        rows = [{"method": r.method, "direction": r.direction, **r.scores} for r in self.rows]
        return {
            "title": self.title,
            "protocol": self.protocol,
            "columns": self.columns,
            "rows": rows,
            "notes": self.notes,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    def save(self, path: Path) -> None:
        atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: Path) -> ResultTable:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise CycleGANError(f"cannot read {path}: {error}") from None
        return cls.from_json(text, str(path))

    @classmethod
    def from_json(cls, text: str, source: str) -> ResultTable:
        """Parse and check a table; ``source`` (the file's name) starts every error message."""
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as error:
            raise CycleGANError(f"{source}: not valid JSON ({error})") from None
        _expect(data, (dict,), source, "the file")
        missing = [key for key in KEYS if key not in data]
        unknown = [key for key in data if key not in KEYS]
        if missing or unknown:
            problem = f"no {missing[0]!r}" if missing else f"unexpected key {unknown[0]!r}"
            raise CycleGANError(f"{source}: {problem}; expected the keys {', '.join(KEYS)}")
        columns = _list_of(data, "columns", (str,), source)
        clash = next((c for c in columns if c in ROW_KEYS or columns.count(c) > 1), None)
        if clash is not None:
            raise CycleGANError(f"{source}: column {clash!r} is repeated or is a row key")
        protocol = _expect(data["protocol"], (dict,), source, "protocol")
        for key, value in protocol.items():
            _expect(value, (str, *NUMBER), source, f"protocol[{key!r}]")
        rows = _list_of(data, "rows", (dict,), source)
        return cls(
            title=_expect(data["title"], (str,), source, "title"),
            protocol=protocol,
            columns=columns,
            rows=[_row(row, columns, source, f"rows[{i}]") for i, row in enumerate(rows)],
            notes=_list_of(data, "notes", (str,), source),
        )


def _row(row: dict[str, Any], columns: list[str], source: str, where: str) -> ResultRow:
    for key in ROW_KEYS:
        if key not in row:
            raise CycleGANError(f"{source}: {where} has no {key!r}")
        _expect(row[key], (str,), source, f"{where}.{key}")
    scores = {key: value for key, value in row.items() if key not in ROW_KEYS}
    for column, score in scores.items():
        if column not in columns:
            raise CycleGANError(f"{source}: {where} has {column!r}, which is not in columns")
        _expect(score, (*NUMBER, type(None)), source, f"{where}.{column}")
    return ResultRow(row["method"], row["direction"], scores)


def _list_of(data: dict[str, Any], key: str, kinds: tuple[type, ...], source: str) -> list[Any]:
    items = _expect(data[key], (list,), source, key)
    for i, item in enumerate(items):
        _expect(item, kinds, source, f"{key}[{i}]")
    return items


def _expect(value: Any, kinds: tuple[type, ...], source: str, where: str) -> Any:
    """``value`` when its exact type is one of ``kinds``, else a one-line error saying what it should be."""
    if type(value) in kinds:
        return value
    wanted = " or ".join(dict.fromkeys(JSON_NAMES[kind] for kind in kinds))
    found = JSON_NAMES.get(type(value), type(value).__name__)
    raise CycleGANError(f"{source}: {where} must be {wanted}, not {found}")
