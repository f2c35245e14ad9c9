"""The SQL files of queries/ (package `curate.queries` once installed), loaded and run.

(Named `sql`, not `queries`: `curate.queries` is the package of the SQL files themselves.)

The files are the interface: a user can paste them into the DuckDB shell. They take
no parameters; values reach the views' macros as bound parameters at query time. The
one exception is an identifier: a file of one named classification's objects writes its
schema as "cls_NAME", which `for_classification` replaces by the schema of a checked
name, quoted as a DuckDB identifier (the only change curate makes to a file's text).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources

import duckdb

# Tables that persist across runs (created if missing).
CACHE = "label_cache"
# Tables of one classify run (replaced as a whole).
SCORE_TABLES = "scores_tables"
# The view files each named classification runs in its own schema, in dependency order.
SCHEMA_VIEWS = ("scores_fresh", "predictions", "caption_predictions", "ensemble", "coverage")
# The view files main runs over the active classification: the same, and subsets' macros
# (which stay in main: a macro finds its tables through the caller's search path).
VIEWS = (*SCHEMA_VIEWS, "subsets")

# What a file of one named classification's objects calls its schema (DuckDB has no
# parameter for an identifier, and a view binds its names in its own schema, so a view in
# main over a classification names that schema in its text). A classification's name is
# lower case (CLASSIFICATION_NAME), so "cls_NAME" is never a schema of a workspace: by
# hand, write your classification's schema in its place (or run the file as it is, on a
# stand-in schema of that name: its Setup lines); curate runs the file with it replaced
# by `classification_schema(name)`.
CLASSIFICATION_SCHEMA = '"cls_NAME"'
CLASSIFICATION_PREFIX = "cls_"
CLASSIFICATION_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


@functools.cache
def text(name: str) -> str:
    """The SQL of queries/<name>.sql, read once a process (the app runs some at every request)."""
    return resources.files("curate.queries").joinpath(f"{name}.sql").read_text(encoding="utf-8")


def statements(name: str) -> list[str]:
    """The statements of queries/<name>.sql, one string each (with the comments above it).

    A statement ends with `;` at the end of a line; comments never do.
    """
    parts = re.split(r";[ \t]*$", text(name), flags=re.MULTILINE)
    return [p.strip() for p in parts if re.sub(r"--[^\n]*", "", p).strip()]


def named(name: str, label: str) -> str:
    """The statement of queries/<name>.sql whose comments hold the line `-- name: <label>`:
    a file of several statements hands one over by its name, never by a piece of its text."""
    tag = re.compile(rf"^--\s*name:\s*{re.escape(label)}\s*$", flags=re.MULTILINE)
    found = [s for s in statements(name) if tag.search(s)]
    if len(found) != 1:
        raise LookupError(f"queries/{name}.sql has {len(found)} statements named {label!r}, not 1")
    return found[0]


def run(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """Execute every statement of queries/<name>.sql."""
    con.execute(text(name))


def quote_identifier(name: str) -> str:
    """`name` as a DuckDB identifier: in double quotes, a double quote doubled."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    """`text` as a DuckDB string literal: in single quotes, a single quote doubled."""
    return "'" + text.replace("'", "''") + "'"


def classification_schema(name: str) -> str:
    """The schema of the classification `name`, quoted; a ValueError for a string that
    cannot name one (curate/classify/registry.py check_name says why to a user first)."""
    if not isinstance(name, str) or CLASSIFICATION_NAME.fullmatch(name) is None:
        raise ValueError(f"{name!r} cannot name a classification")
    return quote_identifier(CLASSIFICATION_PREFIX + name)


def for_classification(sql_text: str, name: str) -> str:
    """A text of queries/ with its placeholder schema "cls_NAME" (CLASSIFICATION_SCHEMA)
    replaced by the classification's: the only change made to a file's text."""
    return sql_text.replace(CLASSIFICATION_SCHEMA, classification_schema(name))


def run_for(con: duckdb.DuckDBPyConnection, file: str, name: str) -> None:
    """Execute every statement of queries/<file>.sql for the classification `name`."""
    con.execute(for_classification(text(file), name))


def named_for(file: str, label: str, name: str) -> str:
    """The statement `label` of queries/<file>.sql (`named`) for the classification `name`."""
    return for_classification(named(file, label), name)


def install_views(con: duckdb.DuckDBPyConnection, schema: str | None = None) -> None:
    """The view files run in main, or (`schema`: a quoted identifier) in that schema.

    A view binds its names in its own schema, so the views made in a classification's
    schema read that schema's tables whatever the caller's search path.
    """
    if schema is None:
        for name in VIEWS:
            run(con, name)
        return
    with search_path(con, schema):
        for name in SCHEMA_VIEWS:
            run(con, name)


@contextmanager
def search_path(con: duckdb.DuckDBPyConnection, path: str) -> Iterator[None]:
    """SET search_path for the block (names created unqualified go to its first schema)."""
    before = con.execute("SELECT current_setting('search_path')").fetchall()[0][0]
    con.execute(f"SET search_path = {quote_literal(path)}")
    try:
        yield
    finally:
        con.execute(f"SET search_path = {quote_literal(before or 'main')}")


def has_relation(con: duckdb.DuckDBPyConnection, name: str, schema: str | None = None) -> bool:
    """Whether a table or view of that name is in `schema` (unquoted), or, by default, in
    a schema an unqualified name is looked up in (the search path, and main)."""
    # Looked up by name first (~0.2 ms for a table, ~1.5 ms for a view over several others),
    # the catalog listing (~2 ms, most of it DuckDB's own internal views) only where that fails:
    # a failed lookup leaves a transaction usable, but a view whose tables are gone fails it
    # although the view is there, so a failure is not an answer.
    try:
        con.table(quote_identifier(name) if schema is None else f"{quote_identifier(schema)}.{quote_identifier(name)}")
        return True
    except duckdb.Error:
        pass
    if schema is not None:
        return name in relations(con, schema)
    return con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_catalog IN (current_database(), 'temp') "
        "AND table_name = ? AND (table_schema = 'main' OR list_contains(current_schemas(false), table_schema))",
        [name]).fetchall()[0][0] > 0


def relations(con: duckdb.DuckDBPyConnection, schema: str) -> frozenset[str]:
    """The names of the tables and views in `schema` (unquoted), TEMP ones included, as
    `has_relation(con, name, schema)` sees them: one catalog read (~2 ms) for a caller that asks
    about several names."""
    return frozenset(r[0] for r in con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_catalog IN (current_database(), 'temp') "
        "AND table_schema = ?", [schema]).fetchall())


def has_macro(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    """Whether a macro (scalar or table, TEMP or not) of that name exists (a name of ours: an
    identifier). Not inside a transaction: a failed probe would abort it.

    Probed by calling it with no arguments: a missing one is a catalog error, a present one
    runs or is refused for its arguments. (Listing duckdb_functions() takes ~40 ms, most of
    a filter at 1M.)"""
    for probe in (f"SELECT * FROM {name}() LIMIT 0", f"SELECT {name}() LIMIT 0"):
        try:
            con.execute(probe)
            return True
        except duckdb.CatalogException:
            continue
        except duckdb.Error:      # it exists; the call wants arguments
            return True
    return False


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

