"""`curate sql`: a query against the workspace, printed as a table (read-only)."""

from __future__ import annotations

from pathlib import Path

import click
import duckdb

from ..core.textout import safe
from ..core.workspace import Workspace
from ..errors import InputError
from .options import workspace_option


@click.command("sql")
@click.argument("query")
@workspace_option("Workspace folder.")
@click.option("--max-rows", type=click.IntRange(1), default=40, show_default=True)
def sql(query: str, ws_path: Path, max_rows: int) -> None:
    """Run QUERY on the workspace's database, read-only (the same as `duckdb ws/curate.duckdb`)."""
    con = Workspace(ws_path).connect(read_only=True)
    try:
        rel = con.sql(query)
        if rel is None:
            return
        click.echo(_table(rel, max_rows))
    except (duckdb.ParserException, duckdb.BinderException, duckdb.CatalogException, duckdb.ConversionException,
            duckdb.InvalidInputException, duckdb.PermissionException, duckdb.NotImplementedException,
            duckdb.OutOfRangeException, duckdb.TypeMismatchException) as e:
        # the query's own fault: DuckDB's first line says where (lock and I/O errors go to the CLI's mapping)
        raise InputError(f"the query failed: {str(e).strip().splitlines()[0]}") from None
    finally:
        con.close()


def _table(rel: duckdb.DuckDBPyRelation, max_rows: int) -> str:
    cols = [safe(c) for c in rel.columns]
    rows = rel.limit(max_rows + 1).fetchall()
    more = len(rows) > max_rows
    cells = [[_cell(v) for v in r] for r in rows[:max_rows]]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(cols)]
    line = "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    if more:
        out.append(f"... (more than {max_rows} rows; --max-rows to see more)")
    return "\n".join(line.rstrip() for line in out)


def _cell(v) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, float):
        return f"{v:.4f}"
    s = safe(v)
    return s if len(s) <= 60 else s[:57] + "..."
