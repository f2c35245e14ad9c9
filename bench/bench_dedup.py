"""`curate dedup` at a million 512-d vectors, and a dedup peer beside it on the same vectors.

    python bench/bench_dedup.py [--n 1000000] [--dim 512] [--threshold 0.98] [--sample 10000]
        [--peer fastdup|none] [--peer-python /work/peervenv/bin/python] [--peer-timeout 1200]

The vectors are bench_index.py's "hard" set (HardModel: CLIP-like, a shared direction, topics
of overlapping power-law clusters of low intrinsic dimension), with planted duplicate groups
written over random rows:
- copies: 2,000 groups of 2-3 byte-identical vectors;
- perturbations: 3,000 groups of a base and 1-4 members, each at a cosine drawn from
  [0.95, 0.999] to the base (exactly: cos * base + sin * a unit vector orthogonal to it);
- chains: 500 chains of 4-8 vectors, each link at a cosine drawn from [0.985, 0.999] to the
  one before, so the ends can be far below the threshold and only the links join them.

The threshold: the hard set is dense. At 200K its items have on average 73 others at cosine
>= 0.94 (61% of items at least one), 10 at 0.97 and 1.8 at 0.98, and a million holds five
times as many per item: 0.94 (clip-retrieval's value for real CLIP) would group most of the
collection. --threshold defaults to 0.98, where the set's own pairs are still ~9 per item.

Each dedup runs in a child process (its own peak memory, VmHWM): curate's `find_duplicates`
as `curate dedup --by clusters --fresh` runs it (loading the shards, clustering, comparing,
writing the pairs and groups to DuckDB), then exact search, then the peer: fastdup (its own venv, --peer-python;
`fastdup.run` on the precomputed embeddings, cosine, its kNN graph of --peer-k neighbours
kept at >= threshold), with --peer-timeout. Each side's pairs are scored here against exact
search: recall on every pair of a random --sample items (numpy, blockwise, every sampled
vector against all n) and on every planted pair above the threshold; precision as the pairs
whose cosine recomputed from the stored vectors misses the threshold (less TOLERANCE).
JSON lines to bench/results/dedup.jsonl with the machine and its load average; the work
files are removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_index import HardModel  # noqa: E402
from common import WORK, machine, record, vector_workspace  # noqa: E402

from curate.select.dedup import TOLERANCE  # noqa: E402

SHARD = 100_000
FILE = "dedup.jsonl"
FASTDUP_MAX, FASTDUP_VERSION = 1_000_000, "2.54"   # measured: its unlicensed build refuses 1M images


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def _at_cosine(base: np.ndarray, cos: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector at exactly `cos` to the unit vector `base` (up to float32 rounding)."""
    u = rng.standard_normal(base.shape).astype(np.float32)
    u = _unit(u - (u @ base) * base)
    return _unit(cos * base + np.sqrt(1 - cos * cos) * u)


