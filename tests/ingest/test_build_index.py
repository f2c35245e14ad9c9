"""build-index end to end: sources, embeddings against open_clip called directly, indexes, reruns."""

from __future__ import annotations

import json

import duckdb
import faiss
import numpy as np
import pytest
import torch
from conftest import CAPTIONS, make_folder, run_cli, write_jpeg
from PIL import Image

from curate.core import store
from curate.core.workspace import Workspace

TINY = ("--model", "curate-tiny", "--pretrained", "none", "--workers", "0")


def _ws(path):
    ws = Workspace(path)
    return ws, ws.connect(read_only=True)


def _reference_image(enc, path) -> np.ndarray:
    """What open_clip itself makes of one file: plain PIL decode, the model's preprocess."""
    with torch.inference_mode():
        x = enc.preprocess(Image.open(path).convert("RGB")).unsqueeze(0)
        v = enc.model.encode_image(x)
    return torch.nn.functional.normalize(v, dim=-1).numpy()[0]


def _reference_text(enc, text) -> np.ndarray:
    import open_clip

    with torch.inference_mode():
        v = enc.model.encode_text(open_clip.get_tokenizer("curate-tiny")([text]))  # full 77 tokens
    return torch.nn.functional.normalize(v, dim=-1).numpy()[0]


def test_folder_items_embeddings_and_indexes(built_workspace, tiny_encoder):
    ws, con = _ws(built_workspace)
    items = con.execute("SELECT id, source_id, path, caption, status FROM items ORDER BY id").fetchall()
    assert [r[1] for r in items] == [f"img_{i:03d}.jpg" for i in range(12)]
    assert all(r[4] == "embedded" for r in items)
    assert [r[3] for r in items] == [c or None for c in CAPTIONS]

    ids, vecs = store.load_all(ws, con, "image")
    assert ids.tolist() == list(range(12))
    for i, (_id, _sid, path, _cap, _st) in enumerate(items):
        np.testing.assert_allclose(vecs[i], _reference_image(tiny_encoder, path), atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)

    cids, cvecs = store.load_all(ws, con, "caption")
    with_cap = [r[0] for r in items if r[3] is not None]
    assert cids.tolist() == with_cap
    for cid, v in zip(cids, cvecs, strict=True):
        np.testing.assert_allclose(v, _reference_text(tiny_encoder, items[cid][3]), atol=2e-5)

    img_index = faiss.read_index(str(built_workspace / "indexes" / "images.faiss"))
    cap_index = faiss.read_index(str(built_workspace / "indexes" / "captions.faiss"))
    assert img_index.ntotal == 12 and cap_index.ntotal == len(with_cap)
    # ids in the index are item ids: each vector finds itself first
    scores, found = img_index.search(vecs, 1)
    assert found[:, 0].tolist() == ids.tolist()
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)

    run = con.execute("SELECT model, pretrained, random_weights, embed_dim, status, items_embedded, versions "
                      "FROM runs").fetchone()
    assert run[:6] == ("curate-tiny", "none", True, 64, "finished", 12)
    assert "torch" in json.loads(run[6])
    tokens = dict(con.execute("SELECT id, caption_tokens FROM items WHERE caption IS NOT NULL").fetchall())
    assert tokens[2] == len(tiny_encoder.tokenizer.encode("A photo of a skyscraper"))


def test_rerun_adds_only_new_items(tmp_path):
    photos = make_folder(tmp_path / "photos", n=4)
    ws = tmp_path / "ws"
    run_cli("build-index", photos, "-w", ws, *TINY)
    run_cli("build-index", photos, "-w", ws, *TINY)
    write_jpeg(photos / "new one.jpg", seed=99)
    out = run_cli("build-index", photos, "-w", ws, *TINY).output
    assert "1 new" in out
    w, con = _ws(ws)
    assert con.execute("SELECT count(*), count(DISTINCT source_id) FROM items").fetchone() == (5, 5)
    assert faiss.read_index(str(ws / "indexes" / "images.faiss")).ntotal == 5
    assert store.count_vectors(w, con, "image") == 5
    assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 3


