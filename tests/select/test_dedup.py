"""`curate dedup` and `filter --dedup` with real near-duplicate JPEGs through the real CLI.

The collection: 10 distinct photos, and of photo_00 a re-encode at JPEG quality 40, a
half-size resize, a 5% crop, a 10-pixel white border and an exact copy under another
name; an exact copy of photo_03 too. curate-tiny has random weights, so the test checks
the mechanics against the cosines it measures, never that the model recognises a photo.
Measured here (curate-tiny, random weights, these synthetic photos): re-encode, resize
and crop stay at cosine >= 0.998 to the original, the border falls to ~0.976, and two
distinct photos reach up to ~0.996: at 0.998 the re-encode, resize, crop and copies group
and nothing else; the bordered copy cannot be told from a distinct photo by this model.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import faiss
import numpy as np
import pytest
from conftest import open_db, run_cli, write_jpeg
from PIL import Image, ImageOps

from curate import api
from curate.core import store
from curate.core.workspace import Workspace
from curate.select.dedup import TOLERANCE, DedupError, components

VARIANTS = ("v_q40.jpg", "v_half.jpg", "v_crop.jpg", "v_border.jpg", "copy_of_00.jpg")


def _collection(root: Path) -> Path:
    for i in range(10):
        write_jpeg(root / f"photo_{i:02d}.jpg", size=(160, 128), seed=i, quality=92)
        (root / f"photo_{i:02d}.txt").write_text(f"caption number {i}", encoding="utf-8")
    src = Image.open(root / "photo_00.jpg")
    src.save(root / "v_q40.jpg", quality=40)
    src.resize((80, 64)).save(root / "v_half.jpg", quality=90)
    src.crop((8, 6, 152, 122)).save(root / "v_crop.jpg", quality=90)
    ImageOps.expand(src, border=10, fill="white").save(root / "v_border.jpg", quality=90)
    shutil.copy(root / "photo_00.jpg", root / "copy_of_00.jpg")
    shutil.copy(root / "photo_03.jpg", root / "copy_of_03.jpg")
    # spam: one caption in other whitespace and case
    (root / "v_q40.txt").write_text("  Follow  me for MORE\tdeals ", encoding="utf-8")
    (root / "photo_05.txt").write_text("follow me for more deals", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dedup")
    _collection(root / "photos")
    ws = root / "ws"
    run_cli("build-index", root / "photos", "-w", ws, "--model", "curate-tiny", "--pretrained", "none",
            "--workers", "0")
    return ws


@pytest.fixture()
def ws(built, tmp_path) -> Path:
    dst = tmp_path / "ws"
    shutil.copytree(built, dst)
    return dst


def _cosines(ws: Path) -> tuple[dict[str, int], np.ndarray, np.ndarray]:
    w = Workspace(ws)
    con = w.connect(read_only=True)
    try:
        ids, vecs = store.load_all(w, con, "image")
        by_name = {Path(p).name: i for i, p in con.execute("SELECT id, path FROM items").fetchall()}
    finally:
        con.close()
    return by_name, ids, vecs @ vecs.T


def _groups(ws: Path, kind: str = "image") -> list[set[int]]:
    con = open_db(str(ws / "curate.duckdb"))
    try:
        rows = con.execute("SELECT group_id, list(id ORDER BY id) FROM duplicates WHERE kind = ? GROUP BY group_id",
                           [kind]).fetchall()
    finally:
        con.close()
    return sorted((set(r[1]) for r in rows), key=min)


def _reference_groups(ids: np.ndarray, sims: np.ndarray, threshold: float) -> list[set[int]]:
    """Brute force: the connected components of every pair at cosine >= threshold."""
    i, j = np.nonzero(np.triu(sims >= threshold, 1))
    node, group = components(ids[i], ids[j])
    out: dict[int, set[int]] = {}
    for n, g in zip(node.tolist(), group.tolist(), strict=True):
        out.setdefault(g, set()).add(n)
    return sorted(out.values(), key=min)


def test_components_joins_chains_and_names_groups_by_smallest_id():
    node, group = components(np.array([5, 7, 1, 20]), np.array([7, 9, 3, 21]))
    assert node.tolist() == [1, 3, 5, 7, 9, 20, 21]
    assert group.tolist() == [1, 1, 5, 5, 5, 20, 20]
    # a long chain given backwards still becomes one group
    n = np.arange(1000)
    node, group = components(n[1:][::-1], n[:-1][::-1])
    assert (group == 0).all() and len(node) == 1000
    assert [len(x) for x in components(np.zeros(0, np.int64), np.zeros(0, np.int64))] == [0, 0]


def test_measured_similarities_of_the_planted_duplicates(built):
    """What the tiny random model separates, measured (the module docstring states the figures)."""
    by_name, ids, sims = _cosines(built)
    pos = {int(v): k for k, v in enumerate(ids)}
    orig = pos[by_name["photo_00.jpg"]]
    to_orig = {v: float(sims[orig, pos[by_name[v]]]) for v in VARIANTS}
    distinct = [pos[by_name[f"photo_{i:02d}.jpg"]] for i in range(10)]
    d = sims[np.ix_(distinct, distinct)][~np.eye(10, dtype=bool)]
    print("cosine to photo_00:", {k: round(v, 4) for k, v in to_orig.items()},
          "distinct photos: max", round(float(d.max()), 4), "mean", round(float(d.mean()), 4))
    assert to_orig["copy_of_00.jpg"] > 0.9999          # the same bytes: the same vector
    assert float(sims[pos[by_name["photo_03.jpg"]], pos[by_name["copy_of_03.jpg"]]]) > 0.9999


@pytest.mark.parametrize("threshold", [0.95, 0.998])
def test_groups_are_the_components_of_the_pairs_over_the_threshold(ws, threshold):
    out = run_cli("dedup", "-w", ws, "--threshold", threshold).output
    assert f"cosine >= {threshold:g}" in out and "range search" in out
    by_name, ids, sims = _cosines(ws)
    assert _groups(ws) == _reference_groups(ids, sims, threshold)
    # exact copies are always found, with their originals
    for a, b in (("photo_00.jpg", "copy_of_00.jpg"), ("photo_03.jpg", "copy_of_03.jpg")):
        assert any({by_name[a], by_name[b]} <= g for g in _groups(ws))


def test_representative_is_the_largest_file_then_the_first_id(ws):
    run_cli("dedup", "-w", ws, "--threshold", "0.998")
    con = open_db(str(ws / "curate.duckdb"))
    rows = con.execute("SELECT d.group_id, d.representative, d.id, f.size, d.similarity FROM duplicates d "
                       "JOIN item_files f ON f.item_id = d.id WHERE d.kind = 'image'").fetchall()
    removed = con.execute("SELECT count(*) FROM dedup_removed").fetchall()[0][0]
    groups = con.execute("SELECT count(*), sum(size) FROM duplicate_groups").fetchall()[0]
    con.close()
    by_group: dict[int, list] = {}
    for g, rep, i, size, sim in rows:
        by_group.setdefault(g, []).append((rep, i, size, sim))
    for members in by_group.values():
        want = min(members, key=lambda m: (-m[2], m[1]))[1]
        assert {m[0] for m in members} == {want}
        for rep, i, _size, sim in members:
            assert sim > 0.9999 if i == rep else sim is not None and sim <= 1.0
    assert removed == groups[1] - groups[0]


def test_rerun_takes_new_items_into_account_and_matches_a_fresh_run(ws, tmp_path):
    run_cli("dedup", "-w", ws, "--threshold", "0.998")
    photos = Path(duckdb.connect(str(ws / "curate.duckdb"), read_only=True).execute(
        "SELECT location FROM sources").fetchall()[0][0])
    before = _groups(ws)
    shutil.copy(photos / "photo_07.jpg", photos / "late_copy_of_07.jpg")
    run_cli("build-index", photos, "-w", ws, "--model", "curate-tiny", "--pretrained", "none", "--workers", "0")
    out = run_cli("dedup", "-w", ws, "--threshold", "0.998").output
    assert "1 vector queried by" in out and "new shards only" in out
    after = _groups(ws)
    assert len(after) == len(before) + 1
    again = run_cli("dedup", "-w", ws, "--threshold", "0.998", "--fresh").output
    assert "all again" in again and _groups(ws) == after
    # a new threshold starts over
    assert "all again" in run_cli("dedup", "-w", ws, "--threshold", "0.999").output


def test_caption_text_groups_normalise_whitespace_and_case(ws):
    out = run_cli("dedup", "-w", ws, "--kind", "caption-text").output
    assert "1 group of same caption text holds 2 of" in out
    by_name, _, _ = _cosines(ws)
    assert _groups(ws, "caption-text") == [{by_name["v_q40.jpg"], by_name["photo_05.jpg"]}]
    run_cli("dedup", "-w", ws, "--kind", "caption-text", "--threshold", "0.9", expect=1)
    with pytest.raises(DedupError):
        api.dedup(ws, kind="caption-text", threshold=0.9)


def test_filter_dedup_keeps_one_per_group_and_unmatched_lists_the_rest(ws, tmp_path):
    run_cli("classify", "-w", ws)
    assert f"run `curate dedup -w {ws}` first" in run_cli("filter", "-w", ws, "--min-prob", "0", "--dedup", expect=1).output
    run_cli("dedup", "-w", ws, "--threshold", "0.998")
    run_cli("filter", "-w", ws, "--min-prob", "0", "--out", tmp_path / "all.csv")
    out = run_cli("filter", "-w", ws, "--min-prob", "0", "--dedup", "--out", tmp_path / "kept.csv").output
    assert "one per duplicate group" in out
    out = run_cli("filter", "-w", ws, "--min-prob", "0", "--dedup", "--unmatched",
                  "--out", tmp_path / "removed.csv").output
    assert "dedup removed" in out
    con = duckdb.connect()
    every = {r[0] for r in con.execute(f"SELECT id FROM '{tmp_path / 'all.csv'}'").fetchall()}
    kept = {r[0] for r in con.execute(f"SELECT id FROM '{tmp_path / 'kept.csv'}'").fetchall()}
    removed = con.execute(f"SELECT id, dup_group, dup_representative FROM '{tmp_path / 'removed.csv'}'").fetchall()
    con.close()
    groups = _groups(ws)
    assert kept | {r[0] for r in removed} == every and not kept & {r[0] for r in removed}
    assert len(every) - len(kept) == sum(len(g) - 1 for g in groups)
    for g in groups:
        assert len(g & kept) == 1
    assert all(r[2] in kept and r[0] != r[2] for r in removed)


# --------------------------------------------------------------------------- every index recipe
# Vectors imported precomputed (clip-retrieval layout, curate-tiny's 64-d), with planted
# near-duplicate groups (2-5 members, and one of 80: more than the 32 neighbours a k-NN asks
# first) and 20 byte-identical copies. Each recipe is built where it really is that recipe:
# flat by auto; IVF and IVF-PQ named (IVF-PQ at the 9,984 vectors its codes need to train);
# HNSW named on isotropic vectors tuned to recall 1, so its efSearch (384) is high enough that
# faiss 1.15's HNSW range search, which dedup used to call, aborts the process; auto's HNSW at
# 100K is test_dedup_at_100k_on_the_hnsw_auto_picks.

THRESHOLD = 0.95
BIG = 80


def _planted(n: int, seed: int = 0, clustered: bool = True, d: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if clustered:
        centres = rng.standard_normal((max(16, n // 200), d)).astype(np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        v = centres[rng.integers(0, len(centres), n)] + rng.standard_normal((n, d)).astype(np.float32) * (0.6 / d**0.5)
    else:
        v = rng.standard_normal((n, d)).astype(np.float32)
    rows = rng.permutation(n)
    s = 0
    for size in [*rng.integers(2, 6, max(10, n // 100)), BIG]:
        r = rows[s:s + size]
        s += size
        v[r] = v[r[0]] + rng.standard_normal((size, d)).astype(np.float32) * (0.1 / d**0.5) * np.linalg.norm(v[r[0]])
    v[rows[s + 20:s + 40]] = v[rows[s:s + 20]]     # byte-identical copies
    return v


def _import(root: Path, v: np.ndarray, *args: str) -> Path:
    src = root / "src"
    for p in ("img_emb", "metadata"):
        (src / p).mkdir(parents=True, exist_ok=True)
    np.save(src / "img_emb" / "img_emb_0.npy", v)
    duckdb.sql(f"COPY (SELECT 'k' || i AS key, 'http://x/' || i || '.jpg' AS url FROM range({len(v)}) t(i)) "
               f"TO '{src / 'metadata' / 'metadata_0.parquet'}' (FORMAT parquet)")
    run_cli("build-index", src, "-w", root / "ws", "--model", "curate-tiny", "--pretrained", "none", *args)
    return root / "ws"


def _curate(*args) -> subprocess.CompletedProcess:
    """`curate ...` in a child process: a FAISS abort fails the test instead of killing pytest."""
    return subprocess.run([sys.executable, "-c", "from curate.cli import cli; cli()", *map(str, args)],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def _stored(ws: Path) -> tuple[np.ndarray, np.ndarray]:
    w = Workspace(ws)
    con = w.connect(read_only=True)
    try:
        return store.load_all(w, con, "image")
    finally:
        con.close()


def _pairs(ws: Path) -> set[tuple[int, int]]:
    con = open_db(str(ws / "curate.duckdb"))
    try:
        return set(con.execute("SELECT a, b FROM duplicate_pairs WHERE kind = 'image'").fetchall())
    finally:
        con.close()


def _true_pairs(ids: np.ndarray, vecs: np.ndarray, rows: np.ndarray, threshold: float) -> set[tuple[int, int]]:
    """Brute force (numpy): every pair of a row in `rows` with any other vector at cosine >=
    threshold - TOLERANCE. Blocks of 1,024 rows against every vector, into a buffer made once (a
    fresh 80 MB product and its mask at each block of 20,000 vectors were a quarter of the time:
    page faults); a row's product with itself is left out, and only the rows whose largest
    product reaches the threshold are searched for their pairs (np.nonzero over a whole block
    was as slow as the product). Where `rows` is every row, a block is multiplied only with the
    vectors from its first row on: a pair (i, j) with j before the block was found from j's row,
    so half the products find every pair."""
    out = set()
    every = len(rows) == len(vecs) and np.array_equal(rows, np.arange(len(vecs)))
    buf = np.empty(min(1024, len(rows)) * len(vecs), dtype=np.result_type(vecs, vecs))
    floor = np.float32(threshold - TOLERANCE)
    for s in range(0, len(rows), 1024):
        r = rows[s:s + 1024]
        first = s if every else 0
        p = buf[:len(r) * (len(vecs) - first)].reshape(len(r), len(vecs) - first)
        np.matmul(vecs[r], vecs[first:].T, out=p)
        p[np.arange(len(r)), r - first] = -np.inf
        hit = np.flatnonzero(p.max(axis=1) >= floor)
        i, j = np.nonzero(p[hit] >= floor)
        a, b = ids[r[hit[i]]], ids[j + first]
        out |= set(zip(np.minimum(a, b).tolist(), np.maximum(a, b).tolist(), strict=True))
    return out


def _check_against_brute_force(ws: Path, rows: np.ndarray | None, exact: bool) -> float:
    """Every pair dedup found is over the threshold by the stored vectors' true cosine; the
    pairs of `rows` (all: None) it missed are none (an exact index) or few; the group of 80 is
    whole. Returns the recall."""
    ids, vecs = _stored(ws)
    pos = {int(i): k for k, i in enumerate(ids)}
    found = _pairs(ws)
    a = np.array([pos[p[0]] for p in found])
    b = np.array([pos[p[1]] for p in found])
    assert len(found) and (np.einsum("ij,ij->i", vecs[a], vecs[b]) >= np.float32(THRESHOLD - TOLERANCE)).all()
    rows = np.arange(len(ids)) if rows is None else rows
    truth = _true_pairs(ids, vecs, rows, THRESHOLD)
    in_rows = set(ids[rows].tolist())
    mine = {p for p in found if p[0] in in_rows or p[1] in in_rows}
    recall = len(mine & truth) / len(truth)
    assert mine <= truth
    if exact:
        assert mine == truth
    sizes = [len(g) for g in _groups(ws)]
    assert max(sizes) >= BIG
    return recall


RECIPES = {  # name: (vectors, clustered, build-index options, factory prefix)
    "flat": (3000, True, (), "IDMap2,Flat"),
    "hnsw": (5000, False, ("--index", "hnsw", "--target-recall", "1"), "IDMap2,HNSW32"),
    "ivf": (3000, True, ("--index", "ivf"), "IVF"),
    "ivfpq": (10_000, True, ("--index", "ivfpq"), "IVF"),
    "ivffs": (3000, True, ("--index", "ivffs"), "IDMap2,IVF"),
}


@pytest.fixture(scope="module", params=sorted(RECIPES))
def recipe_ws(request, tmp_path_factory) -> tuple[str, Path]:
    n, clustered, args, factory = RECIPES[request.param]
    ws = _import(tmp_path_factory.mktemp(request.param), _planted(n, clustered=clustered), *args)
    rec = json.loads(duckdb.connect(str(ws / "curate.duckdb"), read_only=True).execute(
        "SELECT value FROM meta WHERE key = 'index.image'").fetchall()[0][0])["current"]
    assert rec["recipe"] == request.param and rec["factory"].startswith(factory)
    return request.param, ws


@pytest.mark.slow
def test_dedup_finds_what_brute_force_finds_on_every_recipe(recipe_ws):
    name, ws = recipe_ws
    r = _curate("dedup", "-w", ws, "--threshold", THRESHOLD)
    assert r.returncode == 0, r.stdout + r.stderr
    want = {"flat": "range search", "ivf": "range search", "hnsw": "k-NN (32 neighbours a query, up to",
            "ivfpq": "approximate scores", "ivffs": "k-NN"}[name]
    assert want in r.stdout
    recall = _check_against_brute_force(ws, None, exact=name == "flat")
    print(name, "recall of the pairs", recall)
    assert recall >= 0.99


@pytest.mark.slow
def test_threshold_1_groups_byte_identical_copies_on_every_recipe(recipe_ws):
    _name, ws = recipe_ws
    r = _curate("dedup", "-w", ws, "--threshold", 1)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "20 groups of images at cosine >= 1 hold 40" in r.stdout
    ids, vecs = _stored(ws)
    pos = {int(i): k for k, i in enumerate(ids)}
    for g in _groups(ws):
        x, y = (vecs[pos[i]] for i in g)
        assert len(g) == 2 and np.array_equal(x, y)


@pytest.mark.slow
def test_search_by_text_and_image_on_every_recipe(recipe_ws, tmp_path):
    _name, ws = recipe_ws
    ids, vecs = _stored(ws)
    write_jpeg(tmp_path / "q.jpg", seed=3)
    for query in (("a red car",), ("--image", tmp_path / "q.jpg")):
        run_cli("search", *query, "-w", ws, "-k", 7, "--out", tmp_path / "hits.csv")
        hits = duckdb.sql(f"SELECT id, score FROM '{tmp_path / 'hits.csv'}' ORDER BY rank").fetchall()
        assert len(hits) == 7 and set(h[0] for h in hits) <= set(ids.tolist())
        scores = [h[1] for h in hits]
        assert scores == sorted(scores, reverse=True)


@pytest.mark.slow
def test_dedup_at_100k_on_the_hnsw_auto_picks(tmp_path):
    """The case that aborted: 100K vectors, where auto builds HNSW32; checked against numpy
    brute force on 2,000 items drawn at random and on every member of the group of 80."""
    v = _planted(100_000)
    ws = _import(tmp_path, v)
    assert faiss.read_index(str(ws / "indexes" / "images.faiss")).ntotal == 100_000
    rec = json.loads(duckdb.connect(str(ws / "curate.duckdb"), read_only=True).execute(
        "SELECT value FROM meta WHERE key = 'index.image'").fetchall()[0][0])["current"]
    assert rec["recipe"] == "hnsw" and rec["factory"] == "IDMap2,HNSW32,Flat"
    # --by index: at 100K auto compares within k-means clusters (test_dedup_clusters.py); this
    # test is about asking the HNSW index
    r = _curate("dedup", "-w", ws, "--threshold", THRESHOLD, "--by", "index")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "100,000 vectors queried by k-NN" in r.stdout
    ids, _ = _stored(ws)
    big = max(_groups(ws), key=len)
    rows = np.union1d(np.random.default_rng(1).choice(len(ids), 2000, replace=False),
                      np.flatnonzero(np.isin(ids, list(big))))
    recall = _check_against_brute_force(ws, rows, exact=False)
    print("100K hnsw: recall of the pairs", recall)
    assert recall >= 0.99
