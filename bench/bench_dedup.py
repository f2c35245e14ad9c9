"""`curate dedup` at scale: clustered vectors with planted near-duplicate groups, flat and IVF.

    python bench/bench_dedup.py [--n 1000000] [--ref-n 100000] [--dim 64] [--groups 2000]

Writes N L2-normalised vectors in clusters (as bench_index.py) as committed shards of a
workspace, with planted groups of 2-5 near-duplicates (a base vector plus noise: cosine
~0.98 to each other, against ~0.7 within a cluster). Each case runs in a child process
(its own peak memory): the index built as build-index builds it (IVF tuned to recall
0.95), then `find_duplicates` as `curate dedup` runs it. Figures: time, peak memory,
planted groups recovered whole, planted pairs found, items grouped that were not planted.
At --ref-n: the flat index against a brute-force numpy reference (blockwise X @ X.T,
never n x n) that must give the same groups. Flat at 1M is n^2 (1e12 multiply-adds per
64 dims): it is run at --ref-n only. --dim defaults to 64 to keep the run under ~5 min on
2 cores (costs scale linearly with it). JSON lines to bench/results/dedup.jsonl; the work
files are removed at the end.
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
from common import WORK, record, vector_workspace  # noqa: E402

THRESHOLD = 0.94


def make_workspace(ws_dir: Path, n: int, dim: int, groups: int, seed: int = 0) -> None:

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(16, n // 200), dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    which = rng.integers(0, len(centres), n)
    v = centres[which] + rng.standard_normal((n, dim), dtype=np.float32) * (0.6 / np.sqrt(dim))
    # planted groups: members overwrite random rows, each a base plus noise of norm ~0.1
    sizes = rng.integers(2, 6, groups)
    rows = rng.permutation(n)[:sizes.sum()]
    label = np.full(n, -1, np.int64)
    s = 0
    for g, size in enumerate(sizes):
        r = rows[s:s + size]
        s += size
        v[r] = v[r[0]] + rng.standard_normal((size, dim), dtype=np.float32) * (0.1 / np.sqrt(dim))
        label[r] = g
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    vector_workspace(ws_dir, (v[s:s + 100_000] for s in range(0, n, 100_000)), dim)
    np.save(ws_dir / "planted.npy", label)


CHILD = """
import json, sys, time
import duckdb, numpy as np
from pathlib import Path
from curate.core.workspace import Workspace
from curate.ingest import faiss_index
from curate.select.dedup import find_duplicates
ws_dir, recipe, threshold = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
ws = Workspace(ws_dir); con = ws.connect()
t = time.perf_counter()
r = faiss_index.build_index(ws, con, "image", recipe, rebuild=True, target_recall=0.95)
build = time.perf_counter() - t
con.close()
res = find_duplicates(ws_dir, "image", threshold, fresh=True)  # a second recipe on one workspace: query all again
peak = next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM")) / 1024
con = duckdb.connect(str(ws_dir / "curate.duckdb"), read_only=True)
got = con.execute("SELECT id, group_id FROM duplicates WHERE kind = 'image' ORDER BY id").fetchnumpy()
con.close()
np.save(ws_dir / f"found-{recipe}.npy", np.stack([got["id"], got["group_id"]]))
print(json.dumps({"factory": r.factory, "param": r.search.param if r.search else None,
                  "value": r.search.value if r.search else None, "build_s": build, "dedup_s": res.seconds,
                  "peak_mib": peak, "pairs": res.pairs, "groups": res.groups, "method": res.method}))
"""

REFERENCE = """
import json, sys, time
import numpy as np
from pathlib import Path
from curate.select.dedup import components
ws_dir, threshold = Path(sys.argv[1]), float(sys.argv[2])
files = sorted((ws_dir / "embeddings" / "image").glob("part-*[0-9].npy"))
v = np.concatenate([np.load(f) for f in files if not f.name.endswith(".ids.npy")])
t = time.perf_counter()
a, b = [], []
for s in range(0, len(v), 2048):
    sims = v[s:s + 2048] @ v.T
    i, j = np.nonzero(sims >= threshold)
    i += s
    keep = i < j
    a.append(i[keep]); b.append(j[keep])
