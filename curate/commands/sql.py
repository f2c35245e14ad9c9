"""`curate sql`: a query against the workspace (read-only), printed the way the duckdb shell
prints it, or every row written as CSV or JSON."""

from __future__ import annotations

import contextlib
import io
import shutil
import sys
import tempfile
from pathlib import Path

import click
import duckdb

from ..classify.subsets import write_atomic
from ..core.textout import safe
from ..core.workspace import Workspace
from ..errors import InputError
from .options import workspace_option

FORMATS = ("table", "csv", "json")
# What DuckDB's COPY writes for each format: CSV with a header, NULL as an empty field;
# JSON as one array of objects, NULL as null. Floats are written in full (shortest round trip).
_COPY = {"csv": "(FORMAT csv, HEADER)", "json": "(FORMAT json, ARRAY true)"}
_SUFFIXES = {".csv": "csv", ".json": "json"}
_UNLIMITED = 1 << 20
# The query's own faults: DuckDB's first line says where (lock and I/O errors go to the CLI's mapping).
_QUERY_ERRORS = (duckdb.ParserException, duckdb.BinderException, duckdb.CatalogException,
                 duckdb.ConversionException, duckdb.InvalidInputException, duckdb.PermissionException,
                 duckdb.NotImplementedException, duckdb.OutOfRangeException, duckdb.TypeMismatchException)


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
def sql(query: str, ws_path: Path, max_rows: int, fmt: str | None, out: Path | None) -> None:
    """Run QUERY on the workspace's database, read-only (the same as `duckdb ws/curate.duckdb`)."""
    fmt = _format(fmt, out)
    con = Workspace(ws_path).connect(read_only=True)
    try:
        try:
            rel = con.sql(query)
        except _QUERY_ERRORS as e:
            raise _query_failed(e) from None
        if rel is None:  # a statement without a result (SET, PRAGMA ...)
            return
        if fmt == "table":
            click.echo(_table(rel, max_rows))
        elif out is not None:
            write_atomic(out, lambda tmp: _copy(con, rel, fmt, tmp))
        else:
            _to_stdout(con, rel, fmt)
    finally:
        con.close()


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
    return InputError(f"the query failed: {str(e).strip().splitlines()[0]}")


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
    target = "'" + str(path).replace("'", "''") + "'"
    try:
        con.execute(f"COPY ({rel.sql_query()}) TO {target} {_COPY[fmt]}")
    except _QUERY_ERRORS as e:
        raise _query_failed(e) from None


def _to_stdout(con: duckdb.DuckDBPyConnection, rel: duckdb.DuckDBPyRelation, fmt: str) -> None:
    """The bytes COPY writes, on stdout; on a terminal, control characters are shown escaped."""
    with tempfile.TemporaryDirectory(prefix="curate-sql-") as d:
        path = Path(d) / f"result.{fmt}"
        _copy(con, rel, fmt, path)
        if sys.stdout.isatty():
            click.echo(safe(path.read_text(encoding="utf-8"), keep_newlines=True), nl=False)
            return
        sys.stdout.flush()
        with open(path, "rb") as f:
            shutil.copyfileobj(f, sys.stdout.buffer)
        sys.stdout.buffer.flush()
