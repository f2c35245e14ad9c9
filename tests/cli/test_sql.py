"""`curate sql`: DuckDB's own table rendering, and every row as CSV or JSON (stdout or --out),
read back with the csv and json modules."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from pathlib import Path

import duckdb
import pytest
from conftest import open_db, run_cli

TRICKY = 'a, "quoted"\nline 🙂 漢字 ½'
QUERY = "SELECT id, caption, id / 7 AS f FROM items ORDER BY id"


@pytest.fixture(scope="module")
def ws(built_workspace, tmp_path_factory) -> Path:
    """The built workspace with a caption holding a comma, quotes, a newline, an emoji and CJK
    (first item), and one without a caption (last item)."""
    ws = tmp_path_factory.mktemp("sql") / "ws"
    shutil.copytree(built_workspace, ws)
    con = duckdb.connect(str(ws / "curate.duckdb"))
    con.execute("UPDATE items SET caption = ? WHERE id = (SELECT min(id) FROM items)", [TRICKY])
    con.execute("UPDATE items SET caption = NULL WHERE id = (SELECT max(id) FROM items)")
    con.close()
    return ws


def _expected(ws: Path) -> list[tuple]:
    con = open_db(str(ws / "curate.duckdb"))
    try:
        return con.execute(QUERY).fetchall()
    finally:
        con.close()


def _duckdb_show(ws: Path, query: str, max_rows: int) -> str:
    con = open_db(str(ws / "curate.duckdb"))
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            con.sql(query).show(max_rows=max_rows)
    finally:
        con.close()
    return buf.getvalue()


def test_the_table_is_duckdbs_own_rendering(ws):
    out = run_cli("sql", "-w", ws, QUERY).output
    assert out.rstrip("\n") == _duckdb_show(ws, QUERY, 40).rstrip("\n")   # fits in DuckDB's default width
    assert out.startswith("┌") and "│ int64 │" in out
    assert "0.14285714285714285" in out                 # no forced 4 decimals
    assert "🙂 漢字" in out and "\\n" in out and "NULL" in out
    long = run_cli("sql", "-w", ws, "SELECT repeat('word ', 100) AS w").output
    assert "word " * 100 in long                       # piped: no cell cut (not at 60, not to a width)


def test_max_rows_elides_the_middle_rows_as_duckdb_does(ws):
    query = "SELECT range AS n FROM range(100)"
    out = run_cli("sql", "-w", ws, query, "--max-rows", "6").output
    assert out.rstrip("\n") == _duckdb_show(ws, query, 6).rstrip("\n")
    assert "100 rows" in out and "(6 shown)" in out
    shown = [ln for ln in out.splitlines() if ln.startswith("│") and ln.strip("│ ").isdigit()]
    assert len(shown) == 6


def test_csv_on_stdout_holds_every_row_exactly(ws):
    rows = list(csv.reader(io.StringIO(run_cli("sql", "-w", ws, QUERY, "--format", "csv").stdout)))
    want = _expected(ws)
    assert rows[0] == ["id", "caption", "f"] and len(rows) == len(want) + 1
    for got, (i, caption, f) in zip(rows[1:], want, strict=True):
        assert int(got[0]) == i and float(got[2]) == f      # floats in full: they read back equal
        assert got[1] == ("" if caption is None else caption)
    assert rows[1][1] == TRICKY and rows[-1][1] == ""


def test_json_on_stdout_is_an_array_of_objects(ws):
    got = json.loads(run_cli("sql", "-w", ws, QUERY, "--format", "json").stdout)
    assert got == [{"id": i, "caption": caption, "f": f} for i, caption, f in _expected(ws)]
    assert got[0]["caption"] == TRICKY and got[-1]["caption"] is None
    assert json.loads(run_cli("sql", "-w", ws, "SELECT 1 AS x WHERE false", "--format", "json").stdout) == []


def test_out_writes_the_file_whole_and_its_suffix_names_the_format(ws, tmp_path):
    target = tmp_path / "deep" / "result.json"
    r = run_cli("sql", "-w", ws, QUERY, "--out", target)
    assert r.stdout == ""
    assert [d["caption"] for d in json.loads(target.read_text(encoding="utf-8"))][0] == TRICKY
    target = tmp_path / "result.txt"
    target.write_text("earlier", encoding="utf-8")
    run_cli("sql", "-w", ws, QUERY, "--format", "csv", "--out", target)
    with target.open(newline="", encoding="utf-8") as f:
        assert len(list(csv.DictReader(f))) == len(_expected(ws))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep", "result.txt"]   # no temporary left


def test_out_needs_csv_or_json(ws, tmp_path):
    assert "give --format csv" in run_cli("sql", "-w", ws, QUERY, "--out", tmp_path / "x.txt", expect=2).output
    assert "--out writes csv or json" in run_cli("sql", "-w", ws, QUERY, "--format", "table", "--out",
                                                 tmp_path / "x.csv", expect=2).output
    assert not list(tmp_path.iterdir())


def test_a_query_failing_while_written_is_the_querys_fault(ws, tmp_path):
    r = run_cli("sql", "-w", ws, "SELECT 'x'::INT AS n", "--out", tmp_path / "x.csv", expect=1)
    assert "the query failed: Conversion Error" in r.stderr
    assert not list(tmp_path.iterdir())
