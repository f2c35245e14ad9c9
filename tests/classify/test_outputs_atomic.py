"""Outputs are whole or absent (issue 8).

- `filter --out`: a SIGKILL in the middle of the write (a real subprocess writing a
  ~60 MB output) leaves the earlier file or nothing at the name, never a truncated file,
  and the next run leaves nothing else in the folder; a write that fails (a real file-size
  limit, RLIMIT_FSIZE: EFBIG as on a full disk) leaves nothing.
- `--copy-to`: a copy that fails leaves no 0-byte or partial file at its final name; the
  command says when the folder holds files of an earlier export or of the user, and
  `--clean` removes only what curate placed there.
- Label folders never merge, and are safe names, for a real label set holding `x/y`,
  `x y`, `x_y`, `.`, `..`, `?`, `CON`, a very long name and case variants.
"""

from __future__ import annotations

import csv
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from classify_support import in_classification
from conftest import open_db, run_cli
from test_classify_resume import label_file, make_workspace

from curate.classify.labels import load_label_set
from curate.select.filter import MANIFEST, place_files, safe_name

REPO = Path(__file__).resolve().parents[2]
ENV = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def big_ws(tmp_path_factory) -> Path:
    """A classified workspace whose `filter --min-prob 0` writes 1M rows (~60 MB of CSV)."""
    root = tmp_path_factory.mktemp("big")
    labels = label_file(root / "labels.csv", 12)
    ws = root / "ws"
    make_workspace(ws, labels, 1_000, image_shard=500, caption_shard=500)
    run_cli("classify", "-w", ws, "--set", labels, "--storage", "full")
    con = in_classification(duckdb.connect(str(ws / "curate.duckdb")))   # its tables, not main's views
    # 1M more items with the scores of the first one: cheap to make, slow enough to write
    con.execute("INSERT INTO items (id, source_id, path, caption, status) SELECT 10000000 + i, 'x' || i, "
                "'/photos/a/long/enough/folder/name/for/a/big/output/' || i || '.jpg', 'a caption', 'embedded' "
                "FROM range(1000000) t(i)")
    con.execute("INSERT INTO item_scores BY NAME SELECT 10000000 + t.i AS id, s.* EXCLUDE (id) FROM range(1000000) "
                "t(i), (SELECT * FROM item_scores WHERE image_label IS NOT NULL ORDER BY id LIMIT 1) s")
    con.close()
    return ws


def _filter_proc(ws: Path, out: Path, *extra: str, limit: int | None = None) -> subprocess.Popen:
    def fsize_limit():  # what a full disk does to a write: it fails part way (EFBIG here, ENOSPC there)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.Popen([sys.executable, "-m", "curate.cli", "filter", "-w", str(ws), "--min-prob", "0",
                             "--out", str(out), *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO, env=ENV, preexec_fn=fsize_limit if limit else None)


def _read(path: Path) -> list:
    if path.suffix == ".parquet":
        con = duckdb.connect()
        rel = con.execute("SELECT * FROM read_parquet(?)", [str(path)])
        cols = [d[0] for d in rel.description]
        return [dict(zip(cols, r, strict=True)) for r in rel.fetchall()]
    with open(path, newline="", encoding="utf-8") as f:
        if path.suffix == ".csv":
            return list(csv.DictReader(f))
        return [json.loads(line) for line in f]


@pytest.mark.slow
@pytest.mark.parametrize("name,earlier", [("x.csv", True), ("x.jsonl", False), ("x.parquet", False)])
def test_a_filter_killed_mid_write_leaves_the_earlier_file_or_none(big_ws, tmp_path, name, earlier):
    folder = tmp_path / "out"
    out = folder / name
    small = ["--label", "place_3"]
    if earlier:
        run_cli("filter", "-w", big_ws, "--min-prob", "0", *small, "--out", out)
        before = out.read_bytes()
    proc = _filter_proc(big_ws, out)
    try:
        while proc.poll() is None:   # kill it once the output has started to grow, under any name
            grown = [f for f in folder.iterdir() if f.name != name] if folder.exists() else []
            if any(f.stat().st_size > 0 for f in grown if f.exists()):
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(timeout=60)
    finally:
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, "the filter finished before it could be killed"
    if earlier:
        assert out.read_bytes() == before                   # the earlier output, whole
    else:
        assert not out.exists()                             # never a truncated file at the name
    run_cli("filter", "-w", big_ws, "--min-prob", "0", *small, "--out", out)
    assert sorted(f.name for f in folder.iterdir()) == [name]     # nothing else left behind
    rows = _read(out)
    assert rows and all(r["label"] == "place_3" for r in rows)


