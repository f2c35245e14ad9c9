"""`curate dedup` by k-means clusters: the stored vectors compared within clusters, not the index.

20,000 precomputed 64-d vectors (clip-retrieval layout) in Gaussian clusters, with planted
near-duplicates: groups of 2-5, chains (each link a small step from the last, so the ends are
below the threshold and only the links join them), byte-identical copies, and pairs placed on
the border between two clusters' centres (where the two members fall in different k-means
cells). The reference is numpy brute force over all 20,000 x 20,000 products.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import open_db, run_cli
from test_dedup import _import, _pairs, _stored, _true_pairs

from curate import api
from curate.select.dedup import (
    TOLERANCE,
    Effort,
    _assign,
    _centroids,
    find_duplicates,
    pairs_in_clusters,
)

THRESHOLD = 0.95
N, D = 20_000, 64


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def _planted(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = _unit(rng.standard_normal((100, D)))
    v = _unit(centres[rng.integers(0, len(centres), N)] + rng.standard_normal((N, D)) * (0.9 / D**0.5))
    rows = iter(rng.permutation(N).tolist())
    for _ in range(150):                          # groups of 2-5 around a base
        base = v[next(rows)]
        for _ in range(rng.integers(1, 5)):
            v[next(rows)] = _unit(base + rng.standard_normal(D) * (0.15 / D**0.5))
    for _ in range(30):                           # chains of 6: links ~0.985, the ends far below 0.95
        x = v[next(rows)]
        for _ in range(5):
            x = _unit(x + rng.standard_normal(D) * (0.17 / D**0.5))
            v[next(rows)] = x
    for _ in range(200):                          # pairs on the border between two centres
        c1, c2 = centres[rng.choice(len(centres), 2, replace=False)]
        mid = _unit(c1 + c2 + rng.standard_normal(D) * (0.2 / D**0.5))
        for _ in range(2):
            v[next(rows)] = _unit(mid + rng.standard_normal(D) * (0.12 / D**0.5))
    for _ in range(40):                           # byte-identical copies
        v[next(rows)] = v[next(rows)]
    return v


@pytest.fixture(scope="module")
def planted_ws(tmp_path_factory) -> Path:
    return _import(tmp_path_factory.mktemp("clusters"), _planted(), "--index", "flat")


@pytest.fixture(scope="module")
def truth(planted_ws) -> set[tuple[int, int]]:
    ids, vecs = _stored(planted_ws)
    return _true_pairs(ids, vecs, np.arange(len(ids)), THRESHOLD)


@pytest.fixture(scope="module")
def deduped(planted_ws, tmp_path_factory) -> tuple[Path, str]:
    """A copy of the planted workspace after `curate dedup --threshold 0.95`, and what the command
    printed; never written (the tests that go on from it copy it)."""
    ws = tmp_path_factory.mktemp("deduped") / "ws"
    shutil.copytree(planted_ws, ws)
    return ws, run_cli("dedup", "-w", ws, "--threshold", THRESHOLD).output


def test_clusters_find_exactly_the_pairs_brute_force_finds(deduped, truth, tmp_path):
    """With every vector's margin list complete the pairs are brute force's, exactly; at the
    default cap (SPILL) they are a subset, the recall measured."""
    ws = tmp_path / "ws"
    shutil.copytree(deduped[0], ws)
    out = deduped[1]
    assert "20,000 vectors compared within clusters (50 k-means clusters" in out, out
    capped = _pairs(ws)
    assert capped <= truth and len(capped) >= 0.99 * len(truth)
    r = find_duplicates(ws, "image", THRESHOLD, fresh=True, effort=Effort(spill=49))
    assert "complete for 100% of vectors" in r.method, r.method
    assert _pairs(ws) == truth
    # the planted chains are whole groups although their ends are far apart
    con = open_db(str(ws / "curate.duckdb"))
    sizes = [r[0] for r in con.execute("SELECT size FROM duplicate_groups WHERE kind = 'image'").fetchall()]
    con.close()
    assert sum(s >= 6 for s in sizes) >= 30


def test_the_border_pairs_do_straddle_cells(planted_ws, truth):
    """What the previous test stands on: many true pairs have their members' nearest centroids
    in different cells, so only the margin's secondary memberships can find them."""
    ids, vecs = _stored(planted_ws)
    pos = {int(i): k for k, i in enumerate(ids)}
    cent = _centroids(vecs, 50)
    prim, _, _ = _assign(vecs, cent, 0.3, 8)
    split = sum(prim[pos[a]] != prim[pos[b]] for a, b in truth)
    assert split >= 30, split


