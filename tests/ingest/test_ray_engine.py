"""build-index --engine ray on a real two-node Ray cluster on this machine: the same result as
the local engine, a worker node lost mid-run, the driver killed with SIGKILL and resumed."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import CAPTIONS, write_jpeg
from ingest_support import workspace_state

from curate import api
from curate.core.workspace import Workspace
from curate.errors import InputError, PartialResult
from curate.ingest.ray_engine import plan_actors

HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="Ray is not installed (pip install 'curate[ray]'; "
                                                    "CI installs it with the test extra)")

N = 48
SHARD = 8
BAD = {5: b"not a jpeg at all", 30: None}  # None: a JPEG cut short
MODEL = {"model": "curate-tiny", "pretrained": "none"}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("ray_src") / "photos"
    for i in range(N):
        p = write_jpeg(src / f"{i:03d}.jpg", size=(160, 120), seed=i)
        cap = CAPTIONS[i % len(CAPTIONS)]
        if cap:
            p.with_suffix(".txt").write_text(cap, encoding="utf-8")
    for i, data in BAD.items():
        p = src / f"{i:03d}.jpg"
        p.write_bytes(data if data is not None else p.read_bytes()[:200])
    return src


@pytest.fixture(scope="module")
def reference(source, tmp_path_factory):
    """The local engine's result on the same folder."""
    ws = tmp_path_factory.mktemp("ray_ref") / "ws"
    api.build_index(source, ws, workers=0, batch_size=4, shard_size=SHARD, quiet=True, **MODEL)
    return _state(ws)


@pytest.fixture(scope="module")
def cluster():
    """One Ray cluster for the module: a head and one worker node, each its own raylet."""
    import ray
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 4, "include_dashboard": False})
    worker = c.add_node(num_cpus=2)
    c.wait_for_nodes()
    ray.init(address=c.address, logging_level=logging.WARNING, log_to_driver=False)
    try:
        yield c, worker
    finally:
        ray.shutdown()
        c.shutdown()


def _state(ws: Path):
    return workspace_state(ws)


def _assert_same(got, want) -> None:
    g_items, g_rej, g_files, (g_ids, g_vecs), (g_cids, g_cvecs) = got
    w_items, w_rej, w_files, (w_ids, w_vecs), (w_cids, w_cvecs) = want
    assert g_items == w_items
    assert g_rej == w_rej and len(g_rej) == len(BAD)
    assert g_files == w_files
    # shards in id order, each item once: what the readers rely on
    assert g_ids.tolist() == w_ids.tolist() == sorted(set(w_ids.tolist()))
    assert g_cids.tolist() == w_cids.tolist()
    np.testing.assert_allclose(g_vecs, w_vecs, atol=1e-5)
    np.testing.assert_allclose(g_cvecs, w_cvecs, atol=1e-5)


def _parts(ws: Path) -> int:
    return len(list((ws / "embeddings" / "image").glob("part-*.npy")))


@pytest.mark.slow
@needs_ray
def test_same_result_as_the_local_engine(cluster, source, reference, tmp_path):
    ws = tmp_path / "ws"
    api.build_index(source, ws, engine="ray", batch_size=4, shard_size=SHARD, quiet=True, **MODEL)
    _assert_same(_state(ws), reference)
    reasons = dict((r[0], r[2]) for r in reference[1])
    assert all(reasons.values()), "every rejection says why"


@pytest.mark.slow
@needs_ray
def test_driver_killed_then_resumed(cluster, source, reference, tmp_path):
    c, _ = cluster
    ws = tmp_path / "ws"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "curate.cli", "build-index", str(source), "-w", str(ws), "--engine", "ray",
           "--address", c.address, "--batch-size", "4", "--shard-size", str(SHARD), "--model", "curate-tiny",
           "--pretrained", "none"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    target = ws / "embeddings" / "image" / "part-000002.npy"
    deadline = time.monotonic() + 120
    while not target.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    err = proc.stderr.read().decode(errors="replace")
    assert proc.wait() == -signal.SIGKILL, f"the run ended before it could be killed:\n{err[-2000:]}"
    items = _state(ws)[0]
    assert any(r[4] == "pending" for r in items), "the kill must land mid-embedding"

    api.build_index(source, ws, engine="ray", batch_size=4, shard_size=SHARD, quiet=True, **MODEL)
    _assert_same(_state(ws), reference)