@pytest.mark.slow
def test_a_failed_write_leaves_nothing_at_the_name(big_ws, tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    out = folder / "x.csv"
    proc = _filter_proc(big_ws, out, limit=1_000_000)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 74, stdout + stderr
    assert f"could not write {out}" in stderr and "nothing was left" in stderr, stderr
    assert list(folder.iterdir()) == []
    # an output name that is a folder: the rename fails after the write, and the write is removed
    (folder / "y.jsonl").mkdir()
    res = run_cli("filter", "-w", big_ws, "--label", "place_3", "--out", folder / "y.jsonl", expect=74)
    assert "could not write" in res.output
    assert sorted(f.name for f in folder.iterdir()) == ["y.jsonl"] and not any((folder / "y.jsonl").iterdir())


@pytest.fixture(scope="module")
def photo_ws(built_workspace, tmp_path_factory) -> Path:
    """The 12 real JPEGs, classified against a label set whose names could collide as folders."""
    root = tmp_path_factory.mktemp("photos")
    ws = root / "ws"
    shutil.copytree(built_workspace, ws)
    labels = root / "labels.txt"
    labels.write_text("\n".join(TRICKY) + "\n", encoding="utf-8")
    run_cli("classify", "-w", ws, "--set", labels, "--prompts", "raw")
    return ws


TRICKY = ["x/y", "x y", "x_y", "x:y", ".", "..", "?", "CON", "con.txt", "aux", "Skyscraper", "skyscraper",
          "a" * 200, "a" * 199 + "b", "-", "_", "bakery_shop", "bakery/shop", "été", "name.", " lead"]


def test_label_folders_never_merge_and_are_safe(photo_ws, tmp_path):
    con = open_db(str(photo_ws / "curate.duckdb"))
    labels = [r[0] for r in con.execute("SELECT label FROM labels ORDER BY label_idx").fetchall()]
    paths = [r[0] for r in con.execute("SELECT path FROM items ORDER BY id").fetchall()]
    con.close()
    assert labels == list(load_label_set(str(photo_ws.parent / "labels.txt")).labels)
    folders = [safe_name(x) for x in labels]
    assert len(set(folders)) == len(labels)
    assert len({f.lower() for f in folders}) == len(labels)        # distinct on case-insensitive file systems
    for f in folders:
        assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.~-]*", f) and len(f) <= 80 and not f.endswith(".")
        assert f.split(".")[0].lower() not in {"con", "aux", "prn", "nul"}
    # every label gets one real file copied into its own folder, inside the target
    rows = [(i, paths[i % len(paths)], lab) for i, lab in enumerate(labels)]
    placed = place_files(rows, tmp_path / "copies", link=False, by_label=True)
    assert placed.done == len(labels)
    dirs = [d for d in (tmp_path / "copies").iterdir() if d.is_dir()]
    assert len(dirs) == len(labels) and all(len(list(d.iterdir())) == 1 for d in dirs)
    # plain labels keep their own name
    assert safe_name("x_y") == "x_y" and safe_name("bakery_shop") == "bakery_shop"
    # and the CLI copies into the same folders
    res = run_cli("filter", "-w", photo_ws, "--min-prob", "0", "--copy-to", tmp_path / "cli")
    assert "copied 12 files" in res.output
    assert {d.name for d in (tmp_path / "cli").iterdir() if d.is_dir()} <= set(folders)


@pytest.mark.slow
def test_a_copy_that_fails_leaves_no_file_at_its_name(photo_ws, tmp_path):
    folder = tmp_path / "copies"
    proc = subprocess.Popen([sys.executable, "-m", "curate.cli", "filter", "-w", str(photo_ws), "--min-prob", "0",
                             "--copy-to", str(folder)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO, env=ENV,
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (2_000, 2_000)))
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 74, stdout + stderr
    assert "could not write" in stderr
    files = [f for f in folder.rglob("*") if f.is_file()]
    assert [f.name for f in files] == [MANIFEST]                # no 0-byte or partial image, no temporary
    assert (folder / MANIFEST).read_text() == ""


def test_an_earlier_export_is_reported_and_clean_removes_only_curates_files(photo_ws, tmp_path):
    folder = tmp_path / "copies"
    assert "copied 12 files" in run_cli("filter", "-w", photo_ws, "--min-prob", "0", "--copy-to", folder).output
    (folder / "notes.txt").write_text("mine", encoding="utf-8")
    con = open_db(str(photo_ws / "curate.duckdb"))
    label, n = con.execute("SELECT label, count(*) FROM predictions GROUP BY label ORDER BY 2, 1 LIMIT 1").fetchall()[0]
    con.close()
    res = run_cli("filter", "-w", photo_ws, "--label", label, "--min-prob", "0", "--copy-to", folder)
    assert f"copied {n} files" in res.output
    assert f"also holds {12 - n} files an earlier run placed there" in res.output
    assert "also holds 1 files curate did not place there" in res.output
    res = run_cli("filter", "-w", photo_ws, "--label", label, "--min-prob", "0", "--copy-to", folder, "--clean")
    assert "removed 12 files of an earlier run" in res.output and f"copied {n} files" in res.output
    left = sorted(f.relative_to(folder).as_posix() for f in folder.rglob("*") if f.is_file())
    assert len(left) == n + 2 and "notes.txt" in left and MANIFEST in left
    assert all(x.startswith(safe_name(label) + "/") for x in left if x not in ("notes.txt", MANIFEST))
    assert (folder / "notes.txt").read_text() == "mine"
    assert [d for d in folder.iterdir() if d.is_dir()] == [folder / safe_name(label)]   # empty label folders gone


