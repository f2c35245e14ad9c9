"""filter's selection: the documented macros of queries/subsets.sql, the ensemble's defaults
written once (classify/scoring.py, recorded per classification in score_settings)."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
from conftest import open_db

from curate.classify import registry, state
from curate.classify.scoring import ENSEMBLE_TEXT_MIN, ENSEMBLE_TEXT_WEIGHT
from curate.select.filter import FilterSpec, write_subset

QUERIES = Path(__file__).resolve().parents[2] / "queries"


def test_no_sql_file_writes_the_ensemble_defaults_again():
    """A macro parameter of the ensemble left out means the classification's recorded value, so
    changing the study's defaults is one edit (scoring.py), never a literal in SQL too."""
    default = re.compile(r"\b(text_weight|text_min)\s*:=\s*[0-9.]+")
    found = []
    for path in sorted(QUERIES.glob("*.sql")):
        code = re.sub(r"--[^\n]*", "", path.read_text(encoding="utf-8"))
        found += [f"{path.name}: {m.group(0)}" for m in default.finditer(code)]
    assert found == []


def _rows(con: duckdb.DuckDBPyConnection, query: str) -> list[tuple]:
    return con.execute(f"SELECT id, label, round(prob, 12) FROM {query} ORDER BY id").fetchall()


def test_the_shell_s_subset_and_filter_keep_the_same_rows_at_the_recorded_defaults(classified):
    con = open_db(str(classified / "curate.duckdb"))
    try:
        registry.select(con, None)
        st = state.settings(con)
        assert (st["ensemble_text_weight"], st["ensemble_text_min"]) == (ENSEMBLE_TEXT_WEIGHT, ENSEMBLE_TEXT_MIN)
        left_out = _rows(con, "subset('ensemble_with', [], 0.0)")
        assert left_out == _rows(con, f"ensemble_with({ENSEMBLE_TEXT_WEIGHT}, {ENSEMBLE_TEXT_MIN})")
        assert left_out == _rows(con, "subset('ensemble', [], 0.0)")
        other = _rows(con, "subset('ensemble_with', [], 0.0, text_weight := 0.6)")
        assert other == _rows(con, f"ensemble_with(0.6, {ENSEMBLE_TEXT_MIN})")
        shell = {r[0] for r in con.execute("SELECT id FROM subset('ensemble_with', [], 0.3, text_weight := 0.6)")
                 .fetchall()}
    finally:
        con.close()
    kept = write_subset(classified, FilterSpec(min_prob=0.3, mode="ensemble", text_weight=0.6), None).kept
    assert kept == len(shell)
