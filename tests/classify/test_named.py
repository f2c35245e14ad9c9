"""Named classifications side by side in one workspace (curate/classify/registry.py):
each in its own schema with its own views, main's plain names for the active one, the
*_of macros in the real duckdb shell, use/drop, the upgrade of a workspace classified
before names existed, independent resumes, and review sets that remember theirs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pytest
from classify_support import in_classification, old_layout, softmax64, top2
from conftest import open_db
from test_classify_resume import StandInEncoder, Stop, label_file, make_workspace, stopped_after

from curate.classify import registry
from curate.classify.run import classify
from curate.core import sql, store
from curate.core.workspace import Workspace
from curate.errors import InputError
from curate.validate import sampling

SHELL = shutil.which("duckdb", path=str(Path(sys.executable).parent)) or shutil.which("duckdb")
SCORE_TABLES = ("labels", "item_scores", "label_scores", "score_settings", "score_progress")


@pytest.fixture(scope="module")
def two(built_workspace, tmp_path_factory) -> Path:
    """The built workspace classified twice: raw label names ('raw'), then natural prompts ('natural')."""
    ws = tmp_path_factory.mktemp("named") / "ws"
    shutil.copytree(built_workspace, ws)
    classify(ws, "places205", "raw", name="raw")
    classify(ws, "places205", "natural", name="natural")
    return ws


def _copy(ws: Path, tmp_path: Path) -> Path:
    out = tmp_path / "ws"
    shutil.copytree(ws, out)
    return out


def _ro(ws: Path) -> open_db:
    return open_db(str(ws / "curate.duckdb"))


def _reference(ws: Path, con: duckdb.DuckDBPyConnection, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids, full image softmax) from the stored vectors and the label vectors `name` used."""
    key, scale = con.execute(f'SELECT cache_key, logit_scale FROM "cls_{name}".score_settings').fetchall()[0]
    q = np.array([r[0] for r in con.execute("SELECT vector FROM label_vectors WHERE cache_key = ? "
                                            "ORDER BY label_idx", [key]).fetchall()], dtype=np.float64)
    ids, vecs = store.load_all(Workspace(ws), con, "image")
    return ids, softmax64(vecs, q, scale)


def _predictions(con: duckdb.DuckDBPyConnection, relation: str) -> list[tuple]:
    return con.execute(f"SELECT id, label_idx, prob, prob2 FROM {relation} ORDER BY id").fetchall()


def test_names_are_checked_and_defaults_derived():
    assert registry.default_name("places205", "natural") == "places205-natural"
    assert registry.default_name("/tmp/My Labels.txt", "a photo of {}") == "my-labels-a-photo-of"
    for bad in ("", "Raw", "-raw", "a b", 'x"; DROP TABLE items; --', "x" * 64):
        with pytest.raises(InputError):
            registry.check_name(bad)
    assert registry.check_name("a" * 63) == "a" * 63


def test_two_classifications_coexist_each_equal_to_numpy(two):
    con = _ro(two)
    try:
        for name in ("raw", "natural"):
            ids, p = _reference(two, con, name)
            label, prob, _label2, prob2 = top2(p)
            got = _predictions(con, f'"cls_{name}".predictions')
            assert [r[0] for r in got] == sorted(ids.tolist())
            order = np.argsort(ids)
            assert [r[1] for r in got] == label[order].tolist()
            np.testing.assert_allclose([r[2] for r in got], prob[order], rtol=0, atol=1e-9)
            np.testing.assert_allclose([r[3] for r in got], prob2[order], rtol=0, atol=1e-9)
        raw, natural = (_predictions(con, f'"cls_{n}".predictions') for n in ("raw", "natural"))
        assert raw != natural                      # two wordings, two sets of scores
        # main's plain names show the last completed one
        assert _predictions(con, "predictions") == natural
        assert con.execute("SELECT prompts FROM score_settings").fetchall() == [("natural",)]
        # a view binds in its own schema: raw's view reads raw's tables whatever the search path
        con.execute("SET search_path = '\"cls_natural\",main'")
        assert _predictions(con, '"cls_raw".predictions') == raw
        # macros read the selected classification's tables (the search path)
        assert registry.select(con, "raw") == "raw"
        assert _predictions(con, "predictions") == raw
        assert sorted(con.execute("SELECT id, label_idx FROM ensemble_with(0.2, 0.5)").fetchall()) == \
            sorted(con.execute('SELECT id, label_idx FROM "cls_raw".ensemble').fetchall())
        assert registry.select(con, None) == "natural"
        assert _predictions(con, "predictions") == natural
        assert _predictions(con, "predictions_of('raw')") == raw
        rows = {c.name: c for c in registry.list_classifications(con)}
        assert set(rows) == {"raw", "natural"} and rows["natural"].active and not rows["raw"].active
        assert (rows["raw"].label_set, rows["raw"].prompts, rows["raw"].model) == ("places205", "raw", "curate-tiny")
        assert rows["raw"].complete and not rows["raw"].in_progress and rows["raw"].images == len(raw)
    finally:
        con.close()


