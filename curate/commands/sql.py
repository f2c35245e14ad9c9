"""`curate sql`: a query against the workspace, printed as a table (read-only)."""

from __future__ import annotations

from pathlib import Path

import click
import duckdb

from ..workspace import Workspace


@click.command("sql")
@click.argument("query")
@click.option("-w", "--workspace", "ws_path", type=click.Path(path_type=Path), default=Path("ws"), show_default=True)
@click.option("--max-rows", type=click.IntRange(1), default=40, show_default=True)
def sql(query: str, ws_path: Path, max_rows: int) -> None:
    """Run QUERY on the workspace's database, read-only (the same as `duckdb ws/curate.duckdb`)."""
    try:
        con = Workspace(ws_path).connect(read_only=True)
    except FileNotFoundError as e:
        raise click.ClickException(str(e)) from None
    try:
        rel = con.sql(query)
        if rel is None:
            return
        click.echo(_table(rel, max_rows))
    except duckdb.Error as e:
        raise click.ClickException(str(e).splitlines()[0]) from None
    finally:
        con.close()


def _table(rel: duckdb.DuckDBPyRelation, max_rows: int) -> str:
    cols = rel.columns
    rows = rel.limit(max_rows + 1).fetchall()
    more = len(rows) > max_rows
    cells = [[_cell(v) for v in r] for r in rows[:max_rows]]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(cols)]
    line = "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    if more:
        out.append(f"... (more than {max_rows} rows; --max-rows to see more)")
    return "\n".join(out)


def _cell(v) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, float):
        return f"{v:.4f}"
    s = str(v)
    return s if len(s) <= 60 else s[:57] + "..."
