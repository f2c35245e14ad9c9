"""Every file of queries/ runs in the real duckdb shell (the duckdb-cli package) on a
classified workspace with a review set, marks and a calibration: the data contract is
SQL a user can run as it is.

A file's header may name what to run around it: `-- Setup: <SQL>` lines run before
the file, `-- Usage: <SQL>` lines after it (so a macro is called, not only defined).
Each file runs in a transaction that is rolled back, so a file that replaces tables
(scores_tables.sql) leaves the workspace as it was for the next one.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from conftest import open_db, run_cli

QUERIES = Path(__file__).resolve().parents[2] / "queries"
SHELL = shutil.which("duckdb", path=str(Path(sys.executable).parent)) or shutil.which("duckdb")


@pytest.fixture(scope="module")
def reviewed(built_workspace, tmp_path_factory) -> Path:
    """classify, sample, every other image of the set marked a hit, report (calibration saved)."""
    ws = tmp_path_factory.mktemp("shell") / "ws"
    shutil.copytree(built_workspace, ws)
    run_cli("classify", "-w", ws)
    run_cli("sample", "-w", ws, "--top-classes", "3", "--per-class", "4", "--seed", "7")
    con = duckdb.connect(str(ws / "curate.duckdb"))
    con.execute("INSERT INTO judgments (id, label, mark) SELECT id, label,"
                " CASE WHEN position % 2 = 0 THEN 'hit' ELSE 'miss' END FROM review_items")
    con.close()
    out = run_cli("report", "-w", ws, "--out", ws.parent / "report", "--target-precision", "0.5",
                  "--min-support", "1", "--no-plots").output
    assert "calibration: temperature" in out
    # the rest of what writes to a workspace: another named classification (then the first
    # active again), dedup's groups, filter --dedup, search's hits
    run_cli("classify", "-w", ws, "--prompts", "raw")
    run_cli("classify", "-w", ws)
    run_cli("dedup", "-w", ws)
    run_cli("filter", "-w", ws, "--min-prob", "0", "--dedup", "--out", ws.parent / "kept.csv")
    run_cli("search", "-w", ws, "a rooftop bar at night", "-k", "3", "--out", ws.parent / "hits.csv")
    return ws


def _lines(text: str, tag: str) -> list[str]:
    return re.findall(rf"^-- {tag}: (.+)$", text, flags=re.MULTILINE)


def test_every_query_file_has_a_header():
    files = sorted(QUERIES.glob("*.sql"))
    assert len(files) >= 15
    for f in files:
        assert f.read_text(encoding="utf-8").startswith("-- "), f"{f.name}: no header comment"


def _script(name: str) -> str:
    """The file in a transaction rolled back after, its Setup lines before it, its Usage lines after."""
    text = (QUERIES / name).read_text(encoding="utf-8")
    return "\n".join(["BEGIN TRANSACTION;", *_lines(text, "Setup"), text.rstrip().rstrip(";") + ";",
                      *_lines(text, "Usage"), "ROLLBACK;", ""])


def _shell(db: Path, script: str) -> subprocess.CompletedProcess:
    return subprocess.run([SHELL, str(db), "-bail", "-csv"], input=script, capture_output=True, text=True,
                          timeout=120, cwd=QUERIES.parent)   # a Setup line may `.read queries/<file>.sql`


NAMES = sorted(p.name for p in QUERIES.glob("*.sql"))


@pytest.fixture(scope="module")
def one_shell(reviewed) -> dict[str, str]:
    """Every file run by one shell, one after another (a shell process for each was ~60 x 0.15 s):
    name -> what it printed, for each file that ran to its end with nothing on stderr. A file
    missing here (an error stopped the shell, or something was printed on stderr) is run again
    alone by its test, so a failure names its file and shows its own output."""
    script = "".join(f".print '@@start {n}'\n" + _script(n) + "RESET search_path;\n" + f".print '@@end {n}'\n"
                     for n in NAMES)
    r = _shell(reviewed / "curate.duckdb", script)
    if r.stderr.strip():
        return {}
    return dict(re.findall(r"^@@start (\S+)\n(.*?)^@@end \1$", r.stdout, flags=re.MULTILINE | re.DOTALL))


@pytest.mark.skipif(SHELL is None, reason="the duckdb shell (duckdb-cli) is not installed")
@pytest.mark.parametrize("name", NAMES)
def test_the_file_runs_in_the_duckdb_shell(reviewed, one_shell, name):
    text = (QUERIES / name).read_text(encoding="utf-8")
    out = one_shell.get(name)
    if out is None:
        r = _shell(reviewed / "curate.duckdb", _script(name))
        assert r.returncode == 0 and not r.stderr.strip(), f"{name}:\n{r.stderr}\n{r.stdout[-2000:]}"
        out = r.stdout
    for usage in _lines(text, "Usage"):   # a usage line that selects prints at least its header
        assert usage.lstrip().upper().startswith("SELECT") and out.strip(), f"{name}: {usage}"


def test_every_table_and_view_of_a_workspace_is_made_by_a_file_in_queries(reviewed):
    """The whole data contract is readable SQL: no table's or view's DDL lives only in Python,
    in any schema (each named classification's, main). A view of the active classification
    in main has the name of the table it shows."""
    ddl = "\n".join(p.read_text(encoding="utf-8") for p in QUERIES.glob("*.sql"))
    made = set(re.findall(r"CREATE (?:OR REPLACE )?TABLE (?:IF NOT EXISTS )?(\w+)", ddl))
    made_views = set(re.findall(r"CREATE (?:OR REPLACE )?(?:TEMP )?VIEW (?:IF NOT EXISTS )?(\w+)", ddl))
    con = open_db(str(reviewed / "curate.duckdb"))
    here = "database_name = current_database()"
    tables = {r[0] for r in con.execute(f"SELECT table_name FROM duckdb_tables() WHERE {here} AND NOT temporary"
                                        ).fetchall()}
    views = {tuple(r) for r in con.execute("SELECT schema_name, view_name FROM duckdb_views() "
                                           f"WHERE {here} AND NOT internal AND NOT temporary").fetchall()}
    schemas = {r[0] for r in con.execute(f"SELECT schema_name FROM duckdb_schemas() WHERE {here} AND NOT internal"
                                         ).fetchall()}
    con.close()
    assert {"items", "runs", "shards", "index_shards", "item_files", "item_scores", "judgments",
            "calibration_thresholds"} <= tables
    assert tables - made == set()
    assert {"cls_places205-raw", "cls_places205-natural"} <= schemas
    assert {"predictions", "calibrated_predictions", "item_extras"} <= {v for _, v in views}
    assert sorted(f"{s}.{v}" for s, v in views if v not in made_views | made) == []


def test_every_view_is_made_by_a_file_by_its_own_name(reviewed):
    """No exemption for main's views over the active classification's tables: each view of
    the workspace is made by a file of queries/ under its name, unqualified (made in the
    schema first on the search path), in main, or in a classification's schema ("cls_NAME")."""
    ddl = "\n".join(re.sub(r"--[^\n]*", "", p.read_text(encoding="utf-8")) for p in QUERIES.glob("*.sql"))
    view = r"CREATE (?:OR REPLACE )?(?:TEMP )?VIEW (?:IF NOT EXISTS )?"
    anywhere = set(re.findall(view + r"(\w+) ", ddl))
    in_main = set(re.findall(view + r"main\.(\w+) ", ddl))
    in_classification = set(re.findall(view + r'"cls_NAME"\.(\w+) ', ddl))
    con = open_db(str(reviewed / "curate.duckdb"))
    views = con.execute("SELECT schema_name, view_name FROM duckdb_views() WHERE database_name = current_database() "
                        "AND NOT internal AND NOT temporary"
                        ).fetchall()
    con.close()
    assert {v for s, v in views if s == "main"} >= {"labels", "item_scores", "predictions", "calibrated_predictions"}
    unmade = [f"{s}.{v}" for s, v in views
              if v not in anywhere and not (s == "main" and v in in_main)
              and not (s.startswith("cls_") and v in in_classification)]
    assert unmade == []
