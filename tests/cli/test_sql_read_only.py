"""`curate sql` is read-only in every way (issue 21, item 5): nothing typed into it changes a
database (the workspace, another one, an attached or temporary one) or writes a file, and
every attempt ends in one `curate:` line. `--out` stays the one way to write."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from conftest import open_db, run_cli


@pytest.fixture(scope="module")
def two(built_workspace, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("sqlro")
    ws, other = root / "ws", root / "other"
    shutil.copytree(built_workspace, ws)
    shutil.copytree(built_workspace, other)
    (root / "data.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    (ws / "curate.duckdb.tmp").mkdir()          # DuckDB's own temporary folder beside the database
    return {"root": root, "ws": ws, "other": other}


def _snapshot(root: Path) -> dict[str, str]:
    out = {}
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(d) / name
            out[str(p)] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _attempts(t: dict) -> list[str]:
    root, other = t["root"], t["other"] / "curate.duckdb"
    tmpdir = t["ws"] / "curate.duckdb.tmp"
    return [
        f"ATTACH '{other}' AS o (READ_ONLY false); DELETE FROM o.items",
        f"ATTACH '{other}' AS o; SELECT count(*) FROM o.items",
        f"ATTACH '{root}/new.duckdb' AS n (READ_ONLY false); CREATE TABLE n.t AS SELECT 1",
        "ATTACH ':memory:' AS m; CREATE TABLE m.t AS SELECT 1",
        f"COPY items TO '{root}/items.csv'",
        f"COPY (SELECT 1) TO '{tmpdir}/x.csv'",
        f"SELECT 1; COPY items TO '{root}/second.csv'",
        f"EXPORT DATABASE '{root}/export'",
        f"EXPLAIN ANALYZE COPY items TO '{root}/explained.csv'",
        f"PREPARE p AS COPY items TO '{root}/prepared.csv'; EXECUTE p",
        "INSTALL json", "LOAD json", "UPDATE EXTENSIONS",
        "SET enable_external_access = true", "RESET enable_external_access", "SET lock_configuration = false",
        f"SET allowed_directories = ['{root}']", f"SET temp_directory = '{root}/spill'",
        f"SET profile_output = '{root}/profile.txt'", "PRAGMA enable_profiling",
        "CREATE TABLE t AS SELECT 1", "CREATE TEMP TABLE t AS SELECT 1", "INSERT INTO items (id) VALUES (-1)",
        "DELETE FROM items", "DROP TABLE items", "VACUUM", "DETACH o",
        f"PRAGMA import_database('{root}')", f"SELECT * FROM read_csv('{root}/data.csv')",
        f"SELECT * FROM '{root}/data.csv'", f"SELECT * FROM glob('{root}/*')",
        "SELECT * FROM _snapshot",        # a Python object in scope is not scanned
    ]


def test_nothing_typed_into_sql_writes_or_changes_anything(two, monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))     # where sql keeps its scratch files
    before = _snapshot(two["root"])
    items = open_db(str(two["other"] / "curate.duckdb"))
    n = items.execute("SELECT count(*) FROM items").fetchall()[0][0]
    items.close()
    for query in _attempts(two):
        r = run_cli("sql", "-w", two["ws"], query, expect=None)
        lines = r.output.strip().splitlines()
        assert r.exit_code == 1 and len(lines) == 1 and lines[0].startswith("curate: "), f"{query}:\n{r.output}"
        assert "internal error" not in r.output, r.output
        assert _snapshot(two["root"]) == before, f"{query} changed a file"
    for query in ("CHECKPOINT", "FORCE CHECKPOINT", "CALL checkpoint()"):    # runs: a no-op on a read-only file
        run_cli("sql", "-w", two["ws"], query, expect=None)
        assert _snapshot(two["root"]) == before, f"{query} changed a file"
    con = open_db(str(two["other"] / "curate.duckdb"))
    assert con.execute("SELECT count(*) FROM items").fetchall()[0][0] == n
    con.close()
    assert list(tmp_path.iterdir()) == []                       # the scratch folder is gone too


def test_the_messages_say_why(two):
    ws = two["ws"]
    attach = run_cli("sql", "-w", ws, f"ATTACH '{two['other']}/curate.duckdb' AS o (READ_ONLY false)", expect=1)
    assert "curate sql only reads: ATTACH statements are refused" in attach.output and "--out" in attach.output
    read = run_cli("sql", "-w", ws, f"SELECT * FROM read_csv('{two['root']}/data.csv')", expect=1)
    assert "reads the workspace and no other file" in read.output
    unlock = run_cli("sql", "-w", ws, "SET enable_external_access = true", expect=1)
    assert "does not change DuckDB's settings" in unlock.output


def test_queries_still_read_everything_of_the_workspace(two, tmp_path):
    ws = two["ws"]
    con = open_db(str(ws / "curate.duckdb"))
    n = con.execute("SELECT count(*) FROM items").fetchall()[0][0]
    con.close()
    for query in ("SELECT count(*) FROM items", "DESCRIBE items", "SUMMARIZE items", "PRAGMA table_info('items')",
                  "SHOW TABLES", "EXPLAIN SELECT * FROM items", "SET VARIABLE k = 3; SELECT getvariable('k') AS k",
                  "BEGIN; SELECT 1; COMMIT", "WITH x AS (SELECT id FROM items) SELECT count(*) FROM x"):
        run_cli("sql", "-w", ws, query)
    got = json.loads(run_cli("sql", "-w", ws, "SELECT count(*) AS n, current_setting('temp_directory') AS t "
                             "FROM items", "--format", "json").stdout)
    assert got[0]["n"] == n and not got[0]["t"].startswith(str(ws))    # DuckDB spills outside the workspace
    out = tmp_path / "n.json"
    run_cli("sql", "-w", ws, "SELECT count(*) AS n FROM items", "--out", out)    # --out: the one way to write
    assert json.loads(out.read_text(encoding="utf-8")) == [{"n": n}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n.json"]
