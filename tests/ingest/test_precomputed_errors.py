"""Importing clip-retrieval embeddings: malformed files are clear errors, odd rows are recorded."""

from __future__ import annotations

import pickle

import duckdb
import numpy as np
import pytest
from conftest import run_cli
from ingest_support import query

from curate.core import store
from curate.core.workspace import Workspace

D = 64
TINY = ("--model", "curate-tiny", "--pretrained", "none")


def _unit(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, D))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _make(root, img, text=None, keys=None):
    (root / "img_emb").mkdir(parents=True, exist_ok=True)
    (root / "metadata").mkdir(exist_ok=True)
    n = len(img) if isinstance(img, np.ndarray) and img.ndim else 3
    np.save(root / "img_emb" / "img_emb_0.npy", img, allow_pickle=True)
    if text is not None:
        (root / "text_emb").mkdir(exist_ok=True)
        np.save(root / "text_emb" / "text_emb_0.npy", text, allow_pickle=True)
    keys = keys or [f"k{i}" for i in range(n)]
    rows = ", ".join(f"('{k}', 'http://x/{i}.jpg', 'caption {i}')" for i, k in enumerate(keys))
    meta = root / "metadata" / "metadata_0.parquet"
    duckdb.sql(f"COPY (SELECT * FROM (VALUES {rows}) t(key, url, caption)) TO '{meta}' (FORMAT parquet)")
    return root


def _import(src, ws, expect=0):
    return run_cli("build-index", src, "-w", ws, *TINY, expect=expect).output


@pytest.mark.parametrize("text_rows, word", [(3, "3 rows"), (5, "5 rows")])
def test_text_emb_with_another_row_count_is_an_error(tmp_path, text_rows, word):
    src = _make(tmp_path / "e", _unit(4).astype(np.float16), _unit(text_rows).astype(np.float16))
    out = _import(src, tmp_path / "ws", expect=1)
    assert "text_emb_0.npy" in out and word in out and "4" in out and "Traceback" not in out


@pytest.mark.parametrize("bad, word", [
    (np.ones(6, np.float32), "1-d array"),
    (np.array([[1.0, 2.0], "x"], dtype=object), "pickled"),
    (np.ones((3, D), np.int64), "int64"),
])
def test_malformed_img_emb_is_an_error(tmp_path, bad, word):
    src = _make(tmp_path / "e", bad)
    out = _import(src, tmp_path / "ws", expect=1)
    assert "img_emb_0.npy" in out and word in out and "Traceback" not in out


def test_malformed_text_emb_is_an_error(tmp_path):
    src = _make(tmp_path / "e", _unit(3).astype(np.float32), np.ones((3, D), np.int32))
    out = _import(src, tmp_path / "ws", expect=1)
    assert "text_emb_0.npy" in out and "int32" in out


def test_duplicate_keys_are_recorded(tmp_path):
    src = _make(tmp_path / "e", _unit(4).astype(np.float16), keys=["a", "b", "a", "c"])
    ws = tmp_path / "ws"
    _import(src, ws)
    assert query(ws, "SELECT source_id FROM items ORDER BY id") == [("a",), ("b",), ("c",)]
    assert query(ws, "SELECT source_id, reason, stage FROM rejected") == [
        ("a", 'metadata_0.parquet row 2: duplicate key "a" (first on row 0)', "import")]
    _import(src, ws)  # a rerun does not record it twice
    assert query(ws, "SELECT count(*) FROM rejected") == [(1,)]


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_any_finite_scale_is_normalised_and_zeros_or_nan_are_rejected(tmp_path, dtype):
    u = _unit(6)
    big, tiny = (1e30, 1e-30) if dtype == np.float32 else (6e4, 1e-4)  # near each type's limits
    img = np.stack([u[0] * big, u[1] * tiny, u[2], np.zeros(D), np.full(D, np.nan), u[5]]).astype(dtype)
    img[5, 0] = np.inf
    ws = tmp_path / "ws"
    _import(_make(tmp_path / "e", img), ws)
    w = Workspace(ws)
    con = w.connect(read_only=True)
    try:
        ids, vecs = store.load_all(w, con, "image")
        reasons = con.execute("SELECT item_id, reason FROM rejected ORDER BY item_id").fetchall()
    finally:
        con.close()
    assert ids.tolist() == [0, 1, 2]
    want = u[:3] if dtype == np.float32 else np.stack([u[i].astype(dtype).astype(np.float64) for i in range(3)])
    want = want / np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(vecs, want, atol=2e-2 if dtype == np.float16 else 1e-6)
    assert reasons == [(3, "image embedding is all zeros"), (4, "image embedding has NaN or infinite values"),
                       (5, "image embedding has NaN or infinite values")]


def test_an_import_where_every_row_is_rejected_fails(tmp_path):
    src = _make(tmp_path / "e", np.zeros((3, D), np.float32))
    out = _import(src, tmp_path / "ws", expect=6)
    assert "all 3 rows" in out and "rejected" in out


def test_pickle_is_never_loaded(tmp_path):
    """An object array would run code on load; the import refuses it without unpickling."""
    src = _make(tmp_path / "e", np.array([object()] * 3, dtype=object))
    assert pickle  # the file above holds a pickle; curate must not call pickle.load on it
    out = _import(src, tmp_path / "ws", expect=1)
    assert "pickled" in out


@pytest.mark.parametrize("content, word", [
    (b"0.1,0.2,0.3\n0.4,0.5,0.6\n", "starts with b'0.1,0.'"),       # a CSV saved under the .npy name
    (pickle.dumps([[0.1, 0.2]]), "starts with b'\\x80"),            # a bare pickle, not numpy.save's
    (b"", "it is empty"),
    (b"\x93NUM", "starts with b'\\x93NUM'"),                         # cut inside the magic
], ids=["csv", "pickle", "empty", "cut"])
def test_a_file_that_is_not_npy_is_named_so(tmp_path, content, word):
    """Only a file with the .npy magic is read as one; anything else is "not an .npy file", never "pickled"."""
    src = _make(tmp_path / "e", _unit(3).astype(np.float32))
    (src / "img_emb" / "img_emb_0.npy").write_bytes(content)
    out = _import(src, tmp_path / "ws", expect=1)
    assert "img_emb_0.npy: not an .npy file" in out and word in out, out
    assert "pickled" not in out and "Traceback" not in out
    assert not (tmp_path / "ws").exists()


def test_text_emb_that_is_not_npy_is_named_so(tmp_path):
    src = _make(tmp_path / "e", _unit(3).astype(np.float32), _unit(3).astype(np.float32))
    (src / "text_emb" / "text_emb_0.npy").write_text("a caption vector, as text\n")
    out = _import(src, tmp_path / "ws", expect=1)
    assert "text_emb_0.npy: not an .npy file" in out and "pickled" not in out