@pytest.mark.skipif(SHELL is None, reason="the duckdb shell (duckdb-cli) is not installed")
def test_the_of_macros_in_the_duckdb_shell_equal_the_views_under_a_search_path(two):
    script = ("SELECT id, label, prob FROM predictions_of('raw') ORDER BY id;\n"
              "SELECT threshold, classified FROM image_coverage_of('raw') ORDER BY threshold;\n")
    r = subprocess.run([SHELL, "-readonly", str(two / "curate.duckdb"), "-bail", "-csv", "-noheader"],
                       input=script, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    con = _ro(two)
    try:
        registry.select(con, "raw")
        want = con.execute("SELECT id, label, prob FROM predictions ORDER BY id").fetchall()
        want_cov = con.execute("SELECT threshold, classified FROM coverage ORDER BY threshold").fetchall()
    finally:
        con.close()
    lines = r.stdout.strip().splitlines()
    assert len(lines) == len(want) + len(want_cov)
    for line, (i, label, prob) in zip(lines, want, strict=False):
        a, *mid, c = line.split(",")
        assert int(a) == i and abs(float(c) - prob) < 1e-9 and ",".join(mid).strip('"') == label
    assert [(float(t), int(n)) for t, n in (x.split(",") for x in lines[len(want):])] == want_cov


def test_use_and_drop_switch_the_main_views_and_drop_frees_the_schema(two, tmp_path):
    ws = _copy(two, tmp_path)
    con = Workspace(ws).connect()
    try:
        raw, natural = (_predictions(con, f'"cls_{n}".predictions') for n in ("raw", "natural"))
        registry.use(con, "raw")
        assert registry.active(con) == "raw" and _predictions(con, "predictions") == raw
        with pytest.raises(InputError, match="no classification named 'nope'.*raw"):
            registry.use(con, "nope")
        assert registry.drop(Workspace(ws), con, "raw") == "natural"        # the active one: natural takes over
        assert _predictions(con, "predictions") == natural
        assert con.execute("SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() "
                           "AND schema_name = 'cls_raw'").fetchall() == [(0,)]
        assert con.execute("SELECT count(*) FROM duckdb_views() WHERE database_name = current_database() "
                           "AND schema_name = 'cls_raw'").fetchall() == [(0,)]
        assert con.execute("SELECT count(*) FROM duckdb_schemas() WHERE database_name = current_database() "
                           "AND schema_name = 'cls_raw'").fetchall() == [(0,)]
        assert [c.name for c in registry.list_classifications(con)] == ["natural"]
        assert registry.drop(Workspace(ws), con, "natural") is None         # none left: no plain names
        for name in ("predictions", "ensemble", "coverage", "item_scores", "labels", "score_settings"):
            assert not con.execute("SELECT count(*) FROM information_schema.tables WHERE table_catalog = current_database() "
                                   "AND table_name = ?",
                                   [name]).fetchall()[0][0], name
    finally:
        con.close()


def test_main_views_are_made_again_only_when_what_they_show_changes(two, tmp_path):
    """main's plain names are made again when the active classification changes, or when the
    files that make them differ (meta.main_views), not at every run publishing the same one's
    scores: their views read its tables by name. A view dropped by hand shows which runs made them."""
    ws = _copy(two, tmp_path)
    with Workspace(ws).writing() as con:
        con.execute("DROP VIEW main.coverage")
    classify(ws, "places205", "natural", name="natural", logit_scale=50.0)    # rescored whole: published
    with Workspace(ws).writing() as con:
        assert not sql.has_relation(con, "coverage", schema="main")
        assert _predictions(con, "predictions") == _predictions(con, '"cls_natural".predictions')
        assert con.execute('SELECT logit_scale FROM "cls_natural".score_settings').fetchall() == [(50.0,)]
        registry.use(con, "raw")                                                # another one: made
        assert sql.has_relation(con, "coverage", schema="main")
        assert _predictions(con, "predictions") == _predictions(con, '"cls_raw".predictions')
        con.execute("DROP VIEW main.coverage")
        con.execute("UPDATE main.meta SET value = 'another curate' WHERE key = ?", [registry.MAIN_VIEWS])
        registry.use(con, "raw")                                                # the same, other files: made
        assert sql.has_relation(con, "coverage", schema="main")


def test_a_workspace_classified_before_names_is_upgraded_with_the_same_numbers(two, tmp_path):
    ws = _copy(two, tmp_path)
    con = Workspace(ws).connect()
    registry.drop(Workspace(ws), con, "raw")
    sampling.draw(con, top_classes=2, per_class=3)
    con.close()
    con = _ro(ws)
    before = {t: sorted(con.execute(f"SELECT * FROM {t}").fetchall()) for t in (*SCORE_TABLES, "predictions")}
    con.close()
    old_layout(ws / "curate.duckdb")
    con = _ro(ws)   # the old layout: tables in main, readers as before
    assert con.execute("SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() "
                       "AND schema_name = 'main' "
                       "AND table_name = 'item_scores'").fetchall() == [(1,)]
    con.close()
    con = Workspace(ws).connect()      # the first read-write connect upgrades
    try:
        assert registry.active(con) == "places205-natural"
        assert con.execute("SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() "
                           "AND schema_name = 'main' "
                           "AND table_name = 'item_scores'").fetchall() == [(0,)]
        for t, rows in before.items():
            assert sorted(con.execute(f"SELECT * FROM {t}").fetchall()) == rows, t
            assert sorted(con.execute(f'SELECT * FROM "cls_places205-natural".{t}').fetchall()) == rows, t
        assert [s.classification for s in sampling.list_sets(con)] == ["places205-natural"]
    finally:
        con.close()
    con = Workspace(ws).connect()      # once only
    assert [c.name for c in registry.list_classifications(con)] == ["places205-natural"]
    con.close()


def test_a_review_set_records_its_classification(two, tmp_path):
    ws = _copy(two, tmp_path)
    con = Workspace(ws).connect()
    try:
        path_before = con.execute("SELECT current_setting('search_path')").fetchall()[0][0]
        s = sampling.draw(con, top_classes=2, per_class=3, classification="raw")
        assert s.classification == "raw" and s.name.endswith("-raw")
        drawn = con.execute("SELECT r.id, r.label, r.prob, p.label, p.prob FROM review_items r "
                            "JOIN \"cls_raw\".predictions p USING (id) WHERE r.set_name = ?", [s.name]).fetchall()
        assert drawn and all(a == c and b == d for _i, a, b, c, d in drawn)
        assert con.execute("SELECT current_setting('search_path')").fetchall()[0][0] == path_before   # put back
        assert sampling.draw(con, top_classes=2, per_class=3).classification == "natural"
        with pytest.raises(InputError):
            sampling.draw(con, top_classes=2, per_class=3, classification="gone")
    finally:
        con.close()


def _schema_rows(ws: Path, name: str) -> dict[str, list[tuple]]:
    con = _ro(ws)
    try:
        out = {}
        for t in SCORE_TABLES:
            cols = [r[0] for r in con.execute("SELECT column_name FROM information_schema.columns WHERE "
                                              "table_catalog = current_database() AND table_schema = ? "
                                              "AND table_name = ? ORDER BY ordinal_position",
                                              [f"cls_{name}", t]).fetchall()
                    if r[0] not in ("created_at", "updated_at")]
            out[t] = sorted(con.execute(f'SELECT {", ".join(cols)} FROM "cls_{name}".{t}').fetchall())
        return out
    finally:
        con.close()


def test_two_names_resume_independently(tmp_path):
    labels = label_file(tmp_path / "labels.csv", 12)
    ws, whole = tmp_path / "ws", tmp_path / "whole"
    make_workspace(ws, labels, 2_000, image_shard=500, caption_shard=300)
    shutil.copytree(ws, whole)
    enc = StandInEncoder()
    a = dict(storage="topk", top_k=2, batch_rows=128)
    b = dict(storage="full", batch_rows=160, logit_scale=50.0)
    with pytest.raises(Stop):
        classify(ws, labels, "natural", enc, name="a", progress=stopped_after(2), **a)
    with pytest.raises(Stop):
        classify(ws, labels, "raw", enc, name="b", progress=stopped_after(3), **b)
    con = _ro(ws)
    staged = con.execute("SELECT table_schema FROM information_schema.tables WHERE table_catalog = current_database() "
                         "AND table_name = "
                         "'next_score_progress' ORDER BY 1").fetchall()
    assert staged == [("cls_a",), ("cls_b",)] and registry.active(con) is None
    in_classification(con, "b")
    assert con.execute("SELECT images + captions FROM next_score_progress").fetchall()[0][0] > 0
    con.close()
    lines: list[str] = []
    assert classify(ws, labels, "natural", enc, name="a", log=lines.append, **a).resumed_vectors > 0
    assert any("resuming after item id" in x for x in lines) and not any("starting over" in x for x in lines)
    assert classify(ws, labels, "raw", enc, name="b", **b).resumed_vectors > 0
    classify(whole, labels, "natural", enc, name="a", **a)
    classify(whole, labels, "raw", enc, name="b", **b)
    for name in ("a", "b"):
        assert _schema_rows(ws, name) == _schema_rows(whole, name), name
    con = _ro(ws)
    assert registry.active(con) == "b"
    assert con.execute("SELECT count(*) FROM information_schema.tables WHERE table_catalog = current_database() "
                       "AND table_name LIKE 'next_%'"
                       ).fetchall() == [(0,)]
    con.close()
