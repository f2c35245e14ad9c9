"""Embedding shards on disk: write once, commit through the database, stream back.

A shard is two .npy files (vectors float32 [n, d], ids int64 [n]). They are written
to temporary names and renamed, then recorded in the `shards` table in the same
transaction that marks their items embedded. Files with no committed row are left
overs from a killed run and are removed on the next start.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np

from .workspace import KINDS, Workspace


def shard_name(part: int) -> str:
    return f"part-{part:06d}.npy"


def next_part(con: duckdb.DuckDBPyConnection, kind: str) -> int:
    return int(con.execute("SELECT coalesce(max(part), -1) + 1 FROM shards WHERE kind = ?", [kind]).fetchall()[0][0])


def _save_atomic(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, arr)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_shard(ws: Workspace, kind: str, part: int, ids: np.ndarray, vecs: np.ndarray) -> str:
    """Write the files of one shard; the caller records it with `record_shard`."""
    assert len(ids) == len(vecs)
    d = ws.embeddings_dir(kind)
    d.mkdir(parents=True, exist_ok=True)
    name = shard_name(part)
    _save_atomic(d / name.replace(".npy", ".ids.npy"), np.ascontiguousarray(ids, dtype=np.int64))
    _save_atomic(d / name, np.ascontiguousarray(vecs, dtype=np.float32))
    return name


def record_shard(con: duckdb.DuckDBPyConnection, kind: str, part: int, name: str, rows: int, run_id: int) -> None:
    con.execute("INSERT INTO shards VALUES (?, ?, ?, ?, ?)", [kind, part, name, rows, run_id])


def remove_orphans(ws: Workspace, con: duckdb.DuckDBPyConnection) -> int:
    """Delete shard files that no committed row owns (a run killed mid-commit)."""
    removed = 0
    for kind in KINDS:
        d = ws.embeddings_dir(kind)
        if not d.exists():
            continue
        owned = {f for (f,) in con.execute("SELECT file FROM shards WHERE kind = ?", [kind]).fetchall()}
        owned |= {f.replace(".npy", ".ids.npy") for f in owned}
        for p in d.iterdir():
            if p.name not in owned:
                p.unlink()
                removed += 1
    return removed


def count_vectors(ws: Workspace, con: duckdb.DuckDBPyConnection, kind: str) -> int:
    return int(con.execute("SELECT coalesce(sum(rows), 0) FROM shards WHERE kind = ?", [kind]).fetchall()[0][0])


def iter_embeddings(
    ws: Workspace, con: duckdb.DuckDBPyConnection, kind: str, batch_rows: int = 65536
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Stream (ids, vectors) over every committed shard, at most `batch_rows` at a time.

    Vectors are memory-mapped, so memory stays bounded whatever the collection size.
    """
    for vec_path, ids_path, _n in ws.shard_files(con, kind):
        ids = np.load(ids_path)
        vecs = np.load(vec_path, mmap_mode="r")
        for s in range(0, len(ids), batch_rows):
            yield ids[s : s + batch_rows], np.asarray(vecs[s : s + batch_rows])


def load_all(ws: Workspace, con: duckdb.DuckDBPyConnection, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Every vector of one kind, sorted by item id (small collections and tests only)."""
    parts = list(iter_embeddings(ws, con, kind))
    if not parts:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    ids = np.concatenate([p[0] for p in parts])
    vecs = np.concatenate([p[1] for p in parts])
    order = np.argsort(ids, kind="stable")
    return ids[order], vecs[order]
