"""`curate classify` resumes: a killed run, rerun, ends with the tables of an uninterrupted one.

Workspaces are written through the public store API (random unit vectors, 64-d), with
the label vectors cached up front (from a stand-in text encoder), so that no model is
loaded. The main test kills a real `curate classify` process with SIGKILL once it has
committed batches; the others stop a run in-process between two batches (what a kill
leaves too: every batch is its own transaction) to cover the edge cases cheaply.
Every comparison is exact: same rows, same values, bit for bit.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import duckdb
import numpy as np
import pytest
from classify_support import in_classification
from conftest import open_db, run_cli

from curate.classify.label_vectors import label_queries
from curate.classify.labels import load_label_set
from curate.classify.prompts import resolve
from curate.classify.run import classify
from curate.core import store
from curate.core.workspace import ModelIdentity, Workspace
from curate.errors import WorkspaceError

DIM = 64
IDENT = ModelIdentity("resume-test-model", "none", DIM, True)   # never loadable: the cache must serve
REPO = Path(__file__).resolve().parents[2]


def kill_classify_after(batches: int, args: list[str]) -> None:
    """Run a real `curate classify ARGS` and SIGKILL it once it has committed `batches` batches."""
    proc = subprocess.Popen([sys.executable, "-m", "curate.cli", *args, "--log-batches"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env=os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    committed = 0
    for line in proc.stdout:
        committed += line.startswith("committed ")
        if committed == batches:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    err = proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    assert committed == batches and proc.returncode == -signal.SIGKILL, err
# every table classify writes, and the columns that say when rather than what
TABLES = {"labels": "", "item_scores": "", "label_scores": "", "score_settings": "created_at",
          "score_progress": "updated_at"}


class StandInEncoder:
    """Label vectors for the cache: a fixed random unit vector per prompt text."""

    identity = IDENT
    logit_scale = 30.0

    def encode_text(self, texts: list[str]) -> np.ndarray:
        return np.stack([_unit(np.random.default_rng(zlib.crc32(t.encode())), 1, DIM)[0] for t in texts])


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    v = rng.standard_normal((n, d))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def label_file(path: Path, n: int = 40) -> Path:
    path.write_text("label,prompt\n" + "".join(f"place_{i},a photo of place number {i}\n" for i in range(n)),
                    encoding="utf-8")
    return path


def add_vectors(root: Path, kind: str, ids: np.ndarray, shard_rows: int, seed: int) -> None:
    """Append shards of random unit vectors for these item ids (in this order)."""
    ws = Workspace(root)
    con = ws.connect()
    vecs = _unit(np.random.default_rng(seed), len(ids), DIM)
    for s in range(0, len(ids), shard_rows):
        part = store.next_part(con, kind)
        name = store.write_shard(ws, kind, part, ids[s:s + shard_rows], vecs[s:s + shard_rows])
        store.record_shard(con, kind, part, name, len(ids[s:s + shard_rows]), 0)
    con.close()


def make_workspace(root: Path, labels: Path, n: int, image_shard: int, caption_shard: int,
                   reverse: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """n items (ids with gaps): most with an image and a caption, some image-only, some caption-only
    (among them the last items, after the last image). Returns (image ids, caption ids)."""
    rng = np.random.default_rng(n)
    ids = np.arange(n, dtype=np.int64) + np.arange(n, dtype=np.int64) // 6      # with gaps
    has_img = rng.random(n) < 0.95
    has_img[-n // 5:] = False                         # a tail of caption-only items
    has_cap = (rng.random(n) < 0.7) | ~has_img
    ws = Workspace(root)
    con = ws.connect()
    Workspace.bind_model(con, IDENT)
    con.execute("INSERT INTO items (id, source_id, path, caption, status) SELECT id, 'src' || id, "
                "'/photos/' || id || '.jpg', NULL, 'embedded' FROM unnest(?::BIGINT[]) t(id)", [ids.tolist()])
    ls = load_label_set(str(labels))
    label_queries(con, IDENT, ls, resolve("natural"), StandInEncoder)    # cache the label vectors
    con.close()
    img, cap = ids[has_img], ids[has_cap]
    add_vectors(root, "image", img[::-1] if reverse else img, image_shard, 1)
    add_vectors(root, "caption", cap[::-1] if reverse else cap, caption_shard, 2)
    return img, cap


def assert_same_tables(a: Path, b: Path) -> None:
    """Every table of the scores: the same rows (as multisets), the same values."""
    con = duckdb.connect()
    con.execute(f"ATTACH '{a / 'curate.duckdb'}' AS a (READ_ONLY)")
    con.execute(f"ATTACH '{b / 'curate.duckdb'}' AS b (READ_ONLY)")
    for table, skip in TABLES.items():
        cols = ", ".join(c for (c,) in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_catalog = 'a' AND table_name = ? "
            "ORDER BY ordinal_position", [table]).fetchall() if c != skip)
        n_a, n_b = (con.execute(f"SELECT count(*) FROM {db}.{table}").fetchall()[0][0] for db in "ab")
        assert n_a == n_b, f"{table}: {n_a} rows against {n_b}"
        for x, y in (("a", "b"), ("b", "a")):
            diff = con.execute(f"SELECT count(*) FROM (SELECT {cols} FROM {x}.{table} EXCEPT ALL "
                               f"SELECT {cols} FROM {y}.{table})").fetchall()[0][0]
            assert diff == 0, f"{table}: {diff} rows of {x} are not in {y}"
    con.close()


def assert_close_tables(a: Path, b: Path, tol: float = 1e-12) -> None:
    """The scores of two workspaces: the same rows and labels, values equal to float64 rounding
    (rows scored in other batches differ in the last bits of a float64 product)."""
    con = duckdb.connect()
    con.execute(f"ATTACH '{a / 'curate.duckdb'}' AS a (READ_ONLY)")
    con.execute(f"ATTACH '{b / 'curate.duckdb'}' AS b (READ_ONLY)")
    for table, key in (("item_scores", ["id"]), ("label_scores", ["id", "label_idx"])):
        cols = [c for (c,) in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_catalog = 'a' AND table_name = ? "
            "ORDER BY ordinal_position", [table]).fetchall()]
        x, y = (con.execute(f"SELECT {', '.join(cols)} FROM {db}.{table} ORDER BY {', '.join(key)}").fetchall()
                for db in "ab")
        assert len(x) == len(y), f"{table}: {len(x)} rows against {len(y)}"
        for rx, ry in zip(x, y, strict=True):
            for c, u, v in zip(cols, rx, ry, strict=True):
                if isinstance(u, float) and isinstance(v, float):
                    assert abs(u - v) <= tol, (table, c, rx, ry)
                else:
                    assert u == v, (table, c, rx, ry)
    con.close()


def one(root: Path, sql: str) -> tuple:
    """The first row of a query, its names read in the workspace's only classification (cls_*)."""
    con = open_db(str(root / "curate.duckdb"))
    try:
        return in_classification(con).execute(sql).fetchall()[0]
    finally:
        con.close()


