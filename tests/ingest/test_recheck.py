"""A rerun of build-index notices files that changed since they were embedded or rejected.

Each scenario ends compared with a fresh workspace built from the files as they are at the
end: same items (ids included), same vectors, same index answers.
"""

from __future__ import annotations

import os
import shutil

import faiss
import numpy as np
import pytest
from conftest import make_folder, run_cli, write_jpeg
from ingest_support import permissions_apply, stored_vectors
from PIL import Image

from curate.core import store
from curate.core.store import file_sum
from curate.core.workspace import Workspace

TINY = ("--model", "curate-tiny", "--pretrained", "none", "--workers", "0", "--shard-size", "4")
N = 10


def _build(src, ws, *extra, expect=0) -> str:
    return run_cli("build-index", src, "-w", ws, *TINY, *extra, expect=expect).output


def _state(ws):
    w = Workspace(ws)
    con = w.connect(read_only=True)
    try:
        items = con.execute("SELECT id, source_id, caption, status, caption_tokens, caption_truncated "
                            "FROM items ORDER BY id").fetchall()
        rejected = con.execute("SELECT item_id, source_id, reason FROM rejected ORDER BY item_id, reason").fetchall()
        vecs = {k: store.load_all(w, con, k) for k in ("image", "caption")}
        per_shard = [ids for ids, _ in store.iter_embeddings(w, con, "image")]
    finally:
        con.close()
    all_ids = np.concatenate(per_shard) if per_shard else np.zeros(0, np.int64)
    assert len(np.unique(all_ids)) == len(all_ids), "an item's vector is stored twice"
    return items, rejected, vecs


def _search(ws, kind="image"):
    _ids, q = stored_vectors(ws, kind)
    return faiss.read_index(str(Workspace(ws).index_path(kind))).search(q, len(q))


def _ranked(scores, ids):
    """Search answers with equal scores (the same caption twice) in id order."""
    return [sorted(zip(np.round(-d, 4).tolist(), i.tolist(), strict=True)) for d, i in zip(scores, ids, strict=True)]


def assert_same_as_fresh(ws, src, tmp_path, *extra):
    fresh = tmp_path / "fresh"
    shutil.rmtree(fresh, ignore_errors=True)
    _build(src, fresh, *extra)
    a_items, a_rej, a_vecs = _state(ws)
    b_items, b_rej, b_vecs = _state(fresh)
    assert a_items == b_items
    assert a_rej == b_rej
    for kind in ("image", "caption"):
        assert a_vecs[kind][0].tolist() == b_vecs[kind][0].tolist()
        np.testing.assert_allclose(a_vecs[kind][1], b_vecs[kind][1], atol=1e-6)
        if not len(a_vecs[kind][0]):
            continue
        (da, ia), (db, ib) = _search(ws, kind), _search(fresh, kind)
        np.testing.assert_allclose(da, db, atol=1e-5)
        assert _ranked(da, ia) == _ranked(db, ib)


def _status(ws, source_id):
    con = Workspace(ws).connect(read_only=True)
    try:
        return con.execute("SELECT id, status FROM items WHERE source_id = ?", [source_id]).fetchall()[0]
    finally:
        con.close()


def _bump_mtime(path, seconds=10):
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 1_000_000_000))


def test_half_copied_file_restored_is_embedded_under_its_id(tmp_path):
    src = make_folder(tmp_path / "photos", N)
    good = (src / "img_003.jpg").read_bytes()
    (src / "img_003.jpg").write_bytes(good[: len(good) // 2])      # still being copied
    ws = tmp_path / "ws"
    _build(src, ws)
    item_id, status = _status(ws, "img_003.jpg")
    assert status == "rejected"
    (src / "img_003.jpg").write_bytes(good)                         # the copy finished
    out = _build(src, ws)
    assert "1 rejected retried" in out
    assert _status(ws, "img_003.jpg") == (item_id, "embedded")
    assert_same_as_fresh(ws, src, tmp_path)


def test_missing_manifest_file_restored_is_embedded(tmp_path):
    src = tmp_path / "m"
    for i in range(6):
        write_jpeg(src / f"p{i}.jpg", seed=i)
    (src / "list.csv").write_text("path,caption\n" + "".join(f"p{i}.jpg,photo {i}\n" for i in range(6)))
    moved = tmp_path / "p2.jpg"
    (src / "p2.jpg").rename(moved)
    ws = tmp_path / "ws"
    _build(src / "list.csv", ws)
    assert _status(ws, "p2.jpg")[1] == "rejected"
    moved.rename(src / "p2.jpg")
    _build(src / "list.csv", ws)
    assert _status(ws, "p2.jpg")[1] == "embedded"
    assert_same_as_fresh(ws, src / "list.csv", tmp_path)


def test_changed_file_is_embedded_again_and_its_old_vectors_go(tmp_path):
    src = make_folder(tmp_path / "photos", N)
    ws = tmp_path / "ws"
    _build(src, ws)
    item_id, _ = _status(ws, "img_005.jpg")
    write_jpeg(src / "img_005.jpg", seed=500)                       # edited in place
    _bump_mtime(src / "img_005.jpg")
    out = _build(src, ws)
    assert "1 changed (embedded again)" in out
    assert "rebuilt" in out                                         # the index saw the change
    assert _status(ws, "img_005.jpg") == (item_id, "embedded")
    assert_same_as_fresh(ws, src, tmp_path)


def test_unchanged_rerun_rechecks_and_does_nothing(tmp_path):
    src = make_folder(tmp_path / "photos", N)
    ws = tmp_path / "ws"
    _build(src, ws)
    out = _build(src, ws)
    assert f"{N} files checked, 0 changed (embedded again), 0 rejected retried" in out
    assert "up to date" in out


def test_recheck_rejected_leaves_embedded_files_alone_and_retry_rejected_forces(tmp_path):
    src = make_folder(tmp_path / "photos", N)
    (src / "img_001.jpg").write_bytes(b"not a jpeg")
    ws = tmp_path / "ws"
    _build(src, ws)
    write_jpeg(src / "img_005.jpg", seed=500)
    _bump_mtime(src / "img_005.jpg")
    out = _build(src, ws, "--recheck", "rejected")
    assert "0 changed" in out and "0 rejected retried" in out
    out = _build(src, ws, "--recheck", "rejected", "--retry-rejected")
    assert "1 rejected retried" in out
    con = Workspace(ws).connect(read_only=True)
    try:  # tried again, rejected again: recorded once, by the run that tried it last
        assert con.execute("SELECT count(*), max(run_id) FROM rejected").fetchall() == [(1, 3)]
    finally:
        con.close()


def _bmp(path, seed):
    """A BMP's size depends on its dimensions only: a content change keeps the size."""
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8), "RGB").save(path, "BMP")