def test_a_report_folder_holds_one_report(photo_ws, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(photo_ws, ws)
    out = tmp_path / "report"
    run_cli("sample", "-w", ws, "--top-classes", "3", "--per-class", "4", "--name", "three")
    con = duckdb.connect(str(ws / "curate.duckdb"))   # mark every image a hit, so each class has a grid
    con.execute("INSERT INTO judgments (id, label, mark) SELECT id, label, 'hit' FROM review_items")
    con.close()
    run_cli("report", "-w", ws, "--set", "three", "--out", out)
    assert len(list((out / "grids").glob("*.png"))) == 6
    run_cli("sample", "-w", ws, "--top-classes", "1", "--per-class", "4", "--name", "one")
    files = {f.relative_to(out).as_posix() for f in out.rglob("*") if f.is_file()}
    run_cli("report", "-w", ws, "--set", "one", "--out", out)
    now = {f.relative_to(out).as_posix() for f in out.rglob("*") if f.is_file()}
    assert len(list((out / "grids").glob("*.png"))) == 2          # the earlier report's grids are gone
    assert now <= files and [x for x in os.listdir(tmp_path) if "curate" in x] == []
    (out / "mine.docx").write_bytes(b"a user's file")              # never replaced with a user's file in it
    res = run_cli("report", "-w", ws, "--set", "three", "--out", out, expect=74)
    assert "mine.docx" in res.output and (out / "mine.docx").exists()


def test_source_columns_named_like_curates_come_out_as_src(tmp_path):
    """A manifest with `label`, `prob` and `Label` columns: curate's own label and prob keep their
    names and values; the source's come out as src_<name>, never label_1."""
    from conftest import write_jpeg
    photos = tmp_path / "photos"
    lines = ["path,caption,label,prob,Label,city"]
    for i in range(6):
        write_jpeg(photos / f"p{i}.jpg", seed=i)
        lines.append(f"photos/p{i}.jpg,caption {i},mine-{i},{i / 10},Mine-{i},nyc")
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    ws = tmp_path / "ws"
    run_cli("build-index", tmp_path / "m.csv", "-w", ws, "--model", "curate-tiny", "--pretrained", "none",
            "--workers", "0")
    run_cli("classify", "-w", ws, "--set", label_file(tmp_path / "labels.csv", 5))
    con = open_db(str(ws / "curate.duckdb"))
    want = dict(con.execute("SELECT id, prob FROM predictions").fetchall())
    labels = dict(con.execute("SELECT id, label FROM predictions").fetchall())
    # the items table holds the manifest's columns under whatever names ingest keeps them
    extras = [r[0] for r in con.execute("SELECT column_name FROM information_schema.columns WHERE "
                                        "table_catalog = current_database() AND table_name = 'items' "
                                        "ORDER BY ordinal_position").fetchall()][8:]
    con.close()
    named, used = [], {"id", "path", "caption", "label", "prob", "source_id"}
    for c in extras:
        if c == "source_no":
            continue
        while c.lower() in used:          # src_ again until no other column has the name, in any case
            c = "src_" + c
        used.add(c.lower())
        named.append(c)
    assert named == ["src_label", "src_prob", "src_src_Label", "city"]
    for name in ("o.csv", "o.parquet", "o.jsonl"):
        run_cli("filter", "-w", ws, "--min-prob", "0", "--out", tmp_path / name)
        rows = _read(tmp_path / name)
        assert len(rows) == 6
        cols = list(rows[0])
        assert cols == ["id", "path", "caption", "label", "prob", "source_id", *named], cols
        assert len({c.lower() for c in cols}) == len(cols)
        for r in rows:   # curate's own columns: curate's values; the manifest's: all of them, kept
            assert r["label"] == labels[int(r["id"])] and float(r["prob"]) == pytest.approx(want[int(r["id"])])
            values = {str(v) for k, v in r.items() if k not in ("label", "prob")}
            i = int(Path(r["path"]).stem[1:])
            assert {f"mine-{i}", f"Mine-{i}", "nyc"} <= values and ({str(i / 10), i / 10} & (values | {
                float(v) for k, v in r.items() if k.lower().endswith("prob") and k != "prob"}))
