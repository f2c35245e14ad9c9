"""The `runs` table after a kill -9: the dead run is marked interrupted, each run counts its own work."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from conftest import write_jpeg
from test_resume import _cmd, kill_when_written

from curate.core.workspace import Workspace, mark_interrupted

N = 60


def _runs(ws):
    con = Workspace(ws).connect(read_only=True)
    try:
        return con.execute("SELECT run_id, status, items_added, items_embedded, items_rejected, pid, host "
                           "FROM runs ORDER BY run_id").fetchall()
    finally:
        con.close()


@pytest.mark.slow
def test_killed_run_is_marked_interrupted_and_counts_follow_each_run(tmp_path):
    src = tmp_path / "photos"
    for i in range(N):
        write_jpeg(src / f"{i:04d}.jpg", size=(640, 480), seed=i)
    (src / "0001.jpg").write_bytes(b"broken")   # rejected by the first run, before the kill
    (src / "0055.jpg").write_bytes(b"broken")   # rejected by the resumed run
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    ws = tmp_path / "ws"
    proc = kill_when_written(src, ws, "part-000002.npy", env)

    (run1,) = _runs(ws)
    assert run1[1] == "running" and run1[5] == proc.pid and run1[6] == socket.gethostname()

    subprocess.run(_cmd(src, ws), env=env, check=True, capture_output=True)
    r1, r2 = _runs(ws)
    assert r1[1] == "interrupted" and r2[1] == "finished"
    assert r1[2] == N and r2[2] == 0                          # the first run's scan added every item
    assert r1[3] > 0 and r2[3] > 0                            # each embedded part of them ...
    assert r1[3] + r2[3] == N - 2                             # ... and together all the good ones
    assert (r1[4], r2[4]) == (1, 1)                           # each its own rejection


def test_a_run_whose_process_lives_is_not_marked(tmp_path):
    ws = Workspace(tmp_path / "ws")
    con = ws.connect()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    try:
        host = socket.gethostname()
        for run_id, pid, h in ((1, live.pid, host), (2, gone.pid, host), (3, gone.pid, "another-host"),
                               (4, None, None)):
            con.execute("INSERT INTO runs (run_id, status, pid, host, started_at) VALUES (?, 'running', ?, ?, now())",
                        [run_id, pid, h])
        assert mark_interrupted(con) == [2, 4]   # a dead pid here; a run from before pids were recorded
        status = dict(con.execute("SELECT run_id, status FROM runs").fetchall())
        assert status == {1: "running", 2: "interrupted", 3: "running", 4: "interrupted"}
    finally:
        live.kill()
        live.wait()
        con.close()


def test_each_build_records_where_its_batches_spent_their_time(tmp_path):
    """decode / forward / commit seconds over the run's batches, in `runs`, and per batch with
    what bound the run in the run_times view; an import embeds nothing and has none."""
    from conftest import make_folder

    from curate import api

    src = make_folder(tmp_path / "photos", n=6)
    ws = tmp_path / "ws"
    api.build_index(src, ws, model="curate-tiny", pretrained="none", workers=0, batch_size=2, quiet=True)
    con = Workspace(ws).connect(read_only=True)
    try:
        batches, decode_s, forward_s, commit_s = con.execute(
            "SELECT batches, decode_s, forward_s, commit_s FROM runs WHERE command = 'build-index'").fetchall()[0]
        assert batches == 3 and decode_s > 0 and forward_s > 0 and commit_s > 0
        (row,) = con.execute("SELECT batches, decode_ms, forward_ms, commit_ms, bound_by FROM run_times").fetchall()
        assert row[0] == 3 and row[1] == round(1000 * decode_s / 3, 1) and row[4] in ("decode", "forward", "commit")
        assert row[4] == max(zip((decode_s, forward_s, commit_s), ("decode", "forward", "commit"), strict=True))[1]
    finally:
        con.close()


def test_an_older_workspace_gets_the_timing_columns_at_its_next_write(tmp_path):
    """A workspace from before the timings: its runs table lacks the columns and it has no
    run_times view; the next read-write connect adds both (queries/workspace_upgrades.sql)."""
    ws = Workspace(tmp_path / "ws")
    con = ws.connect()
    con.execute("DROP VIEW run_times")
    for c in ("batches", "decode_s", "forward_s", "commit_s"):
        con.execute(f"ALTER TABLE runs DROP COLUMN {c}")
    con.execute("INSERT INTO runs (run_id, command, status) VALUES (1, 'build-index', 'finished')")
    con.execute("DELETE FROM meta WHERE key = 'schema_stamp'")   # nor the stamp of the schema it has
    con.close()
    con = ws.connect()
    try:
        cols = {r[0] for r in con.execute("DESCRIBE runs").fetchall()}
        assert {"batches", "decode_s", "forward_s", "commit_s"} <= cols
        assert con.execute("SELECT * FROM run_times").fetchall() == []   # the old run: no timings, no row
    finally:
        con.close()
