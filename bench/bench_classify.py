"""Classification at scale: `classify`, a `filter` query and the `coverage` view, against numpy.

    .venv/bin/python bench/bench_classify.py [--n 1000000] [--dim 512] [--top-k 10]

Writes N random unit vectors per kind (an image and a caption for every item) as
shards of a workspace, 205 random label vectors (places205, logit scale 100), then
times each step and the plain numpy implementation of the same computation, each in
a child process so that its peak memory is its own (peak RSS above the process's
RSS after imports). Figures go to bench/results/classify.jsonl.

The numpy reference of `classify` streams the same shards and computes, per kind,
the float64 logits, a stable log-sum-exp and the top-(k+1) labels with their exact
probabilities; it writes nothing. The reference of `filter` and `coverage` works on
the top-1 arrays that reference saved, in memory.

The compute floor is the least any exact classify must do, per kind: the float64
product, the log-sum-exp and the top-(k+1) labels, over the same shards in the same
batches, written nowhere; `classify / floor` is printed beside `classify / numpy`.
Disk per classification is what the scores add to curate.duckdb: its size after a
CHECKPOINT, before and after `classify` (each run classifies a copy of the unscored
database, so the figure is one classification's, and a rerun scores everything again).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import WORK, record  # noqa: E402

SHARD_ROWS = 100_000
SCALE = 100.0
FILTER_LABEL, FILTER_MIN = "skyscraper", 0.5
UNSCORED = "unscored.duckdb.copy"   # the workspace's database before any classify


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_mb() -> float:
    """This process's high-water RSS (VmHWM: its own since exec, unlike ru_maxrss after a fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class RandomTextEncoder:
    """Stands in for a text tower: fixed random unit vectors, one per prompt."""

    def __init__(self, identity, dim: int):
        self.identity = identity
        self.logit_scale = SCALE
        self._rng = np.random.default_rng(205)
        self._dim = dim

    def encode_text(self, texts: list[str]) -> np.ndarray:
        v = self._rng.standard_normal((len(texts), self._dim))
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def make_workspace(root: Path, n: int, dim: int) -> None:
    from curate.classify.label_vectors import label_queries
    from curate.classify.labels import load_label_set
    from curate.classify.prompts import resolve
    from curate.core import store
    from curate.core.workspace import ModelIdentity, Workspace

    marker = root / f".done-{n}-{dim}"
    if marker.exists() and (root / UNSCORED).exists():
        return
    shutil.rmtree(root, ignore_errors=True)
    ws = Workspace(root)
    con = ws.connect()
    ident = ModelIdentity("bench-random", "none", dim, True)
    Workspace.bind_model(con, ident)
    con.execute("INSERT INTO items (id, source_id, path, caption, status) "
                "SELECT range, 'src' || range, '/data/photos/' || range || '.jpg', 'caption ' || range, 'embedded' "
                "FROM range(?)", [n])
    rng = np.random.default_rng(0)
    for kind in ("image", "caption"):
        for part, s in enumerate(range(0, n, SHARD_ROWS)):
            m = min(SHARD_ROWS, n - s)
            v = rng.standard_normal((m, dim), dtype=np.float32)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            name = store.write_shard(ws, kind, part, np.arange(s, s + m, dtype=np.int64), v)
            store.record_shard(con, kind, part, name, m, 0)
    label_queries(con, ident, load_label_set("places205"), resolve("natural"),
                  lambda: RandomTextEncoder(ident, dim))
    con.close()
    _checkpoint(root / "curate.duckdb")
    shutil.copyfile(root / "curate.duckdb", root / UNSCORED)
    marker.touch()


def _checkpoint(db: Path) -> None:
    import duckdb

    con = duckdb.connect(str(db))
    try:
        con.execute("CHECKPOINT")
    finally:
        con.close()


# -- the steps, each run in its own process --------------------------------------

def step_classify(ws: Path, args) -> dict:
    from curate.classify.run import classify

    t = time.perf_counter()
    r = classify(ws, "places205", "natural", storage="topk", top_k=args.top_k)
    return {"seconds": time.perf_counter() - t, "rows": r.label_score_rows}


def _label_vectors(con) -> np.ndarray:
    key = con.execute("SELECT cache_key FROM label_vector_sets").fetchall()[0][0]
    return np.array([r[0] for r in con.execute("SELECT vector FROM label_vectors WHERE cache_key = ? "
                                               "ORDER BY label_idx", [key]).fetchall()])


