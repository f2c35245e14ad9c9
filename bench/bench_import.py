"""Import of precomputed embeddings (clip-retrieval layout): time and peak memory.

    python bench/bench_import.py [--n 1000000] [--dim 512]

Writes N random float16 unit vectors (images and captions) in 2 parts with metadata,
then runs the import, and the index build, each in a child process so its peak memory
is its own; then adds a shard of 10K new vectors and times the incremental index update
against a full rebuild. Compares with
the naive approach: np.load the whole part and np.save it again (the lower bound on
I/O, with the whole part in memory). Figures go to bench/results/import.jsonl.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import WORK, machine, peak_rss_mb, record  # noqa: E402


def make_source(root: Path, n: int, dim: int, parts: int = 2) -> None:
    marker = root / f".done-{n}-{dim}"
    if marker.exists():
        return
    shutil.rmtree(root, ignore_errors=True)
    for d in ("img_emb", "text_emb", "metadata"):
        (root / d).mkdir(parents=True)
    rng = np.random.default_rng(0)
    per = -(-n // parts)
    for p in range(parts):
        m = min(per, n - p * per)
        for kind in ("img_emb", "text_emb"):
            out = np.lib.format.open_memmap(root / kind / f"{kind}_{p}.npy", mode="w+", dtype=np.float16,
                                            shape=(m, dim))
            for s in range(0, m, 100_000):
                v = rng.standard_normal((min(100_000, m - s), dim), dtype=np.float32)
                out[s : s + len(v)] = v / np.linalg.norm(v, axis=1, keepdims=True)
            out.flush()
            del out
        duckdb.sql(
            f"COPY (SELECT 'k{p}_' || i AS key, 'https://example.org/{p}/' || i || '.jpg' AS url, "
            f"'caption number ' || i AS caption, (i % 1000)::INT AS width FROM range({m}) t(i)) "
            f"TO '{root / 'metadata' / f'metadata_{p}.parquet'}' (FORMAT parquet)"
        )
    marker.touch()


CHILD = """
import sys, time
from pathlib import Path
from curate.core.workspace import Workspace, ModelIdentity
from curate.ingest.precomputed import import_clip_retrieval
from curate.ingest import faiss_index as index
src, ws_dir, dim = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
ws = Workspace(ws_dir); con = ws.connect()
ident = ModelIdentity("ViT-B-32", "laion2b_s34b_b79k", dim, False)
Workspace.bind_model(con, ident)
run = Workspace.start_run(con, "bench", str(src), ident, "cpu")
import resource
if sys.argv[4] == "import":
    t = time.perf_counter(); seen, added, bad = import_clip_retrieval(ws, con, src, run, dim)
    print(added, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
elif sys.argv[4] == "add":  # 10K new vectors in one new shard, added to the existing index
    import numpy as np
    from curate.core import store
    v = np.random.default_rng(1).standard_normal((10_000, dim), dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    part = store.next_part(con, "image")
    store.record_shard(con, "image", part, store.write_shard(ws, "image", part, 10**9 + np.arange(len(v)), v),
                       len(v), run)
    t = time.perf_counter(); r = index.build_index(ws, con, "image")
    print(r.added, time.perf_counter() - t, r.mode, r.factory)
else:
    t = time.perf_counter(); r = index.build_index(ws, con, "image", rebuild=sys.argv[4] == "rebuild")
    print(r.ntotal, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, r.factory)
"""

NAIVE = """
import sys, time, numpy as np, resource
from pathlib import Path
src, out = Path(sys.argv[1]), Path(sys.argv[2]); out.mkdir(parents=True, exist_ok=True)
t = time.perf_counter()
for f in sorted((src / "img_emb").glob("*.npy")) + sorted((src / "text_emb").glob("*.npy")):
    v = np.load(f).astype(np.float32); v /= np.linalg.norm(v, axis=1, keepdims=True)
    np.save(out / f.name, v)
print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    args = ap.parse_args()
    print(f"machine: {machine()}")
    src = WORK / "clip-retrieval"
    make_source(src, args.n, args.dim)
    ws = WORK / "ws-import"
    shutil.rmtree(ws, ignore_errors=True)
    def child(step: str) -> list[str]:
        return subprocess.run([sys.executable, "-c", CHILD, str(src), str(ws), str(args.dim), step], check=True,
                              capture_output=True, text=True).stdout.split()

    added, t_import, peak = child("import")
    ntotal, t_index, peak_index, factory = child("index")
    assert int(added) == args.n and int(ntotal) == args.n
    n_add, t_add, mode, factory_add = child("add")
    assert mode == "added" and int(n_add) == 10_000, (mode, n_add)
    _, t_rebuild, _, factory_rebuilt = child("rebuild")
    naive_dir = WORK / "naive-import"
    nv = subprocess.run([sys.executable, "-c", NAIVE, str(src), str(naive_dir)], check=True,
                        capture_output=True, text=True).stdout.split()
    shutil.rmtree(naive_dir, ignore_errors=True)
    t_naive, peak_naive = float(nv[0]), float(nv[1])
    f = "import.jsonl"
    print(f"\n{args.n} x {args.dim} float16 image + caption vectors, 2 parts, metadata parquet")
    record(f, "import.rows_per_s", args.n / float(t_import), "rows/s")
    record(f, "import.seconds", float(t_import), "s", float(t_import) / t_naive,
           "naive load+normalise+save of the vectors alone")
    record(f, "import.peak_rss", float(peak), "MiB", float(peak) / peak_naive, "naive whole-part load")
    record(f, f"import.index_build_seconds[{factory}]", float(t_index), "s")
    record(f, f"import.index_build_peak_rss[{factory}]", float(peak_index), "MiB")
    record(f, f"import.index_add_10k_seconds[{factory_add}]", float(t_add), "s", float(t_add) / float(t_rebuild),
           f"full rebuild ({factory_rebuilt}, {args.n + 10_000} vectors)")
    print(f"(this process peak {peak_rss_mb():.0f} MiB)")


if __name__ == "__main__":
    main()
