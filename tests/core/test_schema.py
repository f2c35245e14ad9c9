"""queries/ is the whole data contract, and Python hands its SQL to DuckDB as written.

A statement of a file reaches the database as it is in the file: whole, or picked by
its `-- name:` line (sql.named), never cut, searched or rewritten in Python, so that
reformatting a .sql file can never break curate. Where a variant is needed (a TEMP
macro for read-only connections, the staging copies of the score tables) it is its own
file, and the tests here keep each variant the same as what it varies.
"""

from __future__ import annotations

import ast
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
        bad += [f"{p.relative_to(ROOT)}:{line}: {what}" for line, what in _edits(ast.parse(p.read_text()))]
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
    staged = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE schema_name = 'staged'"
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

