"""A calibration belongs to the classification it was fitted on: `filter --calibrated`
applies it to that classification's scores only (whichever is active), refuses it for
another one or for the same name classified again with other settings, and it goes
when its classification is dropped."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import duckdb
import pytest
from conftest import open_db, run_cli

RAW, NATURAL = "places205-raw", "places205-natural"


@pytest.fixture(scope="module")
def calibrated(built_workspace, tmp_path_factory) -> Path:
    """Classified raw, then natural (active); a set drawn from natural, marked, reported. Built
    once for the module and never written: each test gets its own copy (calibrated_ws)."""
    tmp_path = tmp_path_factory.mktemp("calibrated")
    ws = tmp_path / "ws"
    shutil.copytree(built_workspace, ws)
    run_cli("classify", "-w", ws, "--prompts", "raw")
    run_cli("classify", "-w", ws, "--prompts", "natural")
    run_cli("sample", "-w", ws, "--top-classes", "3", "--per-class", "4", "--seed", "7")
    con = duckdb.connect(str(ws / "curate.duckdb"))
    con.execute("INSERT INTO judgments (id, label, mark) SELECT id, label,"
                " CASE WHEN position % 2 = 0 THEN 'hit' ELSE 'miss' END FROM review_items")
    con.close()
    out = run_cli("report", "-w", ws, "--out", tmp_path / "report", "--target-precision", "0.5",
                  "--min-support", "1", "--no-plots").output
    assert "calibration: temperature" in out
    return ws


@pytest.fixture()
def calibrated_ws(calibrated, tmp_path) -> Path:
    ws = tmp_path / "ws"
    shutil.copytree(calibrated, ws)
    return ws


def _kept(ws: Path, tmp_path: Path, *args: str) -> list[dict]:
    out = tmp_path / "kept.csv"
    run_cli("filter", "-w", ws, "--calibrated", "--out", out, *args)
    with open(out, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _expected(ws: Path, name: str) -> list[tuple[int, str]]:
    """What the fit keeps of `name`'s predictions, by the view in that classification's own schema."""
    con = open_db(str(ws / "curate.duckdb"))
    try:
        return con.execute(f'SELECT id, label FROM "cls_{name}".calibrated_predictions WHERE keep '
                           "ORDER BY id").fetchall()
    finally:
        con.close()


def test_the_fit_records_its_classification_and_applies_only_there(calibrated_ws, tmp_path):
    ws = calibrated_ws
    con = open_db(str(ws / "curate.duckdb"))
    fit = json.loads(con.execute("SELECT value FROM meta WHERE key = 'calibration'").fetchall()[0][0])
    fp = con.execute(f'SELECT fingerprint FROM "cls_{NATURAL}".score_progress').fetchall()[0][0]
    natural_preds = dict(con.execute(f'SELECT id, label FROM "cls_{NATURAL}".predictions').fetchall())
    con.close()
    assert (fit["classification"], fit["fingerprint"]) == (NATURAL, fp)

    kept = _kept(ws, tmp_path)
    assert [(int(r["id"]), r["label"]) for r in kept] == _expected(ws, NATURAL)
    assert all(natural_preds[int(r["id"])] == r["label"] for r in kept)

    out = run_cli("filter", "-w", ws, "--calibrated", "--classification", RAW, "--out", tmp_path / "x.csv",
                  expect=1).output
    assert f"fitted on the classification '{NATURAL}'" in out and f"--classification {RAW}" in out

    # another classification active: the plain filter refuses, the named one still reads natural's scores
    run_cli("classify", "-w", ws, "--use", RAW)
    assert "fitted on the classification" in run_cli("filter", "-w", ws, "--calibrated", "--out",
                                                     tmp_path / "y.csv", expect=1).output
    again = _kept(ws, tmp_path, "--classification", NATURAL)
    assert [(int(r["id"]), r["label"]) for r in again] == [(int(r["id"]), r["label"]) for r in kept]


def test_reclassified_with_other_settings_the_fit_is_refused(calibrated_ws, tmp_path):
    ws = calibrated_ws
    run_cli("classify", "-w", ws, "--prompts", "natural", "--logit-scale", "50")   # same name, other scores
    out = run_cli("filter", "-w", ws, "--calibrated", "--out", tmp_path / "x.csv", expect=1).output
    assert "classified again with other settings" in out


def test_the_fit_goes_with_its_classification(calibrated_ws, tmp_path):
    ws = calibrated_ws
    run_cli("classify", "-w", ws, "--drop", NATURAL)
    out = run_cli("filter", "-w", ws, "--calibrated", "--out", tmp_path / "x.csv", expect=1).output
    assert "no calibration" in out
    con = open_db(str(ws / "curate.duckdb"))
    try:
        assert con.execute("SELECT count(*) FROM duckdb_views() WHERE database_name = current_database() "
                           "AND view_name = 'calibrated_predictions'"
                           ).fetchall()[0][0] == 0
    finally:
        con.close()
