"""build-index adds new shards to an existing index instead of rebuilding it, when it safely can."""

from __future__ import annotations

import gc
import json
import os
import re
import shutil

import faiss
import numpy as np
import pytest
from conftest import make_folder, open_db, run_cli, write_jpeg
from ingest_support import stored_vectors

from curate.core.workspace import Workspace
from curate.ingest import faiss_index

TINY = ("--model", "curate-tiny", "--pretrained", "none", "--workers", "0")


class Killed(BaseException):
    """Stands for a SIGKILL at one point of the index step."""


def _build(src, ws, *extra) -> list[str]:
    """The index: lines without the tuned search figures (timings vary; test_index_recall checks them)."""
    out = run_cli("build-index", src, "-w", ws, *TINY, *extra).output
    return [re.sub(r"; (?:exact|nprobe \d+|efSearch \d+), recall@10 .*? q/s batched\)", ")", line)
            for line in out.splitlines() if line.startswith("index:")]


def _add_photos(root, first: int, n: int) -> None:
    for i in range(first, first + n):
        write_jpeg(root / f"new_{i:03d}.jpg", seed=1000 + i)
        (root / f"new_{i:03d}.txt").write_text(f"new photo number {i}")


def _read(ws, kind="image"):
    return faiss.read_index(str(Workspace(ws).index_path(kind)))


def _ids(index) -> np.ndarray:
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexIDMap2):
        return faiss.vector_to_array(index.id_map)
    ivf = faiss.extract_index_ivf(index)
    inv = ivf.invlists
    return np.concatenate([faiss.rev_swig_ptr(inv.get_ids(i), inv.list_size(i)).copy() for i in range(ivf.nlist)])


def _centroids(index) -> np.ndarray:
    ivf = faiss.extract_index_ivf(index)
    return ivf.quantizer.reconstruct_n(0, ivf.nlist)


def _record(ws, kind="image") -> dict:
    con = open_db(str(Workspace(ws).db_path))
    try:
        return json.loads(Workspace.get_meta(con, f"index.{kind}"))
    finally:
        con.close()


def _patch_recipes(monkeypatch, **changes) -> None:
    """Recipes as indexes/*.json has them, with some fields changed: {name: {field: value}}."""
    real = faiss_index.recipes()
    patched = {}
    for name, r in real.items():
        patched[name] = faiss_index.Recipe.from_raw({**r.raw, **changes.get(name, {})})
    monkeypatch.setattr(faiss_index, "recipes", lambda: patched)


def test_flat_index_grows_by_the_new_shards_and_equals_a_rebuild(tmp_path, monkeypatch):
    photos = make_folder(tmp_path / "p", n=6)
    ws = tmp_path / "ws"
    images, captions = ws / "indexes" / "images.faiss", ws / "indexes" / "captions.faiss"
    assert _build(photos, ws)[0] == f"index: {images} (IDMap2,Flat, 6 vectors)"
    ncap = _read(ws, "caption").ntotal

    _add_photos(photos, 0, 2)
    assert _build(photos, ws) == [f"index: added 2 vectors to {images} (IDMap2,Flat, 8 vectors)",
                                  f"index: added 2 vectors to {captions} (IDMap2,Flat, {ncap + 2} vectors)"]
    assert _build(photos, ws)[0] == f"index: {images} (IDMap2,Flat, 8 vectors), up to date"

    # killed after the new record is committed, before the rename: the old file and its record stand
    _add_photos(photos, 2, 1)
    real_install = faiss_index._install

    def kill_before(tmp, out):
        raise Killed

    monkeypatch.setattr(faiss_index, "_install", kill_before)
    with pytest.raises(Killed):
        _build(photos, ws)
    gc.collect()
    assert _read(ws).ntotal == 8 and _record(ws)["previous"]["ntotal"] == 8
    monkeypatch.setattr(faiss_index, "_install", real_install)
    assert _build(photos, ws)[0] == f"index: added 1 vectors to {images} (IDMap2,Flat, 9 vectors)"
    assert not (ws / "indexes" / "images.faiss.tmp").exists()
    assert _record(ws)["previous"] is None

    # killed after the rename, before the record is settled: the new file and its record stand
    _add_photos(photos, 3, 1)

    def kill_after(tmp, out):
        real_install(tmp, out)
        raise Killed

    monkeypatch.setattr(faiss_index, "_install", kill_after)
    with pytest.raises(Killed):
        _build(photos, ws)
    gc.collect()
    monkeypatch.setattr(faiss_index, "_install", real_install)
    assert _build(photos, ws)[0] == f"index: {images} (IDMap2,Flat, 10 vectors), up to date"
    assert _record(ws)["previous"] is None

    # the same workspace with its index files gone: the stale record is not trusted, it rebuilds
    fresh = tmp_path / "fresh"
    shutil.copytree(ws, fresh)
    for f in (fresh / "indexes").iterdir():
        f.unlink()
    lines = _build(photos, fresh)
    assert lines[0] == f"index: {fresh / 'indexes' / 'images.faiss'} (IDMap2,Flat, 10 vectors), rebuilt: " \
                       "the index file is missing"
    for kind in ("image", "caption"):
        grown, rebuilt = _read(ws, kind), _read(fresh, kind)
        assert grown.ntotal == rebuilt.ntotal
        assert _ids(grown).tolist() == _ids(rebuilt).tolist() == stored_vectors(ws, kind)[0].tolist()
        _, vecs = stored_vectors(ws, kind)
        d1, i1 = grown.search(vecs, grown.ntotal)
        d2, i2 = rebuilt.search(vecs, rebuilt.ntotal)
        assert i1.tolist() == i2.tolist()
        np.testing.assert_array_equal(d1, d2)


