"""curate/core/store.py on real DuckDB files and real .npy files: how shards are named,
listed and opened (damage named, never a numpy traceback), and the one commit protocol
(files, then one transaction; orphans of a killed commit removed at the next start)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pytest

from curate.core import store
from curate.core.workspace import Workspace
from curate.errors import WorkspaceError


def _vecs(n: int, d: int = 8, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _items(con: duckdb.DuckDBPyConnection, ids: range) -> None:
    con.executemany("INSERT INTO items (id, source_id, path, caption) VALUES (?, ?, ?, ?)",
                    [[i, f"s{i}", f"/x/{i}.jpg", f"caption {i}"] for i in ids])


@pytest.fixture
def ws(tmp_path: Path) -> tuple[Workspace, duckdb.DuckDBPyConnection]:
    w = Workspace(tmp_path / "ws")
    con = w.connect()
    _items(con, range(10))
    yield w, con
    con.close()


def test_names():
    assert store.shard_name(3) == "part-000003.npy"
    assert store.shard_name(3, rewrite=2) == "part-000003.r2.npy"
    assert store.ids_name("part-000003.npy") == "part-000003.ids.npy"
    assert store.ids_name("part-000003.r2.npy") == "part-000003.r2.ids.npy"


def test_commit_then_list_open_and_stream(ws):
    w, con = ws
    ids = np.arange(6, dtype=np.int64)
    written = store.commit_shards(w, con, 1, {"image": (ids, _vecs(6)), "caption": (ids[:4], _vecs(4, seed=1))})
    assert set(written) == {"image", "caption"}
    assert con.execute("SELECT count(*) FROM items WHERE status = 'embedded'").fetchall()[0][0] == 6
    shards = store.shard_files(w, con, "image")
    assert [(s.vectors.name, s.ids.name, s.rows) for s in shards] == [("part-000000.npy", "part-000000.ids.npy", 6)]
    got_ids, got_vecs = store.open_shard(shards[0])
    assert got_ids.tolist() == ids.tolist() and got_vecs.shape == (6, 8)
    # a second commit takes the next part; an empty kind writes nothing
    store.commit_shards(w, con, 2, {"image": (np.array([6, 7], np.int64), _vecs(2, seed=2)),
                                    "caption": (np.zeros(0, np.int64), np.zeros((0, 8), np.float32))})
    assert [s.vectors.name for s in store.shard_files(w, con, "image")] == ["part-000000.npy", "part-000001.npy"]
    assert len(store.shard_files(w, con, "caption")) == 1
    streamed = np.concatenate([i for i, _v in store.iter_embeddings(w, con, "image", batch_rows=3)])
    assert streamed.tolist() == list(range(8))
    assert store.count_vectors(w, con, "image") == 8


def test_the_items_callback_runs_in_the_same_transaction(ws):
    w, con = ws

    def reject_nine(con):
        con.execute("UPDATE items SET status = 'rejected' WHERE id = 9")
        raise RuntimeError("killed mid-commit")

    with pytest.raises(RuntimeError):
        store.commit_shards(w, con, 1, {"image": (np.arange(3, dtype=np.int64), _vecs(3))}, reject_nine)
    # nothing of it is committed: no row, no status change; its files are orphans
    assert store.shard_files(w, con, "image") == []
    assert con.execute("SELECT count(*) FROM items WHERE status <> 'pending'").fetchall()[0][0] == 0
    d = w.embeddings_dir("image")
    assert sorted(p.name for p in d.iterdir()) == ["part-000000.ids.npy", "part-000000.npy"]
    # the next start removes them, and the part number is free again
    assert store.remove_orphans(w, con) == 2
    assert list(d.iterdir()) == []
    store.commit_shards(w, con, 2, {"image": (np.arange(3, dtype=np.int64), _vecs(3))})
    assert [s.vectors.name for s in store.shard_files(w, con, "image")] == ["part-000000.npy"]
    assert store.remove_orphans(w, con) == 0


def _one_shard(ws) -> store.ShardFile:
    w, con = ws
    store.commit_shards(w, con, 1, {"image": (np.arange(4, dtype=np.int64), _vecs(4))})
    return store.shard_files(w, con, "image")[0]


def test_open_shard_names_a_missing_file(ws):
    shard = _one_shard(ws)
    shard.ids.unlink()
    with pytest.raises(WorkspaceError, match=r"part-000000\.ids\.npy is damaged \(missing\).*build-index"):
        store.open_shard(shard)


def test_open_shard_names_an_unreadable_file(ws):
    shard = _one_shard(ws)
    shard.vectors.write_bytes(b"not numpy")
    with pytest.raises(WorkspaceError, match=r"part-000000\.npy is damaged \(cannot be read"):
        store.open_shard(shard)


def test_open_shard_names_a_file_that_does_not_match_its_record(ws):
    shard = _one_shard(ws)
    np.save(shard.ids, np.arange(3, dtype=np.int64))
    with pytest.raises(WorkspaceError, match=r"ids\.npy is damaged \(holds int64 \(3,\), expected int64 \(4,\)\)"):
        store.open_shard(shard)
    np.save(shard.ids, np.arange(4, dtype=np.int64))
    np.save(shard.vectors, np.zeros((4, 8), np.float64))
    with pytest.raises(WorkspaceError, match=r"part-000000\.npy is damaged \(holds float64"):
        store.open_shard(shard)


def test_drop_items_rewrites_under_a_new_name(ws):
    w, con = ws
    store.commit_shards(w, con, 1, {"image": (np.arange(4, dtype=np.int64), _vecs(4))})
    assert store.drop_items(w, con, np.array([1], np.int64)) == 1
    (shard,) = store.shard_files(w, con, "image")
    assert shard.vectors.name == "part-000000.r1.npy" and shard.rows == 3
    assert store.open_shard(shard)[0].tolist() == [0, 2, 3]
    assert sorted(p.name for p in w.embeddings_dir("image").iterdir()) == ["part-000000.r1.ids.npy",
                                                                         "part-000000.r1.npy"]
    assert con.execute("SELECT status FROM items WHERE id = 1").fetchall()[0][0] == "pending"
