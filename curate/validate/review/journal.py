"""Marks the database cannot take yet: an append-only, fsynced journal beside it.

A DuckDB file is open either by one read-write process or by any number of read-only
ones, never both. The review page must save every mark the moment it is made, for the
20-35 minutes a review takes, while `curate sql`, `report`, `filter`, the duckdb shell
(`-readonly`) and others read the same workspace. So the review server never keeps the
database open: it appends each mark to `ws/marks.jsonl` and fsyncs it before it answers,
then folds the journal into `judgments` whenever it can take the write lock for a moment
(and when it stops).

- `append` (the server): one JSON line per mark, under an exclusive flock, fsynced.
- `fold` (every read-write `Workspace.connect`): the journal's marks go into `judgments`
  in one transaction, then the journal is emptied, all under the same flock. A mark
  replaces the stored one only if it is not older, so folding twice (a crash between the
  commit and the truncation) changes nothing.
- `overlay` (every read-only connect): a TEMP view `judgments` over the stored marks and
  the journal's, latest per (id, label). Temp objects shadow the table for every query
  of that connection, the `review_sheet` view included, so readers see every
  acknowledged mark. A read-only connection holds the file's lock: no fold can run
  while it is open, so the two sources never count a mark twice or miss one.

The journal is a file anyone can edit, so both check every line first, by the same rules
(the JSON here, the rest in queries/journal.sql): a line that is not a mark (not JSON, a
mark outside hit/miss/skip, a timestamp that is none or in the future, an id no item has,
a label the item was not drawn with) never reaches `judgments` and never stops a command.
Readers leave it out; the fold appends it to `ws/marks.rejected.jsonl` (its line number,
the reason, its bytes) before it empties the journal. Either says so in a NOTE on stderr
naming the line and the reason, once per process.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sys
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb
import numpy as np

from ...core import sql
from ...core.progress import plural
from ...core.textout import safe
from ...core.workspace import JOURNAL, JOURNAL_REJECTED

NAME = JOURNAL
REJECTED = JOURNAL_REJECTED  # the journal's bad lines, set aside by the fold
KEYS = ("id", "label", "mark", "marked_at")
MAX_LINE = 64 * 1024  # bytes; a mark the server writes takes a few hundred


def path(root: str | Path) -> Path:
    return Path(root) / NAME


def rejected_path(root: str | Path) -> Path:
    return Path(root) / REJECTED


@contextmanager
def _locked(p: Path, create: bool):
    flags = os.O_RDWR | os.O_APPEND | (os.O_CREAT if create else 0)
    fd = os.open(p, flags, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)  # closing drops the flock


def append(root: str | Path, rows: Iterable[tuple[int, str, str, datetime]]) -> None:
    """Append marks (id, label, mark, marked_at); durable when this returns."""
    p = path(root)
    new = not p.exists()
    data = "".join(json.dumps({"id": int(i), "label": label, "mark": mark,
                               "marked_at": at.isoformat(sep=" ", timespec="microseconds")}) + "\n"
                   for i, label, mark, at in rows).encode("utf-8")
    with _locked(p, create=True) as fd:
        size = os.fstat(fd).st_size
        # A crash mid-write can leave a line without its newline: never glue a mark onto it.
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        os.write(fd, data)
        os.fsync(fd)
    if new:  # the file's own directory entry must survive a crash too
        dfd = os.open(p.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


@dataclass(frozen=True)
class Line:
    """A journal line that reads as a mark: its number (from 1) and its four fields as written."""

    line: int
    id: int
    label: str
    mark: str
    marked_at: str


@dataclass(frozen=True)
class Rejected:
    """A journal line that is not a usable mark: its number, why, and its bytes as they were."""

    line: int
    reason: str
    raw: bytes


def _text(d: dict, key: str) -> str:
    v = d[key]
    if not isinstance(v, str):
        raise _Bad(f"{key} is {_json_kind(v)}, not a string")
    if "\x00" in v:
        raise _Bad(f"{key} holds a NUL character")
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise _Bad(f"{key} holds a lone surrogate (\\u escape), not text") from None
    return v


class _Bad(ValueError):
    pass


def _json_kind(v: object) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", float: "a number",
            int: "a number", type(None): "null"}.get(type(v), type(v).__name__)


def _line(no: int, raw: bytes) -> Line:
    """One line as a mark, or _Bad saying why not (the rules that need the database are
    queries/journal.sql's)."""
    if len(raw) > MAX_LINE:
        raise _Bad(f"a line of {len(raw):,} bytes (a mark takes a few hundred)")
    if b"\x00" in raw:
        raise _Bad("holds NUL bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _Bad(f"not UTF-8 text (byte {e.start + 1})") from None
    try:
        d = json.loads(text)
    except ValueError as e:
        raise _Bad(f"not JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(d, dict):
        raise _Bad(f"{_json_kind(d)}, not a JSON object")
    missing = [k for k in KEYS if k not in d]
    if missing:
        raise _Bad(f"no {', '.join(missing)}")
    i = d["id"]
    if type(i) is not int:  # bool is an int to Python, not to the journal
        raise _Bad(f"id is {_json_kind(i)}, not an integer")
    if not -(2 ** 63) <= i < 2 ** 63:
        raise _Bad(f"id {i} is out of range")
    return Line(no, i, _text(d, "label"), _text(d, "mark"), _text(d, "marked_at"))


def _parse(raw: bytes) -> tuple[list[Line], list[Rejected]]:
    """The lines that read as marks, and the others with their reason.

    Extra keys are allowed (the four decide the mark). A last line without its newline
    that is not whole JSON is a write in flight or torn by a crash: never acknowledged,
    so neither a mark nor rejected. Blank lines are nothing."""
    good: list[Line] = []
    bad: list[Rejected] = []
    lines = raw.split(b"\n")
    for no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            good.append(_line(no, line))
        except _Bad as e:
            torn = no == len(lines) and str(e).startswith("not JSON")
            if not torn:
                bad.append(Rejected(no, str(e), line))
    return good, bad


def _read(p: Path) -> bytes:
    try:
        return p.read_bytes()
    except FileNotFoundError:
        return b""


def read(root: str | Path) -> list[tuple[int, str, str, str]]:
    """The journal's lines that read as marks, in the order they were made: (id, label,
    mark, marked_at); lines the database's rules refuse are still among them."""
    try:
        good, _ = _parse(_read(path(root)))
    except OSError:
        return []
    return [(g.id, g.label, g.mark, g.marked_at) for g in good]


def pending(root: str | Path) -> int:
    return len(read(root))


def _columns(lines: list[Line]) -> dict[str, np.ndarray]:
    """Lines as columns DuckDB scans in one statement (executemany goes row by row)."""
    return {"line": np.array([g.line for g in lines], dtype=np.int64),
            "id": np.array([g.id for g in lines], dtype=np.int64),
            "label": np.array([g.label for g in lines], dtype=object),
            "mark": np.array([g.mark for g in lines], dtype=object),
            "marked_at": np.array([g.marked_at for g in lines], dtype=object)}


def _table(con: duckdb.DuckDBPyConnection) -> str:
    """`judgments` of this database itself (`main.judgments` would find a temp view first)."""
    db = con.execute("SELECT current_database()").fetchall()[0][0]
    return sql.quote_identifier(db) + ".main.judgments"


def _has_judgments(con: duckdb.DuckDBPyConnection) -> bool:
    return bool(con.execute("SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database()"
                            " AND schema_name = 'main' AND table_name = 'judgments'").fetchall()[0][0])


def _check(con: duckdb.DuckDBPyConnection, raw: bytes, good: list[Line]) -> list[Rejected]:
    """TEMP table journal_lines_checked: the lines with the database's reason to refuse each
    (queries/journal.sql); returns the refused ones."""
    sql.run(con, "journal")
    con.register("journal_lines", _columns(good))
    try:
        con.execute("CREATE OR REPLACE TEMP TABLE journal_lines_checked AS"
                    " SELECT * FROM journal_checked('journal_lines')")
    finally:
        con.unregister("journal_lines")
    refused = con.execute("SELECT line, reason FROM journal_lines_checked WHERE reason IS NOT NULL").fetchall()
    if not refused:
        return []
    lines = raw.split(b"\n")
    return [Rejected(no, reason, lines[no - 1]) for no, reason in refused]


def fold(con: duckdb.DuckDBPyConnection, root: str | Path) -> int:
    """Move the journal's good marks into `judgments` and its bad lines into
    marks.rejected.jsonl (read-write connection), then empty it; how many marks it held.

    Nothing in the journal stops the connect: a bad line is set aside with a note, and a
    journal that cannot be read or set aside stays as it is (with a note) for the next one."""
    p = path(root)
    try:
        if not p.exists() or p.stat().st_size == 0:
            return 0
        with _locked(p, create=False) as fd:
            return _fold_locked(con, root, fd)
    except OSError as e:
        _note(f"cannot fold {p} into the database: {e.strerror or e}; its marks wait there")
        return 0


def _fold_locked(con: duckdb.DuckDBPyConnection, root: str | Path, fd: int) -> int:
    p = path(root)
    raw = os.pread(fd, os.fstat(fd).st_size, 0)
    good, bad = _parse(raw)
    refused: list[Rejected] = []
    if good:
        if not _has_judgments(con):
            # the review tables' DDL, run here so the core never imports the validate stage
            con.execute(sql.text("sample_schema"))
        refused = _check(con, raw, good)
        bad += refused
        with sql.transaction(con):
            con.execute(
                f"INSERT INTO {_table(con)} (id, label, mark, marked_at)"
                " SELECT id, label, mark, marked_at FROM journal_latest('journal_lines_checked')"
                " ON CONFLICT (id, label) DO UPDATE SET mark = excluded.mark, marked_at = excluded.marked_at"
                " WHERE excluded.marked_at >= marked_at")
    if bad:
        bad.sort(key=lambda r: r.line)
        try:
            _set_aside(rejected_path(root), bad)
        except OSError as e:
            _note(f"{p}: {plural(len(bad), 'bad line')} could not be set aside in {rejected_path(root)} "
                  f"({e.strerror or e}); they stay in the journal, its good marks are saved")
            return len(good) - len(refused)
        _tell(p, bad, f"set aside in {rejected_path(root)}")
    os.ftruncate(fd, 0)
    os.fsync(fd)
    return len(good) - len(refused)


def _set_aside(p: Path, bad: list[Rejected]) -> None:
    """Append the bad lines to marks.rejected.jsonl, fsynced: each its line number, reason, when,
    and its text (bytes that are not UTF-8 as \\udcXX escapes: `surrogateescape` gets them back)."""
    at = datetime.now().isoformat(sep=" ", timespec="seconds")
    data = "".join(json.dumps({"line": r.line, "reason": r.reason, "set_aside_at": at,
                               "text": r.raw.decode("utf-8", "surrogateescape")}) + "\n" for r in bad)
    # not through a link: the workspace's own file, never one elsewhere
    fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        os.write(fd, data.encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)


def overlay(con: duckdb.DuckDBPyConnection, root: str | Path) -> int:
    """Make `judgments` on a read-only connection include the journal's good marks; how many."""
    p = path(root)
    try:
        raw = _read(p)
    except OSError as e:
        _note(f"cannot read {p}: {e.strerror or e}; its marks are left out")
        return 0
    good, bad = _parse(raw)
    if not (good or bad) or not _has_judgments(con):
        return 0
    refused = _check(con, raw, good) if good else []
    if bad or refused:
        _tell(p, sorted(bad + refused, key=lambda r: r.line),
              f"left out (the next command that writes to the workspace sets it aside in {REJECTED})")
    if not good:
        return 0
    con.execute("CREATE OR REPLACE TEMP TABLE journal_marks AS SELECT * FROM journal_latest('journal_lines_checked')")
    sql.run(con, "journal_overlay")
    return len(good) - len(refused)


# -- notes: one line per bad journal line, once per process -------------------------------
_NOTED: set[tuple[str, str, int, bytes]] = set()
NOTE_LINES = 5  # more bad lines than this are counted, not listed


def _note(text: str) -> None:
    print(safe(f"NOTE: {text}"), file=sys.stderr, flush=True)


def _tell(p: Path, bad: list[Rejected], what: str) -> None:
    """A note per bad line this process has not told of yet (a command connects many times):
    once as left out (readers), once as set aside (the fold)."""
    new = []
    for r in bad:
        key = (str(p), what, r.line, hashlib.blake2b(r.raw, digest_size=16).digest())
        if key not in _NOTED:
            _NOTED.add(key)
            new.append(r)
    for r in new[:NOTE_LINES]:
        _note(f"{p} line {r.line}: {r.reason}; {what}")
    if len(new) > NOTE_LINES:
        _note(f"{p}: {plural(len(new) - NOTE_LINES, 'more bad line')} {what}")
