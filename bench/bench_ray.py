"""The Ray engine against the local engine, a two-node local cluster, and the driver's commit bound.

    python bench/bench_ray.py [--n 2000] [--model ViT-B-32] [--batch-size 64] [--shard-size 10000]
                              [--commits 20] [--skip-cluster]

1. The same N synthetic 640x480 JPEGs (bench_embed.make_jpegs) embedded by the local engine
   and by the Ray engine on a local Ray using every core: images/s each, their ratio (the
   engine's overhead; goal >= 0.9), and Ray's start-up seconds (ray.init, not counted in the
   Ray engine's rate; the actors' start is counted).
2. A two-node cluster on this machine (ray.cluster_utils.Cluster, each node num_cpus=1): the
   items/s of the whole cluster and per node.
3. The driver's share: the time of one shard's commit (embed.commit: the .npy files and the
   DuckDB transaction) with --shard-size items of the model's width, images and captions ->
   commits/s and items/s the one driver can take, and the cluster size (nodes at the per-node
   rate of 2.) at which the driver would bound the run.

Random weights (a forward pass costs the same whatever the weights). Figures are printed and
appended to bench/results/ray.jsonl; the work folder is removed at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_embed import make_jpegs  # noqa: E402
from common import WORK, machine, record  # noqa: E402

from curate.core.workspace import Workspace  # noqa: E402
from curate.ingest.embed import EmbedOptions, ShardWork, commit, embed_pending  # noqa: E402
from curate.ingest.model import load_encoder  # noqa: E402
from curate.ingest.scan import scan_into  # noqa: E402
from curate.ingest.sources import detect_source  # noqa: E402

FILE = "ray.jsonl"


def fresh(ws_dir: Path, photos: Path, enc) -> tuple[Workspace, object, int]:
    shutil.rmtree(ws_dir, ignore_errors=True)
    ws = Workspace(ws_dir)
    con = ws.connect()
    Workspace.bind_model(con, enc.identity)
    run_id = Workspace.start_run(con, "bench", str(photos), enc.identity, enc.device)
    scan_into(con, detect_source(photos), run_id)
    return ws, con, run_id


def ray_rate(ray_engine, session, photos: Path, enc, args, opts: EmbedOptions, name: str) -> float:
    ws, con, run_id = fresh(WORK / f"ws-{name}", photos, enc)
    t = time.perf_counter()
    # the actors load enc's model (its identity) on the CPU in enc's precision
    stats = ray_engine.RayEngine(session).embed(ws, con, enc, run_id,
                                                dataclasses.replace(opts, device="cpu", precision=enc.precision))
    ok, bad = stats.embedded, stats.rejected
    rate = ok / (time.perf_counter() - t)
    assert ok == args.n and bad == 0, (ok, bad)
    con.close()
    return rate


def commit_seconds(enc, args) -> float:
    """One driver commit of a full shard: images and captions of --shard-size items."""
    ws_dir = WORK / "ws-commit"
    shutil.rmtree(ws_dir, ignore_errors=True)
    ws = Workspace(ws_dir)
    con = ws.connect()
    Workspace.bind_model(con, enc.identity)
    run_id = Workspace.start_run(con, "bench", "synthetic", enc.identity, "cpu")
    d = enc.identity.embed_dim
    n = args.shard_size
    rng = np.random.default_rng(0)
    con.execute("INSERT INTO items (id, source_id, path, caption, status, run_id, source_no) "
                "SELECT i, 's' || i, '/data/' || i || '.jpg', 'a caption', 'pending', ?, 0 FROM range(?) t(i)",
                [run_id, n * args.commits])
    vecs = rng.standard_normal((n, d)).astype(np.float32)
    times = []
    for c in range(args.commits):
        ids = np.arange(c * n, (c + 1) * n, dtype=np.int64)
        p = ShardWork()
        p.img_ids, p.img_vecs = [ids], [vecs]
        p.cap_ids, p.cap_vecs = [ids], [vecs]
        p.cap_tokens = [(int(i), 5, False) for i in ids]
        p.seen = [(int(i), 100_000, 1, None) for i in ids]
        t = time.perf_counter()
        commit(ws, con, run_id, p)
        times.append(time.perf_counter() - t)
    con.close()
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000, help="JPEGs embedded by each engine")
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--shard-size", type=int, default=10_000, help="items per shard (build-index --shard-size)")
    ap.add_argument("--commits", type=int, default=20, help="shard commits timed for the driver's bound")
    ap.add_argument("--skip-cluster", action="store_true", help="leave out the two-node cluster")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(f"machine: {machine()}")

    import ray
    from ray.cluster_utils import Cluster

    from curate.ingest import ray_engine

    photos = WORK / "jpegs"
    make_jpegs(photos, args.n)
    if len(list(photos.glob("*.jpg"))) > args.n:  # a larger set from an earlier run: these N only
        photos = WORK / f"jpegs-{args.n}"
        shutil.rmtree(photos, ignore_errors=True)
        make_jpegs(photos, args.n)
    enc = load_encoder(args.model, "none", "cpu", "fp32")
    opts = EmbedOptions(batch_size=args.batch_size, shard_size=args.shard_size)
    base = f"{args.model}, fp32, batch {args.batch_size}, {args.n} JPEGs 640x480, shard {args.shard_size}"
    print(base)

    try:
        # 1. local engine, then the Ray engine on a local Ray with every core
        ws, con, run_id = fresh(WORK / "ws-local", photos, enc)
        t = time.perf_counter()
        ok = embed_pending(ws, con, enc, run_id, opts).embedded
        local = ok / (time.perf_counter() - t)
        con.close()

        t = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.WARNING,
                 log_to_driver=False)
        startup = time.perf_counter() - t
        session = ray_engine.RaySession(ray, owned=True)
        one = ray_rate(ray_engine, session, photos, enc, args, opts, "ray")
        session.close()
        record(FILE, "ray.local_engine_images_per_s", local, "img/s", baseline=base)
        record(FILE, "ray.ray_engine_images_per_s", one, "img/s", one / local, "local engine (goal >= 0.9)")
        record(FILE, "ray.startup_s", startup, "s", baseline="ray.init of a local Ray")

        # 2. two nodes of one CPU each on this machine
        per_node = None
        if not args.skip_cluster:
            cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
            try:
                cluster.add_node(num_cpus=1)
                cluster.wait_for_nodes()
                ray.init(address=cluster.address, logging_level=logging.WARNING, log_to_driver=False)
                two = ray_rate(ray_engine, ray_engine.RaySession(ray, owned=True), photos, enc, args, opts, "cluster")
                ray.shutdown()
            finally:
                cluster.shutdown()
            per_node = two / 2
            record(FILE, "ray.cluster2_images_per_s", two, "img/s", two / local, "local engine, all cores")
            record(FILE, "ray.cluster2_images_per_node_per_s", per_node, "img/s",
                   baseline="2 nodes of num_cpus=1 on one machine")

        # 3. the driver: one commit per shard
        sec = commit_seconds(enc, args)
        record(FILE, "ray.driver_commit_s_per_shard", sec, "s", baseline=f"{args.shard_size} items, "
               f"{enc.identity.embed_dim}-d images + captions")
        record(FILE, "ray.driver_commits_per_s", 1 / sec, "commit/s")
        record(FILE, "ray.driver_items_per_s", args.shard_size / sec, "item/s",
               baseline="the most one driver commits (shard files + DuckDB)")
        if per_node:
            record(FILE, "ray.nodes_at_driver_bound", args.shard_size / sec / per_node, "nodes",
                   baseline="driver items/s over per-node items/s")
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for d in WORK.glob("ws-*"):
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
