"""Errors a person can act on, through the real command line (`python -m curate.cli` in a
subprocess, so the real exit path runs): one `curate: ...` line, the documented exit status
(curate/errors.py), no traceback, and the workspace as it was before."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_folder, open_db, run_cli

REPO = Path(__file__).resolve().parents[2]
TINY = ("--model", "curate-tiny", "--pretrained", "none", "--workers", "0")


def curate(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "curate.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def failed(res: subprocess.CompletedProcess, code: int, *words: str) -> str:
    """The one error line, after checking the exit status and that there is no traceback."""
    assert res.returncode == code, f"exit {res.returncode}, wanted {code}:\n{res.stdout}\n{res.stderr}"
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("curate: ")]
    assert len(lines) == 1 and res.stderr.rstrip().endswith(lines[0]), res.stderr
    for w in words:
        assert w.lower() in lines[0].lower(), lines[0]
    return lines[0]


def state(ws: Path) -> tuple:
    """What must not change: item and run counts, statuses, and a working `curate sql`."""
    con = open_db(str(ws / "curate.duckdb"))
    try:
        counts = con.execute("SELECT (SELECT count(*) FROM items), (SELECT count(*) FROM runs),"
                             " (SELECT list(status ORDER BY run_id) FROM runs)").fetchall()[0]
    finally:
        con.close()
    assert "12" in run_cli("sql", "-w", ws, "select count(*) from items").output
    return counts


@pytest.fixture(scope="module")
def classified(built_workspace, tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("errors") / "ws"
    shutil.copytree(built_workspace, ws)
    run_cli("classify", "-w", ws)
    run_cli("sample", "-w", ws, "--top-classes", "3", "--per-class", "2")
    return ws


@pytest.mark.slow
def test_table_of_conditions(classified, tmp_path):
    ws = classified
    before = state(ws)
    (tmp_path / "somefile.txt").write_text("x")
    (tmp_path / "empty.txt").write_text("# no labels here\n")
    (tmp_path / "bad.csv").write_text("id;label\n1;bridge\n", encoding="utf-8")
    rows = [
        # (arguments, exit status, words the message must hold)
        (("filter", "-w", ws, "--label", "skyscrapr"), 1, ["unknown label 'skyscrapr'", "closest: skyscraper"]),
        (("build-index", tmp_path, "-w", ws, "--model", "no-such-model", "--pretrained", "none"), 1,
         ["unknown model architecture 'no-such-model'"]),
        (("sql", "-w", tmp_path / "nowhere", "select 1"), 4, ["no workspace at", "build-index"]),
        (("review", "-w", ws, "--import", tmp_path / "bad.csv"), 1, ["missing column(s) mark"]),
        (("report", "--marks", tmp_path / "bad.csv", "--out", tmp_path / "r"), 1, ["missing column(s) prob, mark"]),
        (("classify", "-w", ws, "--set", tmp_path / "empty.txt"), 1, ["has no labels"]),
        (("sql", "-w", ws, "selec count(*) from items"), 1, ["the query failed", "syntax error"]),
        (("filter", "-w", ws, "--out", tmp_path / "somefile.txt" / "x.csv"), 74, ["somefile.txt", "another path"]),
    ]
    for args, code, words in rows:
        failed(curate(*args), code, *words)
        assert state(ws) == before, args
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.slow
def test_a_locked_workspace(classified):
    ws = classified
    before = state(ws)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys; con = duckdb.connect(sys.argv[1]); print('ready', flush=True); "
                               "sys.stdin.read()", str(ws / "curate.duckdb")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        # the message names the holder's process; --wait 0 says so at once instead of after the default wait
        busy = f"is busy: process {holder.pid} "
        failed(curate("--wait", "0", "sql", "-w", ws, "select count(*) from items"), 5, busy)
        failed(curate("--wait", "0", "sample", "-w", ws), 5, busy)
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert state(ws) == before


@pytest.mark.slow
def test_a_missing_shard(built_workspace, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(built_workspace, ws)
    before = state(ws)
    shard = sorted((ws / "embeddings" / "image").glob("part-*[0-9].npy"))[0]
    shard.unlink()
    res = curate("classify", "-w", ws)
    # the store raises WorkspaceError (4) for a missing shard; before that, the CLI's OS error mapping (74)
    assert res.returncode in (4, 74), res.stderr
    line = failed(res, res.returncode, shard.name)
    assert "missing" in line or "no such file" in line.lower()
    assert state(ws) == before


def _refused(code: int, *args: object) -> str:
    """In-process (the same CLI group and exit mapping, without a new interpreter per run)."""
    out = run_cli(*args, expect=code).output
    assert "Traceback" not in out and out.rstrip().splitlines()[-1].startswith("curate: "), out
    return out


def test_a_failed_first_build_leaves_no_workspace(tmp_path, built_workspace):
    photos = make_folder(tmp_path / "photos", n=2)
    (tmp_path / "empty").mkdir()
    assert "no images" in _refused(1, "build-index", tmp_path / "empty", "-w", tmp_path / "ws1", *TINY)
    assert "unknown model" in _refused(1, "build-index", photos, "-w", tmp_path / "ws2", "--model", "nope",
                                       "--pretrained", "none")
    assert "laion2b_s34b_b79k" in _refused(1, "build-index", photos, "-w", tmp_path / "ws3", "--model", "ViT-B-32",
                                           "--pretrained", "laion2b_s34b_b79k")
    empty_manifest = tmp_path / "m.csv"
    empty_manifest.write_text("path,caption\n", encoding="utf-8")
    assert "no items" in _refused(1, "build-index", empty_manifest, "-w", tmp_path / "ws4", *TINY)
    assert not any((tmp_path / f"ws{i}").exists() for i in (1, 2, 3, 4))
    # an existing workspace stays as it was: no run recorded, nothing added
    ws = tmp_path / "ws"
    shutil.copytree(built_workspace, ws)
    before = state(ws)
    assert "not changed" in _refused(1, "build-index", tmp_path / "empty", "-w", ws)
    assert "checkpoint file not found" in _refused(1, "build-index", photos, "-w", ws,
                                                   "--pretrained", tmp_path / "nope.safetensors")
    assert state(ws) == before


@pytest.fixture()
def full_disk(tmp_path):
    """A real full file system: a small tmpfs (needs root and mount), filled up."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler


