"""Embedding shards deleted or damaged by hand: readers say which file and how to repair;
build-index finds the damage and ends equal to an intact workspace."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from conftest import make_folder, run_cli
from test_recheck import _build as _build_any
from test_recheck import _ranked, _search, _state

from curate.core import store
from curate.core.workspace import Workspace
from curate.errors import WorkspaceError

N = 24


def _build(src, ws, *extra):
    return _build_any(src, ws, "--batch-size", "4", *extra)  # shards of 4: six image shards


@pytest.fixture(scope="module")
def intact(tmp_path_factory):
    root = tmp_path_factory.mktemp("repair")
    src = make_folder(root / "photos", N)
    ws = root / "intact"
    _build(src, ws)
    return src, ws


def _copy(intact, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(intact[1], ws)
    return ws


def _shard(ws, kind, k):
    con = Workspace(ws).connect(read_only=True)
    try:
        return store.shard_files(Workspace(ws), con, kind)[k]
    finally:
        con.close()


def _damage(ws):
    """One shard deleted, one truncated, the ids file of a third overwritten (same shape)."""
    vec1 = _shard(ws, "image", 1).vectors
    vec1.unlink()
    vec3 = _shard(ws, "image", 3).vectors
    data = vec3.read_bytes()
    vec3.write_bytes(data[: len(data) - 100])
    ids4 = _shard(ws, "caption", 2).ids
    ids5 = _shard(ws, "caption", 4).ids
    ids4.write_bytes(ids5.read_bytes())   # a copy-paste slip: a valid file, the wrong ids


def assert_same(ws, ref):
    a_items, a_rej, a_vecs = _state(ws)
    b_items, b_rej, b_vecs = _state(ref)
    assert a_items == b_items and a_rej == b_rej
    for kind in ("image", "caption"):
        assert a_vecs[kind][0].tolist() == b_vecs[kind][0].tolist()
        np.testing.assert_allclose(a_vecs[kind][1], b_vecs[kind][1], atol=1e-6)
        (da, ia), (db, ib) = _search(ws, kind), _search(ref, kind)
        np.testing.assert_allclose(da, db, atol=1e-5)
        assert _ranked(da, ia) == _ranked(db, ib)


def test_damaged_shards_are_found_and_embedded_again(intact, tmp_path):
    src, ref = intact
    ws = _copy(intact, tmp_path)
    _damage(ws)
    out = _build(src, ws)
    assert out.count("damaged: ") == 3
    assert "part-000001.npy: missing" in out
    assert "truncated" in out
    assert "checksum" in out
    assert "up to date" not in out
    assert_same(ws, ref)
    assert "damaged: " not in _build(src, ws)    # and stays repaired


def test_readers_name_the_damaged_file(intact, tmp_path):
    src, _ = intact
    ws = _copy(intact, tmp_path)
    vec3 = _shard(ws, "image", 3).vectors
    vec3.write_bytes(vec3.read_bytes()[:-100])
    w = Workspace(ws)
    con = w.connect(read_only=True)
    try:
        with pytest.raises(WorkspaceError, match=r"part-000003.npy.*build-index SOURCE again to repair"):
            list(store.iter_embeddings(w, con, "image"))
    finally:
        con.close()
    out = run_cli("classify", "-w", ws, "--set", "places205", expect=4).output
    assert "part-000003.npy" in out and "again to repair" in out and "Traceback" not in out


def test_repair_finds_what_the_cheap_check_cannot(intact, tmp_path):
    """Bytes changed in place, size and mtime kept: only --repair's checksums see it."""
    src, ref = intact
    ws = _copy(intact, tmp_path)
    vec2 = _shard(ws, "image", 2).vectors
    st = vec2.stat()
    raw = bytearray(vec2.read_bytes())
    raw[-8:] = b"\x00" * 8
    vec2.write_bytes(bytes(raw))
    os.utime(vec2, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert "damaged: " not in _build(src, ws)
    out = _build(src, ws, "--repair")
    assert "part-000002.npy: content differs" in out
    assert_same(ws, ref)


def test_a_damaged_shard_of_an_import_is_imported_again(tmp_path):
    from test_precomputed_errors import _make, _unit

    src = tmp_path / "e"
    _make(src, _unit(5).astype(np.float16), _unit(5, seed=1).astype(np.float16))
    np.save(src / "img_emb" / "img_emb_1.npy", _unit(4, seed=2).astype(np.float32))
    np.save(src / "text_emb" / "text_emb_1.npy", _unit(4, seed=3).astype(np.float32))
    shutil.copy(src / "metadata" / "metadata_0.parquet", tmp_path / "m.parquet")
    import duckdb

    duckdb.sql(f"COPY (SELECT 'p1_' || key AS key, url, caption FROM '{tmp_path / 'm.parquet'}' LIMIT 4) "
               f"TO '{src / 'metadata' / 'metadata_1.parquet'}' (FORMAT parquet)")
    ref, ws = tmp_path / "ref", tmp_path / "ws"
    args = ("--model", "curate-tiny", "--pretrained", "none")
    run_cli("build-index", src, "-w", ref, *args)
    run_cli("build-index", src, "-w", ws, *args)
    _shard(ws, "image", 0)[0].unlink()
    _shard(ws, "caption", 1)[1].write_bytes(b"garbage")
    out = run_cli("build-index", src, "-w", ws, *args).output
    assert out.count("damaged: ") == 2
    assert_same(ws, ref)


def test_a_workspace_copied_without_mtimes_is_hashed_once(intact, tmp_path):
    src, _ = intact
    ws = _copy(intact, tmp_path)
    for p in (ws / "embeddings").rglob("*.npy"):
        st = p.stat()
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))   # `cp -r` keeps no mtimes
    assert "damaged: " not in _build(src, ws)
    con = Workspace(ws).connect(read_only=True)
    try:
        stale = con.execute("SELECT count(*) FROM shards s WHERE vec_mtime_ns IS NOT NULL").fetchall()[0][0]
        files = {p.name: p.stat().st_mtime_ns for p in (ws / "embeddings" / "image").glob("*.npy")}
        recorded = con.execute("SELECT file, vec_mtime_ns FROM shards WHERE kind = 'image'").fetchall()
    finally:
        con.close()
    assert stale and all(files[f] == m for f, m in recorded)   # the next run compares mtimes only
