"""Named classifications: several classify results side by side in one workspace.

Each classification NAME lives in its own DuckDB schema "cls_NAME" (its score tables, its
staging copies while a run is in flight, and its own views), and has a row in the registry
table `classifications` (queries/classifications.sql). main keeps today's names for the
ACTIVE one (the one chosen with `use`, else the last completed): views
main.labels/item_scores/... over "cls_NAME" and the view files run over those, so every
existing reader and a shell user see it without knowing about names. A reader is pointed
at another one with `select`: DuckDB macros (ensemble_with, subset, ...) resolve their
tables through the search path at call time, and the schema's own views come first.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb

from ..core import sql
from ..core.workspace import Workspace
from ..errors import InputError
from . import calibrated
from .state import SCORE_TABLES, STAGE, NotReady, require_fresh

NAME_RE = sql.CLASSIFICATION_NAME
SCHEMA_PREFIX = sql.CLASSIFICATION_PREFIX


class UnknownClassification(InputError, LookupError):
    """No classification of that name in the workspace."""


def check_name(name: str) -> str:
    """The name if it can name a classification (it becomes part of a schema name)."""
    if not isinstance(name, str) or NAME_RE.fullmatch(name) is None:
        raise InputError(f"{name!r} cannot name a classification: use 1 to 63 characters, lower-case letters, "
                         "digits, '-' and '_', starting with a letter or digit (e.g. places205-raw)")
    return name


def _slug(text: str) -> str:
    if "/" in text or "\\" in text or re.search(r"\.(txt|tsv|csv|json)$", text):
        text = Path(text).stem   # a label set or templates file: its file name
    slug = re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-_")
    return slug or "x"


def default_name(label_set: str, prompts: str) -> str:
    """The name a classification gets unless one is given: label set and wording, e.g. places205-natural."""
    name = f"{_slug(label_set)}-{_slug(prompts)}"[:63].rstrip("-_")
    return check_name(name)


def schema(name: str) -> str:
    """The schema of a classification, as a quoted identifier for SQL."""
    return sql.classification_schema(check_name(name))


def ensure(con: duckdb.DuckDBPyConnection) -> None:
    """The registry table and the *_of macros (read-write connections)."""
    sql.run(con, "classifications")


def _has_registry(con: duckdb.DuckDBPyConnection) -> bool:
    return sql.has_relation(con, "classifications", schema="main")


def exists(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    if not _has_registry(con):
        return False
    return con.execute("SELECT count(*) FROM main.classifications WHERE name = ?", [name]).fetchall()[0][0] > 0


def register(con: duckdb.DuckDBPyConnection, name: str, *, label_set: str, prompts: str, model: str,
             logit_scale: float, storage: str) -> None:
    """A run under `name` starts: its schema and registry row (the settings of this run)."""
    check_name(name)
    ensure(con)
    con.execute(sql.named_for("classification_schema", "create", name))
    con.execute("INSERT INTO main.classifications (name) VALUES (?) ON CONFLICT DO NOTHING", [name])
    con.execute("UPDATE main.classifications SET label_set = ?, prompts = ?, model = ?, logit_scale = ?, "
                "storage = ? WHERE name = ?", [label_set, prompts, model, logit_scale, storage, name])


def completed(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """Its scores were published (call inside the publishing transaction): it becomes active."""
    sql.install_views(con, schema(name))
    con.execute("UPDATE main.classifications SET completed_at = current_timestamp WHERE name = ?", [name])
    _set_active(con, name)


def active(con: duckdb.DuckDBPyConnection) -> str | None:
    """The active classification: the one chosen with `use`, else the last completed; None: none complete."""
    if not _has_registry(con):
        return None
    rows = con.execute("SELECT name FROM main.classifications WHERE completed_at IS NOT NULL "
                       "ORDER BY active DESC, completed_at DESC, name LIMIT 1").fetchall()
    return rows[0][0] if rows else None


def _set_active(con: duckdb.DuckDBPyConnection, name: str | None) -> None:
    con.execute("UPDATE main.classifications SET active = (name IS NOT DISTINCT FROM ?)", [name])
    install_main(con)


def ensure_recorded(con: duckdb.DuckDBPyConnection, sch: str) -> None:
    """Scores made by a curate that did not record their shards get an empty record (the
    views need the table): nothing is known stale, and the next `classify` of that name
    starts over rather than trust them (resume.resume_point)."""
    if not sql.has_relation(con, "scored_shards", schema=sch[1:-1].replace('""', '"')):
        with sql.search_path(con, sch):
            con.execute(sql.named(sql.SCORE_TABLES, "scored_shards"))


def use(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """Make a complete classification the active one (the plain names in main show it);
    refused while its scores are older than some items' vectors (state.require_fresh)."""
    require(con, name, complete=True)
    require_fresh(con, name)
    with sql.transaction(con):
        _set_active(con, name)


