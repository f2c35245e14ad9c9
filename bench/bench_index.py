"""Every index recipe on clustered vectors: build, memory, size, recall at the tuned parameter, speed.

    python bench/bench_index.py [--n 200000] [--dim 512] [--recipes flat,hnsw,ivf,ivfpq]

Writes N L2-normalised vectors with planted cluster structure (Gaussian clusters of
uneven size around random centres: recall means something only when neighbours are
near) as committed shards of a workspace, then for each recipe, in a child process so
its peak memory is its own: `faiss_index.build_index` as build-index runs it (training,
adds, and the recall tuning to --target-recall), then 1,000 held-out queries (drawn from
the same clusters, not in the index) searched at the tuned parameter: recall@10 against
exact search, batch queries/s, single-query latency. autofaiss runs side by side when it
is importable (an optional dependency: a 'skipped' line otherwise). Figures go to
bench/results/index.jsonl; the work files are removed at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import WORK, machine, record, vector_workspace  # noqa: E402

HELD_OUT = 1000


def clustered(n: int, dim: int, seed: int, centres: np.ndarray, spread: float = 0.6) -> np.ndarray:
    """n unit vectors around `centres`: cluster sizes drawn from a Zipf-like law, noise of norm ~spread."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, len(centres) + 1) ** 0.5
    which = rng.choice(len(centres), size=n, p=weights / weights.sum())
    v = centres[which] + rng.standard_normal((n, dim), dtype=np.float32) * (spread / np.sqrt(dim))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def make_workspace(ws_dir: Path, n: int, dim: int) -> None:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((max(16, n // 200), dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    shard = 100_000
    vector_workspace(ws_dir, (clustered(min(shard, n - s), dim, 1 + s, centres) for s in range(0, n, shard)), dim)
    queries = clustered(HELD_OUT, dim, 10**6, centres)
    np.save(ws_dir / "queries.npy", queries)
    all_v = np.concatenate([np.load(f) for f in sorted((ws_dir / "embeddings" / "image").glob("part-*[0-9].npy"))])
    import faiss

    _, truth = faiss.knn(queries, all_v, 10, metric=faiss.METRIC_INNER_PRODUCT)
    np.save(ws_dir / "truth.npy", truth)


# the search measurement both children run on their index: batch q/s, single-query latency, recall@10
MEASURE = """q, truth = np.load(ws_dir / "queries.npy"), np.load(ws_dir / "truth.npy")
t = time.perf_counter(); _, found = index.search(q, 10); batch = time.perf_counter() - t
t = time.perf_counter()
for x in q[:200]:
    index.search(x[None, :], 10)
single = (time.perf_counter() - t) / 200
recall = float(np.mean([len(set(f) & set(g)) / 10 for f, g in zip(found, truth)]))
"""

CHILD = """
import json, sys, time
import numpy as np, faiss
from pathlib import Path
from curate.core.workspace import Workspace
from curate.ingest import faiss_index, index_recall
ws_dir, recipe, target = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
ws = Workspace(ws_dir); con = ws.connect()
t = time.perf_counter()
r = faiss_index.build_index(ws, con, "image", recipe, rebuild=True, target_recall=target)
build = time.perf_counter() - t
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, so a child would report its parent's peak
peak = next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM")) / 1024
index = faiss.read_index(str(r.path))
index_recall.set_param(index, r.search.value)
{measure}print(json.dumps({"factory": r.factory, "build_s": build, "peak_mib": peak, "size_mib": r.path.stat().st_size / 2**20,
                  "param": r.search.param, "value": r.search.value, "tuned_recall": r.search.recall,
                  "recall": recall, "qps": len(q) / batch, "latency_ms": single * 1000,
                  "estimate_mib": r.memory / 2**20}))
"""

AUTOFAISS = """
import json, sys, time
import numpy as np, faiss
from pathlib import Path
from autofaiss import build_index
ws_dir = Path(sys.argv[1])
vecs = np.concatenate([np.load(f) for f in sorted((ws_dir / "embeddings" / "image").glob("part-*[0-9].npy"))])
t = time.perf_counter()
index, info = build_index(vecs, save_on_disk=False, metric_type="ip", max_index_memory_usage="16G",
                          current_memory_available="16G", verbose=40)
build = time.perf_counter() - t
peak = next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM")) / 1024
{measure}print(json.dumps({"factory": info.get("index_key", "?"), "build_s": build, "peak_mib": peak,
                  "recall": recall, "qps": len(q) / batch, "latency_ms": single * 1000}))
"""
CHILD, AUTOFAISS = (script.replace("{measure}", MEASURE) for script in (CHILD, AUTOFAISS))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--recipes", default="flat,hnsw,ivf,ivfpq")
    ap.add_argument("--target-recall", type=float, default=0.95)
    ap.add_argument("--keep", action="store_true", help="Keep the work files (bench/work/ws-index).")
    args = ap.parse_args()
    print(f"machine: {machine()}")
    ws = WORK / "ws-index"
    try:
        make_workspace(ws, args.n, args.dim)
        f, tag = "index.jsonl", f"{args.n // 1000}K" if args.n < 10**6 else f"{args.n / 10**6:g}M"
        print(f"\n{args.n} x {args.dim} clustered unit vectors; {HELD_OUT} held-out queries; "
              f"target recall@10 {args.target_recall}")
        for recipe in args.recipes.split(","):
            out = subprocess.run([sys.executable, "-c", CHILD, str(ws), recipe, str(args.target_recall)],
                                 check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            m = json.loads(out)
            at = f"{m['param']} {m['value']}" if m["param"] else "exact"
            name = f"index.{tag}.{recipe}[{m['factory']}, {at}]"
            record(f, f"{name}.build_seconds", m["build_s"], "s")
            record(f, f"{name}.peak_rss", m["peak_mib"], "MiB")
            record(f, f"{name}.file_size", m["size_mib"], "MiB", m["size_mib"] / m["estimate_mib"],
                   "curate's memory estimate")
            record(f, f"{name}.recall_at_10_held_out", m["recall"], "", m["recall"] / m["tuned_recall"],
                   "recall measured by the tuning (collection's own vectors)")
            record(f, f"{name}.batch_qps", m["qps"], "q/s")
            record(f, f"{name}.single_query_latency", m["latency_ms"], "ms")
        try:
            import autofaiss  # noqa: F401
        except ImportError:
            print("autofaiss: skipped (not installed; `pip install autofaiss` to run it side by side)")
        else:
            out = subprocess.run([sys.executable, "-c", AUTOFAISS, str(ws)], check=True, capture_output=True,
                                 text=True).stdout.strip().splitlines()[-1]
            m = json.loads(out)
            name = f"index.{tag}.autofaiss[{m['factory']}]"
            record(f, f"{name}.build_seconds", m["build_s"], "s")
            record(f, f"{name}.peak_rss", m["peak_mib"], "MiB")
            record(f, f"{name}.recall_at_10_held_out", m["recall"], "")
            record(f, f"{name}.batch_qps", m["qps"], "q/s")
            record(f, f"{name}.single_query_latency", m["latency_ms"], "ms")
    finally:
        if not args.keep:
            shutil.rmtree(ws, ignore_errors=True)


if __name__ == "__main__":
    main()