def test_manifest_csv_keeps_extra_columns_and_rejects_duplicates(tmp_path):
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        write_jpeg(tmp_path / "imgs" / f"ä {i}.jpg", seed=i)
    (tmp_path / "m.csv").write_text(
        "id,path,caption,likes,city\n"
        "a,imgs/ä 0.jpg,first,10,NYC\n"
        "b,imgs/ä 1.jpg,,20,LA\n"
        "a,imgs/ä 2.jpg,dup of a,30,SF\n"
        "c,,no path,40,SF\n"
        "d,imgs/missing.jpg,gone,50,NYC\n",
        encoding="utf-8",
    )
    ws = tmp_path / "ws"
    run_cli("build-index", tmp_path / "m.csv", "-w", ws, *TINY)
    _, con = _ws(ws)
    rows = con.execute("SELECT source_id, caption, likes, city, status FROM items ORDER BY id").fetchall()
    # extra columns keep the text written in the file (--infer-types would type them)
    assert rows == [("a", "first", "10", "NYC", "embedded"), ("b", None, "20", "LA", "embedded"),
                    ("d", "gone", "50", "NYC", "rejected")]
    reasons = dict(con.execute("SELECT coalesce(source_id, '?'), reason FROM rejected").fetchall())
    m = tmp_path / "m.csv"
    assert reasons["a"] == f'manifest {m} row 3: duplicate id "a" (first on row 1)'
    assert reasons["c"] == f"manifest {m} row 4: empty path"
    assert reasons["d"] == "file not found"
    # a second run records nothing twice
    con.close()
    run_cli("build-index", tmp_path / "m.csv", "-w", ws, *TINY)
    _, con = _ws(ws)
    assert con.execute("SELECT count(*) FROM rejected").fetchone()[0] == 3


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_manifest_jsonl_and_parquet(tmp_path, fmt):
    for i in range(2):
        write_jpeg(tmp_path / f"{i}.jpg", seed=i)
    rows = [{"path": "0.jpg", "caption": "zero", "score": 0.5}, {"path": "1.jpg", "caption": "one", "score": 1.5}]
    jl = tmp_path / "m.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    src = jl
    if fmt == "parquet":
        src = tmp_path / "m.parquet"
        duckdb.sql(f"COPY (SELECT * FROM read_json('{jl}')) TO '{src}' (FORMAT parquet)")
    ws = tmp_path / "ws"
    run_cli("build-index", src, "-w", ws, *TINY)
    _, con = _ws(ws)
    # JSONL numbers are kept as their JSON text; parquet keeps the types the file declares
    half, one_half = (0.5, 1.5) if fmt == "parquet" else ("0.5", "1.5")
    assert con.execute("SELECT source_id, caption, score, status FROM items ORDER BY id").fetchall() == [
        ("0.jpg", "zero", half, "embedded"), ("1.jpg", "one", one_half, "embedded")]


def test_instacities_tree(tmp_path):
    root = tmp_path / "InstaCities1M"
    for city, n in (("newyork", 2), ("london", 1)):
        for i in range(n):
            write_jpeg(root / "img_resized" / city / f"{city}{i}.jpg", seed=i + len(city))
            cap = root / "captions_resized" / city / f"{city}{i}.txt"
            cap.parent.mkdir(parents=True, exist_ok=True)
            cap.write_text(f"#{city} photo {i}")
    ws = tmp_path / "ws"
    run_cli("build-index", root, "-w", ws, *TINY)
    _, con = _ws(ws)
    assert con.execute("SELECT source_id, caption FROM items ORDER BY id").fetchall() == [
        ("london/london0.jpg", "#london photo 0"),
        ("newyork/newyork0.jpg", "#newyork photo 0"),
        ("newyork/newyork1.jpg", "#newyork photo 1"),
    ]


def test_clip_retrieval_import(tmp_path):
    src = tmp_path / "embs"
    rng = np.random.default_rng(0)
    n0, n1, d = 5, 3, 64
    for part, n in ((0, n0), (1, n1)):
        (src / "img_emb").mkdir(parents=True, exist_ok=True)
        (src / "text_emb").mkdir(exist_ok=True)
        (src / "metadata").mkdir(exist_ok=True)
        img = rng.normal(size=(n, d)).astype(np.float16)
        if part == 1:
            img[2] = 0  # a broken row
        np.save(src / "img_emb" / f"img_emb_{part}.npy", img)
        np.save(src / "text_emb" / f"text_emb_{part}.npy", rng.normal(size=(n, d)).astype(np.float16))
        meta = src / "metadata" / f"metadata_{part}.parquet"
        caps = ", ".join(f"('{part}_{i}', 'http://x/{part}/{i}.jpg', {'NULL' if i == 1 else repr(f'cap {i}')}, {i})"
                         for i in range(n))
        duckdb.sql(f"COPY (SELECT * FROM (VALUES {caps}) t(key, url, caption, width)) TO '{meta}' (FORMAT parquet)")
    ws = tmp_path / "ws"
    run_cli("build-index", src, "-w", ws, "--model", "curate-tiny", "--pretrained", "none")
    w, con = _ws(ws)
    assert con.execute("SELECT count(*) FROM items").fetchone()[0] == 8
    assert con.execute("SELECT count(*) FROM items WHERE status = 'embedded'").fetchone()[0] == 7
    assert con.execute("SELECT source_id, width FROM items WHERE id = 6").fetchone() == ("1_1", 1)
    ids, vecs = store.load_all(w, con, "image")
    ref = np.load(src / "img_emb" / "img_emb_0.npy").astype(np.float32)
    np.testing.assert_allclose(vecs[:5], ref / np.linalg.norm(ref, axis=1, keepdims=True), atol=1e-6)
    assert faiss.read_index(str(ws / "indexes" / "images.faiss")).ntotal == 7
    cids, _ = store.load_all(w, con, "caption")
    assert 1 not in cids.tolist() and 7 not in cids.tolist()  # no caption, and the broken row
    # again: nothing new
    con.close()
    run_cli("build-index", src, "-w", ws, "--model", "curate-tiny", "--pretrained", "none")
    _, con = _ws(ws)
    assert con.execute("SELECT count(*) FROM items").fetchone()[0] == 8