def step_floor(ws: Path, args) -> dict:
    """Per kind: float64 product, log-sum-exp, top-(k+1); the fastest way found, nothing kept.

    torch.topk is the fastest top-k per call (its import is not timed); classify uses
    numpy's partition, which needs no torch import (seconds, inside classify's time).
    """
    import torch

    from curate.classify.run import DEFAULT_BATCH_ROWS
    from curate.classify.scoring import SCORE_CHUNK
    from curate.core import store
    from curate.core.workspace import Workspace

    w = Workspace(ws)
    con = w.connect(read_only=True)
    q_t = np.ascontiguousarray(_label_vectors(con).T)
    k1 = args.top_k + 1
    t = time.perf_counter()
    for kind in ("image", "caption"):
        for _ids, batch in store.iter_embeddings(w, con, kind, DEFAULT_BATCH_ROWS):
            for s in range(0, len(batch), SCORE_CHUNK):   # in cache-sized pieces, as classify does
                sims = batch[s:s + SCORE_CHUNK].astype(np.float64) @ q_t
                torch.topk(torch.from_numpy(sims), k1, dim=1)
                z = sims * SCALE
                top = z.max(axis=1)
                z -= top[:, None]
                np.exp(z, out=z)
                _lse = top + np.log(z.sum(axis=1))
    return {"seconds": time.perf_counter() - t}


def step_numpy_classify(ws: Path, args) -> dict:
    from curate.core import store
    from curate.core.workspace import Workspace

    w = Workspace(ws)
    con = w.connect(read_only=True)
    q = _label_vectors(con)
    k1 = args.top_k + 1
    t = time.perf_counter()
    top_label, top_prob = [], []
    streams = [store.iter_embeddings(w, con, kind, 32_768) for kind in ("image", "caption")]
    # the bench writes an image and a caption for every item, shard for shard: zip aligns them
    for (_ids, img), (_cids, cap) in zip(*streams, strict=True):
        probs = {}
        for kind, vecs in (("image", img), ("caption", cap)):
            z = (vecs.astype(np.float64) @ q.T) * SCALE
            m = z.max(axis=1, keepdims=True)
            lse = m[:, 0] + np.log(np.exp(z - m).sum(axis=1))
            part = np.argpartition(-z, k1 - 1, axis=1)[:, :k1]
            vals = np.take_along_axis(z, part, 1)
            order = np.argsort(-vals, axis=1, kind="stable")
            top = np.take_along_axis(part, order, 1)
            probs[kind] = (z, lse, top, np.exp(np.take_along_axis(vals, order, 1) - lse[:, None]))
        # the study's ensemble where the caption counts (its top probability >= 0.5)
        zi, lse_i, top_i, p_i = probs["image"]
        zc, lse_c, _top_c, p_c = probs["caption"]
        use = p_c[:, 0] >= 0.5
        mix = 0.8 * np.exp(zi[use] - lse_i[use, None]) + 0.2 * np.exp(zc[use] - lse_c[use, None])
        mix.argmax(axis=1)
        top_label.append(top_i[:, 0])
        top_prob.append(p_i[:, 0])
    seconds = time.perf_counter() - t
    np.save(WORK / "classify-top-label.npy", np.concatenate(top_label))
    np.save(WORK / "classify-top-prob.npy", np.concatenate(top_prob))
    return {"seconds": seconds}


def _median_time(fn, repeat: int = 3) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def step_filter(ws: Path, args) -> dict:
    from curate.select.filter import FilterSpec, write_subset

    spec = FilterSpec(labels=(FILTER_LABEL,), min_prob=FILTER_MIN)
    seconds, r = _median_time(lambda: write_subset(ws, spec, WORK / "classify-filter.parquet"))
    return {"seconds": seconds, "kept": r.kept}


def step_filter_ensemble(ws: Path, args) -> dict:
    """The ensemble filters: the study's defaults (stored view) and other parameters (SQL macro)."""
    from curate.select.filter import FilterSpec, write_subset

    ens = FilterSpec(labels=(FILTER_LABEL,), min_prob=FILTER_MIN, mode="ensemble")
    seconds, _ = _median_time(lambda: write_subset(ws, ens, WORK / "classify-filter-ens.parquet"))
    other = FilterSpec(labels=(FILTER_LABEL,), min_prob=FILTER_MIN, mode="ensemble", text_min=0.25)
    with_seconds, _ = _median_time(lambda: write_subset(ws, other, WORK / "classify-filter-ens.parquet"), 1)
    return {"seconds": seconds, "with_seconds": with_seconds}


