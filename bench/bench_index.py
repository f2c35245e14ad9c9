"""Every index recipe, and autofaiss beside them, on synthetic CLIP-like vectors.

    python bench/bench_index.py [--n 1000000] [--dim 512] [--data clustered,hard]
        [--recipes flat,hnsw,ivf,ivffs,ivfpq] [--hnsw-m 16,32] [--ef-construction 40,80]
        [--ivf-lists-per-sqrt-n 1,4] [--variant 'ivffs={"refine_k_factor": 8}'] [--threads 0]
        [--autofaiss-python /path/to/python | none] [--target-recall 0.95]

For each data set (--data), N L2-normalised vectors are written as committed shards of a
workspace, plus held-out queries from the same distribution (not in the index) and their
exact top-10. Then, each in a child process so that its peak memory is its own:

- curate: `faiss_index.build_index` as build-index runs it (training, adds, and the
  tuning of nprobe/efSearch to --target-recall on the collection's own vectors), per
  recipe, per build thread count (--threads), for hnsw per M and efConstruction, for ivf
  per number of lists.
- autofaiss (an optional dependency, in another python: --autofaiss-python, default the
  current one if it can import autofaiss, else a 'skipped' line): `autofaiss.build_index`
  over the same vectors saved as .npy, with its own choice of index and search parameters.

Every index is then read back here with `faiss.read_index` and measured by the same code
(`measure`): recall@10 of the held-out queries against exact search, batch queries/s,
single-query latency. curate's indexes at the parameter they were tuned to; autofaiss's at
its default parameters and at matched recall (the smallest nprobe/efSearch whose held-out
recall reaches the target, found by sweeping). A verdict line per data set checks the
issue's goal (issue 25): at recall@10 >= target, batch queries/s at least GOAL_QPS x autofaiss's
(at its matched recall), build time (training, adds, tuning) at most GOAL_BUILD x autofaiss's,
and peak memory at most autofaiss's; the three ratios are printed. The machine's load average
is printed before and after (shared cores slow both sides, not always alike).
Figures go to bench/results/index.jsonl; work files are removed.

The data sets:
- clustered: Gaussian clusters of ~200 points with isotropic noise around random centres.
  In 512-d isotropic noise makes all of a cluster's points nearly equidistant, and a
  cluster lands in one inverted list: easy for IVF, hard for a graph.
- hard: closer to CLIP embeddings (see `HardModel`): one shared direction (CLIP vectors sit
  in a narrow cone), topics holding many overlapping clusters, cluster sizes following a
  steep power law, each cluster spread along a few directions of its own (a low intrinsic
  dimension, so neighbours are really nearer than the rest), a global decaying spectrum.
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
from common import WORK, machine, record, vector_workspace  # noqa: E402

K = 10
GOAL_QPS = 1.5     # curate's batch queries/s over autofaiss's, at least
GOAL_BUILD = 0.5   # curate's build time over autofaiss's, at most
SHARD = 100_000
SINGLE_QUERIES = 200
BATCH_REPEATS = 3


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


class ClusteredModel:
    """Isotropic Gaussian clusters of uneven size (Zipf-like, exponent 0.5) around n/200 random centres."""

    def __init__(self, n: int, dim: int, spread: float = 0.6) -> None:
        rng = np.random.default_rng(0)
        self.centres = _unit(rng.standard_normal((max(16, n // 200), dim), dtype=np.float32))
        w = 1.0 / np.arange(1, len(self.centres) + 1) ** 0.5
        self.p, self.spread, self.dim = w / w.sum(), spread, dim

    def sample(self, m: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        which = rng.choice(len(self.centres), size=m, p=self.p)
        noise = rng.standard_normal((m, self.dim), dtype=np.float32) * (self.spread / np.sqrt(self.dim))
        return _unit(self.centres[which] + noise)


class HardModel:
    """Vectors shaped like CLIP image embeddings, for what an index finds hard.

    - A common direction of weight 1.3 in every vector: CLIP embeddings of unrelated images
      still have cosine ~0.4-0.6 (here ~0.4), so the useful angles are small and k-means lists are
      less separated than around random centres.
    - n/20,000 topics (at least 8), each holding some of n/100 clusters (at least 32)
      whose centres are topic + own offset: sibling clusters overlap, so a point's true
      neighbours often sit in two or three lists.
    - Cluster sizes by a power law of exponent 0.8 (a few huge clusters, a long tail of
      small ones), like photo collections' subjects.
    - Each cluster spreads along 8 of 256 shared directions with its own scales (log-normal),
      plus weak isotropic noise: a low intrinsic dimension, so the nearest neighbours are
      really nearer than the rest of the cluster, as they are for real embeddings (and not
      all nearly equidistant, as isotropic noise in 512-d makes them).
    - A decaying spectrum ((i+1)^-0.3 per axis) under a fixed random rotation: a few
      directions carry most of the variance, not aligned with the axes (PQ sees it).
    """

    POOL, RANK = 256, 8

    def __init__(self, n: int, dim: int) -> None:
        rng = np.random.default_rng(0)
        self.dim = dim
        topics = max(8, n // 20_000)
        clusters = max(32, n // 100)
        mean = _unit(rng.standard_normal(dim))
        topic = _unit(rng.standard_normal((topics, dim)))
        own = _unit(rng.standard_normal((clusters, dim)))
        self.centres = (1.3 * mean + 0.8 * topic[rng.integers(topics, size=clusters)] + 0.6 * own).astype(np.float32)
        w = 1.0 / np.arange(1, clusters + 1) ** 0.8
        self.p = rng.permutation(w / w.sum())
        self.pool = _unit(rng.standard_normal((self.POOL, dim)))
        self.dirs = np.stack([rng.choice(self.POOL, self.RANK, replace=False) for _ in range(clusters)])
        self.scales = (0.35 * np.exp(rng.normal(0, 0.3, (clusters, 1)))
                       * np.exp(rng.normal(0, 0.3, (clusters, self.RANK)))).astype(np.float32)
        spectrum = (np.arange(1, dim + 1) ** -0.3).astype(np.float32)
        q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
        self.mix = (spectrum[:, None] * q.astype(np.float32) * np.sqrt(dim / (spectrum**2).sum())).astype(np.float32)

    def sample(self, m: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        which = rng.choice(len(self.centres), size=m, p=self.p)
        coef = np.zeros((m, self.POOL), dtype=np.float32)
        rows = np.repeat(np.arange(m), self.RANK)
        coef[rows, self.dirs[which].ravel()] = (rng.standard_normal((m, self.RANK)) * self.scales[which]).ravel()
        v = self.centres[which] + coef @ self.pool
        v += rng.standard_normal((m, self.dim), dtype=np.float32) * (0.15 / np.sqrt(self.dim))
        return _unit(v @ self.mix)


MODELS = {"clustered": ClusteredModel, "hard": HardModel}


def make_data(work: Path, data: str, n: int, dim: int, queries: int) -> None:
    """work/ws: the workspace; work/emb/vectors.npy: the same vectors for autofaiss;
    work/queries.npy, work/truth.npy: held-out queries and their exact top-10 ids."""
    model = MODELS[data](n, dim)
    chunks = [model.sample(min(SHARD, n - s), 1 + s) for s in range(0, n, SHARD)]
    vector_workspace(work / "ws", iter(chunks), dim)
    (work / "emb").mkdir(parents=True, exist_ok=True)
    all_v = np.concatenate(chunks)
    del chunks
    np.save(work / "emb" / "vectors.npy", all_v)
    q = model.sample(queries, 10**9)
    np.save(work / "queries.npy", q)
    import faiss

    _, truth = faiss.knn(q, all_v, K, metric=faiss.METRIC_INNER_PRODUCT)
    np.save(work / "truth.npy", truth)


def measure(index, q: np.ndarray, truth: np.ndarray) -> dict:
    """recall@10 against exact search, batch queries/s, single-query latency: the one measuring
    code for every index, curate's and autofaiss's. The best of BATCH_REPEATS batches (on shared
    cores one run can be slowed several times by a neighbour); the mean single query, not the
    median: on uneven data the queries that land in big lists are the slow tail."""
    batch = []
    for _ in range(BATCH_REPEATS):
        t = time.perf_counter()
        _, found = index.search(q, K)
        batch.append(time.perf_counter() - t)
    single = []
    for x in q[:SINGLE_QUERIES]:
        t = time.perf_counter()
        index.search(x[None, :], K)
        single.append(time.perf_counter() - t)
    batch, single = min(batch), float(np.mean(single))
    recall = float(np.mean([len(set(f) & set(g)) / K for f, g in zip(found, truth, strict=True)]))
    return {"recall": recall, "qps": len(q) / batch, "latency_ms": single * 1000}


def matched(index, q: np.ndarray, truth: np.ndarray, target: float) -> tuple[str | None, int | None, dict]:
    """The smallest nprobe/efSearch whose held-out recall reaches target (the best one if none
    does), and its measure; (None, None, measure) for an exact index."""
    from curate.ingest import index_recall

    name = index_recall.param_name(index)
    if name is None:
        return None, None, measure(index, q, truth)
    best = None
    for value in index_recall.candidates(index):
        index_recall.set_param(index, value)
        m = measure(index, q, truth)
        if best is None or m["recall"] > best[1]["recall"]:
            best = (value, m)
        if m["recall"] >= target:
            break
    return name, best[0], best[1]


CHILD = """
import json, sys, time
import faiss
from pathlib import Path
from curate.core.workspace import Workspace
from curate.ingest import faiss_index
ws_dir, recipe, target = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
override, threads = json.loads(sys.argv[4]), int(sys.argv[5])
if threads:
    faiss.omp_set_num_threads(threads)