def drop(ws: Workspace, con: duckdb.DuckDBPyConnection, name: str) -> str | None:
    """Remove a classification: its schema (tables, views, staging) and registry row.

    If it was the active one, the last completed other one becomes active. Returns the
    active classification after. DuckDB marks the freed blocks for reuse by later writes
    but does not shrink the file. Measured (10,000 items x 100 labels, storage full, ~29 MB
    a classification): 62.9 MB with two, still 62.9 MB after dropping one (and the
    CHECKPOINT here), and still 62.9 MB after classifying another in its place. To give
    the space back to the disk, copy the database (ATTACH a new file; COPY FROM DATABASE).
    """
    del ws   # the scores live in the database file only
    require(con, name, complete=False)
    was_active = active(con) == name
    with sql.transaction(con):
        if sql.has_relation(con, "calibration_thresholds", schema="main"):
            calibrated.forget(con, name)
        con.execute(sql.named_for("classification_schema", "drop", name))
        con.execute("DELETE FROM main.classifications WHERE name = ?", [name])
        if was_active:
            con.execute("UPDATE main.classifications SET active = false")
        _set_active(con, active(con))
    con.execute("CHECKPOINT")
    return active(con)


def require(con: duckdb.DuckDBPyConnection, name: str, *, complete: bool) -> None:
    check_name(name)
    rows = con.execute("SELECT completed_at FROM main.classifications WHERE name = ?",
                       [name]).fetchall() if _has_registry(con) else []
    if not rows:
        names = [r[0] for r in con.execute("SELECT name FROM main.classifications ORDER BY name").fetchall()] \
            if _has_registry(con) else []
        raise UnknownClassification(f"no classification named {name!r} in this workspace"
                                    + (f"; there are: {', '.join(names)}" if names else
                                       ": run `curate classify` first"))
    if complete and rows[0][0] is None:
        raise NotReady(f"the classification {name!r} is not complete: run `curate classify --name {name}` "
                       "again to finish it")


def install_main(con: duckdb.DuckDBPyConnection) -> None:
    """main's plain names for the active classification, or none of them when none is
    complete (queries/active_classification_drop.sql, active_classification.sql).

    Skipped when they are there already for that classification, made from these files
    (`meta.main_views`): every classify run publishes, and making them again cost ~50 ms of
    DDL a run whose scores were only extended or rescored (their views read the tables by
    name, and the names stay)."""
    name = active(con)
    stamp = _main_views_stamp(name)
    if Workspace.get_meta(con, MAIN_VIEWS) == stamp:
        return
    sql.run(con, "active_classification_drop")
    if name is not None:
        ensure_recorded(con, schema(name))
        sql.run_for(con, "active_classification", name)
        with sql.search_path(con, "main"):
            sql.install_views(con)
    Workspace.set_meta(con, MAIN_VIEWS, stamp)


# meta's record of what main's plain names show: the active classification and a digest of
# the files that made them (another curate version's files make them again)
MAIN_VIEWS = "main_views"


def _main_views_stamp(name: str | None) -> str:
    return json.dumps([name, _main_views_digest()])


@functools.cache
def _main_views_digest() -> str:
    """The files' digest, read once a process (install_main runs at every publish)."""
    files = [sql.text(f) for f in ("active_classification_drop", "active_classification", *sql.VIEWS)]
    return hashlib.sha256("\n;\n".join(files).encode()).hexdigest()[:16]


def select(con: duckdb.DuckDBPyConnection, name: str | None = None) -> str | None:
    """Point this connection's readers at a classification (None: the active one).

    Unqualified names (predictions, ensemble, item_scores, ...) and the macros then read
    that classification. Returns the name selected; None when the workspace has none
    (a workspace from before names: main's tables are read as they are).
    """
    if name is None:
        con.execute("SET search_path = 'main'")
        return active(con)
    require(con, name, complete=True)
    con.execute(f"SET search_path = '{schema(name)},main'")
    return name


@contextmanager
def selected(con: duckdb.DuckDBPyConnection, name: str | None = None) -> Iterator[str | None]:
    """`select` for the block; the connection's search path as it was afterwards."""
    before = con.execute("SELECT current_setting('search_path')").fetchall()[0][0] or "main"
    try:
        yield select(con, name)
    finally:
        con.execute(f"SET search_path = {sql.quote_literal(before)}")


