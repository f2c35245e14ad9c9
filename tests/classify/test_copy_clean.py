"""curate deletes only what it placed, inside the folder it was given (issue 21, item 3).

`--copy-to/--link-to DIR --clean` removes the names DIR/.curate-files records. Hostile
variants: a record edited to lead out of DIR (`..`, absolute paths), a label folder or a
recorded file replaced by a link, the record itself a link, DIR itself a link (followed:
the user named it), a torn last line; and a real `curate filter --copy-to` SIGKILLed half
way, then rerun with --clean: exactly the files the killed run placed are removed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from conftest import open_db, run_cli
from test_classify_resume import label_file, make_workspace

from curate.errors import OutputError
from curate.select.filter import MANIFEST, PARTIAL, place_files, safe_name

REPO = Path(__file__).resolve().parents[2]
ENV = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def _sources(root: Path, n: int) -> list[tuple[int, str, str]]:
    """n real files, as (id, path, label) rows over three labels."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        p = root / f"p{i}.jpg"
        p.write_bytes(bytes([i % 256]) * (100 + i))
        rows.append((i, str(p), ("park", "bar", "shop")[i % 3]))
    return rows


def _files(folder: Path) -> set[str]:
    """Every file and link below `folder` (links not followed), the record left out."""
    out = set()
    for d, dirs, files in os.walk(folder):
        for name in files + [x for x in dirs if os.path.islink(os.path.join(d, x))]:
            rel = (Path(d) / name).relative_to(folder).as_posix()
            if rel != MANIFEST:
                out.add(rel)
    return out


def _record(folder: Path) -> set[str]:
    return {x for x in (folder / MANIFEST).read_text(encoding="utf-8").split("\n") if x}


@pytest.fixture()
def setup(tmp_path) -> dict:
    rows = _sources(tmp_path / "src", 9)
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.txt"
    victim.write_text("not curate's", encoding="utf-8")
    folder = tmp_path / "copies"
    placed = place_files(rows, folder, link=False, by_label=True)
    assert placed.done == 9 and len(_files(folder)) == 9
    (folder / "notes.txt").write_text("mine", encoding="utf-8")
    return {"rows": rows, "folder": folder, "outside": outside, "victim": victim, "tmp": tmp_path}


def test_a_record_edited_to_lead_out_of_the_folder_is_left_alone(setup):
    folder, victim = setup["folder"], setup["victim"]
    (folder / "park" / "x").mkdir()
    edits = ["../outside/victim.txt", str(victim), "park/../../outside/victim.txt", "./notes.txt", "notes.txt/",
             "park//0_p0.jpg", "park\\..\\..\\outside\\victim.txt", "park/x"]
    with open(folder / MANIFEST, "a", encoding="utf-8") as f:
        f.write("".join(f"{e}\n" for e in edits))
    res = place_files(setup["rows"][:3], folder, link=False, by_label=True, clean=True)
    assert victim.read_text(encoding="utf-8") == "not curate's"
    assert (folder / "notes.txt").read_text(encoding="utf-8") == "mine"
    assert res.removed == 9 and res.refused == len(edits) and res.done == 3
    assert (folder / "park" / "x").is_dir()             # a folder at a recorded name is not a file curate placed
    assert _files(folder) == {"notes.txt", "park/0_p0.jpg", "bar/1_p1.jpg", "shop/2_p2.jpg"}
    assert _record(folder) == {"park/0_p0.jpg", "bar/1_p1.jpg", "shop/2_p2.jpg"}


def test_a_label_folder_replaced_by_a_link_is_never_followed(setup):
    folder, outside = setup["folder"], setup["outside"]
    # the park folder moved elsewhere, and a link left in its place: its files are no longer in DIR
    os.rename(folder / "park", outside / "park")
    (folder / "park").symlink_to(outside / "park", target_is_directory=True)
    theirs = sorted((outside / "park").iterdir())
    assert len(theirs) == 3
    res = place_files([], folder, link=False, by_label=True, clean=True)
    assert res.removed == 6 and res.refused == 3
    assert sorted((outside / "park").iterdir()) == theirs       # nothing removed through the link
    assert (folder / "park").is_symlink()
    # nor does a copy go through it
    with pytest.raises(OutputError, match="is a link"):
        place_files(setup["rows"][:1], folder, link=False, by_label=True)
    assert sorted((outside / "park").iterdir()) == theirs