class Stop(Exception):
    """Ends a run between two batches, as a kill would."""


def stopped_after(batches: int):
    seen = []

    def progress(_n: int) -> None:   # called once a batch is committed
        seen.append(_n)
        if len(seen) == batches:
            raise Stop
    return progress


@pytest.mark.slow
def test_killed_cli_run_resumes_to_the_uninterrupted_tables(tmp_path):
    t0 = time.perf_counter()
    labels = label_file(tmp_path / "labels.csv")
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    img, cap = make_workspace(killed, labels, 80_000, image_shard=15_000, caption_shard=12_000)
    shutil.copytree(killed, whole)
    args = ["classify", "--set", str(labels), "--storage", "topk", "--top-k", "3", "--batch-rows", "2000"]
    t1 = time.perf_counter()

    kill_classify_after(3, [*args, "-w", str(killed)])
    t2 = time.perf_counter()

    # killed half way: nothing that looks classified (the run writes staging tables, next_*),
    # and the staged rows match the progress record
    assert one(killed, "SELECT count(*) FROM information_schema.tables WHERE table_catalog = current_database() "
                       "AND table_name = 'score_settings'") == (0,)
    last, images, captions, finished = one(killed, "SELECT last_id, images, captions, finished "
                                                   "FROM next_score_progress")
    assert not finished and img[2] < last < cap[-1]
    assert one(killed, "SELECT count(*), max(id), count(image_label), count(caption_label) "
                       "FROM next_item_scores") == (
        len(np.union1d(img[img <= last], cap[cap <= last])), last, images, captions)
    assert images == int((img <= last).sum()) and captions == int((cap <= last).sum())

    out = run_cli(*args, "-w", killed).output               # the same command again
    assert f"resuming after item id {last:,}" in out and "continued earlier scores" in out
    t3 = time.perf_counter()
    assert "continued" not in run_cli(*args, "-w", whole).output
    t4 = time.perf_counter()
    assert_same_tables(killed, whole)
    assert one(killed, "SELECT finished, last_id, images, captions FROM score_progress") == (
        True, cap[-1], len(img), len(cap))
    print(f"\nbuild {t1 - t0:.1f} s, killed run {t2 - t1:.1f} s, resume {t3 - t2:.1f} s, "
          f"uninterrupted {t4 - t3:.1f} s, compare {time.perf_counter() - t4:.1f} s")