def step_numpy_filter(ws: Path, args) -> dict:
    from curate.classify.labels import load_label_set

    idx = load_label_set("places205").index(FILTER_LABEL)

    def run():
        label = np.load(WORK / "classify-top-label.npy")
        prob = np.load(WORK / "classify-top-prob.npy")
        return np.flatnonzero((label == idx) & (prob >= FILTER_MIN))

    seconds, kept = _median_time(run)
    return {"seconds": seconds, "kept": len(kept)}


def step_coverage(ws: Path, args) -> dict:
    import duckdb

    def run():
        con = duckdb.connect(str(ws / "curate.duckdb"), read_only=True)
        try:
            return con.execute("SELECT threshold, classified FROM coverage").fetchall()
        finally:
            con.close()

    seconds, rows = _median_time(run)
    return {"seconds": seconds, "classified": [r[1] for r in rows]}


def step_numpy_coverage(ws: Path, args) -> dict:
    def run():
        prob = np.load(WORK / "classify-top-prob.npy")
        return [int((prob >= i / 10).sum()) for i in range(11)]

    seconds, counts = _median_time(run)
    return {"seconds": seconds, "classified": counts}


def step_classify_raw(ws: Path, args) -> dict:
    """A second classification of the same vectors (raw label names), beside the first."""
    from curate.classify.run import classify
    from curate.core.workspace import Workspace

    con = Workspace(ws).connect(read_only=True)
    ident = Workspace.model_identity(con)
    con.close()
    t = time.perf_counter()
    r = classify(ws, "places205", "raw", encoder=RandomTextEncoder(ident, ident.embed_dim), storage="topk",
                 top_k=args.top_k)
    return {"seconds": time.perf_counter() - t, "rows": r.label_score_rows}


def step_filter_named(ws: Path, args) -> dict:
    """filter --classification NAME, NAME not the active one (the raw classification is, now)."""
    from curate.select.filter import FilterSpec, write_subset

    spec = FilterSpec(labels=(FILTER_LABEL,), min_prob=FILTER_MIN, classification="places205-natural")
    seconds, r = _median_time(lambda: write_subset(ws, spec, WORK / "classify-filter-named.parquet"))
    return {"seconds": seconds, "kept": r.kept}


def step_compare(ws: Path, args) -> dict:
    """compare of the two classifications: the tables, then the tables written out (CSV, PNG, HTML)."""
    import duckdb

    from curate.validate import compare, compare_render

    def tables():
        con = duckdb.connect(str(ws / "curate.duckdb"), read_only=True)
        try:
            return compare.compare(con, ["places205-natural", "places205-raw"])
        finally:
            con.close()

    seconds, cmp = _median_time(tables)
    t = time.perf_counter()
    compare_render.write(cmp, WORK / "classify-compare")
    return {"seconds": seconds, "write_seconds": time.perf_counter() - t,
            "same_top": cmp.agreement[0].same_top}


STEPS = {f.__name__[5:]: f for f in (step_classify, step_floor, step_numpy_classify, step_filter, step_numpy_filter,
                                     step_filter_ensemble, step_coverage, step_numpy_coverage, step_classify_raw,
                                     step_filter_named, step_compare)}


def child(name: str, ws: Path, args) -> dict:
    import curate.classify.run  # noqa: F401 - imports (torch, duckdb) are not the step's memory
    import curate.select.filter  # noqa: F401

    before = rss_mb()
    out = STEPS[name](ws, args)
    out["peak_mb"] = max(peak_mb() - before, 0.0)
    return out


