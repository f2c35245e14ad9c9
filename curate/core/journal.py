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
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterable
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import duckdb
import numpy as np

from . import sql

NAME = "marks.jsonl"


def path(root: str | Path) -> Path:
    return Path(root) / NAME


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


def _parse(raw: bytes) -> list[tuple[int, str, str, str]]:
    """Complete, well-formed lines only: a torn last line was never acknowledged."""
    out = []
    for line in raw.split(b"\n"):
        try:
            d = json.loads(line)
            out.append((int(d["id"]), str(d["label"]), str(d["mark"]), str(d["marked_at"])))
        except (ValueError, KeyError, TypeError):
            continue
    return out


def read(root: str | Path) -> list[tuple[int, str, str, str]]:
    """The journal's marks in the order they were made: (id, label, mark, marked_at)."""
    try:
        return _parse(path(root).read_bytes())
    except FileNotFoundError:
        return []


def pending(root: str | Path) -> int:
    return len(read(root))


def _columns(rows: list[tuple[int, str, str, str]]) -> dict[str, np.ndarray]:
    """Rows as columns DuckDB scans in one statement (executemany goes row by row)."""
    return {"id": np.array([r[0] for r in rows], dtype=np.int64),
            "label": np.array([r[1] for r in rows], dtype=object),
            "mark": np.array([r[2] for r in rows], dtype=object),
            "marked_at": np.array([r[3] for r in rows], dtype=object)}


def _table(con: duckdb.DuckDBPyConnection) -> str:
    """`judgments` of this database itself (`main.judgments` would find a temp view first)."""
    db = con.execute("SELECT current_database()").fetchall()[0][0]
    return '"' + db.replace('"', '""') + '".main.judgments'


def _has_judgments(con: duckdb.DuckDBPyConnection) -> bool:
    return bool(con.execute("SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database()"
                            " AND schema_name = 'main' AND table_name = 'judgments'").fetchall()[0][0])


def fold(con: duckdb.DuckDBPyConnection, root: str | Path) -> int:
    """Move the journal's marks into `judgments` (read-write connection); how many."""
    p = path(root)
    if not p.exists() or p.stat().st_size == 0:
        return 0
    with _locked(p, create=False) as fd:
        rows = _parse(os.pread(fd, os.fstat(fd).st_size, 0))
        if rows:
            if not _has_judgments(con):
                # the review tables' DDL, run here so the core never imports the validate stage
                con.execute(sql.text("sample_schema"))
            table = _table(con)
            latest = {(i, label): (i, label, mark, at) for i, label, mark, at in rows}  # journal order: last wins
            con.register("journal_rows", _columns(list(latest.values())))
            try:
                with sql.transaction(con):
                    con.execute(
                        f"INSERT INTO {table} (id, label, mark, marked_at)"
                        " SELECT id, label, mark, CAST(marked_at AS TIMESTAMP) FROM journal_rows"
                        " ON CONFLICT (id, label) DO UPDATE SET mark = excluded.mark, marked_at = excluded.marked_at"
                        " WHERE excluded.marked_at >= marked_at")
            finally:
                con.unregister("journal_rows")
        os.ftruncate(fd, 0)
        os.fsync(fd)
    return len(rows)


def overlay(con: duckdb.DuckDBPyConnection, root: str | Path) -> int:
    """Make `judgments` on a read-only connection include the journal; how many it adds."""
    rows = read(root)
    if not rows or not _has_judgments(con):
        return 0
    cols = _columns(rows)
    cols["seq"] = np.arange(len(rows), dtype=np.int64)
    con.register("journal_rows", cols)
    try:
        con.execute("CREATE OR REPLACE TEMP TABLE journal_marks AS SELECT seq, id, label, mark,"
                    " CAST(marked_at AS TIMESTAMP) AS marked_at FROM journal_rows")
    finally:
        con.unregister("journal_rows")
    con.execute(
        f"CREATE OR REPLACE TEMP VIEW judgments AS"
        f" SELECT id, label, mark, marked_at FROM ("
        f"  SELECT id, label, mark, marked_at, 0 AS src, 0 AS seq FROM {_table(con)}"
        f"  UNION ALL SELECT id, label, mark, marked_at, 1, seq FROM temp.main.journal_marks)"
        f" QUALIFY row_number() OVER (PARTITION BY id, label ORDER BY marked_at DESC, src DESC, seq DESC) = 1")
    return len(rows)
