"""The marks of a review set: read them, write one, count them.

A mark judges a pair (image id, label). `set_mark` writes one in its own autocommitted
statement (DuckDB's WAL) for callers holding the write lock (`review --import`). The
review server holds no lock: it appends to the fsynced journal (curate/validate/review/journal.py)
before it answers, and read-only connections see journal marks through `judgments`.
Either way a crash, a killed server or a closed tab loses nothing already acknowledged.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

MARKS = ("hit", "miss", "skip")


@dataclass(frozen=True)
class SheetRow:
    position: int
    id: int
    path: str | None
    caption: str | None
    label: str
    prob: float
    mark: str | None


@dataclass(frozen=True)
class Progress:
    total: int
    hits: int
    misses: int
    skips: int

    @property
    def done(self) -> int:
        return self.hits + self.misses + self.skips

    @property
    def left(self) -> int:
        return self.total - self.done

    def as_dict(self) -> dict[str, int]:
        return {"total": self.total, "done": self.done, "left": self.left,
                "hits": self.hits, "misses": self.misses, "skips": self.skips}


def rows(con: duckdb.DuckDBPyConnection, set_name: str) -> list[SheetRow]:
    """Every item of the set in page order, with its mark (None = not marked yet)."""
    out = con.execute(
        "SELECT position, id, path, caption, label, prob, mark FROM review_sheet"
        " WHERE set_name = ? ORDER BY position",
        [set_name],
    ).fetchall()
    return [SheetRow(int(p), int(i), path, cap, label, float(prob), mark)
            for p, i, path, cap, label, prob, mark in out]


def set_mark(con: duckdb.DuckDBPyConnection, item_id: int, label: str, mark: str) -> None:
    if mark not in MARKS:
        raise ValueError(f"unknown mark {mark!r}: use one of {', '.join(MARKS)}")
    con.execute(
        "INSERT INTO judgments (id, label, mark, marked_at) VALUES (?, ?, ?, now())"
        " ON CONFLICT (id, label) DO UPDATE SET mark = excluded.mark, marked_at = excluded.marked_at",
        [item_id, label, mark],
    )


def progress(con: duckdb.DuckDBPyConnection, set_name: str) -> Progress:
    total, hits, misses, skips = con.execute(
        "SELECT count(*), count(*) FILTER (mark = 'hit'), count(*) FILTER (mark = 'miss'),"
        " count(*) FILTER (mark = 'skip') FROM review_sheet WHERE set_name = ?",
        [set_name],
    ).fetchall()[0]
    return Progress(int(total), int(hits), int(misses), int(skips))
