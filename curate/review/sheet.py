"""A review set as a CSV sheet, for people who prefer a spreadsheet to the page.

Columns: id, path, caption, label, prob, mark (hit, miss, skip or empty). `prob` is
written with Python's shortest exact float text, so export -> import -> export gives
the same bytes and the same marks. The file is UTF-8 with a BOM, which spreadsheet
programs need to read captions in any language (the reader accepts it with or without).

Import takes only `id`, `label` and `mark` from each row; the other columns are there
for the person reading the sheet. An empty mark leaves the stored mark alone (an old
sheet cannot wipe newer marks made in the page). Bad rows are reported by their line
in the file and skipped; the rest are imported in one transaction.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from . import marks

COLUMNS = ("id", "path", "caption", "label", "prob", "mark")
ENCODING_OUT = "utf-8-sig"
ENCODING_IN = "utf-8-sig"  # reads files with and without a BOM


@dataclass
class ImportResult:
    changed: int = 0
    unchanged: int = 0
    empty: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class MarkedRow:
    """One judged row of any sheet: what `curate report --marks` needs."""

    line: int
    label: str
    prob: float
    mark: str
    path: str | None = None   # when the sheet has a path column: the report's image grids use it


def export_sheet(con: duckdb.DuckDBPyConnection, set_name: str, path: str | Path) -> int:
    """Write the set as a sheet; returns the number of rows."""
    items = marks.rows(con, set_name)
    with open(path, "w", encoding=ENCODING_OUT, newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for r in items:
            w.writerow([r.id, r.path or "", r.caption or "", r.label, repr(r.prob), r.mark or ""])
    return len(items)


def _rows(path: str | Path) -> Iterator[tuple[int, dict[str, str]]]:
    """(first line of the row in the file, row) for every data row; checks the header."""
    with open(path, encoding=ENCODING_IN, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty file, expected a header with {', '.join(COLUMNS)}")
        header = [h.strip().lower() for h in header]
        last = reader.line_num
        for values in reader:
            start, last = last + 1, reader.line_num  # a caption with newlines spans lines
            if not any(v.strip() for v in values):
                continue
            yield start, dict(zip(header, values, strict=False))


def _require(path: str | Path, needed: tuple[str, ...]) -> None:
    with open(path, encoding=ENCODING_IN, newline="") as f:
        header = [h.strip().lower() for h in next(csv.reader(f), [])]
    missing = [c for c in needed if c not in header]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (have: {', '.join(header)})")


def _mark(value: str | None) -> str | None:
    """'' -> None; 'Hit ' -> 'hit'; anything else unknown -> ValueError."""
    v = (value or "").strip().lower()
    if not v:
        return None
    if v not in marks.MARKS:
        raise ValueError(f"unknown mark {value!r} (use hit, miss, skip or leave it empty)")
    return v


def import_sheet(con: duckdb.DuckDBPyConnection, set_name: str, path: str | Path) -> ImportResult:
    """Read marks from a sheet into the workspace; bad rows are reported and skipped."""
    _require(path, ("id", "label", "mark"))
    known = {r.id: r for r in marks.rows(con, set_name)}
    res = ImportResult()
    seen: dict[int, int] = {}
    todo: list[tuple[int, str, str]] = []
    for line, row in _rows(path):
        raw_id = (row.get("id") or "").strip()
        try:
            item_id = int(raw_id)
        except ValueError:
            res.problems.append(f"line {line}: id {raw_id!r} is not a whole number")
            continue
        if item_id not in known:
            res.problems.append(f"line {line}: unknown id {item_id} (not in review set {set_name!r})")
            continue
        if item_id in seen:
            res.problems.append(f"line {line}: id {item_id} again (first on line {seen[item_id]}); kept the first")
            continue
        seen[item_id] = line
        label = row.get("label") or ""
        if label != known[item_id].label:
            res.problems.append(
                f"line {line}: id {item_id} was shown as {known[item_id].label!r}, the sheet says {label!r}")
            continue
        try:
            mark = _mark(row.get("mark"))
        except ValueError as e:
            res.problems.append(f"line {line}: {e}")
            continue
        if mark is None:
            res.empty += 1
        elif mark == known[item_id].mark:
            res.unchanged += 1
        else:
            todo.append((item_id, label, mark))
    con.execute("BEGIN TRANSACTION")
    try:
        for item_id, label, mark in todo:
            marks.set_mark(con, item_id, label, mark)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    res.changed = len(todo)
    return res


def read_marks(path: str | Path) -> tuple[list[MarkedRow], list[str]]:
    """The judged rows of any sheet with columns label, prob, mark, and its bad rows.

    Rows with an empty mark are not judged yet and are left out silently.
    """
    _require(path, ("label", "prob", "mark"))
    out: list[MarkedRow] = []
    problems: list[str] = []
    for line, row in _rows(path):
        try:
            mark = _mark(row.get("mark"))
        except ValueError as e:
            problems.append(f"line {line}: {e}")
            continue
        if mark is None:
            continue
        label = (row.get("label") or "").strip()
        if not label:
            problems.append(f"line {line}: empty label")
            continue
        raw = (row.get("prob") or "").strip()
        try:
            prob = float(raw)
        except ValueError:
            problems.append(f"line {line}: prob {raw!r} is not a number")
            continue
        if not (math.isfinite(prob) and 0.0 <= prob <= 1.0):
            problems.append(f"line {line}: prob {raw!r} is not between 0 and 1")
            continue
        out.append(MarkedRow(line, label, prob, mark, (row.get("path") or "").strip() or None))
    return out, problems
