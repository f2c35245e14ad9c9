"""Every item is accounted for (issue 7): sources never hide each other's items, and a folder
scan records what it does not take and survives bad entries (FIFOs, loops, odd names)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from conftest import make_folder, run_cli, write_jpeg
from ingest_support import permissions_apply
from PIL import Image

from curate.core.workspace import Workspace
from curate.ingest.scan import scan_into
from curate.ingest.sources import CAPTION_MAX_BYTES, SourceError, detect_source

TINY = ("--model", "curate-tiny", "--pretrained", "none", "--workers", "0")
REPO = Path(__file__).resolve().parents[2]


def _scan(ws_dir, source, run_id=1):
    con = Workspace(ws_dir).connect()
    return con, scan_into(con, detect_source(source), run_id)


def _rejected(con, stage=None):
    sql = "SELECT source_id, path, reason FROM rejected" + (" WHERE stage = ?" if stage else "") + " ORDER BY path"
    return con.execute(sql, [stage] if stage else []).fetchall()


def test_two_folders_named_alike_keep_all_items(tmp_path):
    a = make_folder(tmp_path / "A", n=3)
    b = tmp_path / "B"
    for i in range(3):  # the same names, other photos
        write_jpeg(b / f"img_{i:03d}.jpg", seed=100 + i)
    ws = tmp_path / "ws"
    run_cli("build-index", a, "-w", ws, *TINY)
    assert "3 seen, 3 new" in run_cli("build-index", b, "-w", ws, *TINY).output
    assert "3 seen, 0 new" in run_cli("build-index", b, "-w", ws, *TINY).output
    assert "3 seen, 0 new" in run_cli("build-index", a, "-w", ws, *TINY).output
    con = Workspace(ws).connect(read_only=True)
    rows = con.execute("SELECT i.source_id, i.path, s.kind, s.location FROM items i JOIN sources s USING (source_no) "
                       "ORDER BY id").fetchall()
    assert [r[0] for r in rows] == ["img_000.jpg", "img_001.jpg", "img_002.jpg"] * 2
    assert [r[1] for r in rows] == [str(d / f"img_{i:03d}.jpg") for d in (a, b) for i in range(3)]
    assert {r[3] for r in rows} == {str(a), str(b)}
    assert con.execute("SELECT count(*) FROM items WHERE status = 'embedded'").fetchone()[0] == 6


def test_manifest_ids_equal_to_another_manifests(tmp_path):
    for i in range(2):
        write_jpeg(tmp_path / f"{i}.jpg", seed=i)
    (tmp_path / "one.csv").write_text("id,path\n1,0.jpg\n")
    (tmp_path / "two.csv").write_text("id,path\n1,1.jpg\n")
    con, _ = _scan(tmp_path / "ws", tmp_path / "one.csv")
    assert scan_into(con, detect_source(tmp_path / "two.csv"), 2).added == 1
    assert con.execute("SELECT source_id, path FROM items ORDER BY id").fetchall() == [
        ("1", str(tmp_path / "0.jpg")), ("1", str(tmp_path / "1.jpg"))]


OLD_ITEMS = """
CREATE TABLE items (id BIGINT PRIMARY KEY, source_id VARCHAR NOT NULL UNIQUE, path VARCHAR NOT NULL,
    caption VARCHAR, status VARCHAR NOT NULL DEFAULT 'pending', caption_tokens INTEGER, caption_truncated BOOLEAN,
    run_id INTEGER, likes BIGINT);
