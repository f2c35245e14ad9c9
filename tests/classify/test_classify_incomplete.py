"""A killed `curate classify` never leaves half an answer (issue 8).

Classification A completes; classification B (other settings) is killed with SIGKILL part
way. Every reader (the predictions view through a read-only connection and the real
`duckdb -readonly` shell, `filter`, `sample`, `report`) then sees A's complete result,
exactly what it sees in a copy of the workspace that B never touched. Rerunning B resumes
it and completes it; then everything sees B, equal to an uninterrupted B. A first
classification killed part way leaves readers refusing with a message that says what is
incomplete and which command finishes it.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from classify_support import in_classification, old_layout
from conftest import open_db, run_cli
from test_classify_resume import (
    Stop,
    assert_same_tables,
    kill_classify_after,
    label_file,
    make_workspace,
    stopped_after,
)

from curate.classify.run import classify
from curate.classify.state import NotReady

DUCKDB_SHELL = Path(sys.executable).parent / "duckdb"
A = ["classify", "--storage", "topk", "--top-k", "3", "--batch-rows", "1000"]
B = [*A, "--logit-scale", "50"]                    # other settings: a new classification


def _rows(root: Path, sql: str) -> list[tuple]:
    """A query's rows, its names read in the workspace's only classification (cls_*)."""
    con = open_db(str(root / "curate.duckdb"))
    try:
        return in_classification(con).execute(sql).fetchall()
    finally:
        con.close()


def _shell(root: Path, sql: str) -> str:
    out = subprocess.run([str(DUCKDB_SHELL), "-readonly", "-csv", str(root / "curate.duckdb"), "-c", sql],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _csv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def _readers(root: Path, tmp: Path, tag: str) -> dict:
    """What each reader sees of a workspace's scores."""
    run_cli("filter", "-w", root, "--min-prob", "0.1", "--out", tmp / f"{tag}.csv")
    run_cli("sample", "-w", root, "--top-classes", "3", "--per-class", "7", "--seed", "5", "--name", tag)
    run_cli("report", "-w", root, "--set", tag, "--out", tmp / f"report-{tag}", "--grid-size", "0")
    return {
        "predictions": _rows(root, "SELECT * FROM predictions ORDER BY id"),
        "settings": _rows(root, "SELECT logit_scale, top_k FROM score_settings"),
        "shell": _shell(root, "SELECT count(*), sum(prob), max(label) FROM predictions; "
                              "SELECT * FROM coverage; SELECT count(*) FROM ensemble WHERE caption_used"),
        "filter": _csv(tmp / f"{tag}.csv"),
        "sample": _rows(root, f"SELECT id, label, prob FROM review_items WHERE set_name = '{tag}' ORDER BY id"),
        "coverage": _csv(tmp / f"report-{tag}" / "coverage.csv"),
    }


@pytest.mark.slow
def test_killed_reclassify_leaves_the_previous_result_until_it_completes(tmp_path):
    labels = label_file(tmp_path / "labels.csv")
    ws = tmp_path / "ws"
    make_workspace(ws, labels, 30_000, image_shard=7_000, caption_shard=6_000)
    run_cli(*A, "--set", labels, "-w", ws)
    only_a, uninterrupted_b = tmp_path / "only_a", tmp_path / "b"
    shutil.copytree(ws, only_a)
    shutil.copytree(ws, uninterrupted_b)

    kill_classify_after(3, [*B, "--set", str(labels), "-w", str(ws)])
    # B's three batches are in the workspace, staged
    assert _rows(ws, "SELECT count(*) > 0 FROM next_item_scores") == [(True,)]

    seen = _readers(ws, tmp_path, "killed")
    want = _readers(only_a, tmp_path, "killed")        # same set name: the same draw
    assert seen == want
    assert seen["settings"] == [(30.0, 3)] and len(seen["predictions"]) > 20_000

    out = run_cli(*B, "--set", labels, "-w", ws).output          # the same command again
    assert "resuming after item id" in out and "continued earlier scores" in out
    run_cli(*B, "--set", labels, "-w", uninterrupted_b)
    assert_same_tables(ws, uninterrupted_b)
    assert _rows(ws, "SELECT count(*) FROM information_schema.tables WHERE table_catalog = current_database() "
                     "AND table_name LIKE 'next_%'") == [(0,)]
    seen = _readers(ws, tmp_path, "after")
    assert seen == _readers(uninterrupted_b, tmp_path, "after")
    assert seen["settings"] == [(50.0, 3)] and seen["predictions"] != want["predictions"]


def test_a_first_classify_killed_part_way_is_refused_by_every_reader(tmp_path):
    labels = label_file(tmp_path / "labels.csv", 12)
    ws = tmp_path / "ws"
    make_workspace(ws, labels, 2_000, image_shard=500, caption_shard=300)
    with pytest.raises(Stop):
        classify(ws, labels, storage="topk", top_k=2, batch_rows=128, progress=stopped_after(3))
    [(done, total)] = _rows(ws, "SELECT (SELECT images + captions FROM next_score_progress), sum(rows) FROM shards")
    for args in (["filter", "-w", ws, "--out", tmp_path / "x.csv"], ["sample", "-w", ws]):
        msg = run_cli(*args, expect=1).output
        assert "no complete scores" in msg and f"scored {done:,} of {total:,} vectors" in msg, msg
        assert "run the same `curate classify` command again" in msg, msg
    assert not (tmp_path / "x.csv").exists()
    # the shell's views do not exist yet: nothing there reads as a classification
    assert _rows(ws, "SELECT count(*) FROM information_schema.tables WHERE table_catalog = current_database() "
                     "AND table_name IN "
                     "('predictions', 'item_scores', 'score_settings')") == [(0,)]


def test_scores_made_in_place_by_an_older_curate_and_killed_are_refused(tmp_path):
    """A workspace whose killed run scored in place (score_progress unfinished, no score_settings)."""
    labels = label_file(tmp_path / "labels.csv", 12)
    ws = tmp_path / "ws"
    make_workspace(ws, labels, 1_000, image_shard=500, caption_shard=300)
    classify(ws, labels, storage="full", batch_rows=128)
    old_layout(ws / "curate.duckdb")   # (named classifications came later: their tables were in main)
    con = duckdb.connect(str(ws / "curate.duckdb"))
    con.execute("DELETE FROM score_settings")
    con.execute("DELETE FROM item_scores WHERE id > 300")
    con.execute("UPDATE score_progress SET finished = false, last_id = 300, images = 250, captions = 200")
    con.close()
    msg = run_cli("filter", "-w", ws, expect=1).output
    assert "scored 450 of" in msg and "run the same `curate classify`" in msg, msg
    from curate.validate import sampling
    con = duckdb.connect(str(ws / "curate.duckdb"))
    with pytest.raises(NotReady, match="no complete scores"):
        sampling.draw(con, top_classes=2, per_class=3)
    con.close()