def test_without_the_margin_pairs_are_missed_but_none_is_false(planted_ws, truth):
    ids, vecs = _stored(planted_ws)
    a, b, s, how = pairs_in_clusters(ids, vecs, THRESHOLD, clusters=50, spill=0)
    found = set(zip(a.tolist(), b.tolist(), strict=True))
    assert found < truth and len(truth - found) >= 30
    assert "complete for" in how and "complete for 100%" not in how
    pos = {int(i): k for k, i in enumerate(ids)}
    x = vecs[[pos[i] for i in a.tolist()]]
    y = vecs[[pos[i] for i in b.tolist()]]
    assert (np.einsum("ij,ij->i", x, y) >= np.float32(THRESHOLD - TOLERANCE)).all()
    assert np.allclose(s, np.einsum("ij,ij->i", x, y), atol=1e-5)


def test_the_margin_is_provable_on_random_data():
    """Every pair at cosine >= t shares a cluster when no vector's margin list is capped: any
    data, any centroids (here random ones, not even k-means')."""
    rng = np.random.default_rng(3)
    v = _unit(rng.standard_normal((3000, 8)))
    v[1500:] = _unit(v[:1500] + rng.standard_normal((1500, 8)) * 0.1)
    cent = _unit(rng.standard_normal((40, 8)))
    t = 0.97
    r = float(np.sqrt(2 - 2 * (t - TOLERANCE))) * (1 + 1e-4) + 1e-4
    prim, (rows, cls), capped = _assign(v, cent, r, len(cent))
    assert capped == 0
    clusters_of = [{int(prim[i])} for i in range(len(v))]
    for i, c in zip(rows.tolist(), cls.tolist(), strict=True):
        clusters_of[i].add(c)
    i, j = np.nonzero(np.triu(v @ v.T >= np.float32(t - TOLERANCE), 1))
    assert len(i) >= 500
    for x, y in zip(i.tolist(), j.tolist(), strict=True):
        # the pair meets where one's primary cluster holds the other
        assert prim[x] in clusters_of[y] or prim[y] in clusters_of[x]
    # and the margin does spill: a bound that kept each vector in its own cell alone would fail here
    assert sum(prim[x] != prim[y] for x, y in zip(i.tolist(), j.tolist(), strict=True)) >= 50


def test_a_killed_dedup_leaves_the_last_results_and_the_rerun_starts_over(deduped, truth, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(deduped[0], ws)           # after `curate dedup --threshold 0.95`
    con = open_db(str(ws / "curate.duckdb"))
    before = con.execute("SELECT * FROM duplicates ORDER BY kind, id").fetchall()
    meta = con.execute("SELECT value FROM meta WHERE key = 'dedup.image'").fetchall()
    con.close()

    seen = []

    def killed(n: int) -> None:
        seen.append(n)
        if len(seen) == 20:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        find_duplicates(ws, "image", 0.9, progress=killed)
    con = open_db(str(ws / "curate.duckdb"))
    assert con.execute("SELECT * FROM duplicates ORDER BY kind, id").fetchall() == before
    assert con.execute("SELECT value FROM meta WHERE key = 'dedup.image'").fetchall() == meta
    con.close()
    assert _pairs(ws) == truth
    r = api.dedup(ws, threshold=0.9, quiet=True)
    assert r.started_over and r.queried == N
    ids, vecs = _stored(ws)
    assert _pairs(ws) == _true_pairs(ids, vecs, np.arange(len(ids)), 0.9)


@pytest.mark.parametrize("clusters", [1, 8, 60])
def test_any_number_of_clusters_gives_brute_force_pairs_when_no_list_is_capped(clusters):
    """One cluster is plain blockwise brute force; more, with the cap out of reach, the same pairs."""
    rng = np.random.default_rng(clusters)
    v = _unit(rng.standard_normal((3000, 16)))
    v[2000:] = _unit(v[:1000] + rng.standard_normal((1000, 16)) * 0.08)
    ids = np.arange(100, 3100, dtype=np.int64)
    a, b, s, how = pairs_in_clusters(ids, v, 0.97, clusters=clusters, spill=clusters)
    assert "complete for 100% of vectors" in how
    want = _true_pairs(ids, v, np.arange(len(ids)), 0.97)
    assert len(want) >= 150
    assert set(zip(a.tolist(), b.tolist(), strict=True)) == want
    assert (a < b).all() and (s <= 1.0).all()