def test_a_recorded_file_replaced_by_a_link_is_removed_itself(setup):
    folder, victim = setup["folder"], setup["victim"]
    name = folder / "bar" / "1_p1.jpg"
    name.unlink()
    name.symlink_to(victim)
    (folder / "shop" / "2_p2.jpg").unlink()
    (folder / "shop" / "2_p2.jpg").symlink_to(setup["outside"], target_is_directory=True)
    res = place_files([], folder, link=False, by_label=True, clean=True)
    assert res.removed == 9
    assert victim.read_text(encoding="utf-8") == "not curate's" and setup["outside"].is_dir()
    assert _files(folder) == {"notes.txt"}


def test_a_record_that_is_a_link_is_refused(setup):
    folder, outside = setup["folder"], setup["outside"]
    listing = outside / "list.txt"                         # a list of the user's: it names their own file
    listing.write_text("notes.txt\n", encoding="utf-8")
    (folder / MANIFEST).unlink()
    (folder / MANIFEST).symlink_to(listing)
    with pytest.raises(OutputError, match="not curate's record"):
        place_files(setup["rows"], folder, link=False, by_label=True, clean=True)
    assert (folder / "notes.txt").read_text(encoding="utf-8") == "mine"
    assert listing.read_text(encoding="utf-8") == "notes.txt\n"     # never appended to


def test_a_folder_given_as_a_link_is_followed_once(setup):
    """The user's own link to the folder is their choice: curate works in its target."""
    link = setup["tmp"] / "via"
    link.symlink_to(setup["folder"], target_is_directory=True)
    res = place_files(setup["rows"][3:6], link, link=True, by_label=False, clean=True)
    assert res.removed == 9 and res.done == 3
    assert _files(setup["folder"]) == {"notes.txt", "3_p3.jpg", "4_p4.jpg", "5_p5.jpg"}
    assert all((setup["folder"] / f"{i}_p{i}.jpg").is_symlink() for i in (3, 4, 5))
    assert link.is_symlink()


def test_a_torn_last_line_names_nothing(setup):
    folder = setup["folder"]
    with open(folder / MANIFEST, "a", encoding="utf-8") as f:
        f.write("notes.txt")                                # a kill cut the line short: no newline
    res = place_files(setup["rows"][:1], folder, link=False, by_label=True, clean=True)
    assert res.removed == 9 and (folder / "notes.txt").exists()
    assert _record(folder) == {"park/0_p0.jpg"}


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> Path:
    """A classified workspace whose ~1,300 scored images are real files, to copy."""
    root = tmp_path_factory.mktemp("many")
    labels = label_file(root / "labels.csv", 6)
    ws = root / "ws"
    img, _cap = make_workspace(ws, labels, 2_000, image_shard=500, caption_shard=500)
    run_cli("classify", "-w", ws, "--set", labels, "--storage", "full")
    photos = root / "photos"
    photos.mkdir()
    for i in img:
        (photos / f"{i}.jpg").write_bytes(b"x" * 2_000)
    con = duckdb.connect(str(ws / "curate.duckdb"))
    con.execute("UPDATE items SET path = ? || '/' || id || '.jpg'", [str(photos)])
    con.close()
    return ws


@pytest.mark.slow
def test_a_copy_killed_half_way_is_cleaned_exactly(many, tmp_path):
    folder = tmp_path / "copies"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine", encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "curate.cli", "filter", "-w", str(many), "--min-prob", "0",
                             "--copy-to", str(folder)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO, env=ENV)
    try:
        while proc.poll() is None:      # killed once it has placed a few files
            if len([f for f in _files(folder) if not f.endswith(PARTIAL)]) > 21:   # notes.txt and 20 copies
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.wait(timeout=120)
    finally:
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, "the copy finished before it could be killed"
    placed = _files(folder) - {"notes.txt"}
    whole = {f for f in placed if not f.endswith(PARTIAL)}
    assert len(whole) >= 20 and whole <= _record(folder)          # every file placed was recorded first
    con = open_db(str(many / "curate.duckdb"))
    label, n = con.execute("SELECT label, count(*) FROM predictions GROUP BY label ORDER BY 2, 1 LIMIT 1").fetchall()[0]
    con.close()
    res = run_cli("filter", "-w", many, "--label", label, "--min-prob", "0", "--copy-to", folder, "--clean")
    assert f"removed {len(whole):,} files of an earlier run" in res.output
    assert "also holds 1 files curate did not place there" in res.output      # the user's notes.txt only
    left = _files(folder)
    assert "notes.txt" in left and len(left) == n + 1
    assert all(f.startswith(safe_name(label) + "/") for f in left - {"notes.txt"})   # no partial, nothing else
    assert _record(folder) == left - {"notes.txt"}