@pytest.mark.slow
@needs_ray
def test_an_actor_that_cannot_load_the_model_stops_the_run(cluster, source, tmp_path, tiny_encoder):
    """As on a node without the weights: one clear line at once, not retries, items left pending."""
    import ray

    from curate.ingest.embed import EmbedOptions
    from curate.ingest.ray_engine import RayEngine, RaySession
    from curate.ingest.scan import scan_into
    from curate.ingest.sources import detect_source

    ws = Workspace(tmp_path / "ws")
    con = ws.connect()
    try:
        Workspace.bind_model(con, tiny_encoder.identity)
        run_id = Workspace.start_run(con, "build-index", "test", tiny_encoder.identity, "cpu")
        scan_into(con, detect_source(source), run_id)
        with pytest.raises(InputError, match="could not start: .*WeightsUnavailable: unknown model architecture"):
            enc = dataclasses.replace(tiny_encoder, identity=dataclasses.replace(tiny_encoder.identity,
                                                                                  model="no-such-model"))
            RayEngine(RaySession(ray, owned=False)).embed(ws, con, enc, run_id,
                                                          EmbedOptions(batch_size=4, shard_size=SHARD))
        assert con.execute("SELECT count(*) FROM items WHERE status = 'pending'").fetchall()[0][0] == N
    finally:
        con.close()


@pytest.mark.slow
@needs_ray
def test_worker_node_lost_mid_run(cluster, source, reference, tmp_path):
    """Runs last: it takes the worker node away for good."""
    c, worker = cluster
    ws = tmp_path / "ws"
    outcome: dict = {}

    def run() -> None:
        try:
            api.build_index(source, ws, engine="ray", batch_size=4, shard_size=SHARD, quiet=True, **MODEL)
            outcome["done"] = True
        except PartialResult as e:  # the cluster gave up on some items: the rerun takes them
            outcome["partial"] = str(e)
        except BaseException as e:  # noqa: BLE001 - reported by the test below
            outcome["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    deadline = time.monotonic() + 120
    while _parts(ws) < 2 and t.is_alive() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert t.is_alive(), f"the run ended before the node could be removed: {outcome}"
    c.remove_node(worker)
    t.join(180)
    assert not t.is_alive(), "the run did not finish after losing a node"
    assert "error" not in outcome, repr(outcome.get("error"))
    if "partial" in outcome:
        api.build_index(source, ws, engine="ray", batch_size=4, shard_size=SHARD, quiet=True, **MODEL)
    _assert_same(_state(ws), reference)


def test_actor_plan():
    nodes = [{"Resources": {"CPU": 16}}, {"Resources": {"CPU": 8}}]
    cpu = plan_actors({"CPU": 24}, nodes, "cpu")
    # the smallest node decides: 8 torch threads, all but one core reserved (the decode tasks take one)
    assert (cpu.actors, cpu.num_gpus, cpu.num_cpus, cpu.threads, cpu.decode_cpus) == (2, 0, 7, 8, 1)
    two = plan_actors({"CPU": 2}, [{"Resources": {"CPU": 2}}], "cpu")
    assert (two.num_cpus, two.threads) == (1, 2), "the model gets both cores' threads, as in the local engine"
    big = plan_actors({"CPU": 64}, [{"Resources": {"CPU": 64}}], "cpu")
    assert (big.num_cpus, big.threads) == (56, 64)
    gpu = plan_actors({"CPU": 24, "GPU": 3}, nodes, "cuda")
    assert (gpu.actors, gpu.num_gpus) == (3, 1)
    one = plan_actors({"CPU": 1}, [{"Resources": {"CPU": 1}}], "cpu")
    assert (one.actors, one.num_cpus, one.decode_cpus) == (1, 0.5, 0.5), "a one-CPU node still decodes"


def test_address_without_the_ray_engine(source, tmp_path):
    with pytest.raises(InputError, match="--engine ray"):
        api.build_index(source, tmp_path / "ws", address="auto", **MODEL)
    assert not (tmp_path / "ws").exists()


@pytest.mark.slow
def test_without_ray_installed_says_how_to_install_it(source, tmp_path):
    """A real process in which `import ray` fails, as it does where Ray is not installed."""
    code = ("import sys; sys.modules['ray'] = None; from curate.cli import main; "
            f"sys.argv = ['curate', 'build-index', {str(source)!r}, '-w', {str(tmp_path / 'ws')!r}, "
            "'--engine', 'ray']; main()")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 1, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines == ["curate: --engine ray needs Ray Data, which is not installed here: "
                     "pip install 'curate[ray]' (or make install RAY=1)"]
    assert not (tmp_path / "ws").exists()


def test_gpu_decoding_is_the_local_engines(source, tmp_path):
    """Refused before a cluster starts: the Ray engine decodes in its CPU tasks."""
    with pytest.raises(InputError, match="--decode cpu with --engine ray"):
        api.build_index(source, tmp_path / "ws", engine="ray", decode="gpu", **MODEL)
    assert not (tmp_path / "ws").exists()


def test_an_address_where_nothing_listens_fails_at_once(source, tmp_path):
    """A mistyped head address: one line within seconds, not Ray's minute of retries."""
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(InputError, match=rf"nothing answers at 127\.0\.0\.1:{port}"):
        api.build_index(source, tmp_path / "ws", engine="ray", address=f"127.0.0.1:{port}", **MODEL)
    assert time.monotonic() - t0 < 30
    assert not (tmp_path / "ws").exists()
