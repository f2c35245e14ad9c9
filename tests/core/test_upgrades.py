"""A connect brings an old workspace up to date whatever the process imported: the core
owns the list of what a connect runs (core/workspace.py ON_READ_CONNECT, ON_WRITE_CONNECT),
no stage has to be imported first for its step to run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from classify_support import old_layout
from conftest import open_db

from curate.core import workspace

ONLY_THE_CORE = """
import sys
from curate.core.workspace import Workspace
assert not any(m.startswith("curate.classify") for m in sys.modules), "the core imported a stage up front"
Workspace(sys.argv[1]).connect().close()
"""


def _main_tables(db: Path) -> set[str]:
    con = open_db(str(db))
    try:
        return {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
                                          "AND schema_name = 'main'"
                                          ).fetchall()}
    finally:
        con.close()


def test_a_process_that_imports_only_the_core_upgrades_an_old_workspace(classified, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(classified, ws)
    name = old_layout(ws / "curate.duckdb")
    assert "item_scores" in _main_tables(ws / "curate.duckdb")
    r = subprocess.run([sys.executable, "-c", ONLY_THE_CORE, str(ws)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    tables = _main_tables(ws / "curate.duckdb")
    assert "item_scores" not in tables and "classifications" in tables
    con = open_db(str(ws / "curate.duckdb"))
    try:
        assert con.execute("SELECT name FROM classifications").fetchall() == [(name,)]
    finally:
        con.close()


def test_every_listed_step_is_a_function_of_a_stage_below_the_api():
    import importlib

    for module, function in workspace.ON_READ_CONNECT + workspace.ON_WRITE_CONNECT:
        assert module.split(".")[1] in ("ingest", "classify", "validate"), module
        assert callable(getattr(importlib.import_module(module), function))