def test_clip_retrieval_wrong_dimension_is_a_clear_error(tmp_path):
    src = tmp_path / "embs"
    (src / "img_emb").mkdir(parents=True)
    (src / "metadata").mkdir()
    np.save(src / "img_emb" / "img_emb_0.npy", np.ones((2, 512), np.float16))
    duckdb.sql(f"COPY (SELECT 'x' AS caption) TO '{src / 'metadata' / 'metadata_0.parquet'}' (FORMAT parquet)")
    out = run_cli("build-index", src, "-w", tmp_path / "ws", "--model", "curate-tiny", expect=1).output
    assert "512-d" in out and "64-d" in out


def test_missing_weights_say_so_in_one_line(tmp_path):
    photos = make_folder(tmp_path / "p", n=1)
    res = run_cli("build-index", photos, "-w", tmp_path / "ws", "--model", "ViT-B-32",
                  "--pretrained", "laion2b_s34b_b79k", expect=1)
    err = res.output.strip().splitlines()
    assert len(err) == 1 and "laion2b_s34b_b79k" in err[0] and "--pretrained /path" in err[0]
    assert "Traceback" not in res.output


def test_fallback_model_marks_random_output(tmp_path):
    photos = make_folder(tmp_path / "p", n=2)
    res = run_cli("build-index", photos, "-w", tmp_path / "ws", "--pretrained", "laion2b_s34b_b79k",
                  "--fallback-model", "curate-tiny", "--workers", "0")
    assert "RANDOM weights" in res.output and "NOTE: random weights" in res.output
    _, con = _ws(tmp_path / "ws")
    assert con.execute("SELECT model, random_weights FROM runs").fetchone() == ("curate-tiny", True)


def test_local_checkpoint_file(tmp_path, tiny_encoder):
    from safetensors.torch import save_file

    ckpt = tmp_path / "tiny.safetensors"
    state = {k: v.clone() * 0.5 for k, v in tiny_encoder.model.state_dict().items()}
    save_file(state, str(ckpt))
    photos = make_folder(tmp_path / "p", n=2)
    run_cli("build-index", photos, "-w", tmp_path / "ws", "--model", "curate-tiny", "--pretrained", ckpt,
            "--workers", "0")
    w, con = _ws(tmp_path / "ws")
    assert con.execute("SELECT random_weights FROM runs").fetchone() == (False,)
    from curate.ingest.model import load_encoder

    enc = load_encoder("curate-tiny", str(ckpt))
    _, vecs = store.load_all(w, con, "image")
    np.testing.assert_allclose(vecs[0], _reference_image(enc, photos / "img_000.jpg"), atol=2e-5)
    assert not np.allclose(vecs[0], _reference_image(tiny_encoder, photos / "img_000.jpg"), atol=1e-3)
    bad = run_cli("build-index", photos, "-w", tmp_path / "ws2", "--model", "curate-tiny",
                  "--pretrained", tmp_path / "nope.safetensors", expect=1)
    assert "checkpoint file not found" in bad.output


def test_other_model_on_existing_workspace_is_refused(tmp_path):
    photos = make_folder(tmp_path / "p", n=1)
    run_cli("build-index", photos, "-w", tmp_path / "ws", *TINY)
    # a workspace from another model: exit 4 (curate/errors.py), as issue 8 documents
    res = run_cli("build-index", photos, "-w", tmp_path / "ws", "--model", "RN50", "--pretrained", "none",
                  expect=4)
    assert "embedded with curate-tiny" in res.output and "RN50 (random weights, 1024-d)" in res.output
    # refused before RN50 was built (a pretrained one could be a download of gigabytes)
    from curate.ingest import model
    assert all(key[0] != "RN50" for key, _enc in model._LOADED)


def test_index_recipe_by_name(tmp_path):
    photos = make_folder(tmp_path / "p", n=12)
    run_cli("build-index", photos, "-w", tmp_path / "ws", *TINY, "--index", "ivf")
    idx = faiss.read_index(str(tmp_path / "ws" / "indexes" / "images.faiss"))
    assert isinstance(faiss.downcast_index(idx), faiss.IndexIVFFlat) and idx.ntotal == 12
    bad = run_cli("build-index", photos, "-w", tmp_path / "ws", *TINY, "--index", "annoy", expect=1)
    assert "unknown index recipe 'annoy'" in bad.output


def test_duckdb_shell_opens_the_workspace(built_workspace):
    """`duckdb ws/curate.duckdb` (the duckdb-cli package) reads what the Python package wrote."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    shell = shutil.which("duckdb", path=str(Path(sys.executable).parent)) or shutil.which("duckdb")
    assert shell, "the duckdb-cli package installs the `duckdb` shell"
    out = subprocess.run([shell, str(built_workspace / "curate.duckdb"), "-readonly", "-csv", "-c",
                          "select count(*) as n from items where status = 'embedded'"],
                         capture_output=True, text=True, check=True).stdout
    assert out.split() == ["n", "12"]