@pytest.mark.slow
def test_a_full_disk(classified, full_disk):
    ws = full_disk / "ws"
    shutil.copytree(classified, ws)
    sheet = full_disk.parent / "sheet.csv"
    run_cli("review", "-w", ws, "--export", sheet)
    sheet.write_text(sheet.read_text(encoding="utf-8-sig").replace(",,", ",hit,"), encoding="utf-8")
    before = state(ws)
    filler = _fill(full_disk)
    failed(curate("sample", "-w", ws), 74, "disk full", "free some space")
    failed(curate("review", "-w", ws, "--import", sheet), 74, "disk full")  # not "cannot rollback"
    failed(curate("filter", "-w", classified, "--out", full_disk / "x.parquet"), 74, "disk full")
    filler.unlink()
    assert state(ws) == before
    # with room again, the same commands work
    assert curate("sample", "-w", ws, "--top-classes", "2", "--per-class", "2").returncode == 0
    assert "imported" in run_cli("review", "-w", ws, "--set", "image-top3x2-seed0", "--import", sheet).output


def test_the_error_base_class_is_exported_by_the_package():
    import curate
    import curate.errors

    assert curate.CurateError is curate.errors.CurateError
    assert all(issubclass(c, curate.CurateError) for c in (curate.errors.InputError, curate.errors.WorkspaceError,
                                                          curate.errors.WorkspaceBusy, curate.errors.OutputError))
