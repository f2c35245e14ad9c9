"""Images the model sees are the images the user sees (issue 7).

EXIF orientation applied, exact open_clip preprocessing by default (draft decoding only
on request), the pixel limit checked after the model's resize, a dead loader worker
costing only its item, and unreadable files named for what they are.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from conftest import make_folder, run_cli, write_jpeg
from ingest_support import query
from PIL import Image, ImageOps

from curate.core import store
from curate.core.workspace import Workspace
from curate.ingest.embed import FAULT_KILL_WORKER_ENV
from curate.ingest.images import BadImage, open_rgb, os_reason, resize_rule

TINY = ("--model", "curate-tiny", "--pretrained", "none")
REPO = Path(__file__).resolve().parents[2]


def _pattern(w: int, h: int, seed: int = 0) -> np.ndarray:
    """Asymmetric content: every flip and rotation of it is a different picture. In int16 on
    broadcast rows and columns: the 1600 x 1200 one took ~2.4 s in float64 on full grids (most
    of it the first touch of ~200 MB of new memory on the project's VMs)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.ogrid[0:h, 0:w]
    a = np.empty((h, w, 3), np.int16)
    a[..., 0] = xx * 255 // max(w - 1, 1)
    a[..., 1] = yy * 255 // max(h - 1, 1)
    a[..., 2] = (xx * 3 + yy * 7) % 256
    a += rng.integers(-20, 21, a.shape, dtype=np.int16)
    return np.clip(a, 0, 255, out=a).astype(np.uint8)


def _displayed(stored: np.ndarray, orientation: int) -> np.ndarray:
    """What a viewer shows for stored pixels [row, col] and an EXIF orientation (EXIF 2.3, tag 0x0112)."""
    return {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],                    # mirrored left-right
        3: lambda a: a[::-1, ::-1],                 # upside down
        4: lambda a: a[::-1, :],                    # mirrored top-bottom
        5: lambda a: a.transpose(1, 0, 2),          # row 0 -> left side, column 0 -> top
        6: lambda a: np.rot90(a, k=-1),             # row 0 -> right side: turn clockwise
        7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],  # row 0 -> right side, column 0 -> bottom
        8: lambda a: np.rot90(a, k=1),              # row 0 -> left side, column 0 -> bottom
    }[orientation](stored)


def _exif(orientation: int) -> Image.Exif:
    ex = Image.Exif()
    ex[0x0112] = orientation
    return ex


def _vectors(ws: Path) -> dict[str, np.ndarray]:
    w = Workspace(ws)
    con = w.connect(read_only=True)
    try:
        ids, vecs = store.load_all(w, con, "image")
        sid = dict(con.execute("SELECT id, source_id FROM items").fetchall())
    finally:
        con.close()
    return {sid[int(i)]: v for i, v in zip(ids, vecs, strict=True)}


def _reference(enc, im: Image.Image) -> np.ndarray:
    """open_clip's own path, independent of curate's loader: preprocess, encode, normalise."""
    with torch.inference_mode():
        v = enc.model.encode_image(enc.preprocess(im.convert("RGB")).unsqueeze(0))
    return torch.nn.functional.normalize(v.float(), dim=-1)[0].numpy()


# -- EXIF orientation -------------------------------------------------------------------

