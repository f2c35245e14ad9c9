"""What it costs that scores follow the vectors: `classify` after 1% of the items were
embedded again, against a whole classify, and what a reader pays to check.

    .venv/bin/python bench/bench_rescore.py [--n 100000] [--dim 512] [--changed 0.01] [--work DIR]

The workspace is bench_classify's (N random unit vectors per kind, an image and a caption
for every item, shards of 100,000, places205 with random label vectors, `topk` k = 10).
It is classified once; then a random 1% of the items are embedded again the way
build-index does it (store.drop_items rewrites their shards without them, new vectors
are committed in a new shard by a later run), and these are timed on copies of that one
state: the rerun of the same `classify` (it rescores the changed items only), `classify
--restart` (everything), the rerun after that (nothing to do), and the check a reader
makes first (state.require_fresh) on the stale and on the fresh scores. Figures go to
bench/results/rescore.jsonl.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_classify import make_workspace  # noqa: E402
from common import WORK, record  # noqa: E402


def _classify(ws: Path, top_k: int, restart: bool = False, log=None) -> float:
    from curate.classify.run import classify

    t = time.perf_counter()
    classify(ws, "places205", "natural", storage="topk", top_k=top_k, restart=restart, log=log)
    return time.perf_counter() - t


def _re_embed(ws_path: Path, share: float, dim: int) -> int:
    from curate.core import store
    from curate.core.workspace import Workspace

    ws = Workspace(ws_path)
    con = ws.connect()
    n = con.execute("SELECT count(*) FROM items").fetchall()[0][0]
    rng = np.random.default_rng(1)
    ids = np.sort(rng.choice(n, int(n * share), replace=False)).astype(np.int64)
    store.drop_items(ws, con, ids)
    vecs = {}
    for kind in ("image", "caption"):
        v = rng.standard_normal((len(ids), dim), dtype=np.float32)
        vecs[kind] = (ids, v / np.linalg.norm(v, axis=1, keepdims=True))
    store.commit_shards(ws, con, 2, vecs)
    con.close()
    return len(ids)


def _check(ws_path: Path) -> tuple[float, str]:
    from curate.classify import registry, state
    from curate.core.workspace import Workspace

    con = Workspace(ws_path).connect(read_only=True)
    try:
        registry.select(con, None)
        t = time.perf_counter()
        try:
            state.require_fresh(con)
            said = "fresh"
        except state.NotReady as e:
            said = str(e)
        return time.perf_counter() - t, said
    finally:
        con.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--changed", type=float, default=0.01)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--work", type=Path, default=WORK / "rescore")
    args = ap.parse_args()
    base = args.work / "base"
    make_workspace(base, args.n, args.dim)
    first = args.work / "classified"
    shutil.rmtree(first, ignore_errors=True)
    shutil.copytree(base, first)
    full_first = _classify(first, args.top_k)
    changed = _re_embed(first, args.changed, args.dim)
    stale_check, said = _check(first)
    rescore, restart, nothing = [], [], []
    fresh_check = 0.0
    for _ in range(args.repeat):
        ws = args.work / "run"
        shutil.rmtree(ws, ignore_errors=True)
        shutil.copytree(first, ws)
        lines: list[str] = []
        rescore.append(_classify(ws, args.top_k, log=lines.append))
        nothing.append(_classify(ws, args.top_k))
        fresh_check, _said = _check(ws)
        shutil.rmtree(ws)
        shutil.copytree(first, ws)
        restart.append(_classify(ws, args.top_k, restart=True))
        shutil.rmtree(ws)
    out = {"n": args.n, "dim": args.dim, "top_k": args.top_k, "changed": changed,
           "classify_first_s": round(full_first, 2),
           "rescore_s": round(statistics.median(rescore), 2), "restart_s": round(statistics.median(restart), 2),
           "nothing_s": round(statistics.median(nothing), 2),
           "check_stale_s": round(stale_check, 4), "check_fresh_s": round(fresh_check, 4),
           "rescore_runs": [round(x, 2) for x in rescore], "restart_runs": [round(x, 2) for x in restart],
           "said": lines, "reader_said": said}
    print(out)
    tag = f"{args.n // 1000}K, {changed:,} re-embedded"
    record("rescore.jsonl", f"classify after re-embed ({tag})", out["rescore_s"], "s",
           out["rescore_s"] / out["restart_s"], "classify --restart")
    record("rescore.jsonl", f"classify --restart ({tag})", out["restart_s"], "s")
    record("rescore.jsonl", f"classify, nothing to do ({tag})", out["nothing_s"], "s")
    record("rescore.jsonl", f"reader check, stale ({tag})", out["check_stale_s"], "s")
    record("rescore.jsonl", f"reader check, fresh ({tag})", out["check_fresh_s"], "s")


if __name__ == "__main__":
    main()