def run_child(name: str, ws: Path, args) -> dict:
    cmd = [sys.executable, __file__, "--child", name, "--ws", str(ws), "--top-k", str(args.top_k)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        sys.exit(f"step {name} failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--keep", action="store_true",
                    help="Keep the workspace in bench/work for the next run (it is GBs at 1M): removed by default.")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--ws", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.ws, args)))
        return

    WORK.mkdir(parents=True, exist_ok=True)
    ws = WORK / f"classify-ws-{args.n}-{args.dim}"
    t = time.perf_counter()
    make_workspace(ws, args.n, args.dim)
    print(f"workspace: {args.n:,} items x {args.dim}-d, images and captions, 205 labels "
          f"(ready in {time.perf_counter() - t:.1f} s)", flush=True)

    db, base = ws / "curate.duckdb", ws / UNSCORED
    Path(f"{db}.wal").unlink(missing_ok=True)
    shutil.copyfile(base, db)   # an unscored database: classify scores everything, its size is one run's
    res = {}
    for name in STEPS:
        res[name] = run_child(name, ws, args)
        if name == "classify":
            _checkpoint(db)
            res[name]["disk_mb"] = (db.stat().st_size - base.stat().st_size) / 2**20
    assert res["filter"]["kept"] == res["numpy_filter"]["kept"], (res["filter"], res["numpy_filter"])
    assert res["coverage"]["classified"] == res["numpy_coverage"]["classified"]
    assert res["filter_named"]["kept"] == res["filter"]["kept"]   # the same classification, read by name

    for p in WORK.glob("classify-*.npy"):
        p.unlink()
    for p in WORK.glob("classify-*.parquet"):
        p.unlink()
    shutil.rmtree(WORK / "classify-compare", ignore_errors=True)

    f, tag = "classify.jsonl", f"n={args.n},d={args.dim},k={args.top_k}"
    print(f"\n{'':<40} {'value':>12} {'unit':<8}   ratio to numpy ({tag})")
    for step in ("classify", "filter", "coverage"):
        ours, ref = res[step], res[f"numpy_{step}"]
        record(f, f"{step}.seconds", ours["seconds"], "s", ours["seconds"] / ref["seconds"],
               f"numpy {step} {ref['seconds']:.4f} s, {tag}")
        record(f, f"{step}.peak_rss_mb", ours["peak_mb"], "MiB", ours["peak_mb"] / max(ref["peak_mb"], 1.0),
               f"numpy {step} {ref['peak_mb']:.0f} MiB, {tag}")
    c, floor = res["classify"]["seconds"], res["floor"]["seconds"]
    record(f, "classify.floor_seconds", floor, "s", c / floor,
           f"classify / floor (float64 product + log-sum-exp + top-{args.top_k + 1}, both kinds), {tag}")
    record(f, "classify.disk_mb", res["classify"]["disk_mb"], "MiB", None,
           f"curate.duckdb growth after CHECKPOINT, one classification, {tag}")
    record(f, "classify.label_score_rows", res["classify"]["rows"], "rows", None, tag)
    fe = res["filter_ensemble"]
    record(f, "filter.ensemble_default_seconds", fe["seconds"], "s", fe["seconds"] / res["numpy_filter"]["seconds"],
           f"numpy image filter, {tag}")
    record(f, "filter.ensemble_with_seconds", fe["with_seconds"], "s",
           fe["with_seconds"] / res["numpy_filter"]["seconds"], f"numpy image filter, text_min=0.25, {tag}")
    record(f, "filter.kept", res["filter"]["kept"], "rows", None, f"label={FILTER_LABEL} min_prob={FILTER_MIN}")
    record(f, "filter.named_seconds", res["filter_named"]["seconds"], "s",
           res["filter_named"]["seconds"] / res["numpy_filter"]["seconds"],
           f"filter --classification (not the active one), numpy image filter, {tag}")
    cmp = res["compare"]
    record(f, "compare.seconds", cmp["seconds"], "s", cmp["seconds"] / res["classify_raw"]["seconds"],
           f"compare of two classifications (tables); ratio to classifying one, {tag}")
    record(f, "compare.write_seconds", cmp["write_seconds"], "s", None, f"compare's CSV, PNG and HTML, {tag}")
    _checkpoint(db)
    record(f, "classify.disk_mb_two", (db.stat().st_size - base.stat().st_size) / 2**20, "MiB", None,
           f"curate.duckdb growth after CHECKPOINT, two classifications, {tag}")
    full_matrix_mb = args.n * 205 * 8 / 2**20
    record(f, "classify.full_score_matrix_mb", full_matrix_mb, "MiB", res["classify"]["peak_mb"] / full_matrix_mb,
           "float64 [n, 205] of one kind (never held): ratio = classify peak / it")
    if not args.keep:
        shutil.rmtree(ws, ignore_errors=True)


if __name__ == "__main__":
    main()