@pytest.fixture(scope="module")
def small_made(tmp_path_factory) -> Path:
    """The small workspace and its labels, made once for the module and never written (copied
    by `small`)."""
    root = tmp_path_factory.mktemp("small")
    make_workspace(root / "a", label_file(root / "labels.csv", 12), 2_000, image_shard=500, caption_shard=300)
    return root


@pytest.fixture
def small(small_made, tmp_path) -> tuple[Path, Path, Path]:
    """A small workspace (2,000 items, shards not multiples of the batch) and a copy of it."""
    labels = tmp_path / "labels.csv"
    shutil.copyfile(small_made / "labels.csv", labels)
    a = tmp_path / "a"
    shutil.copytree(small_made / "a", a)
    b = tmp_path / "b"
    shutil.copytree(a, b)
    return labels, a, b


@pytest.mark.parametrize("storage,stop_at", [("topk", 2), ("full", 5), ("topk", -3)])   # -3: in the caption tail
def test_stopped_runs_resume_exactly(small, storage, stop_at):
    labels, a, b = small
    kw = dict(storage=storage, top_k=2, batch_rows=128)
    batches = []
    assert classify(b, labels, progress=batches.append, **kw).resumed_vectors == 0
    with pytest.raises(Stop):
        classify(a, labels, progress=stopped_after(stop_at % len(batches)), **kw)
    last = one(a, "SELECT last_id FROM next_score_progress")[0]
    if stop_at < 0:   # every image is scored: the run stopped among the caption-only items
        assert last > one(a, "SELECT max(id) FROM next_item_scores WHERE image_label IS NOT NULL")[0]
    with pytest.raises(Stop):   # stopped again, then finished
        classify(a, labels, progress=stopped_after(1), **kw)
    r = classify(a, labels, **kw)
    assert r.resumed_vectors > 0
    assert_same_tables(a, b)
    assert r.label_score_rows == one(b, "SELECT count(*) FROM label_scores")[0]


def test_unsorted_shards_resume_exactly(tmp_path):
    labels = label_file(tmp_path / "labels.csv", 12)
    a, b = tmp_path / "a", tmp_path / "b"
    make_workspace(a, labels, 2_000, image_shard=300, caption_shard=500, reverse=True)
    shutil.copytree(a, b)
    with pytest.raises(Stop):
        classify(a, labels, storage="topk", top_k=3, batch_rows=100, progress=stopped_after(4))
    assert classify(a, labels, storage="topk", top_k=3, batch_rows=100).resumed_vectors > 0
    classify(b, labels, storage="topk", top_k=3, batch_rows=100)
    assert_same_tables(a, b)


