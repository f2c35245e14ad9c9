"""The SQL files of queries/ (package `curate.queries` once installed), loaded and run.

(Named `sql`, not `queries`: `curate.queries` is the package of the SQL files themselves.)

The files are the interface: a user can paste them into the DuckDB shell. They take
no parameters; values reach the views' macros as bound parameters at query time.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources

import duckdb

# Tables that persist across runs (created if missing).
CACHE = "label_cache"
# Tables of one classify run (replaced as a whole).
SCORE_TABLES = "scores_tables"
# Views and macros over the scores, in dependency order.
VIEWS = ("predictions", "caption_predictions", "ensemble", "coverage", "subsets")


def text(name: str) -> str:
    """The SQL of queries/<name>.sql."""
    return resources.files("curate.queries").joinpath(f"{name}.sql").read_text(encoding="utf-8")


def statements(name: str) -> list[str]:
    """The statements of queries/<name>.sql, one string each (with the comments above it).

    A statement ends with `;` at the end of a line; comments never do.
    """
    parts = re.split(r";[ \t]*$", text(name), flags=re.MULTILINE)
    return [p.strip() for p in parts if re.sub(r"--[^\n]*", "", p).strip()]


def run(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """Execute every statement of queries/<name>.sql."""
    con.execute(text(name))


def install_views(con: duckdb.DuckDBPyConnection) -> None:
    for name in VIEWS:
        run(con, name)


def has_relation(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    """Whether the main schema has a table or view of that name."""
    return con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'main' AND table_name = ?",
        [name]).fetchall()[0][0] > 0


def has_macro(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    """Whether a macro (scalar or table, TEMP or not) of that name exists."""
    return con.execute("SELECT count(*) FROM duckdb_functions() WHERE function_name = ?"
                       " AND function_type IN ('macro', 'table_macro')", [name]).fetchall()[0][0] > 0


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """BEGIN ... COMMIT around the block; ROLLBACK on any error, and the error goes on.

    A COMMIT that fails (a full disk) has already ended the transaction: the ROLLBACK
    after it fails too, and its "no transaction is active" must not hide the real error.
    """
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
        con.execute("COMMIT")
    except BaseException:
        try:
            con.execute("ROLLBACK")
        except duckdb.Error:
            pass
        raise