def test_sideways_jpeg_embeds_like_the_same_pixels_rotated_by_hand(tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    Image.fromarray(_pattern(300, 200)).save(d / "sideways.jpg", quality=95, exif=_exif(6))
    stored = np.asarray(Image.open(d / "sideways.jpg").convert("RGB"))  # pixels as stored, not turned
    Image.fromarray(np.ascontiguousarray(_displayed(stored, 6))).save(d / "upright.png")  # lossless
    ws = tmp_path / "ws"
    run_cli("build-index", d, "-w", ws, *TINY, "--workers", "0")
    v = _vectors(ws)
    np.testing.assert_allclose(v["sideways.jpg"], v["upright.png"], atol=1e-6)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_in_every_format(tmp_path, fmt, orientation):
    a = _pattern(36, 20, seed=orientation)
    p = tmp_path / f"o{orientation}.{fmt.lower()}"
    if fmt == "TIFF":
        Image.fromarray(a).save(p, fmt, tiffinfo={0x0112: orientation})
    else:
        Image.fromarray(a).save(p, fmt, exif=_exif(orientation), **({"lossless": True} if fmt == "WEBP" else {}))
    # lossless formats store `a` itself; a JPEG stores what its (unturned) decode gives
    stored = np.asarray(Image.open(p).convert("RGB")) if fmt == "JPEG" else a
    got = np.asarray(open_rgb(str(p)))
    np.testing.assert_array_equal(got, _displayed(stored, orientation))


# -- exact preprocessing by default, draft decoding on request ----------------------------

def test_default_is_exactly_open_clip_preprocessing_and_draft_is_opt_in(tmp_path, tiny_encoder):
    d = tmp_path / "photos"
    d.mkdir()
    # large enough that the decoder could scale it down (the old default took that path)
    Image.fromarray(_pattern(1600, 1200, seed=3)).save(d / "big.jpg", quality=92, exif=_exif(6))
    ref = _reference(tiny_encoder, ImageOps.exif_transpose(Image.open(d / "big.jpg")))

    # on the CPU, like the reference (a GPU run would use half precision)
    run_cli("build-index", d, "-w", tmp_path / "exact", *TINY, "--workers", "0", "--device", "cpu")
    exact = _vectors(tmp_path / "exact")["big.jpg"]
    np.testing.assert_allclose(exact, ref, atol=1e-6)

    run_cli("build-index", d, "-w", tmp_path / "draft", *TINY, "--workers", "0", "--device", "cpu", "--draft-decode")
    draft = _vectors(tmp_path / "draft")["big.jpg"]
    assert np.abs(draft - ref).max() > 1e-5  # the draft path really ran: other pixels
    assert float(draft @ ref) > 0.99          # yet nearly the same picture

    assert query(tmp_path / "exact", "SELECT decode FROM runs") == [("exact",)]
    assert query(tmp_path / "draft", "SELECT decode FROM runs") == [("draft",)]


# -- the pixel limit after the model's resize -----------------------------------------------

TRANSFORMS = [
    (224, "shortest"), ((224, 160), "shortest"), (224, "longest"), ((160, 224), "longest"),
    (224, "squash"), ((96, 128), "squash"), (64, "shortest"),
]


@pytest.mark.parametrize("size,mode", TRANSFORMS)
def test_resize_rule_is_read_from_the_transform(size, mode):
    pre = open_clip.image_transform(size, is_train=False, resize_mode=mode)
    rule = resize_rule(pre, 999)  # the fallback side must not be what is used
    resize_step = pre.transforms[0]
    for w, h in [(300, 200), (200, 300), (50, 7), (7, 50), (1000, 999), (225, 1)]:
        want = resize_step(Image.new("RGB", (w, h))).size  # what the real transform makes
        assert rule.output_size(w, h) == want, (w, h)


def test_thin_strip_is_rejected_with_its_size_and_the_limit(tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    Image.new("RGB", (200_000, 1), (90, 120, 200)).save(d / "strip.png", optimize=True)
    assert (d / "strip.png").stat().st_size < 2000  # tiny file, huge after the resize
    Image.fromarray(_pattern(400, 20)).save(d / "wide.png")  # 20:1 is a panorama, not an attack
    write_jpeg(d / "ok.jpg", seed=1)
    ws = tmp_path / "ws"
    run_cli("build-index", d, "-w", ws, *TINY, "--workers", "0")
    assert dict(query(ws, "SELECT source_id, status FROM items")) == {
        "strip.png": "rejected", "wide.png": "embedded", "ok.jpg": "embedded"}
    assert query(ws, "SELECT reason FROM rejected") == [(
        "extreme aspect ratio (200000x1, 200000:1): the model's resize (short side to 224) would make it "
        "44800000x224 = 10035M pixels, limit 89M",)]


def test_limit_uses_the_models_own_input_side(tmp_path):
    p = tmp_path / "strip.png"
    Image.new("RGB", (3000, 2), (0, 0, 0)).save(p)
    small = resize_rule(open_clip.image_transform(64, is_train=False), 224)
    large = resize_rule(open_clip.image_transform(336, is_train=False), 224)
    open_rgb(str(p), max_pixels=10_000_000, resize=small)  # 96000x64 = 6.1M pixels: fine
    with pytest.raises(BadImage, match=r"short side to 336\) would make it 504000x336 = 169M pixels, limit 10M"):
        open_rgb(str(p), max_pixels=10_000_000, resize=large)


# -- a loader worker that dies ---------------------------------------------------------------

@pytest.mark.slow
def test_a_dead_worker_costs_only_its_item(tmp_path, monkeypatch):
    photos = make_folder(tmp_path / "photos", n=24)
    clean = tmp_path / "clean"
    run_cli("build-index", photos, "-w", clean, *TINY, "--workers", "0")
    victim = str((photos / "img_013.jpg").resolve())
    # the documented fault-injection point: that worker kills itself with SIGKILL
    monkeypatch.setenv(FAULT_KILL_WORKER_ENV, victim)
    ws = tmp_path / "ws"
    res = run_cli("build-index", photos, "-w", ws, *TINY, "--workers", "2", "--batch-size", "4",
                  "--shard-size", "6")
    assert "23 embedded, 1 rejected, 0 pending" in res.output
    assert query(ws, "SELECT source_id, reason FROM rejected") == [(
        "img_013.jpg", "the image decoder process died on this image "
                       "(killed by SIGKILL, often the out-of-memory killer)")]
    got, want = _vectors(ws), _vectors(clean)
    assert set(got) == set(want) - {"img_013.jpg"}
    for k, v in got.items():
        np.testing.assert_allclose(v, want[k], atol=1e-6, err_msg=k)
    # the work is committed: a rerun has nothing left to do
    monkeypatch.delenv(FAULT_KILL_WORKER_ENV)
    res = run_cli("build-index", photos, "-w", ws, *TINY, "--workers", "2")
    assert "24 seen, 0 new" in res.output and "0 pending" in res.output


# -- unreadable files: the real cause, and no hang ------------------------------------------------

@pytest.mark.slow
def test_unreadable_files_name_the_real_cause(tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    write_jpeg(d / "good.jpg", seed=1)
    (d / "folder.jpg").mkdir()
    os.symlink(tmp_path / "gone.jpg", d / "dangling.jpg")
    os.mkfifo(d / "pipe.jpg")
    os.symlink(d / "loop_b.jpg", d / "loop_a.jpg")
    os.symlink(d / "loop_a.jpg", d / "loop_b.jpg")
    names = ["good.jpg", "folder.jpg", "dangling.jpg", "pipe.jpg", "loop_a.jpg"]
    (tmp_path / "m.csv").write_text("path\n" + "".join(f"photos/{n}\n" for n in names))
    ws = tmp_path / "ws"
    # a real process with a worker; the timeout only turns a hang (a FIFO opened for reading
    # waits for a writer forever) into a failure instead of a stuck test run
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "curate.cli", "build-index", str(tmp_path / "m.csv"), "-w", str(ws),
                           *TINY, "--workers", "1"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    reasons = dict(query(ws, "SELECT source_id, reason FROM rejected"))
    assert reasons == {
        "photos/folder.jpg": "is a directory, not an image file",
        "photos/dangling.jpg": f"broken symbolic link (its target {tmp_path / 'gone.jpg'} does not exist)",
        "photos/pipe.jpg": "not a regular file (a named pipe, FIFO)",
        "photos/loop_a.jpg": "too many levels of symbolic links",
    }
    assert query(ws, "SELECT source_id FROM items WHERE status = 'embedded'") == [("photos/good.jpg",)]


@pytest.mark.parametrize("code,reason", [
    (errno.EACCES, "permission denied"),
    (errno.EIO, "I/O error while reading the file (disk or network file system)"),
    (errno.ENOENT, "file not found"),
])
def test_os_errors_in_plain_words(code, reason):
    # As root, chmod does not block reads, and EIO needs a failing disk: the mapping is
    # checked on the errors the system raises for these codes.
    assert os_reason(OSError(code, os.strerror(code))) == reason