@pytest.mark.parametrize("change", [dict(top_k=3), dict(logit_scale=50.0), dict(restart=True)])
def test_other_settings_start_over(small, change):
    labels, a, b = small
    kw = dict(storage="topk", top_k=2, batch_rows=128)
    with pytest.raises(Stop):
        classify(a, labels, progress=stopped_after(3), **kw)
    lines = []
    r = classify(a, labels, log=lines.append, **(kw | change))
    assert r.resumed_vectors == 0
    if "restart" not in change:
        assert any("starting over" in x for x in lines)
    classify(b, labels, **(kw | change))
    assert_same_tables(a, b)


def test_finished_run_scores_only_new_items(small):
    """build-index added items since classify finished: the rerun scores those only, with the
    tables a run from the start makes (the caption-only items after the last image included)."""
    labels, a, b = small
    kw = dict(storage="topk", top_k=2, batch_rows=128)
    first = classify(a, labels, **kw)
    lines = []
    assert classify(a, labels, log=lines.append, **kw).resumed_vectors == first.images + first.captions  # no work
    assert lines == ["labels-natural: already classified, nothing to do"]     # not resume wording (issue 26)
    top = one(a, "SELECT max(id) FROM items")[0]
    new = np.arange(top + 1, top + 900, dtype=np.int64)
    for root in (a, b):
        add_vectors(root, "image", new[:700], 250, 3)
        add_vectors(root, "caption", new[300:], 250, 4)
    lines = []
    again = classify(a, labels, log=lines.append, **kw)
    # a finished run is extended, not resumed: resume wording only after an interruption (issue 26)
    assert again.resumed_vectors > 0 and not again.interrupted and not any("resuming" in x for x in lines)
    assert any("vectors embedded since labels-natural was classified" in x for x in lines), lines
    assert (again.images, again.captions) == (first.images + 700, first.captions + 599)
    classify(b, labels, **kw)
    assert_same_tables(a, b)


def test_late_image_vectors_rescore_those_items(small):
    """Images embedded late for items already scored by their caption (ids below the last one
    scored): only those items are scored again (issue 21: scores follow the vectors), to the
    values of a run from the start (float64 rounding apart: other batches)."""
    labels, a, b = small
    kw = dict(storage="topk", top_k=2, batch_rows=128)
    classify(a, labels, **kw)
    con = open_db(str(a / "curate.duckdb"))
    image_ids = np.array([r[0] for r in con.execute(
        "SELECT id FROM item_scores WHERE image_label IS NULL ORDER BY id").fetchall()], np.int64)
    con.close()
    for root in (a, b):            # the images of caption-only items, embedded late
        add_vectors(root, "image", image_ids, 400, 5)
    lines = []
    r = classify(a, labels, log=lines.append, **kw)
    assert r.resumed_vectors == r.images + r.captions - len(image_ids) - len(image_ids)   # their 2 vectors each
    assert lines == [f"{len(image_ids):,} items embedded since (or given a vector they lacked): scored"]
    classify(b, labels, **kw)
    assert_close_tables(a, b)


def test_lost_shard_fails_before_looking_classified(small):
    labels, a, _b = small
    classify(a, labels, batch_rows=128)
    con = Workspace(a).connect()
    vec_path = store.shard_files(Workspace(a), con, "image")[0].vectors
    con.close()
    vec_path.unlink()
    with pytest.raises(WorkspaceError, match="missing"):
        classify(a, labels, batch_rows=128)
    # the failed run published nothing: the scores of the complete run stay as they were
    assert one(a, "SELECT count(*) FROM score_settings") == (1,)
    assert one(a, "SELECT count(*) FROM information_schema.tables WHERE table_catalog = current_database() "
                  "AND table_name LIKE 'next_%'") == (0,)
