"""Readers check what build-index checks (issue 21 item 6): a shard file whose mtime is not the one
recorded when it was written is hashed and compared with its recorded checksum before any reader
uses it, on a read-only connection too; a file with its recorded mtime costs a stat."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pytest
from conftest import run_cli

from curate.core import store
from curate.core.workspace import Workspace
from curate.errors import WorkspaceError

D = 64
TINY = ("--model", "curate-tiny", "--pretrained", "none")


def _vecs(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, D)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _flip_a_bit(path: Path, keep_mtime: bool = False) -> None:
    """One bit of the last value changed in place: same size, same header (the damage a disk or a
    stray write leaves); the mtime moves on unless told to stay."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        b = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([b[0] ^ 0x01]))
    ns = st.st_mtime_ns if keep_mtime else st.st_mtime_ns + 1_000_000_000
    os.utime(path, ns=(st.st_atime_ns, ns))


@pytest.fixture
def shards(tmp_path: Path) -> Workspace:
    w = Workspace(tmp_path / "ws")
    con = w.connect()
    con.executemany("INSERT INTO items (id, source_id, path) VALUES (?, ?, ?)",
                    [[i, f"s{i}", f"/x/{i}.jpg"] for i in range(8)])
    store.commit_shards(w, con, 1, {"image": (np.arange(8, dtype=np.int64), _vecs(8))}, max_rows=4)
    con.close()
    return w


def _open_all(w: Workspace) -> list:
    con = w.connect(read_only=True)
    try:
        return [store.open_shard(s) for s in store.shard_files(w, con, "image")]
    finally:
        con.close()


@pytest.mark.parametrize("which", ["vectors", "ids"])
def test_a_bit_flipped_in_a_shard_stops_a_reader_naming_the_file(shards, which):
    con = shards.connect(read_only=True)
    shard = store.shard_files(shards, con, "image")[1]
    con.close()
    _flip_a_bit(getattr(shard, which))
    with pytest.raises(WorkspaceError) as e:
        _open_all(shards)
    msg = str(e.value)
    assert str(getattr(shard, which)) in msg and "checksum" in msg and "build-index" in msg
    with pytest.raises(WorkspaceError, match="checksum"):  # every time, not only once
        _open_all(shards)


def test_a_shard_copied_with_a_new_mtime_is_read(shards):
    """Same bytes, another mtime (a copy without -p): hashed, found right, read."""
    before = [ids.tolist() for ids, _v in _open_all(shards)]
    for p in shards.embeddings_dir("image").iterdir():
        os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 5_000_000_000))
    assert [ids.tolist() for ids, _v in _open_all(shards)] == before
    assert [ids.tolist() for ids, _v in _open_all(shards)] == before


def test_a_file_with_its_recorded_mtime_is_not_read_to_be_checked(shards):
    """The common path costs a stat, no hashing: a flip that kept the mtime is not seen by a reader
    (build-index --repair hashes everything and finds it)."""
    con = shards.connect(read_only=True)
    shard = store.shard_files(shards, con, "image")[0]
    con.close()
    _flip_a_bit(shard.vectors, keep_mtime=True)
    assert len(_open_all(shards)) == 2


def _import(root: Path, n: int = 40) -> Path:
    for d in ("img_emb", "text_emb", "metadata"):
        (root / d).mkdir(parents=True)
    np.save(root / "img_emb" / "img_emb_0.npy", _vecs(n))
    np.save(root / "text_emb" / "text_emb_0.npy", _vecs(n, seed=1))
    meta = root / "metadata" / "metadata_0.parquet"
    duckdb.sql(f"COPY (SELECT 'k' || i AS key, 'http://x/' || i || '.jpg' AS url, 'a photo ' || i AS caption "
               f"FROM range({n}) t(i)) TO '{meta}' (FORMAT parquet)")
    return root


def test_every_reader_stops_at_a_damaged_shard_and_build_index_repairs_it(tmp_path):
    src = _import(tmp_path / "emb")
    ws = tmp_path / "ws"
    run_cli("build-index", src, "-w", ws, *TINY, "--shard-size", "10")
    run_cli("classify", "-w", ws)
    healthy = tmp_path / "healthy"
    shutil.copytree(ws, healthy)  # new mtimes, same bytes: readers hash, find them right, go on
    bad = Workspace(ws).embeddings_dir("image") / "part-000002.npy"
    _flip_a_bit(bad)
    for args in (("classify", "-w", ws, "--restart"),
                 ("dedup", "-w", ws, "--threshold", "0.9"),
                 ("filter", "-w", ws, "--min-prob", "0", "--with-embeddings", "--out", tmp_path / "o.parquet")):
        out = run_cli(*args, expect=4).output
        assert f"curate: embedding shard {bad} is damaged" in out and "build-index" in out, (args, out)
        assert "Traceback" not in out
    for args in (("classify", "-w", healthy, "--restart"), ("dedup", "-w", healthy, "--threshold", "0.9")):
        run_cli(*args)
    out = run_cli("build-index", src, "-w", ws, *TINY, "--shard-size", "10").output
    assert "damaged" in out and "part-000002.npy" in out
    run_cli("classify", "-w", ws)
    run_cli("dedup", "-w", ws, "--threshold", "0.9")
