"""`curate sql`: a query against the workspace, printed the way the duckdb shell prints it, or
every row written as CSV or JSON.

Read-only in every way: nothing typed here changes a database or writes a file. The
connection is read-only, and before the query runs DuckDB itself is closed around it
(`lock_down`): no access to files but the workspace (no ATTACH, COPY, EXPORT, INSTALL,
read_csv of other files), Python objects not scanned, and the configuration locked so no
SET can undo it. Only queries are run (SELECT and its kin); any other statement is refused
with one line before anything runs. `--out` is the one way to write, through the atomic
writer (core/outputs.py), to the one file DuckDB is allowed to write.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import sys
import tempfile
from pathlib import Path

import click
import duckdb

from ..core.outputs import WRITERS, check_output, partial_path, write_atomic
from ..core.sql import quote_literal
from ..core.textout import safe
from ..core.workspace import Workspace
from ..errors import InputError
from .options import workspace_option

FORMATS = ("table", "csv", "json")
# csv and json are core/outputs.py's writers (CSV with a header, NULL as an empty field; JSON
# as one array of objects, NULL as null); floats are written in full (shortest round trip).
_SUFFIXES = {".csv": "csv", ".json": "json"}
_UNLIMITED = 1 << 20
# The query's own faults: DuckDB's first line says where (lock and I/O errors go to the CLI's mapping).
_QUERY_ERRORS = (duckdb.ParserException, duckdb.BinderException, duckdb.CatalogException,
                 duckdb.ConversionException, duckdb.InvalidInputException, duckdb.PermissionException,
                 duckdb.NotImplementedException, duckdb.OutOfRangeException, duckdb.TypeMismatchException)
# The statements sql runs: queries, and what only reads or sets a variable (SET of a DuckDB
# setting is refused by the locked configuration). Everything else (COPY, EXPORT, ATTACH,
# DETACH, INSTALL/LOAD, CREATE, INSERT, PREPARE ...) is refused before anything runs.
_READING = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN, duckdb.StatementType.PRAGMA,
            duckdb.StatementType.CALL, duckdb.StatementType.SET, duckdb.StatementType.TRANSACTION}
_EXPLAIN = re.compile(r"\s*explain(\s+analy[sz]e)?\s", re.IGNORECASE)


@click.command("sql")
@click.argument("query")
@workspace_option("Workspace folder.")
@click.option("--max-rows", type=click.IntRange(1), default=40, show_default=True,
              help="Rows the table shows: the first and last ones, as the duckdb shell does (which shows "
                   "them all when only a few more are left out); csv and json write every row.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
              help="table: DuckDB's own box rendering; csv: a header and every row, NULL as an "
                   "empty field; json: every row as one JSON array of objects, NULL as null.  "
                   "[default: table, or what the --out file's suffix says]")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write csv or json to this file (replaced whole, never half-written) instead of stdout.")
def sql_cmd(query: str, ws_path: Path, max_rows: int, fmt: str | None, out: Path | None) -> None:
    """Run QUERY on the workspace's database, read-only (the same as `duckdb -readonly -safe
    ws/curate.duckdb`): it reads the workspace and no other file, and changes and writes nothing
    (--out writes the result)."""
    fmt = _format(fmt, out)
    if out is not None:
        out = check_output(out, "query result")
    scratch = Path(tempfile.mkdtemp(prefix="curate-sql-"))
    try:
        with Workspace(ws_path).reading(own_instance=True) as con:  # lock_down changes its instance for good
            result = partial_path(out) if out is not None else scratch / f"result.{fmt}"
            lock_down(con, scratch / "spill", result)
            check_statements(con, query)
            try:
                rel = con.sql(query)
            except _QUERY_ERRORS as e:
                raise _query_failed(e) from None
            if rel is None:  # a statement without a result (SET VARIABLE, PRAGMA ...)
                return
            if fmt == "table":
                click.echo(_table(rel, max_rows))
            elif out is not None:
                write_atomic(out, lambda tmp: _copy(con, rel, fmt, tmp), "query result")
            else:
                _to_stdout(con, rel, fmt, result)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def lock_down(con: duckdb.DuckDBPyConnection, spill: Path, result: Path) -> None:
    """Close DuckDB around a read-only connection: no file but the database (and `spill`, its
    temporary folder for what does not fit in memory, and `result`, the one file curate writes
    the result to), no Python objects scanned, and the configuration locked (no SET undoes this)."""
    con.execute(f"SET temp_directory = {quote_literal(str(spill))}")
    con.execute(f"SET allowed_paths = [{quote_literal(str(result))}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET python_enable_replacements = false")
    con.execute("SET lock_configuration = true")


def check_statements(con: duckdb.DuckDBPyConnection, query: str) -> None:
    """Refuse (InputError, nothing run) a query holding any statement that is not a query."""
    try:
        statements = con.extract_statements(query)
    except _QUERY_ERRORS as e:
        raise _query_failed(e) from None
    for st in statements:
        try:
            kind = st.type
        except ValueError:   # a statement type this duckdb package has no name for
            kind = None
        if kind == duckdb.StatementType.EXPLAIN:
            inner = _EXPLAIN.match(st.query)
            if inner:
                check_statements(con, st.query[inner.end():])
                continue
        if kind not in _READING:
            word = (st.query.split() or ["that"])[0].upper()
            raise InputError(f"curate sql only reads: {word} statements are refused (nothing ran; "
                             "write a query's result with --out FILE)")


def _format(fmt: str | None, out: Path | None) -> str:
    if out is None:
        return fmt or "table"
    fmt = fmt or _SUFFIXES.get(out.suffix.lower())
    if fmt is None:
        raise click.UsageError(f"cannot tell the format of {safe(out)}: give --format csv or --format json")
    if fmt == "table":
        raise click.UsageError("--out writes csv or json: give --format csv or --format json")
    return fmt


def _query_failed(e: duckdb.Error) -> InputError:
    first = str(e).strip().splitlines()[0]
    if isinstance(e, duckdb.PermissionException):
        return InputError(f"curate sql reads the workspace and no other file, and writes nothing: {first}")
    if "configuration has been locked" in first:
        return InputError(f"curate sql does not change DuckDB's settings: {first}")
    return InputError(f"the query failed: {first}")


def _table(rel: duckdb.DuckDBPyRelation, max_rows: int) -> str:
    """DuckDB's own rendering (widths of wide characters and emoji, numbers right-aligned,
    long cells cut with '…' to fit a terminal, the row count under the box).

    DuckDB shows control characters as they are: they are escaped after rendering, so a
    caption holding ESC sequences cannot drive the terminal (that row's border shifts).
    """
    # to the terminal's width, as the shell does; piped or redirected, every cell whole
    width = shutil.get_terminal_size().columns if sys.stdout.isatty() else _UNLIMITED
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):  # show() prints through Python's stdout
            rel.show(max_rows=max_rows, max_width=width)
    except _QUERY_ERRORS as e:
        raise _query_failed(e) from None
    return safe(buf.getvalue().rstrip("\n"), keep_newlines=True)


def _copy(con: duckdb.DuckDBPyConnection, rel: duckdb.DuckDBPyRelation, fmt: str, path: Path) -> None:
    """Every row of the result into `path`, written by DuckDB's COPY."""
    try:
        WRITERS[fmt]().copy(con, f"({rel.sql_query()})", path)
    except _QUERY_ERRORS as e:
        raise _query_failed(e) from None


def _to_stdout(con: duckdb.DuckDBPyConnection, rel: duckdb.DuckDBPyRelation, fmt: str, path: Path) -> None:
    """The bytes COPY writes (to `path`, a scratch file), on stdout; on a terminal, control
    characters are shown escaped."""
    _copy(con, rel, fmt, path)
    if sys.stdout.isatty():
        click.echo(safe(path.read_text(encoding="utf-8"), keep_newlines=True), nl=False)
        return
    sys.stdout.flush()
    with open(path, "rb") as f:
        shutil.copyfileobj(f, sys.stdout.buffer)
    sys.stdout.buffer.flush()