@dataclass(frozen=True)
class Classification:
    name: str
    label_set: str | None
    prompts: str | None
    model: str | None
    logit_scale: float | None
    storage: str | None
    images: int                  # image vectors scored (by the run in flight, when one is)
    captions: int
    complete: bool               # published scores exist
    in_progress: bool            # a run under this name stopped or is running (staging tables)
    created_at: datetime | None
    completed_at: datetime | None
    active: bool


def list_classifications(con: duckdb.DuckDBPyConnection) -> list[Classification]:
    """Every classification of the workspace, oldest first."""
    if not _has_registry(con):
        return []
    act = active(con)
    out = []
    for name, created, done, label_set, prompts, model, scale, storage in con.execute(
            "SELECT name, created_at, completed_at, label_set, prompts, model, logit_scale, storage "
            "FROM main.classifications ORDER BY created_at, name").fetchall():
        bare = SCHEMA_PREFIX + name
        staged = sql.has_relation(con, STAGE + "score_progress", schema=bare)
        if sql.has_relation(con, "score_settings", schema=bare):
            st = con.execute(f"SELECT label_set, prompts, model, logit_scale, storage "
                             f"FROM {schema(name)}.score_settings").fetchall()
            if st and not staged:
                label_set, prompts, model, scale, storage = st[0]
        images = captions = 0
        progress = STAGE + "score_progress" if staged else "score_progress"
        if sql.has_relation(con, progress, schema=bare):
            rows = con.execute(f"SELECT images, captions FROM {schema(name)}.{progress}").fetchall()
            if rows:
                images, captions = int(rows[0][0]), int(rows[0][1])
        out.append(Classification(name, label_set, prompts, model, scale, storage, images, captions,
                                  done is not None, staged, created, done, name == act))
    return out


def upgrade(con: duckdb.DuckDBPyConnection) -> str | None:
    """A workspace classified before names (score tables in main) is moved, once, into the
    schema of its default name, which becomes the active one. Returns that name, or None
    when there was nothing to move. Review sets drawn before get its name."""
    # one catalog query at every read-write connect, not one per name (each costs ~1 ms)
    wanted = [p + s for p in ("", STAGE) for s in SCORE_TABLES]
    present = {r[0] for r in con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main' AND NOT temporary "
        "AND database_name = current_database() AND list_contains(?, table_name)", [wanted]).fetchall()}
    tables = [t for t in wanted if t in present]
    if not tables:
        return None
    name = None
    for progress in ("score_settings", STAGE + "score_settings"):
        if progress in tables:
            rows = con.execute(f"SELECT label_set, prompts FROM main.{progress}").fetchall()
            if rows:
                name = default_name(*rows[0])
                break
    name = name or "places205-natural"  # a run killed before its settings were written: the default's
    complete = "score_settings" in tables and con.execute("SELECT count(*) FROM main.score_settings").fetchall()[0][0]
    with sql.transaction(con):
        ensure(con)
        con.execute(sql.named_for("classification_schema", "create", name))
        with sql.search_path(con, "main"):   # queries/scores_from_main.sql reads the plain names
            for t in tables:
                con.execute(sql.named_for("scores_from_main", t, name))
                con.execute(sql.named("scores_from_main", f"drop {t}"))
        sql.run(con, "active_classification_drop")   # main's views over the tables moved
        Workspace.delete_meta(con, MAIN_VIEWS)
        con.execute("INSERT INTO main.classifications (name) VALUES (?) ON CONFLICT DO NOTHING", [name])
        if complete:
            st = con.execute(f"SELECT label_set, prompts, model, logit_scale, storage, created_at "
                             f"FROM {schema(name)}.score_settings").fetchall()[0]
            con.execute("UPDATE main.classifications SET label_set = ?, prompts = ?, model = ?, logit_scale = ?, "
                        "storage = ?, created_at = ?, completed_at = ? WHERE name = ?", [*st, st[-1], name])
            ensure_recorded(con, schema(name))
            sql.install_views(con, schema(name))
            _set_active(con, name)
            if sql.has_relation(con, "calibration_thresholds", schema="main"):
                calibrated.stamp(con, name)
        if sql.has_relation(con, "review_sets", schema="main"):
            con.execute(sql.named("sample_schema", "review_sets.classification"))
            con.execute("UPDATE main.review_sets SET classification = ? WHERE classification IS NULL",
                        [name if complete else None])
    return name


def upgrade_on_connect(con: duckdb.DuckDBPyConnection, root: Path) -> None:
    """`upgrade` at every read-write connect (core/workspace.py ON_WRITE_CONNECT)."""
    del root   # the score tables live in the database only
    upgrade(con)
