"""A build-index killed with SIGKILL mid-embedding, run again, equals an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import faiss
import numpy as np
import pytest
from conftest import write_jpeg
from ingest_support import workspace_state

N = 120


def _cmd(src, ws):
    return [sys.executable, "-m", "curate.cli", "build-index", str(src), "-w", str(ws), "--model", "curate-tiny",
            "--pretrained", "none", "--workers", "1", "--batch-size", "4", "--shard-size", "8"]


def kill_when_written(src, ws, part: str, env: dict) -> subprocess.Popen:
    """Run a real build-index and SIGKILL it the moment its image shard `part` appears."""
    proc = subprocess.Popen(_cmd(src, ws), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = ws / "embeddings" / "image" / part
    deadline = time.monotonic() + 120
    while not target.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    return proc


def _state(ws):
    st = workspace_state(ws)
    return st.items, st.rejected, st.image, st.caption


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(tmp_path):
    src = tmp_path / "photos"
    for i in range(N):
        write_jpeg(src / f"{i:04d}.jpg", size=(640, 480), seed=i)
        if i % 3:
            (src / f"{i:04d}.txt").write_text(f"caption number {i} " + "word " * (i % 90))
    (src / "0050.jpg").write_bytes(b"broken")  # a rejection that must be recorded exactly once
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}

    killed_ws = tmp_path / "killed"
    kill_when_written(src, killed_ws, "part-000003.npy", env)

    items, _, _, _ = _state(killed_ws)
    assert len(items) == N and any(r[4] == "pending" for r in items), "the kill must land mid-embedding"

    subprocess.run(_cmd(src, killed_ws), env=env, check=True, capture_output=True)
    full_ws = tmp_path / "full"
    subprocess.run(_cmd(src, full_ws), env=env, check=True, capture_output=True)

    a_items, a_rej, (a_ids, a_vecs), (a_cids, a_cvecs) = _state(killed_ws)
    b_items, b_rej, (b_ids, b_vecs), (b_cids, b_cvecs) = _state(full_ws)
    # paths differ only by workspace-independent source root: same source, same paths
    assert a_items == b_items
    assert a_rej == b_rej and len(a_rej) == 1
    assert a_ids.tolist() == b_ids.tolist() and len(a_ids) == N - 1
    assert a_cids.tolist() == b_cids.tolist()
    # batches fall differently after a resume; CPU kernels may round the last bit differently
    np.testing.assert_allclose(a_vecs, b_vecs, atol=1e-6)
    np.testing.assert_allclose(a_cvecs, b_cvecs, atol=1e-6)

    for name in ("images.faiss", "captions.faiss"):
        ia = faiss.read_index(str(killed_ws / "indexes" / name))
        ib = faiss.read_index(str(full_ws / "indexes" / name))
        assert ia.ntotal == ib.ntotal
        ida = faiss.vector_to_array(faiss.downcast_index(ia).id_map)
        idb = faiss.vector_to_array(faiss.downcast_index(ib).id_map)
        assert ida.tolist() == idb.tolist()
    # no orphan shard files left behind by the kill
    for kind in ("image", "caption"):
        files = sorted(p.name for p in (killed_ws / "embeddings" / kind).iterdir())
        assert all(f.endswith(".npy") and not f.endswith(".tmp") for f in files)
