"""queries/ is the whole data contract, and Python hands its SQL to DuckDB as written.

A statement of a file reaches the database as it is in the file: whole, or picked by
its `-- name:` line (sql.named), never cut, searched or rewritten in Python, so that
reformatting a .sql file can never break curate. Where a variant is needed (a TEMP
macro for read-only connections, the staging copies of the score tables) it is its own
file, and the tests here keep each variant the same as what it varies.
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import duckdb
import pytest

from curate.core import sql

ROOT = Path(__file__).resolve().parents[2]
# what hands back the text of a queries/ file (core/sql.py and the names bound to it)
_LOADERS = {"text", "statements", "named"}
_TEXT_NAMES = {"SCHEMA", "UPGRADES"}
_EDITS = {"replace", "split", "rsplit", "partition", "format", "strip", "removeprefix", "removesuffix",
          "splitlines", "find", "index", "startswith", "endswith", "count"}
# each module's text parsed once for the checks below
_parse = functools.cache(ast.parse)


def _loads_sql(node: ast.AST, tainted: set[str]) -> bool:
    for n in ast.walk(node):
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in _LOADERS \
                and isinstance(n.func.value, ast.Name) and n.func.value.id == "sql":
            return True
        if isinstance(n, ast.Name) and (n.id in _TEXT_NAMES or n.id in tainted):
            return True
    return False


def _edits(tree: ast.AST) -> list[tuple[int, str]]:
    """Lines where a queries/ text is edited, cut or searched."""
    tainted: set[str] = set()
    for _ in range(3):   # names bound to such text, and names bound to those
        for n in ast.walk(tree):
            if isinstance(n, ast.Assign) and _loads_sql(n.value, tainted):
                tainted |= {t.id for t in n.targets if isinstance(t, ast.Name)}
            elif isinstance(n, (ast.For, ast.comprehension)) and _loads_sql(n.iter, tainted) \
                    and isinstance(n.target, ast.Name):
                tainted.add(n.target.id)
    found = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute):
            if n.func.attr in _EDITS and _loads_sql(n.func.value, tainted):
                found.append((n.lineno, f".{n.func.attr}() on SQL text"))
            if isinstance(n.func.value, ast.Name) and n.func.value.id == "re" \
                    and any(_loads_sql(a, tainted) for a in n.args):
                found.append((n.lineno, f"re.{n.func.attr}() on SQL text"))
        if isinstance(n, ast.Compare) and any(isinstance(o, (ast.In, ast.NotIn)) for o in n.ops) \
                and any(_loads_sql(c, tainted) for c in n.comparators):
            found.append((n.lineno, "a substring search in SQL text"))
    return found


def test_no_python_outside_core_sql_edits_the_text_of_a_query_file():
    bad = []
    for p in sorted((ROOT / "curate").rglob("*.py")):
        if p == ROOT / "curate" / "core" / "sql.py":   # the loader itself: statements() splits the file
            continue
        bad += [f"{p.relative_to(ROOT)}:{line}: {what}" for line, what in _edits(_parse(p.read_text()))]
    assert bad == []


def test_the_check_finds_each_way_sql_text_was_patched():
    """The patterns this test exists for (as they were in resume.py, calibration.py,
    sources.py and calibrated.py), each found."""
    samples = [
        'x = re.sub(r"CREATE OR REPLACE TABLE (\\w+)", f, sql.text("scores_tables"))',
        'macro = next(s for s in sql.statements("calibration") if "MACRO calibrated_probs" in s)\n'
        'con.execute(macro.replace("CREATE OR REPLACE MACRO", "CREATE OR REPLACE TEMP MACRO", 1))',
        'for stmt in SCHEMA.split(";"):\n    pass',
        'view = sql.named("calibration", "v")\ncon.execute(view.replace("VIEW v", "VIEW s.v", 1))',
    ]
    for s in samples:
        assert _edits(ast.parse(s)), s


def test_a_named_statement_is_found_by_its_name_only():
    assert "CREATE TABLE IF NOT EXISTS items" in sql.named("workspace", "items")
    assert "scored_shards" in sql.named("scores_tables", "scored_shards")
    with pytest.raises(LookupError, match="0 statements named 'nothing'"):
        sql.named("workspace", "nothing")


def _columns(con: duckdb.DuckDBPyConnection, schema: str, prefix: str = "") -> list[tuple]:
    rows = con.execute(
        "SELECT table_name, column_index, column_name, data_type, is_nullable, column_default FROM duckdb_columns() "
        "WHERE schema_name = ? ORDER BY table_name, column_index", [schema]).fetchall()
    return [(t.removeprefix(prefix), *rest) for t, *rest in rows]


def _constraints(con: duckdb.DuckDBPyConnection, schema: str, prefix: str = "") -> list[tuple]:
    rows = con.execute(
        "SELECT table_name, constraint_type, constraint_column_names FROM duckdb_constraints() "
        "WHERE schema_name = ? ORDER BY ALL", [schema]).fetchall()
    return sorted((t.removeprefix(prefix), *rest) for t, *rest in rows)


def test_the_staging_copies_are_the_score_tables_column_for_column():
    con = duckdb.connect()
    con.execute('CREATE SCHEMA live; CREATE SCHEMA staged')
    with sql.search_path(con, "live"):
        sql.run(con, "scores_tables")
    with sql.search_path(con, "staged"):
        sql.run(con, "scores_staging")
    staged = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
                                        "AND schema_name = 'staged'"
                                        ).fetchall()}
    assert staged and all(t.startswith("next_") for t in staged)
    assert _columns(con, "staged", "next_") == _columns(con, "live")
    assert _constraints(con, "staged", "next_") == _constraints(con, "live")


def test_the_temp_calibrated_probs_is_the_stored_one():
    con = duckdb.connect()
    for view in ("predictions", "caption_predictions", "ensemble"):   # what the macro reads
        con.execute(f"CREATE TABLE {view} (id BIGINT, label VARCHAR, prob DOUBLE, label2 VARCHAR, prob2 DOUBLE, "
                    "margin DOUBLE)")
    con.execute("CREATE TABLE label_scores (id BIGINT, image_prob DOUBLE, caption_prob DOUBLE)")
    con.execute(sql.named("calibration", "calibrated_probs"))
    sql.run(con, "calibrated_probs")
    defs = con.execute("SELECT database_name = 'temp', macro_definition FROM duckdb_functions() "
                       "WHERE function_name = 'calibrated_probs' ORDER BY 1").fetchall()
    assert [temp for temp, _ in defs] == [False, True]
    assert defs[0][1] == defs[1][1]



# -- no DDL of a workspace object in Python --------------------------------------------

# CREATE/ALTER/DROP of an object that outlives the connection (not TEMP): the statement
# kind and, for ALTER and DROP, the object named.
_PERSISTENT_CREATE = re.compile(r"\bCREATE\s+(?:OR\s+REPLACE\s+)?(?:TABLE|VIEW|MACRO|SCHEMA|SEQUENCE|TYPE|"
                                r"(?:UNIQUE\s+)?INDEX)\b", re.IGNORECASE)
_ALTER_OR_DROP = re.compile(r"\b(ALTER|DROP)\s+(?:TABLE|VIEW|MACRO|SCHEMA|SEQUENCE|TYPE|INDEX)\s+"
                            r"(?:IF\s+EXISTS\s+)?([\w.\"{}]+)", re.IGNORECASE)
_TEMP_CREATE = re.compile(r"\bCREATE\s+(?:OR\s+REPLACE\s+)?TEMP(?:ORARY)?\s+(?:TABLE|VIEW|MACRO)\s+"
                          r"(?:IF\s+NOT\s+EXISTS\s+)?(\w+)", re.IGNORECASE)
# Where Python still writes such a statement (file, function, statement), and why no file
# of queries/ can hold it.
_DDL_IN_PYTHON = {
    # a SQLite database of the app's own, not the workspace
    ("curate/app/thumbnails.py", "<module>", "CREATE TABLE"): "the thumbnails' SQLite file",
    # the source's own columns: their names and types come from the user's manifest or
    # clip-retrieval metadata (quoted as identifiers), so no file can name them
    ("curate/ingest/manifests.py", "_extra_columns", "ALTER TABLE items"): "a manifest's own columns",
    ("curate/ingest/precomputed.py", "_add_extra_columns", "ALTER TABLE items"): "clip-retrieval metadata's columns",
    ("curate/ingest/sources.py", "upgrade_items", "ALTER TABLE items"): "an old items table's own columns, kept",
}


def _strings(tree: ast.AST) -> list[tuple[str, int, str]]:
    """(function, line, text) of every string literal and f-string (its {} parts as {}),
    docstrings left out."""
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    out = []

    def visit(node: ast.AST, function: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, child.name)
            elif isinstance(child, ast.JoinedStr):
                out.append((function, child.lineno, "".join(
                    v.value if isinstance(v, ast.Constant) else "{}" for v in child.values)))
            elif isinstance(child, ast.Constant) and isinstance(child.value, str) and id(child) not in docs:
                out.append((function, child.lineno, child.value))
            else:
                visit(child, function)

    visit(tree, "<module>")
    return out


def _ddl(sources: dict[str, str]) -> list[tuple[str, str, int, str]]:
    """(file, function, line, statement start) of each CREATE/ALTER/DROP of a persistent
    object in the strings of the given Python sources; an object made TEMP anywhere in
    them (or named temp.x) is not persistent."""
    strings = {f: _strings(_parse(src)) for f, src in sources.items()}
    temp = {m.lower() for found in strings.values() for _, _, s in found for m in _TEMP_CREATE.findall(s)}
    bad = []
    for f, found in strings.items():
        for function, line, s in found:
            for m in _PERSISTENT_CREATE.finditer(s):
                bad.append((f, function, line, m.group(0)))
            for m in _ALTER_OR_DROP.finditer(s):
                target = m.group(2).lower()
                if target in temp or target.startswith("temp."):
                    continue
                bad.append((f, function, line, m.group(0)))
    return bad


def test_no_python_module_writes_ddl_of_a_workspace_object():
    """Every table, view, macro and schema a workspace holds is made, altered and dropped by
    a file of queries/ (a classification's schema through the placeholder "cls_NAME",
    sql.for_classification), except where no file can know the names: the columns a
    source brings (_DDL_IN_PYTHON)."""
    sources = {str(p.relative_to(ROOT)): p.read_text() for p in sorted((ROOT / "curate").rglob("*.py"))}
    found = _ddl(sources)
    assert [f"{f}:{line} ({fn}): {what}" for f, fn, line, what in found if (f, fn, what) not in _DDL_IN_PYTHON] == []
    assert {(f, fn, what) for f, fn, _, what in found} == set(_DDL_IN_PYTHON), "an exemption no longer needed"


def test_the_ddl_check_finds_each_way_python_wrote_ddl():
    """What registry.py, calibrated.py, run.py and resume.py wrote before queries/ held it,
    each found; TEMP objects and their drops are not."""
    samples = {
        'con.execute(f"CREATE VIEW main.{t} AS SELECT * FROM {schema(name)}.{t}")': "CREATE VIEW",
        'con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema(name)}")': "CREATE SCHEMA",
        'con.execute(f"CREATE TABLE {schema(name)}.{t} AS SELECT * FROM main.{t}")': "CREATE TABLE",
        'con.execute(f"CREATE OR REPLACE VIEW main.calibrated_predictions AS SELECT 1")': "CREATE OR REPLACE VIEW",
        'con.execute(f"DROP VIEW IF EXISTS main.{v}")': "DROP VIEW IF EXISTS main.{}",
        'con.execute(f"ALTER TABLE {stage_t}{t} RENAME TO {t}")': "ALTER TABLE {}{}",
        'con.execute("ALTER TABLE main.review_sets ADD COLUMN IF NOT EXISTS x VARCHAR")':
            "ALTER TABLE main.review_sets",
    }
    for code, what in samples.items():
        assert [w for *_, w in _ddl({"m.py": code})] == [what], code
    temp_only = ('con.execute("CREATE OR REPLACE TEMP TABLE kept AS SELECT 1")\n'
                 'con.execute("ALTER TABLE kept ADD COLUMN dup_group BIGINT")\n'
                 'con.execute("DROP TABLE IF EXISTS temp.report_marks")\n'
                 'def f():\n    """CREATE TABLE in a docstring is prose."""\n')
    assert _ddl({"m.py": temp_only}) == []


# -- the one identifier a file takes ---------------------------------------------------

_CLASSIFICATION_FILES = ("classification_schema", "active_classification", "scores_publish",
                         "scores_staging_drop", "scores_from_main", "calibration_owner")


def test_a_classification_schema_is_a_checked_name_quoted():
    assert sql.classification_schema("places205-raw") == '"cls_places205-raw"'
    for bad in ('x"; DROP TABLE items; --', "Upper", "", "-x", "a" * 64, None, "NAME"):
        with pytest.raises(ValueError):
            sql.classification_schema(bad)
    assert sql.for_classification('SELECT * FROM "cls_NAME".labels', "a_b") == 'SELECT * FROM "cls_a_b".labels'


def test_only_the_files_of_one_classification_take_its_schema():
    """"cls_NAME" is in exactly the files curate runs through sql.for_classification."""
    have = sorted(p.stem for p in (ROOT / "queries").glob("*.sql")
                  if sql.CLASSIFICATION_SCHEMA in re.sub(r"--[^\n]*", "", p.read_text(encoding="utf-8")))
    assert have == sorted(_CLASSIFICATION_FILES)


def test_the_files_over_a_classifications_tables_name_each_score_table():
    """The score tables are listed once in Python (state.SCORE_TABLES): main's views,
    publishing, dropping the staging copies and the move from main name the same ones."""
    from curate.classify.state import SCORE_TABLES, STAGE

    def named(file: str, pattern: str) -> list[str]:
        body = re.sub(r"--[^\n]*", "", sql.text(file))
        return re.findall(pattern, body)

    tables = sorted(SCORE_TABLES)
    assert sorted(named("active_classification", r"VIEW main\.(\w+) AS")) == tables
    assert sorted(named("scores_publish", r"RENAME TO (\w+)")) == tables
    assert sorted(named("scores_staging_drop", r'"cls_NAME"\.(\w+)')) == sorted(STAGE + t for t in tables)
    assert sorted(named("scores_from_main", r"DROP TABLE (\w+)")) == sorted(
        [*tables, *(STAGE + t for t in tables)])
    made = re.findall(r"CREATE OR REPLACE TABLE (\w+)", re.sub(r"--[^\n]*", "", sql.text("scores_tables")))
    assert sorted(made) == tables


def test_main_shows_the_active_classification_by_the_files_alone():
    """The files curate runs to make a classification active, run on an empty database:
    main's plain names read that schema, and switching rewrites them."""
    con = duckdb.connect()
    sql.run(con, "workspace")
    for name in ("one", "two"):
        con.execute(sql.named_for("classification_schema", "create", name))
        with sql.search_path(con, sql.classification_schema(name) + ",main"):
            sql.run(con, "scores_tables")
        con.execute(f"INSERT INTO {sql.classification_schema(name)}.score_progress "
                    "(fingerprint, images, captions, image_id_sum, caption_id_sum, finished) "
                    f"VALUES ('{name}', 0, 0, 0, 0, true)")
    for name in ("one", "two"):
        sql.run(con, "active_classification_drop")
        sql.run_for(con, "active_classification", name)
        assert con.execute("SELECT fingerprint FROM score_progress").fetchall() == [(name,)]
    sql.run(con, "active_classification_drop")
    assert not sql.has_relation(con, "score_progress", schema="main")