"""


def test_a_workspace_from_before_sources_is_upgraded(tmp_path):
    a = make_folder(tmp_path / "A", n=2)
    b = tmp_path / "B"
    write_jpeg(b / "img_000.jpg", seed=50)
    ws = tmp_path / "ws"
    ws.mkdir()
    con = duckdb.connect(str(ws / "curate.duckdb"))
    con.execute(OLD_ITEMS)
    con.close()
    con = Workspace(ws).connect()  # the rest of the schema, as an older curate made it
    con.execute("INSERT INTO runs (run_id, command, source) VALUES (1, 'build-index', ?)", [f"folder {a}"])
    con.execute("INSERT INTO items (id, source_id, path, caption, status, run_id, likes) VALUES "
                "(0, 'img_000.jpg', ?, 'x', 'embedded', 1, 7), (1, 'img_001.jpg', ?, NULL, 'embedded', 1, NULL)",
                [str(a / "img_000.jpg"), str(a / "img_001.jpg")])
    assert scan_into(con, detect_source(a), 2).added == 0        # the same folder: nothing new
    assert scan_into(con, detect_source(b), 3).added == 1        # a folder named alike: its item is kept
    assert con.execute("SELECT id, source_id, status, likes, source_no FROM items ORDER BY id").fetchall() == [
        (0, "img_000.jpg", "embedded", 7, 1), (1, "img_001.jpg", "embedded", None, 1),
        (2, "img_000.jpg", "pending", None, 2)]
    assert con.execute("SELECT source_no, kind, location FROM sources ORDER BY 1").fetchall() == [
        (1, "folder", str(a)), (2, "folder", str(b))]


def test_formats_the_scan_takes_and_what_it_records(tmp_path):
    d = tmp_path / "photos"
    write_jpeg(d / "a.jpg", seed=1)
    Image.new("RGB", (40, 30), (200, 20, 20)).save(d / "b.avif")
    write_jpeg(tmp_path / "x.jpg", seed=2).rename(d / "c.jfif")
    (d / "d.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")    # Pillow here has no HEIF plugin
    (d / "e.psd").write_bytes(b"8BPS")
    write_jpeg(d / ".hidden.jpg", seed=3)
    (d / "notes.md").write_text("hello")
    (d / "a.txt").write_text("caption of a")
    ws = tmp_path / "ws"
    out = run_cli("build-index", d, "-w", ws, *TINY).output
    assert "3 seen, 3 new; not taken: 3 (in rejected, stage scan), 1 other files" in out
    con = Workspace(ws).connect(read_only=True)
    assert con.execute("SELECT source_id, status FROM items ORDER BY id").fetchall() == [
        ("a.jpg", "embedded"), ("b.avif", "embedded"), ("c.jfif", "embedded")]
    rej = {Path(p).name: r for _sid, p, r in _rejected(con, "scan")}
    assert set(rej) == {"d.heic", "e.psd", ".hidden.jpg"}
    assert "cannot decode .heic" in rej["d.heic"] and "hidden file" in rej[".hidden.jpg"]
    assert "rejected this run: 3 (scan 3;" in out


def test_symlinked_folders_are_followed_once(tmp_path):
    outside = tmp_path / "outside"
    write_jpeg(outside / "o.jpg", seed=1)
    d = tmp_path / "photos"
    write_jpeg(d / "sub" / "s.jpg", seed=2)
    (d / "linked").symlink_to(outside, target_is_directory=True)
    (d / "sub" / "loop").symlink_to(d, target_is_directory=True)         # a loop back to the root
    (d / "alias").symlink_to(d / "sub", target_is_directory=True)        # a second way to sub/
    con, res = _scan(tmp_path / "ws", d)
    # sorted walk: alias/ comes first and is scanned; sub/ is then the second way to the same folder
    assert con.execute("SELECT source_id FROM items ORDER BY id").fetchall() == [("alias/s.jpg",), ("linked/o.jpg",)]
    rej = _rejected(con, "scan")
    assert [(sid, "already scanned" in r) for sid, _p, r in rej] == [("alias/loop", True), ("sub", True)]
    assert res.seen == 2 and res.not_taken == 2


def _long_dir(root: Path) -> Path:
    """A folder whose path is longer than PATH_MAX: listing it fails even for root."""
    fd = os.open(root, os.O_RDONLY)
    name = "d" * 250
    try:
        for _ in range(18):
            os.mkdir(name, dir_fd=fd)
            nfd = os.open(name, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nfd
    finally:
        os.close(fd)
    return root / name


def test_a_folder_that_cannot_be_listed_is_recorded(tmp_path):
    d = tmp_path / "photos"
    write_jpeg(d / "z.jpg", seed=1)
    _long_dir(d)
    con, res = _scan(tmp_path / "ws", d)
    assert con.execute("SELECT source_id FROM items").fetchall() == [("z.jpg",)]
    rej = _rejected(con, "scan")
    assert len(rej) == 1 and "File name too long" in rej[0][2] and rej[0][1].startswith(str(d))
    if os.geteuid() != 0:  # as root, permissions do not stop a listing
        locked = d / "locked"
        write_jpeg(locked / "l.jpg", seed=2)
        locked.chmod(0)
        try:
            assert any("locked" in p for _s, p, _r in _rejected(*_scan(tmp_path / "ws2", d)[:1], "scan"))
        finally:
            locked.chmod(0o755)


@pytest.mark.slow
def test_bad_entries_cost_only_themselves(tmp_path):
    """A non-UTF-8 name, and captions that are a FIFO, a symlink loop, /dev/zero, a folder or
    too large: the scan ends (a FIFO once hung it; /dev/zero grew memory until killed), every
    image is taken, and each problem is recorded. Run as a real process: a hang must not hang pytest."""
    d = tmp_path / "photos"
    names = ["fifo", "loop", "zero", "folder", "big", "ok"]
    for i, n in enumerate(names):
        write_jpeg(d / f"{n}.jpg", seed=i)
    os.mkfifo(d / "fifo.txt")
    (d / "loop.txt").symlink_to(d / "loop.txt")
    (d / "zero.txt").symlink_to("/dev/zero")
    (d / "folder.txt").mkdir()
    with open(d / "big.txt", "wb") as f:
        f.truncate(CAPTION_MAX_BYTES + 1)
    (d / "ok.txt").write_text("fine")
    bad = os.path.join(os.fsencode(d), b"caf\xe9.jpg")
    with open(bad, "wb") as f:
        f.write((d / "ok.jpg").read_bytes())
    ws = tmp_path / "ws"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "curate.cli", "build-index", str(d), "-w", str(ws), *TINY],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    con = Workspace(ws).connect(read_only=True)
    items = dict(con.execute("SELECT source_id, caption FROM items").fetchall())
    assert items == {f"{n}.jpg": None for n in names[:-1]} | {"ok.jpg": "fine"}
    assert con.execute("SELECT count(*) FROM items WHERE status = 'embedded'").fetchone()[0] == 6
    caps = {Path(p).name: r for _s, p, r in _rejected(con, "caption")}
    assert set(caps) == {"fifo.txt", "loop.txt", "zero.txt", "folder.txt", "big.txt"}
    assert "not a regular file (a FIFO)" in caps["fifo.txt"]
    assert "unreadable" in caps["loop.txt"]
    assert "a device" in caps["zero.txt"]
    assert "too large" in caps["big.txt"]
    scan = _rejected(con, "scan")
    assert scan == [("caf\\xe9.jpg", str(d) + "/caf\\xe9.jpg",
                     "file name is not valid UTF-8 (bytes shown as \\xNN); rename the file")]
    n = con.execute("SELECT count(*) FROM rejected").fetchone()[0]
    assert f"rejected this run: {n} (caption 5, scan 1;" in proc.stdout


@pytest.mark.parametrize("locked", [
    ["a_first"],                      # the first folder walked
    ["m_middle"],                     # between two readable ones
    ["z_last"],                       # the last folder walked: once dropped silently
    ["z_last/deeper/deepest"],        # nested, and last
    ["a_first", "m_middle/inner", "z_last"],
])
def test_every_folder_that_cannot_be_listed_is_recorded_wherever_it_is(tmp_path, locked):
    d = tmp_path / "photos"
    for sub in ("a_first", "m_middle", "m_middle/inner", "z_last", "z_last/deeper", "z_last/deeper/deepest"):
        write_jpeg(d / sub / "p.jpg", seed=len(sub))
    write_jpeg(d / "top.jpg", seed=99)
    for sub in locked:
        (d / sub).chmod(0)
    try:
        with permissions_apply():
            con, res = _scan(tmp_path / "ws", d)
    finally:
        for sub in locked:
            (d / sub).chmod(0o755)
    rej = _rejected(con, "scan")
    assert sorted(sid for sid, _p, _r in rej) == sorted(locked)
    assert all(r.startswith("folder cannot be listed: Permission denied") for _s, _p, r in rej)
    assert res.not_taken == len(locked)
    taken = {sid for (sid,) in con.execute("SELECT source_id FROM items").fetchall()}
    assert "top.jpg" in taken and not any(sid.startswith(tuple(f"{x}/" for x in locked)) for sid in taken)


def test_a_source_folder_that_cannot_be_listed_is_a_clear_error(tmp_path):
    d = tmp_path / "photos"
    write_jpeg(d / "p.jpg", seed=1)
    d.chmod(0)
    try:
        with permissions_apply():
            with pytest.raises(SourceError, match="photos: the folder cannot be listed: Permission denied"):
                detect_source(d)
    finally:
        d.chmod(0o755)


def test_curate_workspaces_and_outputs_inside_a_source_are_not_scanned(tmp_path):
    """A workspace kept inside its source folder (its report's pictures), another one deeper, a report
    folder, a --copy-to folder and an output folder half written: none of their images become items,
    and one note says which folders were skipped."""
    src = make_folder(tmp_path / "photos", n=3)
    write_jpeg(src / "trips" / "t.jpg", seed=7)
    ws = src / "ws"
    run_cli("build-index", src, "-w", ws, *TINY)
    write_jpeg(ws / "report" / "grids" / "class.png", seed=8)              # as `report --out ws/report` leaves
    (ws / "report" / ".curate-report").write_text("grids/class.png\n")
    deeper = src / "trips" / "old" / "ws2"
    write_jpeg(deeper / "x.jpg", seed=9)
    Workspace(deeper).connect().close()
    write_jpeg(src / "out" / "cmp" / "coverage.png", seed=10)              # compare --out photos/out/cmp
    (src / "out" / "cmp" / ".curate-report").write_text("coverage.png\n")
    write_jpeg(src / "dogs" / "dog" / "img_000.jpg", seed=0)               # filter --copy-to photos/dogs
    (src / "dogs" / ".curate-files").write_text("dog/img_000.jpg\n")
    write_jpeg(src / ".rep.curate-partial" / "a.png", seed=11)              # a report being written
    out = run_cli("build-index", src, "-w", ws, *TINY).output
    con = Workspace(ws).connect(read_only=True)
    try:
        ids = [sid for (sid,) in con.execute("SELECT source_id FROM items ORDER BY id").fetchall()]
        scan_rejects = con.execute("SELECT count(*) FROM rejected WHERE stage = 'scan'").fetchone()[0]
    finally:
        con.close()
    assert ids == ["img_000.jpg", "img_001.jpg", "img_002.jpg", "trips/t.jpg"]
    assert scan_rejects == 0
    notes = [line for line in out.splitlines() if line.startswith("note:")]
    assert len(notes) == 1, out
    assert "5 folder(s)" in notes[0] and "ws" in notes[0] and "not scanned" in notes[0]
    assert "4 seen, 0 new" in out


def test_the_markers_the_scan_skips_are_the_ones_curate_writes():
    from curate.ingest import sources
    from curate.select import filter as subsets

    assert sources.COPY_MANIFEST == subsets.MANIFEST


def test_a_workspace_given_as_the_source_is_refused(tmp_path):
    ws = tmp_path / "ws"
    write_jpeg(ws / "report" / "a.png", seed=1)
    Workspace(ws).connect().close()
    out = run_cli("build-index", ws, "-w", tmp_path / "other", *TINY, expect=None).output
    assert "is a curate workspace" in out and "Traceback" not in out
    assert not (tmp_path / "other").exists()
