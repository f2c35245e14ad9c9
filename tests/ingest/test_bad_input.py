"""Dirty collections (DESIGN.md section 5): each bad item is rejected with a reason, the run goes on."""

from __future__ import annotations

import shutil
import struct
import zlib

import numpy as np
import pytest
from conftest import run_cli, write_jpeg
from ingest_support import query
from PIL import Image

from curate.core import store
from curate.core.workspace import Workspace
from curate.ingest.images import BadImage, open_rgb
from curate.ingest.sources import decode_text


def _png_header_only(path, w, h):
    """A PNG whose header claims w x h pixels (a decompression bomb needs no real pixels)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 10))
                     + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def dirty(tmp_path_factory):
    d = tmp_path_factory.mktemp("dirty") / "photos"
    d.mkdir()
    good = write_jpeg(d / "good.jpg", seed=1)
    # truncated JPEG: the first half of a real one
    data = write_jpeg(d / "tmp.jpg", size=(200, 160), seed=2).read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (d / "tmp.jpg").unlink()
    (d / "empty.jpg").write_bytes(b"")
    (d / "not an image.jpg").write_text("hello, I am text")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 50, 4), dtype=np.uint8), "RGBA").save(d / "alpha.png")
    write_jpeg(d / "cmyk.jpg", seed=3, mode="CMYK")
    Image.fromarray(rng.integers(0, 65535, (30, 40), dtype=np.uint16)).save(d / "sixteen.png")
    frames = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(3)]
    frames[0].save(d / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    _png_header_only(d / "bomb.png", 30000, 30000)
    shutil.copy(good, d / "naïve café 🌍 with spaces.jpg")
    # captions in many encodings, and blank ones
    (d / "good.txt").write_bytes("crème brûlée 🍮 #paris".encode())
    (d / "alpha.txt").write_bytes("caf\xe9 cp1252".encode("cp1252"))
    (d / "cmyk.txt").write_bytes("utf16 ☃".encode("utf-16"))
    (d / "sixteen.txt").write_bytes(b"   \n\t ")
    (d / "anim.txt").write_bytes("\ufeffwith BOM".encode())
    ws = d.parent / "ws"
    res = run_cli("build-index", d, "-w", ws, "--model", "curate-tiny", "--pretrained", "none", "--workers", "1",
                  "--max-pixels", "100000000")
    return d, ws, res


def test_every_bad_file_has_a_reason(dirty):
    _, ws, res = dirty
    reasons = dict(query(ws, "SELECT source_id, reason FROM rejected"))
    assert reasons == {
        "truncated.jpg": "truncated or corrupt image data (file ends early)",
        "empty.jpg": "empty file (0 bytes)",
        "not an image.jpg": "not an image, or an image format Pillow cannot read",
        "bomb.png": "image too large (30000x30000 = 900M pixels, limit 100M)",
    }
    assert "rejected this run: 4" in res.output


def test_odd_but_valid_files_are_embedded(dirty):
    _, ws, _ = dirty
    ok = {r[0] for r in query(ws, "SELECT source_id FROM items WHERE status = 'embedded'")}
    assert ok == {"good.jpg", "alpha.png", "cmyk.jpg", "sixteen.png", "anim.gif", "naïve café 🌍 with spaces.jpg"}
    w = Workspace(ws)
    con = w.connect(read_only=True)
    ids, vecs = store.load_all(w, con, "image")
    con.close()
    assert len(ids) == 6 and np.isfinite(vecs).all()
    # the same bytes under another name give the same vector
    by_sid = dict(query(ws, "SELECT source_id, id FROM items"))
    pos = {int(i): k for k, i in enumerate(ids)}
    np.testing.assert_allclose(vecs[pos[by_sid["good.jpg"]]], vecs[pos[by_sid["naïve café 🌍 with spaces.jpg"]]],
                               atol=1e-6)


def test_captions_in_any_encoding(dirty):
    _, ws, _ = dirty
    caps = dict(query(ws, "SELECT source_id, caption FROM items"))
    assert caps["good.jpg"] == "crème brûlée 🍮 #paris"
    assert caps["alpha.png"] == "café cp1252"
    assert caps["cmyk.jpg"] == "utf16 ☃"
    assert caps["anim.gif"] == "with BOM"
    assert caps["sixteen.png"] is None  # blank caption: an item without caption
    assert caps["truncated.jpg"] is None  # no caption file at all


def test_strict_exit_code(dirty, tmp_path):
    d, _, _ = dirty
    res = run_cli("build-index", d, "-w", tmp_path / "ws", "--model", "curate-tiny", "--pretrained", "none",
                  "--workers", "0", "--strict", expect=3)
    assert "rejected this run: 4" in res.output


def test_conversions_against_pillow(tmp_path):
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 255, (8, 8, 4), dtype=np.uint8)
    rgba[..., 3] = 0  # fully transparent: must come out white, not black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    assert np.asarray(open_rgb(str(tmp_path / "t.png"))).min() == 255
    g16 = np.full((4, 4), 65535, np.uint16)
    Image.fromarray(g16).save(tmp_path / "w.png")
    assert np.asarray(open_rgb(str(tmp_path / "w.png"))).min() == 255
    with pytest.raises(BadImage, match="file not found"):
        open_rgb(str(tmp_path / "missing.jpg"))


def test_draft_decoding_matches_full_decode_closely(tmp_path, tiny_encoder):
    """Draft decoding (opt-in, --draft-decode): the model must see nearly the same picture."""
    import torch

    from curate.ingest.images import resize_rule

    p = write_jpeg(tmp_path / "big.jpg", size=(1600, 1200), seed=5)
    rule = resize_rule(tiny_encoder.preprocess, tiny_encoder.image_size)
    fast = open_rgb(str(p), resize=rule, draft=True)
    assert fast.size[0] < 1600  # the draft actually happened
    assert open_rgb(str(p), resize=rule).size == (1600, 1200)  # and only when asked for
    full = Image.open(p).convert("RGB")
    with torch.inference_mode():
        a = tiny_encoder.model.encode_image(tiny_encoder.preprocess(fast).unsqueeze(0))
        b = tiny_encoder.model.encode_image(tiny_encoder.preprocess(full).unsqueeze(0))
    cos = torch.nn.functional.cosine_similarity(a, b).item()
    assert cos > 0.99


@pytest.mark.parametrize("raw,expected", [
    (b"plain", "plain"), ("é".encode("cp1252"), "é"), (b"\x00a\x00", "a"), (b"  ", None),
    ("x".encode("utf-16-le").join([b"\xff\xfe", b""]), "x"),
])
def test_decode_text(raw, expected):
    assert decode_text(raw) == expected
