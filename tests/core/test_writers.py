"""One writer class per row format, chosen by name or extension (core/outputs.py): what filter,
search and `sql --out` write through. Real DuckDB, real files."""

from __future__ import annotations

import duckdb
import pyarrow.parquet as pq
import pytest

from curate.core.outputs import PARTIAL, SUFFIXES, WRITERS, writer_for

ROWS = [(1, "a \"quoted\", comma", None), (2, "café\tüber", 0.25)]


def _table() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("CREATE TABLE t (id BIGINT, caption VARCHAR, prob DOUBLE)")
    con.executemany("INSERT INTO t VALUES (?, ?, ?)", ROWS)
    return con


@pytest.mark.parametrize("name", list(WRITERS))
def test_each_writer_writes_every_row_back_as_it_was(tmp_path, name):
    con = _table()
    out = tmp_path / f"rows.{name}"
    WRITERS[name]().write(con, "(SELECT * FROM t ORDER BY id)", out)
    reader = {"parquet": "read_parquet(?)", "csv": "read_csv(?, header = true)",
              "tsv": "read_csv(?, header = true, delim = '\t')", "jsonl": "read_json(?)",
              "json": "read_json(?)"}[name]
    back = con.execute(f"SELECT id, caption, prob FROM {reader} ORDER BY id", [str(out)]).fetchall()
    assert back == ROWS
    assert [p.name for p in tmp_path.iterdir()] == [out.name]    # no temporary left beside it
    assert not (tmp_path / f".{out.name}{PARTIAL}").exists()


def test_the_extension_names_the_writer_in_any_case():
    assert writer_for("x.PARQUET") is WRITERS["parquet"]
    assert writer_for("x.ndjson") is writer_for("x.jsonl") is WRITERS["jsonl"]
    assert writer_for("x.txt") is None and writer_for("x") is None
    assert set(SUFFIXES.values()) == set(WRITERS.values())


def test_parquet_carries_the_metadata_it_is_given_quotes_and_all(tmp_path):
    con = _table()
    out = tmp_path / "rows.parquet"
    meta = {"curate.command": "curate filter --label 'x'); DROP TABLE t; --", "k": "v"}
    WRITERS["parquet"](meta).write(con, "t", out)
    kv = pq.read_metadata(out).metadata
    assert kv[b"curate.command"].decode() == meta["curate.command"] and kv[b"k"] == b"v"
    assert con.execute("SELECT count(*) FROM t").fetchall() == [(2,)]


def test_filter_search_and_sql_choose_from_the_same_writers():
    from curate.commands import sql as sql_cmd
    from curate.select import filter, search

    assert set(filter.FORMATS) == set(SUFFIXES) and set(WRITERS) <= set(filter.FORMAT_NAMES)
    assert search.out_writer("hits.tsv") is WRITERS["tsv"]
    assert {f for f in sql_cmd.FORMATS if f != "table"} <= set(WRITERS)
