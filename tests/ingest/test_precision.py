"""--precision: auto's rule, the CPU check, the workspace's record, the mixing rule, and the
label prompts following it (real workspaces, the tiny model on random weights)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_folder, open_db, run_cli
from ingest_support import stored_vectors

from curate.core.workspace import Workspace
from curate.errors import InputError
from curate.ingest import precision
from curate.ingest.model import load_encoder

TINY = ("--model", "curate-tiny", "--pretrained", "none", "--workers", "0")


def _cpuinfo(tmp_path, flags: str):
    p = tmp_path / "cpuinfo"
    p.write_text(f"processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 avx512f {flags}\n\n")
    return p


def test_native_bf16_reads_the_cpu_flags_and_the_override(tmp_path, monkeypatch):
    monkeypatch.delenv(precision.NATIVE_BF16_ENV, raising=False)
    assert precision.native_bf16(_cpuinfo(tmp_path, "avx512_bf16 avx512_vnni"))
    assert precision.native_bf16(_cpuinfo(tmp_path, "amx_tile amx_bf16"))
    assert not precision.native_bf16(_cpuinfo(tmp_path, "avx512bw"))        # emulated bf16: slower than fp32
    assert not precision.native_bf16(tmp_path / "no-such-file")             # not Linux: the safe side
    monkeypatch.setenv(precision.NATIVE_BF16_ENV, "1")
    assert precision.native_bf16(_cpuinfo(tmp_path, "avx512bw"))
    monkeypatch.setenv(precision.NATIVE_BF16_ENV, "0")
    assert not precision.native_bf16(_cpuinfo(tmp_path, "avx512_bf16"))


def test_auto_and_the_mixing_rule(monkeypatch):
    monkeypatch.setenv(precision.NATIVE_BF16_ENV, "1")
    assert precision.resolve("auto", "cuda:1", []) == "fp16"
    assert precision.resolve("auto", "cpu", []) == "bf16"                   # native bf16: the weights path
    assert precision.resolve("auto", "cpu", ["bf16"]) == "bf16"
    assert precision.resolve("auto", "cpu", ["fp32"]) == "fp32"              # an all-fp32 workspace stays exact
    assert precision.resolve("auto", "cuda", ["fp32"]) == "fp32"
    for asked in ("fp32", "bf16", "fp16"):                                   # reduced workspaces take any
        assert precision.resolve(asked, "cpu", ["bf16"]) == asked
        assert precision.resolve(asked, "cpu", ["bf16", "fp32"]) == asked
    with pytest.raises(InputError, match="all float32.*--precision bf16.*--precision fp32"):
        precision.resolve("bf16", "cpu", ["fp32"])
    with pytest.raises(InputError, match="fp16"):
        precision.resolve("fp16", "cuda", ["fp32"])
    with pytest.raises(InputError, match="unknown precision 'int8'"):
        precision.resolve("int8", "cpu", [])
    monkeypatch.setenv(precision.NATIVE_BF16_ENV, "0")
    assert precision.resolve("auto", "cpu", []) == "fp32"                   # emulated bf16: slower than fp32
    assert precision.resolve("auto", "cpu", ["bf16"]) == "fp32"
    assert precision.resolve("auto", "mps", []) == "fp32"


def test_how_each_precision_runs_on_each_device():
    assert precision.mode("fp32", "cpu") == precision.mode("fp32", "cuda") == "fp32"
    assert precision.mode("bf16", "cpu") == "weights"                        # CPU autocast measured slower than fp32
    assert precision.mode("bf16", "cuda:0") == "autocast"
    assert precision.mode("fp16", "cuda") == precision.mode("fp16", "cpu") == "autocast"


def test_workspaces_from_before_the_record_are_read_from_their_runs(tmp_path):
    con = Workspace(tmp_path / "ws").connect()
    try:
        assert precision.workspace_precisions(con) == []
        con.execute("INSERT INTO runs (run_id, command, source, device, items_embedded) VALUES "
                    "(1, 'build-index', 'a', 'cpu', 5), (2, 'build-index', 'b', 'cuda:0', 0)")
        assert precision.workspace_precisions(con) == ["fp32"]               # the CUDA run embedded nothing
        con.execute("INSERT INTO runs (run_id, command, source, device, items_embedded) VALUES "
                    "(3, 'build-index', 'c', 'cuda', 7)")
        assert precision.workspace_precisions(con) == ["fp16", "fp32"]
        assert precision.record(con, "bf16") == ["bf16", "fp16", "fp32"]
        assert json.loads(Workspace.get_meta(con, "precision")) == ["bf16", "fp16", "fp32"]
    finally:
        con.close()


def test_encoder_runs_in_the_precision_it_was_built_with():
    x = torch.rand(6, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    f32 = load_encoder("curate-tiny", "none", "cpu", "fp32")
    b16 = load_encoder("curate-tiny", "none", "cpu", "bf16")
    assert (f32.precision, f32.mode, b16.precision, b16.mode) == ("fp32", "fp32", "bf16", "weights")
    assert f32.model.visual.conv1.weight.dtype == torch.float32
    assert b16.model.visual.conv1.weight.dtype == torch.bfloat16             # the weights themselves are bf16
    assert b16.model.logit_scale.dtype == torch.float32                       # not in a forward pass: kept exact
    assert b16.logit_scale == f32.logit_scale
    a, b = f32.encode_image_tensor(x), b16.encode_image_tensor(x)
    assert a.dtype == b.dtype == np.float32
    assert np.allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-6)            # normalised in float32
    assert 0.99 < np.min(np.sum(a * b, axis=1)) and not np.array_equal(a, b)  # the same vectors, nearly
    texts = ["a photo of a tower", "a street", "the long night market under the bridge in the rain"]
    t32, t16 = f32.encode_text(texts), b16.encode_text(texts)
    assert t16.dtype == np.float32 and np.allclose(np.linalg.norm(t16, axis=1), 1.0, atol=1e-6)
    assert 0.99 < np.min(np.sum(t32 * t16, axis=1)) and not np.array_equal(t32, t16)
    # trimmed padding in bf16: the model's own encode_text (77 tokens) rounds differently, no more than
    # bf16 itself does (measured 0.99993 for ViT-B-32, like bf16 against fp32)
    with torch.inference_mode():
        full = torch.nn.functional.normalize(b16.model.encode_text(b16.tokenize(texts)).float(), dim=-1).numpy()
    assert np.min(np.sum(full * t16, axis=1)) > 0.9995
    with pytest.raises(InputError, match="unknown precision"):
        load_encoder("curate-tiny", "none", "cpu", "fp8")


def _runs(ws):
    con = open_db(str(ws / "curate.duckdb"))
    try:
        runs = con.execute("SELECT precision FROM runs ORDER BY run_id").fetchall()
        meta = con.execute("SELECT value FROM meta WHERE key = 'precision'").fetchall()
    finally:
        con.close()
    return [r[0] for r in runs], (json.loads(meta[0][0]) if meta else None)


def test_build_index_records_bf16_mixes_fp32_in_and_classify_follows(tmp_path, monkeypatch):
    photos = make_folder(tmp_path / "photos", n=4)
    ws = tmp_path / "ws"
    r = run_cli("build-index", photos, "-w", ws, *TINY, "--precision", "bf16")
    assert "precision bf16;" in r.output
    assert _runs(ws) == (["bf16"], ["bf16"])

    ids, vecs = stored_vectors(ws)
    assert len(ids) == 4 and np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)

    make_folder(tmp_path / "more", n=6)
    r = run_cli("build-index", tmp_path / "more", "-w", ws, "--workers", "0", "--precision", "fp32")
    assert "precision fp32 (the workspace holds bf16+fp32)" in r.output
    assert _runs(ws) == (["bf16", "fp32"], ["bf16", "fp32"])

    monkeypatch.setenv(precision.NATIVE_BF16_ENV, "1")                       # native bf16: auto takes bf16
    r = run_cli("classify", "-w", ws)
    assert "precision: vectors bf16+fp32, labels bf16)" in r.output
    con = open_db(str(ws / "curate.duckdb"))
    try:
        keys = con.execute("SELECT cache_key FROM label_vector_sets").fetchall()
    finally:
        con.close()
    assert len(keys) == 1


def test_an_fp32_workspace_refuses_reduced_precision_and_auto_keeps_it(tmp_path, monkeypatch):
    photos = make_folder(tmp_path / "photos", n=3)
    ws = tmp_path / "ws"
    run_cli("build-index", photos, "-w", ws, *TINY, "--precision", "fp32")
    make_folder(tmp_path / "more", n=5)
    r = run_cli("build-index", tmp_path / "more", "-w", ws, "--workers", "0", "--precision", "bf16", expect=None)
    assert r.exit_code != 0 and "all float32" in r.output and "--precision fp32" in r.output
    assert _runs(ws) == (["fp32"], ["fp32"])                                 # refused before anything ran
    monkeypatch.setenv(precision.NATIVE_BF16_ENV, "1")
    r = run_cli("build-index", tmp_path / "more", "-w", ws, "--workers", "0")
    assert "precision fp32;" in r.output
    r = run_cli("classify", "-w", ws)
    assert "precision: vectors fp32, labels fp32)" in r.output


def test_label_cache_keys_keep_fp32_as_before_and_separate_the_rest():
    from curate.classify.label_vectors import cache_key
    from curate.core.workspace import ModelIdentity

    ident = ModelIdentity("curate-tiny", "none", 64, True)
    prompts = [["a tower"], ["a street"]]
    assert cache_key(ident, prompts) == cache_key(ident, prompts, "fp32")
    assert len({cache_key(ident, prompts, p) for p in ("fp32", "bf16", "fp16")}) == 3


def test_auto_on_a_native_bf16_cpu_embeds_a_new_workspace_in_bf16_weights(tmp_path, monkeypatch):
    monkeypatch.setenv(precision.NATIVE_BF16_ENV, "1")
    photos = make_folder(tmp_path / "photos", n=3)
    ws = tmp_path / "ws"
    r = run_cli("build-index", photos, "-w", ws, *TINY)
    assert "precision bf16;" in r.output
    assert _runs(ws) == (["bf16"], ["bf16"])
    ids, vecs = stored_vectors(ws)
    assert vecs.dtype == np.float32 and np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    ref = load_encoder("curate-tiny", "none", "cpu", "fp32")
    assert load_encoder("curate-tiny", "none", "cpu", "auto").mode == "weights"
    from PIL import Image
    x = torch.stack([ref.preprocess(Image.open(p).convert("RGB")) for p in sorted(photos.glob("*.jpg"))])
    order = np.argsort(ids)
    assert np.min(np.sum(ref.encode_image_tensor(x) * vecs[order], axis=1)) > 0.99   # bf16, not another image


def test_fp32_agrees_with_open_clip_as_the_readme_says(tiny_encoder):
    """README, Precision: in float32, image vectors are open_clip's bit for bit; text vectors
    (padding cut to the batch's longest text) within 2e-7 a component of open_clip's full
    77-token pass, not necessarily bit for bit."""
    from conftest import CAPTIONS

    enc = tiny_encoder
    texts = [c or "x" for c in CAPTIONS] + ["a " * 60]     # short, long, emoji, CJK; one near the limit
    with torch.inference_mode():
        full = torch.nn.functional.normalize(enc.model.encode_text(enc.tokenize(texts)).float(), dim=-1).numpy()
        images = torch.rand(4, 3, enc.image_size, enc.image_size, generator=torch.Generator().manual_seed(0))
        ref = torch.nn.functional.normalize(enc.model.encode_image(images).float(), dim=-1).numpy()
    assert np.abs(enc.encode_text(texts) - full).max() <= 2e-7
    assert np.array_equal(enc.encode_image_tensor(images), ref)
