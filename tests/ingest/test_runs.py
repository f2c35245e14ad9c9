"""The `runs` table after a kill -9: the dead run is marked interrupted, each run counts its own work."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

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
