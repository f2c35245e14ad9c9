"""--shard-size is a promise on every path that writes shards: no shard holds more rows, whatever the
batch (build-index's embedding loop) or the import chunk (precomputed vectors)."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest
from conftest import make_folder, run_cli

from curate.core import store
from curate.core.workspace import Workspace

TINY = ("--model", "curate-tiny", "--pretrained", "none", "--workers", "0")
D = 64


def _shards(ws):
    w = Workspace(ws)
    con = w.connect(read_only=True)
    try:
        rows = {k: [s.rows for s in store.shard_files(w, con, k)] for k in ("image", "caption")}
        ids = {k: store.load_all(w, con, k)[0].tolist() for k in ("image", "caption")}
        embedded = con.execute("SELECT id FROM items WHERE status = 'embedded' ORDER BY id").fetchall()
    finally:
        con.close()
    return rows, ids, [i for (i,) in embedded]


@pytest.mark.parametrize("shard, batch", [(3, 4), (2, 32), (4, 4), (5, 3)])
def test_embedding_loop_never_writes_a_shard_over_shard_size(tmp_path, shard, batch):
    src = make_folder(tmp_path / "photos", n=11)
    ws = tmp_path / "ws"
    run_cli("build-index", src, "-w", ws, *TINY, "--batch-size", batch, "--shard-size", shard)
    rows, ids, embedded = _shards(ws)
    assert max(rows["image"]) <= shard and max(rows["caption"]) <= shard, rows
    assert sum(rows["image"]) == 11 and ids["image"] == embedded == list(range(11))
    # full shards first: only the last one may be short (no small shard behind every batch)
    assert all(r == shard for r in rows["image"][:-1]), rows


def _precomputed(root, n):
    (root / "img_emb").mkdir(parents=True)
    (root / "text_emb").mkdir()
    (root / "metadata").mkdir()
    v = np.random.default_rng(0).normal(size=(n, D)).astype(np.float32)
    np.save(root / "img_emb" / "img_emb_0.npy", v)
    np.save(root / "text_emb" / "text_emb_0.npy", v[::-1].copy())
    meta = root / "metadata" / "metadata_0.parquet"
    duckdb.sql(f"COPY (SELECT 'k' || i AS key, 'http://x/' || i || '.jpg' AS url, 'caption ' || i AS caption "
               f"FROM range({n}) t(i)) TO '{meta}' (FORMAT parquet)")
    return root


@pytest.mark.parametrize("shard", [1, 7, 25])
def test_precomputed_import_never_writes_a_shard_over_shard_size(tmp_path, shard):
    src = _precomputed(tmp_path / "emb", 60)
    ws = tmp_path / "ws"
    run_cli("build-index", src, "-w", ws, "--model", "curate-tiny", "--pretrained", "none", "--shard-size", shard)
    rows, ids, embedded = _shards(ws)
    assert max(rows["image"]) <= shard and max(rows["caption"]) <= shard
    assert ids["image"] == ids["caption"] == embedded == list(range(60))


def test_import_chunks_are_cut_into_shards(tmp_path):
    """An import chunk (one transaction) larger than --shard-size is written as several shards."""
    from curate.ingest.precomputed import import_clip_retrieval

    src = _precomputed(tmp_path / "emb", 23)
    w = Workspace(tmp_path / "ws")
    con = w.connect()
    try:
        import_clip_retrieval(w, con, src, 1, D, chunk=10, shard_size=4)
        rows = [s.rows for s in store.shard_files(w, con, "image")]
    finally:
        con.close()
    assert rows == [4, 4, 4, 4, 4, 3]  # chunks of 8 (whole shards), the last 7 rows: 4 + 3