def test_recheck_hash_catches_a_change_that_keeps_size_and_mtime(tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    for i in range(5):
        _bmp(src / f"b{i}.bmp", i)
    ws = tmp_path / "ws"
    _build(src, ws, "--recheck", "hash")
    st = (src / "b2.bmp").stat()
    _bmp(src / "b2.bmp", 99)
    os.utime(src / "b2.bmp", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (src / "b2.bmp").stat().st_size == st.st_size
    assert "0 changed" in _build(src, ws)                           # size and mtime look the same
    assert "1 changed" in _build(src, ws, "--recheck", "hash")
    assert_same_as_fresh(ws, src, tmp_path, "--recheck", "hash")


@pytest.mark.slow
def test_a_rerun_killed_while_embedding_changed_files_resumes(tmp_path):
    import subprocess

    from test_resume import _cmd, kill_when_written

    src = tmp_path / "photos"
    for i in range(40):
        write_jpeg(src / f"{i:04d}.jpg", size=(640, 480), seed=i)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    ws = tmp_path / "ws"
    subprocess.run(_cmd(src, ws), env=env, check=True, capture_output=True)   # image shards 0-4
    for i in range(0, 40, 2):
        write_jpeg(src / f"{i:04d}.jpg", size=(640, 480), seed=1000 + i)
        _bump_mtime(src / f"{i:04d}.jpg")
    kill_when_written(src, ws, "part-000006.npy", env)
    assert any(s == "pending" for *_, s, _t, _u in _state(ws)[0]), "the kill must land mid-embedding"
    subprocess.run(_cmd(src, ws), env=env, check=True, capture_output=True)
    assert_same_as_fresh(ws, src, tmp_path)


def _hashes(ws):
    con = Workspace(ws).connect(read_only=True)
    try:
        return dict(con.execute("SELECT i.source_id, f.hash FROM items i JOIN item_files f ON f.item_id = i.id")
                    .fetchall())
    finally:
        con.close()


def test_a_first_recheck_hash_trusts_only_files_whose_stat_is_as_embedded_and_says_so(tmp_path):
    """Embedded without hashes, then `--recheck hash`: a file whose size or mtime moved is embedded
    again (never hashed as if it had been embedded), one that cannot be read gets no hash, and
    the others' first hashes are recorded with a line saying they are trusted as they are now."""
    src = tmp_path / "photos"
    src.mkdir()
    for i in range(5):
        _bmp(src / f"b{i}.bmp", i)
    ws = tmp_path / "ws"
    _build(src, ws)                                                   # --recheck stat: no hashes recorded
    assert set(_hashes(ws).values()) == {None}
    st = (src / "b2.bmp").stat()                                      # swapped keeping size and mtime:
    _bmp(src / "b2.bmp", 99)                                          # beyond what a first hash can see
    os.utime(src / "b2.bmp", ns=(st.st_atime_ns, st.st_mtime_ns))
    _bmp(src / "b3.bmp", 98)                                          # changed: another mtime
    _bump_mtime(src / "b3.bmp")
    (src / "b4.bmp").chmod(0)                                         # stat as embedded, cannot be read
    try:
        with permissions_apply():
            out = _build(src, ws, "--recheck", "hash")
    finally:
        (src / "b4.bmp").chmod(0o644)
    line = next(x for x in out.splitlines() if x.startswith("recheck:"))
    assert "5 files checked, 1 changed (embedded again)" in line
    assert "3 hashes recorded for the first time: those files are trusted as they are now" in line
    assert "1 of the changed had no hash yet and could not be trusted" in line
    assert "1 could not be hashed" in line
    hashes = _hashes(ws)
    assert hashes["b3.bmp"] == file_sum(src / "b3.bmp")               # hashed as it was embedded again
    assert hashes["b4.bmp"] is None
    assert {k: hashes[k] for k in ("b0.bmp", "b1.bmp", "b2.bmp")} == {
        k: file_sum(src / k) for k in ("b0.bmp", "b1.bmp", "b2.bmp")}
    # from now on a same-size, same-mtime change is caught, and b4 gets its first hash
    _bmp(src / "b1.bmp", 97)
    st = (src / "b1.bmp").stat()
    os.utime(src / "b1.bmp", ns=(st.st_atime_ns, st.st_mtime_ns))
    out = _build(src, ws, "--recheck", "hash")
    line = next(x for x in out.splitlines() if x.startswith("recheck:"))
    assert "1 changed" in line and "1 hashes recorded for the first time" in line
    assert "could not" not in line