def test_ivf_keeps_its_centroids_until_the_collection_outgrows_them(tmp_path, monkeypatch):
    photos = make_folder(tmp_path / "p", n=12)
    ws = tmp_path / "ws"
    images = ws / "indexes" / "images.faiss"
    assert _build(photos, ws, "--index", "ivf")[0] == f"index: {images} (IVF1,Flat, 12 vectors)"
    trained = _centroids(_read(ws))

    _add_photos(photos, 0, 2)
    assert _build(photos, ws, "--index", "ivf")[0] == f"index: added 2 vectors to {images} (IVF1,Flat, 14 vectors)"
    grown = _read(ws)
    np.testing.assert_array_equal(_centroids(grown), trained)  # no retraining
    assert sorted(_ids(grown).tolist()) == stored_vectors(ws)[0].tolist() == list(range(14))
    # the added vectors are found: each finds itself first
    _, vecs = stored_vectors(ws)
    faiss.extract_index_ivf(grown).nprobe = 1
    assert grown.search(vecs, 1)[1][:, 0].tolist() == list(range(14))
    assert _record(ws)["current"]["trained_n"] == 12

    # grown past retrain_growth (the recipe's data) since training: k-means runs again
    _patch_recipes(monkeypatch, ivf={"retrain_growth": 1.25})
    _add_photos(photos, 2, 1)
    line = _build(photos, ws, "--index", "ivf")[0]
    assert line.startswith(f"index: {images} (IVF1,Flat, 15 vectors), rebuilt: retrained")
    assert "1.2x" in line and "retrain_growth 1.25" in line
    assert not np.array_equal(_centroids(_read(ws)), trained)
    assert _record(ws)["current"]["trained_n"] == 15
    monkeypatch.undo()

    # another recipe: rebuilt
    assert _build(photos, ws)[0] == f"index: {images} (IDMap2,Flat, 15 vectors), rebuilt: recipe flat, was ivf"
    assert sorted(_ids(_read(ws)).tolist()) == list(range(15))


def test_outgrowing_the_size_based_recipe_rebuilds(tmp_path, monkeypatch):
    _patch_recipes(monkeypatch, flat={"max_items": 5}, ivf={"min_items": 5})
    photos = make_folder(tmp_path / "p", n=4)
    ws = tmp_path / "ws"
    images = ws / "indexes" / "images.faiss"
    assert _build(photos, ws)[0] == f"index: {images} (IDMap2,Flat, 4 vectors)"
    _add_photos(photos, 0, 2)
    assert _build(photos, ws)[0] == f"index: {images} (IVF1,Flat, 6 vectors), rebuilt: recipe ivf, was flat"
    assert isinstance(faiss.downcast_index(_read(ws)), faiss.IndexIVFFlat)
    os.remove(images)
    assert _build(photos, ws)[0].endswith("rebuilt: the index file is missing")
