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

import shutil
from pathlib import Path

import duckdb
import numpy as np
import pytest
from conftest import run_cli, write_jpeg
from PIL import Image, ImageOps

from curate import api
from curate.classify.dedup import DedupError, components
from curate.core import store
from curate.core.workspace import Workspace

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
    con = duckdb.connect(str(ws / "curate.duckdb"), read_only=True)
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
    con = duckdb.connect(str(ws / "curate.duckdb"), read_only=True)
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
    assert "1 vectors queried" in out and "new shards only" in out
    after = _groups(ws)
    assert len(after) == len(before) + 1
    again = run_cli("dedup", "-w", ws, "--threshold", "0.998", "--fresh").output
    assert "all again" in again and _groups(ws) == after
    # a new threshold starts over
    assert "all again" in run_cli("dedup", "-w", ws, "--threshold", "0.999").output


def test_caption_text_groups_normalise_whitespace_and_case(ws):
    out = run_cli("dedup", "-w", ws, "--kind", "caption-text").output
    assert "1 groups of same caption text hold 2" in out
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