if override:
    # the same as editing fields of indexes/<recipe>.json, without touching the repository
    rs = faiss_index.recipes()
    raw = {**rs[recipe].raw, **{k: ({**rs[recipe].raw[k], **v} if isinstance(v, dict) else v) for k, v in override.items()}}
    rs[recipe] = faiss_index.Recipe.from_raw(raw, "bench")
    faiss_index.recipes = lambda: rs
ws = Workspace(ws_dir); con = ws.connect()
t = time.perf_counter()
r = faiss_index.build_index(ws, con, "image", recipe, rebuild=True, target_recall=target)
build = time.perf_counter() - t
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, so a child would report its parent's peak
peak = next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM")) / 1024
print(json.dumps({"path": str(r.path), "factory": r.factory, "build_s": build, "peak_mib": peak,
                  "size_mib": r.path.stat().st_size / 2**20, "estimate_mib": r.memory / 2**20,
                  "param": r.search.param, "value": r.search.value, "tuned_recall": r.search.recall,
                  "tuned_recall_low": r.search.recall_low, "tuning_queries": r.search.queries}))
"""

# runs in autofaiss's own python (it wants numpy<2): builds, writes the index, says what it chose
AUTOFAISS = """
import json, logging, sys, time
emb, out, max_mem, avail, threads = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
from autofaiss import build_index
t = time.perf_counter()
_, info = build_index(embeddings=emb, index_path=out + "/knn.index", index_infos_path=out + "/infos.json",
                      metric_type="ip", max_index_memory_usage=max_mem, current_memory_available=avail,
                      nb_cores=threads or None, verbose=logging.WARNING)
