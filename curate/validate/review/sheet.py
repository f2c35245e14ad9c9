"""A review set as a CSV sheet, for people who prefer a spreadsheet to the page.

Columns: id, path, caption, label, prob, mark (hit, miss, skip or empty), review_set.
`prob` is written with Python's shortest exact float text, so export -> import -> export
gives the same bytes and the same marks. `review_set` names the set the sheet was exported
from, so that its marks go back to that set whatever was drawn since. The file is UTF-8
with a BOM, which spreadsheet programs need to read captions in any language.

A sheet comes back as a spreadsheet program saved it: UTF-8 with or without a BOM,
UTF-16 ("Unicode text"), or the Windows code page (cp1252); comma-, semicolon- or
tab-separated (Excel in many European locales writes `;` and a decimal comma).

Import takes only `id`, `label` and `mark` from each row; the other columns are there
for the person reading the sheet. An empty mark leaves the stored mark alone (an old
sheet cannot wipe newer marks made in the page). Bad rows are reported by their line
in the file and skipped; the rest are imported in one transaction.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from ...core.outputs import write_atomic
from ...core.sql import transaction
from ...errors import InputError
from . import marks

COLUMNS = ("id", "path", "caption", "label", "prob", "mark", "review_set")
ENCODING_OUT = "utf-8-sig"
DELIMITERS = (",", ";", "\t")


class SheetError(InputError, ValueError):
    """A sheet that cannot be read at all (no header, missing columns, unknown encoding)."""


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
    """Write the set as a sheet (whole or not at all, never into a workspace: core/outputs.py);
    returns the number of rows."""
    items = marks.rows(con, set_name)

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding=ENCODING_OUT, newline="") as f:
            w = csv.writer(f)
            w.writerow(COLUMNS)
            for r in items:
                w.writerow([r.id, r.path or "", r.caption or "", r.label, repr(r.prob), r.mark or "", set_name])

    write_atomic(path, write, "review sheet")
    return len(items)


def _text(path: str | Path) -> str:
    """The sheet's text, in whichever encoding a spreadsheet program saved it."""
    try:
        raw = Path(path).read_bytes()
    except IsADirectoryError:
        raise SheetError(f"{path} is a folder, not a sheet") from None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return raw.decode("utf-16")
    if raw[:4].count(b"\x00") >= 1 and len(raw) >= 2:  # UTF-16 without a BOM: every other byte is 0
        try:
            return raw.decode("utf-16-le" if raw[1:2] == b"\x00" else "utf-16-be")
        except UnicodeDecodeError:
            pass
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")  # Excel's "CSV" on Windows


def _dialect(text: str) -> str:
    """The delimiter of the header line: the one of , ; TAB it holds most often."""
    first = text.split("\n", 1)[0]
    counts = {d: first.count(d) for d in DELIMITERS}
    best = max(DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] else ","


def _reader(path: str | Path) -> tuple[csv.reader, str]:
    text = _text(path)
    delimiter = _dialect(text)
    return csv.reader(io.StringIO(text, newline=""), delimiter=delimiter), delimiter


def _header(reader: csv.reader, path: str | Path) -> list[str]:
    header = next(reader, None)
    if header is None:
        raise SheetError(f"{path}: empty file, expected a header with {', '.join(COLUMNS)}")
    return [h.strip().lower() for h in header]


def _rows(path: str | Path) -> Iterator[tuple[int, dict[str, str]]]:
    """(first line of the row in the file, row) for every data row; checks the header."""
    reader, delimiter = _reader(path)
    header = _header(reader, path)
    last = reader.line_num
    for values in reader:
        start, last = last + 1, reader.line_num  # a caption with newlines spans lines
        if not any(v.strip() for v in values):
            continue
        row = dict(zip(header, values, strict=False))
        if delimiter != "," and "prob" in row:
            row["prob"] = row["prob"].replace(",", ".")  # a decimal comma (0,5432) from a `;` locale
        yield start, row


def _require(path: str | Path, needed: tuple[str, ...]) -> None:
    reader, _ = _reader(path)
    header = _header(reader, path)
    missing = [c for c in needed if c not in header]
    if missing:
        raise SheetError(f"{path}: missing column(s) {', '.join(missing)} (have: {', '.join(header) or 'none'}); "
                         f"a sheet needs {', '.join(needed)}")


def sheet_set(path: str | Path) -> str | None:
    """The review set a sheet was exported from (its `review_set` column), or None.

    Raises SheetError when rows name different sets: such a sheet was pasted together.
    """
    names = {(row.get("review_set") or "").strip() for _line, row in _rows(path)} - {""}
    if len(names) > 1:
        raise SheetError(f"{path}: rows from {len(names)} review sets ({', '.join(sorted(names))}): "
                         "import one set's sheet at a time")
    return names.pop() if names else None


def _mark(value: str | None) -> str | None:
    """'' -> None; 'Hit ' -> 'hit'; anything else unknown -> ValueError."""
    v = (value or "").strip().lower()
    if not v:
        return None
    if v not in marks.MARKS:
        raise SheetError(f"unknown mark {value!r} (use hit, miss, skip or leave it empty)")
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
        other = (row.get("review_set") or "").strip()
        if other and other != set_name:
            res.problems.append(f"line {line}: from review set {other!r}, not {set_name!r}")
            continue
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
    with transaction(con):
        for item_id, label, mark in todo:
            marks.set_mark(con, item_id, label, mark)
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
