"""What the workspace's scores are, as every reader asks first: complete (their settings),
half written by a run that stopped, or none."""

from __future__ import annotations

from pathlib import Path

import duckdb

from ..core import sql
from ..core.progress import plural
from ..errors import CurateError
from . import freshness

# The tables of one classification (queries/scores_tables.sql). A run writes them under
# STAGE + name and publishes them when it completes (see _write_scores).
SCORE_TABLES = ("labels", "item_scores", "label_scores", "score_settings", "score_progress", "scored_shards")
STAGE = "next_"

# Which view holds each kind of prediction (queries/predictions.sql, caption_predictions.sql,
# ensemble.sql): the choices of `filter --mode` and `sample --source`. A user picks the
# key; only these fixed view names ever reach SQL.
PREDICTION_VIEWS: dict[str, str] = {
    "image": "predictions",
    "caption": "caption_predictions",
    "ensemble": "ensemble",
}


class NotReady(CurateError, RuntimeError):
    """The workspace lacks what this step needs (embeddings, or scores)."""


def settings(con: duckdb.DuckDBPyConnection) -> dict | None:
    """The score_settings row of the last complete classify, or None before the first."""
    if not sql.has_relation(con, "score_settings"):
        return None
    rel = con.execute("SELECT * FROM score_settings")
    cols = [d[0] for d in rel.description]
    rows = rel.fetchall()
    return dict(zip(cols, rows[0], strict=True)) if rows else None


def unfinished(con: duckdb.DuckDBPyConnection) -> str | None:
    """A classify run that has not completed, in words ("scored 12,000 of 40,000 vectors"), or None.

    Looked for where the caller's names resolve (the selected classification), then in
    every named classification's schema.
    """
    candidates = [t for t in (STAGE + "score_progress", "score_progress") if sql.has_relation(con, t)]
    candidates += [f'"{s}".{t}' for s, t in con.execute(
        "SELECT table_schema, table_name FROM information_schema.tables WHERE table_catalog = current_database() "
        "AND table_schema LIKE 'cls\\_%' "
        "ESCAPE '\\' AND table_name IN (?, 'score_progress') ORDER BY table_name <> ?, table_schema",
        [STAGE + "score_progress", STAGE + "score_progress"]).fetchall()]
    for table in candidates:
        rows = con.execute(f"SELECT images + captions, finished FROM {table}").fetchall()
        if len(rows) == 1 and not rows[0][1]:
            total = con.execute("SELECT coalesce(sum(rows), 0) FROM shards").fetchall()[0][0]
            return f"scored {rows[0][0]:,} of {total:,} vectors"
    return None


def require_complete(con: duckdb.DuckDBPyConnection, where: str | Path = "the workspace",
                     *, needed: bool = True) -> dict | None:
    """The settings of the workspace's complete scores; NotReady when there are none.

    Readers (filter, sample, report) call this first. The published tables always hold a
    complete classification (a run in progress writes staging tables), except in a
    workspace written by a curate that scored in place, where a killed run left partial
    tables without score_settings: that is refused too, naming what is incomplete.
    `needed=False`: only refuse half a classification (None when there are no scores,
    for readers of prediction views made some other way).
    """
    st = settings(con)
    if st is not None:
        require_fresh(con)
        return st
    stopped = unfinished(con)
    if stopped is not None:
        raise NotReady(f"{where} has no complete scores: a `curate classify` run stopped after it {stopped}; "
                       "run the same `curate classify` command again to finish it")
    if needed:
        raise NotReady(f"{where} has no scores yet: run `curate classify` first")
    return None


def _selected(con: duckdb.DuckDBPyConnection) -> str | None:
    """The classification this connection's unqualified names read: the first cls_ schema of
    its search path, else the active one (registry.active); None: none (an older layout)."""
    path = con.execute("SELECT current_setting('search_path')").fetchall()[0][0] or ""
    for part in path.split(","):
        # `"cls_x"`, or `curate."cls_x"` where the database is attached (core/duckdb_host.py);
        # a classification's name holds no dot or quote (sql.CLASSIFICATION_NAME)
        part = part.rsplit(".", 1)[-1].strip().strip('"')
        if part.startswith("cls_"):
            return part[len("cls_"):]
    if not sql.has_relation(con, "classifications", schema="main"):
        return None
    rows = con.execute("SELECT name FROM main.classifications WHERE completed_at IS NOT NULL "
                       "ORDER BY active DESC, completed_at DESC, name LIMIT 1").fetchall()
    return rows[0][0] if rows else None


def require_fresh(con: duckdb.DuckDBPyConnection, name: str | None = None) -> None:
    """NotReady when classification `name` (None: the one this connection reads) holds scores
    older than some items' vectors: items embedded again, rejected or repaired since it was
    scored (freshness.py). Every reader of scores calls this (through require_complete);
    the views refuse the same way (queries/scores_fresh.sql)."""
    name = name if name is not None else _selected(con)
    if name is None:
        return
    sch = sql.quote_identifier(sql.CLASSIFICATION_PREFIX + name)
    if freshness.stale_shards(con, sch) == 0:
        return
    ws = freshness.workspace_of(con)
    n = len(freshness.changes(ws, con, sch).stale)
    st = con.execute(f"SELECT label_set, prompts FROM {sch}.score_settings").fetchall()
    made = f" (label set {st[0][0]}, prompts {st[0][1]})" if st else ""
    raise NotReady(f"{plural(n, 'item')} changed since classification {name!r} was scored (embedded again or rejected): "
                   f"run `curate classify -w {ws.root} --name {name}`{made} to rescore them")