build = time.perf_counter() - t
if info is None:
    sys.exit("autofaiss built no index (see its log above)")
peak = next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM")) / 1024
print(json.dumps({"path": out + "/knn.index", "factory": info["index_key"], "param": info["index_param"],
                  "build_s": build, "peak_mib": peak}))
"""


def autofaiss_python(arg: str | None) -> tuple[str | None, str]:
    """The python to run autofaiss with, or None and why it is skipped."""
    if arg == "none":
        return None, "skipped (--autofaiss-python none)"
    exe = arg or sys.executable
    probe = subprocess.run([exe, "-c", "import autofaiss, faiss"], capture_output=True, text=True)
    if probe.returncode:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        how = "" if arg else "; install it in a separate venv (it needs numpy<2) and pass --autofaiss-python"
        return None, f"skipped ({exe} cannot import autofaiss: {last}{how})"
    return exe, ""


def _run(cmd: list[str], what: str) -> dict:
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"{what} failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def rows(f: str, name: str, build: dict, m: dict, note: str = "") -> None:
    record(f, f"{name}.build_seconds", build["build_s"], "s")
    record(f, f"{name}.peak_rss", build["peak_mib"], "MiB")
    if "size_mib" in build:
        record(f, f"{name}.file_size", build["size_mib"], "MiB", build["size_mib"] / build["estimate_mib"],
               "curate's memory estimate")
    if "tuned_recall" in build:
        low = build.get("tuned_recall_low")
        record(f, f"{name}.recall_at_10_held_out", m["recall"], "", m["recall"] / build["tuned_recall"],
               f"recall measured by the tuning (collection's own vectors: {build['tuned_recall']:.4f} on "
               f"{build.get('tuning_queries', '?')} of them"
               + (f", lower bound {low:.4f} at 95%)" if low is not None else ")"))
    else:
        record(f, f"{name}.recall_at_10_held_out", m["recall"], "", None, note or None)
    record(f, f"{name}.batch_qps", m["qps"], "q/s")
    record(f, f"{name}.single_query_latency", m["latency_ms"], "ms")


def verdict(data: str, target: float, ours: list[tuple[str, dict, dict]], theirs: tuple[str, dict, dict] | None,
            auto: str) -> list[str]:
    """The issue's goal, for one data set: at recall@10 >= target, queries/s at least GOAL_QPS x
    autofaiss's, build time at most GOAL_BUILD x autofaiss's, peak memory at most autofaiss's. One
    line for curate's fastest index reaching the target, one for the recipe `--index auto` picks
    at this size when that is another."""
    ok = [x for x in ours if x[2]["recall"] >= target]
    picked = [x for x in ours if x[0].startswith(auto + "[")]
    if not ok:
        return [f"verdict [{data}]: no curate index reached held-out recall@10 {target} (goal not met)"]
    best = max(ok, key=lambda x: x[2]["qps"])
    lines = [_judge(f"verdict [{data}], fastest", best, theirs, target)]
    for x in picked:
        if x is not best:
            lines.append(_judge(f"verdict [{data}], auto's {auto}", x, theirs, target))
    return lines


def _judge(head: str, ours: tuple[str, dict, dict], theirs: tuple[str, dict, dict] | None, target: float) -> str:
    name, b, m = ours
    head += f": curate {name} recall@10 {m['recall']:.3f}, {m['qps']:,.0f} q/s, built in {b['build_s']:.1f} s"
    if m["recall"] < target:
        return head + f"; below the target {target}: goal not met"
    if theirs is None:
        return head + "; autofaiss not run: the goal cannot be judged"
    head += f", peak {b['peak_mib']:,.0f} MiB"
    tname, tb, tm = theirs
    if tm["recall"] < target:
        return head + f"; {tname} never reached {target} (best {tm['recall']:.3f}): goal met by default"
    qps, build, peak = m["qps"] / tm["qps"], b["build_s"] / tb["build_s"], b["peak_mib"] / tb["peak_mib"]
    why = ([] if qps >= GOAL_QPS else [f"q/s under {GOAL_QPS}x autofaiss's"]) \
        + ([] if build <= GOAL_BUILD else [f"build time over {GOAL_BUILD}x autofaiss's"]) \
        + ([] if peak <= 1 else ["more peak memory than autofaiss"])
    return (head + f"; {tname} recall@10 {tm['recall']:.3f}, {tm['qps']:,.0f} q/s, built in "
            f"{tb['build_s']:.1f} s, peak {tb['peak_mib']:,.0f} MiB: q/s ratio {qps:.2f} (goal >= {GOAL_QPS}), "
            f"build ratio {build:.2f} (goal <= {GOAL_BUILD}), peak memory ratio {peak:.2f} (goal <= 1): goal "
            f"{'MET' if not why else 'NOT met (' + ', '.join(why) + ')'}")


def run_data(args, data: str, af_exe: str | None, af_why: str) -> None:
    work = WORK / "index"
    shutil.rmtree(work, ignore_errors=True)
    f = "index.jsonl"
    tag = f"{args.n // 1000}K" if args.n < 10**6 else f"{args.n / 10**6:g}M"
    tag += "" if data == "clustered" else f".{data}"  # clustered keeps the names of earlier rows
    t = time.perf_counter()
    make_data(work, data, args.n, args.dim, args.queries)
    print(f"\n{data}: {args.n} x {args.dim} unit vectors ({time.perf_counter() - t:.0f} s to make); "
          f"{args.queries} held-out queries; target recall@10 {args.target_recall}", flush=True)
    import faiss

    q, truth = np.load(work / "queries.npy"), np.load(work / "truth.npy")
    ours = []
    variants = {
        "hnsw": [{"hnsw_m": int(m), "ef_construction": int(e)}
                 for m in args.hnsw_m.split(",") for e in args.ef_construction.split(",")],
        "ivf": [{"nlist": {"per_sqrt_n": float(x)}} for x in args.ivf_lists_per_sqrt_n.split(",")],
    }
    for v in args.variant:  # recipe={fields}: one more build of that recipe, with those fields changed
        recipe, _, fields = v.partition("=")
        variants.setdefault(recipe, [{}]).append(json.loads(fields))
    for threads in [int(x) for x in args.threads.split(",")]:
        for recipe in args.recipes.split(","):
            for override in variants.get(recipe, [{}]):
                b = _run([sys.executable, "-c", CHILD, str(work / "ws"), recipe, str(args.target_recall),
                          json.dumps(override), str(threads)], f"curate {recipe}")
                index = faiss.read_index(b["path"])
                from curate.ingest import index_recall

                index_recall.set_param(index, b["value"])
                m = measure(index, q, truth)
                del index
                at = f"{b['param']} {b['value']}" if b["param"] else "exact"
                efc = override.get("ef_construction")
                extra = (f", efConstruction {efc}" if efc else "") + (f", {threads} threads" if threads else "")
                if override.get("refine_k_factor"):
                    extra += f", k_factor {override['refine_k_factor']}"
                name = f"{recipe}[{b['factory']}, {at}{extra}]"
                rows(f, f"index.{tag}.{name}", b, m)
                ours.append((name, b, m))
    theirs = None
    if af_exe is None:
        print(f"autofaiss: {af_why}")
    else:
        out = work / "autofaiss"
        out.mkdir()
        b = _run([af_exe, "-c", AUTOFAISS, str(work / "emb"), str(out), args.autofaiss_max_memory,
                  args.autofaiss_available, args.threads.split(",")[-1]], "autofaiss")
        index = faiss.read_index(b["path"])
        faiss.ParameterSpace().set_index_parameters(index, b["param"])
        m = measure(index, q, truth)
        rows(f, f"index.{tag}.autofaiss[{b['factory']}, default {b['param']}]", b, m)
        param, value, mm = matched(index, q, truth, args.target_recall)
        name = f"autofaiss[{b['factory']}, {param} {value}]"
        for key, unit in (("recall", ""), ("qps", "q/s"), ("latency_ms", "ms")):
            metric = {"recall": "recall_at_10_held_out", "qps": "batch_qps", "latency_ms": "single_query_latency"}[key]
            record(f, f"index.{tag}.{name}.{metric}", mm[key], unit, None,
                   f"matched recall: the smallest {param} reaching {args.target_recall} on the held-out queries")
        theirs = (name, b, mm)
        del index
    from curate.ingest import faiss_index

    for line in verdict(data, args.target_recall, ours, theirs, faiss_index.pick_recipe(args.n).name):
        print(line, flush=True)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200_000, help="Vectors in the collection.")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--data", default="clustered,hard", help="Data sets, comma-separated: clustered, hard.")
    ap.add_argument("--queries", type=int, default=1000, help="Held-out queries.")
    ap.add_argument("--recipes", default="flat,hnsw,ivf,ivffs,ivfpq")
    ap.add_argument("--ef-construction", default="40",
                    help="HNSW efConstruction values to build the hnsw recipe with, comma-separated.")
    ap.add_argument("--hnsw-m", default="32",
                    help="HNSW links per node to build the hnsw recipe with, comma-separated (each with every "
                         "--ef-construction).")
    ap.add_argument("--ivf-lists-per-sqrt-n", default="1",
                    help="The ivf recipe's nlist.per_sqrt_n values to build it with, comma-separated "
                         "(the recipe has 1: nlist ~ sqrt(n)).")
    ap.add_argument("--variant", action="append", default=[],
                    help="recipe={json fields}: also build that recipe with those fields changed (repeatable), "
                         "e.g. ivffs={\"refine_k_factor\": 8}.")
    ap.add_argument("--threads", default="0",
                    help="Build threads, comma-separated (0: faiss's default, every core); autofaiss gets the last.")
    ap.add_argument("--target-recall", type=float, default=0.95)
    ap.add_argument("--autofaiss-python", default=None,
                    help="A python that can import autofaiss (default: this one if it can; 'none' to skip).")
    ap.add_argument("--autofaiss-max-memory", default="16G", help="autofaiss's max_index_memory_usage.")
    ap.add_argument("--autofaiss-available", default="32G", help="autofaiss's current_memory_available.")
    ap.add_argument("--keep", action="store_true", help="Keep the work files (bench/work/index).")
    args = ap.parse_args()
    for d in args.data.split(","):
        if d not in MODELS:
            ap.error(f"--data {d}: known data sets are {', '.join(MODELS)}")
    print(f"machine: {machine()}; load average at start {_load()}", flush=True)
    af_exe, af_why = autofaiss_python(args.autofaiss_python)
    try:
        for data in args.data.split(","):
            run_data(args, data, af_exe, af_why)
    finally:
        print(f"load average at the end {_load()}")
        if not args.keep:
            shutil.rmtree(WORK / "index", ignore_errors=True)


def _load() -> str:
    """The 1, 5 and 15-minute load averages: on shared cores, how much else was running."""
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