node, group = components(np.concatenate(a), np.concatenate(b))
took = time.perf_counter() - t
peak = next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM")) / 1024
np.save(ws_dir / "found-numpy.npy", np.stack([node, group]))
print(json.dumps({"dedup_s": took, "peak_mib": peak, "groups": int(len(np.unique(group)))}))
"""


def score(ws_dir: Path, found: np.ndarray) -> dict:
    """Planted groups recovered whole (all members in one found group holding nothing else planted),
    planted pairs found, and items grouped that were not planted."""
    label = np.load(ws_dir / "planted.npy")
    group_of = dict(zip(found[0].tolist(), found[1].tolist(), strict=True))
    planted: dict[int, list[int]] = {}
    for i in np.flatnonzero(label >= 0).tolist():
        planted.setdefault(int(label[i]), []).append(i)
    whole = pairs = pairs_found = 0
    members_of: dict[int, set[int]] = {}
    for i, g in group_of.items():
        members_of.setdefault(g, set()).add(i)
    for ms in planted.values():
        gs = {group_of.get(i) for i in ms}
        if len(gs) == 1 and None not in gs and members_of[gs.pop()] == set(ms):
            whole += 1
        for x in range(len(ms)):
            for y in range(x + 1, len(ms)):
                pairs += 1
                pairs_found += group_of.get(ms[x]) is not None and group_of.get(ms[x]) == group_of.get(ms[y])
    extra = int(sum(1 for i in group_of if label[i] < 0))
    return {"groups_whole": whole / len(planted), "pair_recall": pairs_found / pairs, "extra_items": extra}


def run_case(ws_dir: Path, n: int, recipe: str, dim: int) -> None:
    out = subprocess.run([sys.executable, "-c", CHILD, str(ws_dir), recipe, str(THRESHOLD)],
                         capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    found = np.load(ws_dir / f"found-{recipe}.npy")
    q = score(ws_dir, found)
    tag = f"dedup {recipe} n={n} d={dim}"
    base = f"{r['factory']} {r['method']}" + (f" {r['param']}={r['value']}" if r["param"] else "")
    record("dedup.jsonl", f"{tag} time", r["dedup_s"], "s", baseline=base)
    record("dedup.jsonl", f"{tag} index build", r["build_s"], "s")
    record("dedup.jsonl", f"{tag} peak memory", r["peak_mib"], "MiB")
    record("dedup.jsonl", f"{tag} planted groups whole", q["groups_whole"], "share")
    record("dedup.jsonl", f"{tag} planted pair recall", q["pair_recall"], "share")
    record("dedup.jsonl", f"{tag} items grouped not planted", q["extra_items"], "items")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--ref-n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--groups", type=int, default=2000)
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    try:
        ws_ref = WORK / "dedup-ref"
        make_workspace(ws_ref, args.ref_n, args.dim, max(10, args.groups * args.ref_n // args.n))
        run_case(ws_ref, args.ref_n, "flat", args.dim)
        out = subprocess.run([sys.executable, "-c", REFERENCE, str(ws_ref), str(THRESHOLD)],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        ref, flat = np.load(ws_ref / "found-numpy.npy"), np.load(ws_ref / "found-flat.npy")
        same = ref.shape == flat.shape and bool((ref == flat).all())
        q = score(ws_ref, ref)
        tag = f"dedup numpy brute force n={args.ref_n} d={args.dim}"
        record("dedup.jsonl", f"{tag} time", r["dedup_s"], "s")
        record("dedup.jsonl", f"{tag} peak memory", r["peak_mib"], "MiB")
        record("dedup.jsonl", f"{tag} planted pair recall", q["pair_recall"], "share")
        record("dedup.jsonl", f"dedup flat = numpy groups n={args.ref_n}", float(same), "bool")
        run_case(ws_ref, args.ref_n, "ivf", args.dim)
        shutil.rmtree(ws_ref, ignore_errors=True)
        ws_big = WORK / "dedup-big"
        make_workspace(ws_big, args.n, args.dim, args.groups)
        run_case(ws_big, args.n, "ivf", args.dim)
    finally:
        for d in ("dedup-ref", "dedup-big"):
            shutil.rmtree(WORK / d, ignore_errors=True)


if __name__ == "__main__":
    main()
