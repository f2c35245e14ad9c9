"""What several commands do alike beside their options: open a workspace for the review
stage, pick its default review set, note the items still pending and vectors made by random
weights."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from ..core.textout import echo, safe
from ..core.workspace import Workspace
from ..validate import sampling


def note_pending(ws_path: Path) -> None:
    """Items scanned but not embedded yet cannot be scored: say how many (exit 0, a NOTE)."""
    with Workspace(ws_path).reading() as con:
        n = con.execute("SELECT count(*) FROM items WHERE status = 'pending'").fetchall()[0][0]
    if n:
        echo(safe(f"NOTE: {n:,} items are still pending (scanned, not embedded yet): they are not in these "
                  f"results; run `curate build-index SOURCE -w {ws_path}` again to embed them, then "
                  f"`curate classify -w {ws_path}`"), err=True)


def note_random_weights(ws_path: Path) -> None:
    """Results from an untrained model look like results: every command that shows some says
    so first, in one NOTE line on stderr (stdout stays the results). Reads the model the
    workspace is bound to (meta `model`), in the command's connection scope where it has one."""
    with Workspace(ws_path).reading() as con:
        ident = Workspace.model_identity(con)
    if ident is not None and ident.random_weights:
        echo(safe(f"NOTE: {ws_path} was embedded with random weights ({ident.model}, no pretrained weights): "
                  "these results carry no meaning; use them to test the pipeline only"), err=True)


@contextmanager
def review_scope(ws_path: Path, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """Readers open read-only (any number at once, beside the review page); writers wait
    for the one write lock a bounded time, then say who holds it (WorkspaceBusy). A missing
    workspace was refused by the -w option."""
    ws = Workspace(ws_path)
    with ws.reading() if read_only else ws.writing() as con:
        if not read_only:
            sampling.ensure_schema(con)
        yield con


def default_set(con: duckdb.DuckDBPyConnection, set_name: str | None,
                classification: str | None = None) -> sampling.ReviewSet:
    """The set `review`, `review --out` and `report` work on: the named one, else the most
    recently drawn (the one `curate sample` just printed), of that classification if one is named."""
    return sampling.get_set(con, set_name, classification)
