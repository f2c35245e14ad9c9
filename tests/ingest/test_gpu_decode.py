"""`--decode gpu`'s path (curate/ingest/device_decode.py) run with device='cpu': torchvision's
JPEG decoder and the tensor resize, crop and normalisation against Pillow and open_clip's own
preprocessing, on real JPEGs written here.

What may differ, and by how much (measured): torchvision's CPU decoder is libjpeg-turbo like
Pillow's and gives the same pixels; the resize runs as Pillow's two one-axis passes, each
rounded to 8 bits, but Pillow weights its filter in fixed point, so about 1 pixel value in
4,000 (at most 0.06% on these images) is one level (1/255) off, rarely two (a one-level
difference after the first pass, widened by the second). Embeddings agree to a cosine
of 0.9999999. On a GPU, nvJPEG's IDCT and chroma upsampling add differences of a level or
two: bench/gpu_check.py measures them there.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli, write_jpeg
from PIL import Image, ImageOps

from curate.core.workspace import Workspace
from curate.ingest.device_decode import DeviceDecoder, Pending, reorient
from curate.ingest.embed import EmbedOptions, embed_pending
from curate.ingest.images import JpegFile, open_rgb, read_jpeg, resize_rule
from curate.ingest.scan import scan_into
from curate.ingest.sources import detect_source

MAX_LEVELS = 2.0            # largest difference of one pixel value, in 8-bit levels
MAX_OFF_FRACTION = 0.001    # share of values that differ at all (measured at most 0.0006)
MIN_COSINE = 0.9999999      # the docstring's figure (measured at least 0.99999994 on these images)


def _exif_rotated(src: Path, dst: Path, orientation: int) -> Path:
    ex = Image.Exif()
    ex[0x0112] = orientation
    Image.open(src).save(dst, "JPEG", exif=ex.tobytes(), quality=90)
    return dst


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("gpu-decode")
    files = {
        "photo 640x480": write_jpeg(d / "photo.jpg", (640, 480), 1),
        "odd 301x199": write_jpeg(d / "odd.jpg", (301, 199), 2),
        "small 97x123 (upscaled)": write_jpeg(d / "small.jpg", (97, 123), 3),
        "wide 1000x40": write_jpeg(d / "wide.jpg", (1000, 40), 4),
        "greyscale": write_jpeg(d / "grey.jpg", (200, 150), 5, mode="L"),
        "cmyk": write_jpeg(d / "cmyk.jpg", (200, 150), 6, mode="CMYK"),
        "low quality": write_jpeg(d / "lowq.jpg", (320, 240), 7, quality=20),
    }
    Image.open(files["photo 640x480"]).save(d / "progressive.jpg", "JPEG", progressive=True, quality=85)
    files["progressive"] = d / "progressive.jpg"
    for o in range(2, 9):
        files[f"exif orientation {o}"] = _exif_rotated(files["odd 301x199"], d / f"orient{o}.jpg", o)
    return files


def _cpu_path(enc, path: Path) -> torch.Tensor:
    return enc.preprocess(open_rgb(str(path), resize=resize_rule(enc.preprocess, enc.image_size)))


def _device_path(enc, paths: list[Path]) -> tuple[np.ndarray, torch.Tensor, list]:
    """What the loader workers and the main process do with --decode gpu, with device='cpu'."""
    rule = resize_rule(enc.preprocess, enc.image_size)
    payloads = []
    for p in paths:
        read = read_jpeg(str(p), resize=rule)
        payloads.append(read if isinstance(read, JpegFile) else enc.preprocess(open_rgb(str(p), resize=rule)))
    dec = DeviceDecoder(enc.preprocess, enc.image_size, "cpu", 89_478_485)
    return dec(np.arange(len(paths), dtype=np.int64), Pending.collate(payloads))


def test_device_path_matches_pillow_within_two_levels(tiny_encoder, jpegs):
    enc = tiny_encoder
    names = list(jpegs)
    ids, x, bad = _device_path(enc, [jpegs[n] for n in names])
    assert bad == [] and list(ids) == list(range(len(names)))
    std = torch.tensor([t.std for t in enc.preprocess.transforms if type(t).__name__ == "Normalize"][0]).view(3, 1, 1)
    cpu = torch.stack([_cpu_path(enc, jpegs[n]) for n in names])
    assert x.shape == cpu.shape
    for n, a, b in zip(names, x, cpu, strict=True):
        levels = (a - b).abs() * std * 255
        assert levels.max().item() <= MAX_LEVELS + 1e-3, f"{n}: {levels.max().item():.3f} levels"
        assert (levels > 0.5).float().mean().item() <= MAX_OFF_FRACTION, n
    cos = (enc.encode_image_tensor(x) * enc.encode_image_tensor(cpu)).sum(axis=1)
    assert cos.min() >= MIN_COSINE, dict(zip(names, cos.round(7), strict=True))


def test_reorient_is_pillows_exif_transpose():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)  # not square: a wrong turn changes the shape
    t = torch.from_numpy(a).permute(2, 0, 1)
    for o in range(1, 9):
        im = Image.fromarray(a)
        ex = im.getexif()
        ex[0x0112] = o
        im.info["exif"] = ex.tobytes()
        want = np.asarray(ImageOps.exif_transpose(im))
        got = reorient(t, o).permute(1, 2, 0).numpy()
        assert got.shape == want.shape and (got == want).all(), f"orientation {o}"


def test_worker_sends_plain_jpegs_as_bytes_and_the_rest_through_pillow(tmp_path, jpegs):
    read = read_jpeg(str(jpegs["exif orientation 6"]))
    assert isinstance(read, JpegFile) and read.orientation == 6 and read.size == (301, 199)
    assert isinstance(read_jpeg(str(jpegs["greyscale"])), JpegFile)
    # Pillow's CMYK conversion is kept: the worker gets the bytes back, to decode with Pillow
    assert isinstance(read_jpeg(str(jpegs["cmyk"])), bytes)
    Image.open(jpegs["odd 301x199"]).save(tmp_path / "x.png")
    assert isinstance(read_jpeg(str(tmp_path / "x.png")), bytes)
    data = jpegs["photo 640x480"].read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])   # no end-of-image marker
    assert isinstance(read_jpeg(str(tmp_path / "cut.jpg")), bytes)


def _bad_and_odd_files(d: Path, jpegs: dict[str, Path]) -> None:
    """Every kind of item the two decoders must treat alike, rejections included."""
    d.mkdir()
    for n in ("photo 640x480", "greyscale", "cmyk", "progressive", "exif orientation 6", "wide 1000x40"):
        (d / jpegs[n].name).write_bytes(jpegs[n].read_bytes())
    Image.open(jpegs["odd 301x199"]).convert("RGBA").save(d / "alpha.png")
    data = jpegs["photo 640x480"].read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    sos = data.index(b"\xff\xda")
    # header and end marker but no scan: Pillow and torchvision both refuse it, torchvision in the
    # main process (the item goes back to Pillow for its reason)
    (d / "no_scan.jpg").write_bytes(data[:sos] + b"\xff\xd9")
    (d / "empty.jpg").write_bytes(b"")
    (d / "not_an_image.jpg").write_text("hello")
    write_jpeg(d / "huge.jpg", (3000, 10), 9)  # refused by the resize limit (--max-pixels below)


def _embed(src: Path, ws_dir: Path, enc, decode: str) -> tuple[dict, dict, np.ndarray, np.ndarray]:
    ws = Workspace(ws_dir)
    con = ws.connect()
    try:
        Workspace.bind_model(con, enc.identity)
        run_id = Workspace.start_run(con, "test", str(src), enc.identity, "cpu")
        scan_into(con, detect_source(src), run_id)
        opts = EmbedOptions(batch_size=4, workers=0, max_pixels=2_000_000, decode=decode)
        embed_pending(ws, con, enc, run_id, opts)
        status = dict(con.execute("SELECT path, status FROM items").fetchall())
        reasons = dict(con.execute("SELECT path, reason FROM rejected").fetchall())
        ids, vecs = [], []
        for f in sorted((ws_dir / "embeddings" / "image").glob("part-*.ids.npy")):
            ids.append(np.load(f))
            vecs.append(np.load(str(f).replace(".ids.npy", ".npy")))
        path_of = dict(con.execute("SELECT id, path FROM items").fetchall())
    finally:
        con.close()
    ids_a = np.concatenate(ids)
    order = np.argsort([path_of[int(i)] for i in ids_a])
    return status, reasons, np.array([path_of[int(i)] for i in ids_a])[order], np.concatenate(vecs)[order]


def test_embed_with_device_decode_equals_cpu_decode(tmp_path, tiny_encoder, jpegs):
    src = tmp_path / "src"
    _bad_and_odd_files(src, jpegs)
    s_cpu, r_cpu, p_cpu, v_cpu = _embed(src, tmp_path / "ws-cpu", tiny_encoder, "cpu")
    s_gpu, r_gpu, p_gpu, v_gpu = _embed(src, tmp_path / "ws-gpu", tiny_encoder, "gpu")
    assert s_gpu == s_cpu
    assert r_gpu == r_cpu  # the same items rejected, for the same reasons
    rejected = {os.path.basename(p) for p in r_cpu}
    assert rejected == {"truncated.jpg", "no_scan.jpg", "empty.jpg", "not_an_image.jpg", "huge.jpg"}
    assert list(p_gpu) == list(p_cpu) and len(p_cpu) == 7
    assert (v_gpu * v_cpu).sum(axis=1).min() >= MIN_COSINE


def test_regrouped_batches_keep_items_in_order(tiny_encoder, jpegs):
    """After a worker death the loader joins single items (Pending.cat): ids and pixels stay paired."""
    enc = tiny_encoder
    rule = resize_rule(enc.preprocess, enc.image_size)
    names = ["photo 640x480", "cmyk", "odd 301x199", "exif orientation 8"]
    parts = []
    for n in names:
        read = read_jpeg(str(jpegs[n]), resize=rule)
        parts.append(Pending.collate([read if isinstance(read, JpegFile) else _cpu_path(enc, jpegs[n])]))
    dec = DeviceDecoder(enc.preprocess, enc.image_size, "cpu", 89_478_485)
    ids, x, bad = dec(np.array([10, 11, 12, 13]), Pending.cat(parts))
    assert list(ids) == [10, 11, 12, 13] and bad == []
    for n, xi in zip(names, x, strict=True):
        assert (xi - _cpu_path(enc, jpegs[n])).abs().max().item() < 0.03, n  # one level is 0.0146 here


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: --decode gpu would run")
def test_decode_gpu_without_cuda_is_one_clear_line(tmp_path):
    write_jpeg(tmp_path / "src" / "a.jpg")
    r = run_cli("build-index", tmp_path / "src", "-w", tmp_path / "ws", "--model", "curate-tiny",
                "--pretrained", "none", "--decode", "gpu", expect=1)
    assert "curate: --decode gpu decodes JPEGs on the model's CUDA device, but torch here sees no CUDA " \
           "device; use --decode cpu" in r.output
    assert not (tmp_path / "ws").exists()  # refused before anything was created
    r = run_cli("build-index", tmp_path / "src", "-w", tmp_path / "ws", "--model", "curate-tiny",
                "--pretrained", "none", "--decode", "gpu", "--device", "cpu", expect=1)
    assert "torch here sees no CUDA device" in r.output