def make_data(work: Path, n: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The vectors (also written as a workspace and as vectors.npy for the peer) and each row's
    planted group (-1: none)."""
    model = HardModel(n, dim)
    v = np.concatenate([model.sample(min(SHARD, n - s), 1 + s) for s in range(0, n, SHARD)])
    rng = np.random.default_rng(7)
    rows = iter(rng.permutation(n).tolist())
    label = np.full(n, -1, np.int64)
    g = 0
    for _ in range(2000):                                     # byte-identical copies
        first = next(rows)
        label[first] = g
        for _ in range(rng.integers(1, 3)):
            r = next(rows)
            v[r], label[r] = v[first], g
        g += 1
    for _ in range(3000):                                     # perturbations of a base
        base = next(rows)
        label[base] = g
        for _ in range(rng.integers(1, 5)):
            r = next(rows)
            v[r], label[r] = _at_cosine(v[base], float(rng.uniform(0.95, 0.999)), rng), g
        g += 1
    for _ in range(500):                                      # chains
        prev = next(rows)
        label[prev] = g
        for _ in range(rng.integers(3, 8)):
            r = next(rows)
            v[r], label[r] = _at_cosine(v[prev], float(rng.uniform(0.985, 0.999)), rng), g
            prev = r
        g += 1
    vector_workspace(work / "ws", (v[s:s + SHARD] for s in range(0, n, SHARD)), dim)
    np.save(work / "vectors.npy", v)
    return v, label


OURS = """
import json, sys, time
import duckdb, numpy as np
from pathlib import Path
from curate.select.dedup import find_duplicates
ws_dir, threshold, out = Path(sys.argv[1]), float(sys.argv[2]), Path(sys.argv[3])
seen = [0, time.monotonic()]
def progress(k):
    seen[0] += k
    if time.monotonic() - seen[1] > 30:
        print(f"  compared {seen[0]:,} vectors", file=sys.stderr, flush=True); seen[1] = time.monotonic()
r = find_duplicates(ws_dir, "image", threshold, fresh=True, by="clusters", progress=progress)
peak = next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM")) / 1024
con = duckdb.connect(str(ws_dir / "curate.duckdb"), read_only=True)
got = con.execute("SELECT a, b FROM duplicate_pairs WHERE kind = 'image'").fetchnumpy()
con.close()
np.save(out, np.stack([got["a"], got["b"]]).astype(np.int64))
print(json.dumps({"seconds": r.seconds, "peak_mib": peak, "pairs": r.pairs, "groups": r.groups,
                  "in_groups": r.in_groups, "method": r.method}))
"""

FASTDUP = """
import json, os, sys, time
import numpy as np, pandas as pd
work, threshold, k, out = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
t = time.perf_counter()
v = np.load(os.path.join(work, "vectors.npy"))
import fastdup
df = pd.DataFrame({"filename": [f"{work}/img/{i}.jpg" for i in range(len(v))]})
fd = fastdup.create(work_dir=os.path.join(work, "fastdup"), input_dir=os.path.join(work, "img"))
fd.run(annotations=df, embeddings=v, threshold=threshold, nearest_neighbors_k=k, overwrite=True,
       num_threads=os.cpu_count(), cc_threshold=threshold, distance="cosine")
s = fd.similarity()
took = time.perf_counter() - t
a = np.minimum(s["from"].to_numpy(), s["to"].to_numpy()).astype(np.int64)
b = np.maximum(s["from"].to_numpy(), s["to"].to_numpy()).astype(np.int64)
np.save(out, np.unique(np.stack([a, b]), axis=1))
peak = next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM")) / 1024
print(json.dumps({"seconds": took, "peak_mib": peak, "pairs": int(len(s) // 2),
                  "method": f"fastdup {fastdup.__version__} (kNN k={k}, cosine >= threshold)"}))
"""


SEMDEDUP = """
import json, sys, time
import faiss, numpy as np
work, threshold, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
from curate.select.dedup import CLUSTER_SIZE, KMEANS_ITER, TRAIN_PER_CENTROID
t = time.perf_counter()
v = np.load(work + "/vectors.npy")
n, d = v.shape
k = max(1, round(n / CLUSTER_SIZE))
rng = np.random.default_rng(0)
km = faiss.Kmeans(d, k, niter=KMEANS_ITER, spherical=True, seed=1, max_points_per_centroid=TRAIN_PER_CENTROID)
km.train(v[np.sort(rng.choice(n, min(n, k * TRAIN_PER_CENTROID), replace=False))])
_, lab = km.index.search(v, 1)
lab = lab.ravel()
order = np.argsort(lab, kind="stable")
bounds = np.searchsorted(lab[order], np.arange(k + 1))
found_a, found_b = [], []
for c in range(k):
    m = order[bounds[c]:bounds[c + 1]]
    if len(m) < 2:
        continue
    x = v[m]
    i, j = np.nonzero(np.triu(x @ x.T >= np.float32(threshold), 1))
    found_a.append(m[i]); found_b.append(m[j])
a, b = np.concatenate(found_a), np.concatenate(found_b)
took = time.perf_counter() - t
np.save(out, np.stack([np.minimum(a, b), np.maximum(a, b)]).astype(np.int64))
peak = next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM")) / 1024
print(json.dumps({"seconds": took, "peak_mib": peak, "pairs": int(len(a)),
                  "method": f"SemDeDup-style: {k:,} spherical k-means clusters trained as curate's, each vector in its "
                            "nearest only, float32 products within a cluster (a straightforward implementation of "
                            "the published algorithm, Abbas et al. 2023, not the authors' code)"}))
"""


def run_child(args: list[str], timeout: float, python: str = sys.executable) -> dict | None:
    try:
        out = subprocess.run([python, "-c", *args], capture_output=True, text=True, timeout=timeout,
                             env={**os.environ, "HF_HUB_OFFLINE": "1"})
    except subprocess.TimeoutExpired:
        return None
    if out.returncode != 0:
        print(out.stdout[-2000:], out.stderr[-4000:], file=sys.stderr)
        return {"error": out.returncode}
    return json.loads(out.stdout.strip().splitlines()[-1])


def exact_sample_pairs(v: np.ndarray, rows: np.ndarray, threshold: float) -> set[tuple[int, int]]:
    """Every pair of a sampled row with any vector at cosine >= threshold - TOLERANCE (numpy, blockwise)."""
    floor = threshold - TOLERANCE
    out: set[tuple[int, int]] = set()
    for s in range(0, len(rows), 256):
        r = rows[s:s + 256]
        i, j = np.nonzero(v[r] @ v.T >= np.float32(floor - 1e-4))
        a, b = r[i], j
        keep = (a != b) & (_dot64(v, a, b) >= floor)
        out |= set(zip(np.minimum(a, b)[keep].tolist(), np.maximum(a, b)[keep].tolist(), strict=True))
    return out


def _dot64(v: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dot products of rows a[i], b[i] in float64: no float32 sum order can move the decision."""
    return np.einsum("ij,ij->i", v[a].astype(np.float64), v[b].astype(np.float64))


def planted_pairs(v: np.ndarray, label: np.ndarray, threshold: float) -> set[tuple[int, int]]:
    floor = threshold - TOLERANCE
    order = np.argsort(label, kind="stable")
    order = order[label[order] >= 0]
    bounds = np.flatnonzero(np.diff(label[order])) + 1
    out = set()
    for m in np.split(order, bounds):
        sims = v[m].astype(np.float64) @ v[m].T.astype(np.float64)
        i, j = np.nonzero(np.triu(sims >= floor, 1))
        out |= set(zip(np.minimum(m[i], m[j]).tolist(), np.maximum(m[i], m[j]).tolist(), strict=True))
    return out


def score(v: np.ndarray, found: np.ndarray, sample_rows: np.ndarray, sample_truth: set,
          planted: set, threshold: float) -> dict:
    a, b = found
    n = len(v)
    wrong = 0
    step = 1 << 20
    for s in range(0, len(a), step):
        wrong += int((_dot64(v, a[s:s + step], b[s:s + step]) < threshold - TOLERANCE).sum())
    keys = a * n + b

    def recall(truth: set) -> float:
        want = np.array([x * n + y for x, y in truth], dtype=np.int64)
        return float(np.isin(want, keys).mean()) if len(want) else 1.0

    return {"sample_recall": recall(sample_truth), "planted_recall": recall(planted), "false_pairs": wrong,
            "pairs": len(a)}


def report(tag: str, r: dict | None, q: dict | None, timeout: float) -> None:
    if r is None:
        record(FILE, f"{tag} time", timeout, "s", baseline=f"did not finish in {timeout:.0f} s")
        return
    if "error" in r:
        record(FILE, f"{tag} failed", float(r["error"]), "exit")
        return
    record(FILE, f"{tag} time", r["seconds"], "s", baseline=r["method"])
    record(FILE, f"{tag} peak memory", r["peak_mib"], "MiB")
    record(FILE, f"{tag} pair recall (exact search, sample)", q["sample_recall"], "share")
    record(FILE, f"{tag} pair recall (planted pairs)", q["planted_recall"], "share")
    record(FILE, f"{tag} pairs under the threshold", q["false_pairs"], "pairs")
    record(FILE, f"{tag} pairs", q["pairs"], "pairs")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--threshold", type=float, default=0.98)
    ap.add_argument("--sample", type=int, default=10_000)
    ap.add_argument("--peer", default="semdedup,fastdup", help="semdedup, fastdup, none (comma-separated)")
    ap.add_argument("--peer-python", default="/work/peervenv/bin/python")
    ap.add_argument("--peer-k", type=int, default=16)
    ap.add_argument("--peer-timeout", type=float, default=1200)
    args = ap.parse_args()
    work = WORK / "dedup"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        t = time.perf_counter()
        v, label = make_data(work, args.n, args.dim)
        print(f"data: {args.n:,} x {args.dim} hard vectors, {int((label >= 0).sum()):,} planted rows in "
              f"{len(np.unique(label[label >= 0])):,} groups ({time.perf_counter() - t:.0f}s); machine: {machine()}",
              flush=True)
        tag = f"dedup hard n={args.n} d={args.dim} t={args.threshold:g}"
        record(FILE, f"{tag} load average at start", os.getloadavg()[0], "load",
               baseline="2-core shared machine: other sessions' work competes for the cores")
        ours = run_child([OURS, str(work / "ws"), str(args.threshold), str(work / "ours.npy")], 3600)
        record(FILE, f"{tag} load average after curate", os.getloadavg()[0], "load")
        t = time.perf_counter()
        rows = np.sort(np.random.default_rng(11).choice(args.n, min(args.sample, args.n), replace=False))
        truth = exact_sample_pairs(v, rows, args.threshold)
        planted = planted_pairs(v, label, args.threshold)
        print(f"exact search: {len(truth):,} pairs of {len(rows):,} sampled items, {len(planted):,} planted pairs "
              f">= {args.threshold:g} ({time.perf_counter() - t:.0f}s)", flush=True)
        record(FILE, f"{tag} exact pairs a sampled item", len(truth) / len(rows), "pairs")
        ok = ours is not None and "error" not in ours
        q = score(v, np.load(work / "ours.npy"), rows, truth, planted, args.threshold) if ok else None
        report(f"{tag} curate", ours, q, 3600)
        shutil.rmtree(work / "ws", ignore_errors=True)       # the peers read vectors.npy
        peers = args.peer.split(",")
        if "semdedup" in peers:
            peer = run_child([SEMDEDUP, str(work), str(args.threshold), str(work / "semdedup.npy")], 3600)
            ok = peer is not None and "error" not in peer
            q = score(v, np.load(work / "semdedup.npy"), rows, truth, planted, args.threshold) if ok else None
            report(f"{tag} SemDeDup-style", peer, q, 3600)
        if "fastdup" in peers and args.n >= FASTDUP_MAX:
            record(FILE, f"{tag} fastdup not run", float(args.n), "items",
                   baseline=f"fastdup {FASTDUP_VERSION} unlicensed refuses {FASTDUP_MAX:,} images or more "
                            "('allows up to 1000000 images. You have requested to run with 1000000')")
        elif "fastdup" in peers:
            peer = run_child([FASTDUP, str(work), str(args.threshold), str(args.peer_k), str(work / "peer.npy")],
                             args.peer_timeout, python=args.peer_python)
            record(FILE, f"{tag} load average after fastdup", os.getloadavg()[0], "load")
            ok = peer is not None and "error" not in peer
            q = score(v, np.load(work / "peer.npy"), rows, truth, planted, args.threshold) if ok else None
            report(f"{tag} fastdup k={args.peer_k}", peer, q, args.peer_timeout)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
