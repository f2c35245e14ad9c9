"""FAISS indexes built from the committed embedding shards, following recipes in indexes/.

A recipe (indexes/*.json) says what an index is: the FAISS factory string, metric,
training sample size, and the collection sizes it suits. The recipe is picked by size
unless the user names one, and within the memory budget when there is one (the recipe
for the size first, then the others meant for that size or larger ones, from the
largest to the smallest that fits; PQ
codes shrink to fit). A recipe may re-rank a short list exactly (RFlat: fast-scan PQ codes
find k x refine_k_factor candidates, the stored full vectors order them). After every build or add the search parameter is tuned to a
recall target (curate/ingest/index_recall.py) and kept in the index record. Training runs on the GPU when faiss has one; the index is
always written as a CPU index, readable with plain `faiss.read_index`, and its ids are
item ids.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import duckdb
import faiss
import numpy as np

from ..core import sql, store
from ..core.workspace import Workspace
from . import index_memory, index_recall
from .index_recall import Tuning

# The one metric: vectors are L2-normalised, so inner product is cosine (faiss.METRIC_INNER_PRODUCT).
METRIC = "inner_product"
# FAISS's k-means asks for 39 points a centroid (fewer: a warning and poor centroids; fewer
# points than centroids: an error), and its PQ codes are 8 bits: 256 centroids per sub-vector.
POINTS_PER_CENTROID = 39


@dataclass(frozen=True)
class Recipe:
    """One indexes/*.json file, checked when it is read: the file is the only place its
    numbers are written (code never falls back to a default of its own)."""

    name: str
    factory: str
    description: str
    min_items: int
    max_items: int | None
    raw: dict
    nlist: dict | None = None               # {per_sqrt_n, min, max}: the number of lists from n
    pq_bytes_per_dim: float | None = None   # PQ code bytes per vector dimension
    pq_bits: int | None = None              # bits a sub-quantizer code (8; 4 for fast-scan codes)
    refine_k_factor: int | None = None      # RFlat: candidates re-ranked exactly, per neighbour asked
    train_points_per_list: int | None = None
    train_max: int | None = None            # training sample cap
    retrain_growth: float | None = None     # rebuild once the collection grew this many times
    nprobe: int | None = None               # lists searched per query before tuning
    hnsw_m: int | None = None               # HNSW links per node (twice that on the bottom level)
    ef_construction: int | None = None      # HNSW build-time search breadth

    @classmethod
    def from_raw(cls, raw: dict, origin: str = "recipe") -> Recipe:
        """A recipe from its JSON; ValueError naming `origin` when a field the factory needs
        is missing, or the metric is not the inner product every index is built with."""
        metric = raw.get("metric")
        if metric != METRIC:
            raise ValueError(f"{origin}: metric {metric!r} is not supported: curate's vectors are L2-normalised "
                             f"and every index is searched by inner product (cosine); write \"metric\": \"{METRIC}\"")
        factory = raw["factory"]
        need = (["nlist", "train_points_per_list", "train_max", "retrain_growth", "nprobe"]
                if "{nlist}" in factory else []) + (["pq_bytes_per_dim"] if "{pq_m}" in factory else []) \
            + (["hnsw_m", "ef_construction"] if "{hnsw_m}" in factory else []) \
            + (["pq_bits"] if "{pq_m}" in factory else []) + (["refine_k_factor"] if "RFlat" in factory else [])
        missing = [k for k in need if raw.get(k) is None]
        if missing:
            raise ValueError(f"{origin}: the factory {factory!r} needs {', '.join(missing)}")
        return cls(raw["name"], factory, raw.get("description", ""), int(raw.get("min_items", 0)),
                   raw.get("max_items"), raw, raw.get("nlist"), raw.get("pq_bytes_per_dim"), raw.get("pq_bits"),
                   raw.get("refine_k_factor"), raw.get("train_points_per_list"), raw.get("train_max"), raw.get("retrain_growth"),
                   raw.get("nprobe"), raw.get("hnsw_m"), raw.get("ef_construction"))

    def factory_for(self, n: int, d: int, pq_m: int | None = None) -> tuple[str, int]:
        """The factory string for n vectors of dimension d (PQ codes of pq_m sub-quantizers,
        default the recipe's), and the number of lists (0 if none)."""
        nlist = 0
        if self.nlist is not None:
            rule = self.nlist
            nlist = 2 ** round(math.log2(max(1.0, rule["per_sqrt_n"] * math.sqrt(max(n, 1)))))
            nlist = int(min(rule["max"], max(rule["min"], nlist)))
            nlist = max(1, min(nlist, n // POINTS_PER_CENTROID or 1))
        pq_m = pq_m or self.pq_size(d)
        return self.factory.format(nlist=nlist, pq_m=pq_m, pq_bits=self.pq_bits or 0, hnsw_m=self.hnsw_m or 0), nlist

    def min_train(self) -> int:
        """Vectors this recipe needs before it can be trained: PQ codes' 2^pq_bits centroids a
        sub-vector at 39 points each (lists shrink to the vectors there are; flat and HNSW
        train nothing)."""
        return 2 ** int(self.pq_bits) * POINTS_PER_CENTROID if self.pq_bytes_per_dim is not None else 0

    def pq_size(self, d: int) -> int:
        """PQ sub-quantizers per vector by the recipe (0: no PQ): code bytes per dimension x d,
        at pq_bits a sub-quantizer (8-bit codes: one byte each; 4-bit fast-scan codes: half)."""
        if self.pq_bytes_per_dim is None:
            return 0
        return _divisor_at_most(d, max(1, int(d * self.pq_bytes_per_dim * 8 / int(self.pq_bits))))

    def code_bytes(self, pq_m: int) -> int:
        """Bytes of a PQ code of pq_m sub-quantizers."""
        return (pq_m * int(self.pq_bits or 8) + 7) // 8

    def pq_sizes(self, d: int) -> list[int]:
        """The recipe's PQ size and the smaller ones tried to fit a memory budget (down to 8
        sub-quantizers: fewer codes lose too much), largest first."""
        m, out = self.pq_size(d), []
        while m and (m >= 8 or not out):
            out.append(m)
            m = _divisor_at_most(d, m // 2) if m > 1 else 0
        return out

    def memory(self, n: int, d: int, pq_m: int | None = None) -> int:
        """Bytes an index of this recipe takes for n d-dimensional vectors (index_memory); a
        re-ranked one (RFlat) also keeps every full vector, and its ids in an IDMap2 (FAISS's
        refine cannot take ids of its own)."""
        _, nlist = self.factory_for(n, d)
        m = pq_m or self.pq_size(d)
        fs = "fs" in self.factory
        size = index_memory.index_bytes(n, d, ids="ivf" if nlist else "idmap2", nlist=nlist,
                                        pq_m=self.code_bytes(m) if m else 0, hnsw_m=self.hnsw_m or 0)
        if m and fs:  # fast-scan codes sit in blocks of 32: a list's last block is padded
            size += nlist * 32 * self.code_bytes(m)
        if self.refine_k_factor:
            size += n * (4 * d + index_memory.IDMAP2_BYTES)
        return size

    def train_size(self, n: int, nlist: int) -> int:
        """How many of n vectors train an index of nlist lists."""
        return min(n, int(self.train_max), max(nlist * int(self.train_points_per_list), 10_000))


def recipes() -> dict[str, Recipe]:
    out = {}
    for entry in files("curate.indexes").iterdir():
        if entry.name.endswith(".json"):
            r = Recipe.from_raw(json.loads(entry.read_text()), f"indexes/{entry.name}")
            out[r.name] = r
    return out


def _divisor_at_most(d: int, m: int) -> int:
    m = max(1, m)
    while d % m:  # PQ needs sub-vectors of equal size
        m -= 1
    return m


@dataclass(frozen=True)
class Choice:
    recipe: Recipe
    pq_m: int          # PQ code bytes (0: none)
    memory: int        # estimated bytes
    note: str = ""     # why it is not the recipe named


def choose(n: int, d: int, name: str | None = None, budget: int | None = None) -> Choice:
    """The recipe (and PQ size) for n d-dimensional vectors: the named one or the one for the
    size; under a memory budget, the first of those and then the others meant for n items or
    more, largest first, that fits. A recipe that cannot be trained on n vectors is never
    built: a named one gives way to the one auto picks, and the Choice's note says so.
    ValueError, saying what would fit, when none does."""
    first = pick_recipe(n, name)
    named = bool(name and name != "auto")
    untrainable = first if n < first.min_train() else None
    if untrainable:
        first, named = pick_recipe(n), False
    # A recipe whose size range ends below n (flat's exact scan, a graph's build time) is not a
    # fallback: under a budget the index shrinks to other lists or to PQ codes instead.
    order = [first] if named else [first] + sorted(
        (r for r in recipes().values() if r.name != first.name and (r.max_items is None or n < r.max_items)
         and n >= r.min_train()),
        key=lambda r: -r.memory(n, d))
    smallest = None
    for r in order:
        for pq_m in r.pq_sizes(d) or [0]:
            need = r.memory(n, d, pq_m)
            if budget is None or need <= budget:
                note = "" if untrainable is None else (
                    f"recipe {untrainable.name} needs {untrainable.min_train():,} vectors to train its codes "
                    f"and there are {n:,}: built {r.name} instead, as auto would")
                return Choice(r, pq_m, need, note)
            if smallest is None or need < smallest[2]:
                smallest = (r, pq_m, need)
    r, pq_m, need = smallest
    what = f"{r.name}" + (f" with PQ{pq_m}" if pq_m else "")
    raise ValueError(f"no index recipe fits --max-index-memory {index_memory.describe(budget)} for {n:,} "
                     f"{d}-d vectors{' (recipe ' + first.name + ')' if named else ''}: the smallest, {what}, "
                     f"needs about {index_memory.describe(need)}; raise the budget")


def pick_recipe(n: int, name: str | None = None) -> Recipe:
    rs = recipes()
    if name and name != "auto":
        if name not in rs:
            raise ValueError(f"unknown index recipe '{name}'; known: {', '.join(sorted(rs))}")
        return rs[name]
    for r in sorted(rs.values(), key=lambda r: r.min_items):
        if r.min_items <= n and (r.max_items is None or n < r.max_items):
            return r
    return rs["flat"]


def gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


@dataclass(frozen=True)
class IndexResult:
    path: Path
    factory: str
    ntotal: int
    mode: str  # built (first time) | rebuilt | added | unchanged | empty
    added: int = 0
    reason: str = ""  # why it was rebuilt
    search: Tuning | None = None  # how it is searched: the tuned parameter, recall, speed
    memory: int = 0               # estimated bytes in memory
    note: str = ""                # why it is not the recipe asked for (Choice.note)


@dataclass(frozen=True)
class IndexOptions:
    """How an index is built: tuned to `target_recall` (recall@10), its recipe chosen within
    `max_memory` (bytes or '2GB'), rebuilt from every shard when `rebuild`; `seed` draws the
    training sample and the tuning queries."""

    target_recall: float = 0.95
    max_memory: int | str | None = None
    rebuild: bool = False
    seed: int = 0


def build_index(ws: Workspace, con: duckdb.DuckDBPyConnection, kind: str, recipe_name: str | None = None,
                progress: Callable[[int], None] | None = None, *, plan: Callable[[int, str], None] | None = None,
                **options: object) -> IndexResult:
    """Bring ws/indexes/<kind>s.faiss up to date with the committed shards.

    What the file holds is recorded in the database: `index_shards` lists its shards and
    meta `index.<kind>` its recipe, factory, training size and a fingerprint of the file.
    When the file matches its record, the recipe is still the one to use, and the recorded
    shards are a prefix of the committed ones, only the new shards' vectors are added (a
    trained IVF keeps its centroids); otherwise, or when the collection has grown
    `retrain_growth` times since training, the index is rebuilt from every shard.
    `plan(rows_to_add, mode)` is called once before vectors are added; `progress(rows)` as
    they are. `max_memory` (bytes or '2GB') bounds the recipe chosen; every index written is
    tuned to `target_recall` (recall@10), and so is one left unchanged whose record was
    tuned to another target.

    The file is written to a temporary name and renamed. The record of the new file (with
    the old one kept as `previous`) is committed before the rename and settled after it, so
    a run killed at any point leaves a file whose record the next run finds.
    The keyword options are IndexOptions' fields.
    """
    opts = IndexOptions(**options)  # type: ignore[arg-type]
    target_recall, max_memory, rebuild, seed = opts.target_recall, opts.max_memory, opts.rebuild, opts.seed
    sql.run(con, "index_shards")
    out = ws.index_path(kind)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.unlink(missing_ok=True)  # left by a killed run
    committed = [tuple(r) for r in con.execute(
        "SELECT part, rows, run_id FROM shards WHERE kind = ? ORDER BY part", [kind]).fetchall()]
    files = store.shard_files(ws, con, kind)
    assert len(files) == len(committed)
    n = sum(r[1] for r in committed)
    if n == 0:
        out.unlink(missing_ok=True)
        _save_record(con, kind, None, [])
        return IndexResult(out, "", 0, "empty")
    d = _dim(ws, con, kind)
    choice = choose(n, d, recipe_name, index_memory.parse_size(max_memory))
    recipe = choice.recipe
    on_disk, reason = _state_on_disk(con, kind, out, committed)
    state = on_disk
    if state is not None:
        state, reason = _still_fits(state, choice, n, d)
    if rebuild and state is not None:
        state, reason = None, "asked for"
    if state is not None and state["shards"] == len(committed):  # nothing new: leave the file alone
        tuning = Tuning.from_json(state.get("search"))
        # tuned for another target, before tuning was, or on its estimate alone (before the bound)
        if tuning is None or tuning.target != target_recall or tuning.recall_low is None:
            index = faiss.read_index(str(out))
            tuning = _tune(ws, con, kind, index, n, target_recall, seed)
            state = {**state, "search": tuning.to_json()}
        if _record(con, kind) != {"current": state, "previous": None} or _recorded_shards(con, kind) != committed:
            _save_record(con, kind, {"current": state, "previous": None}, committed)  # a killed run's leftovers
        if plan:
            plan(0, "unchanged")
        return IndexResult(out, state["factory"], int(state["ntotal"]), "unchanged", search=tuning,
                           memory=choice.memory, note=choice.note)
    if state is not None:
        index = faiss.read_index(str(out))
        if index.ntotal != state["ntotal"] or index.d != d:
            state, on_disk, reason = None, None, "the index file does not hold what its record says"

    if state is None:  # from scratch
        mode = "built" if reason == "no index yet" else "rebuilt"
        start, trained_n = 0, n
        factory, nlist = recipe.factory_for(n, d, choice.pq_m)
        index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
        if recipe.ef_construction:
            faiss.ParameterSpace().set_index_parameter(index, "efConstruction", int(recipe.ef_construction))
        if recipe.refine_k_factor:  # kept in the file: how many candidates a search re-ranks
            faiss.ParameterSpace().set_index_parameter(index, "k_factor_rf", int(recipe.refine_k_factor))
        if not index.is_trained:
            _train(index, _training_sample(ws, con, kind, n, recipe, nlist, seed), recipe.pq_bits)
    else:
        mode, reason = "added", ""
        start, trained_n, factory, nlist = state["shards"], state["trained_n"], state["factory"], state["nlist"]
    if nlist:
        faiss.extract_index_ivf(index).nprobe = int(recipe.nprobe)  # until tuned, below
    todo = sum(r[1] for r in committed[start:])
    if plan:
        plan(todo, mode)
    for shard in files[start:]:
        ids, vecs = store.open_shard(shard)
        for s in range(0, len(ids), 100_000):
            index.add_with_ids(np.ascontiguousarray(vecs[s : s + 100_000], dtype=np.float32),
                               ids[s : s + 100_000].astype(np.int64))
            if progress:
                progress(len(ids[s : s + 100_000]))
    earlier = Tuning.from_json((on_disk or {}).get("search")) if mode == "added" else None
    if index_recall.still_tuned(earlier, target_recall, n):   # a small add: the parameter tuned before
        tuning = earlier
        index_recall.set_param(index, tuning.value)
    else:
        tuning = _tune(ws, con, kind, index, n, target_recall, seed)  # sets the tuned value in the file too
    faiss.write_index(index, str(tmp))
    _fsync(tmp)
    new = {"recipe": recipe.name, "factory": factory, "nlist": nlist, "dim": d, "trained_n": trained_n,
           "pq_m": choice.pq_m if state is None else state.get("pq_m", choice.pq_m),
           "ntotal": int(index.ntotal), "shards": len(committed), "file": _fingerprint(tmp),
           "search": tuning.to_json()}
    # Before the rename the file on disk is still `on_disk`; after it, `new`. Either way the
    # next run finds the file's record; once renamed, the old one is dropped.
    _save_record(con, kind, {"current": new, "previous": on_disk}, committed)
    _install(tmp, out)
    _save_record(con, kind, {"current": new, "previous": None}, None)
    return IndexResult(out, factory, int(index.ntotal), mode, todo if mode == "added" else 0, reason, tuning,
                       choice.memory, choice.note)


def search_setting(con: duckdb.DuckDBPyConnection, kind: str) -> Tuning | None:
    """How the index of `kind` is to be searched, as its record says (None: no record, or
    made before indexes were tuned)."""
    rec = _record(con, kind)
    return Tuning.from_json((rec or {}).get("current", {}).get("search")) if rec else None


def _tune(ws: Workspace, con: duckdb.DuckDBPyConnection, kind: str, index, n: int, target: float,
          seed: int) -> Tuning:
    """Queries drawn from the collection, their exact neighbours from every shard, the index tuned."""
    qids, queries = _sample_rows(ws, con, kind, n, index_recall.queries_for(n, _dim(ws, con, kind)), seed + 1)
    truth = None
    if index_recall.param_name(index) is not None:
        truth = index_recall.exact_neighbours(store.iter_embeddings(ws, con, kind, batch_rows=50_000), queries,
                                              index_recall.K + 1)
    return index_recall.tune(index, queries, qids, truth, target)


def _state_on_disk(con: duckdb.DuckDBPyConnection, kind: str, out: Path,
                   committed: list[tuple]) -> tuple[dict | None, str]:
    """The record of the index file as it is on disk, if it still describes a prefix of the shards."""
    rec = _record(con, kind)
    if rec is None:
        return None, ("no index yet" if not out.exists() else "no record of what the index file holds")
    if not out.exists():
        return None, "the index file is missing"
    fp = _fingerprint(out)
    state = next((s for s in (rec.get("current"), rec.get("previous")) if s and s["file"] == fp), None)
    if state is None:
        return None, "the index file does not match its record"
    k = int(state["shards"])
    if k > len(committed) or _recorded_shards(con, kind)[:k] != committed[:k]:
        return None, "the shards it was built from changed"
    return state, ""


def _still_fits(state: dict, choice: Choice, n: int, d: int) -> tuple[dict | None, str]:
    recipe = choice.recipe
    if state["recipe"] != recipe.name:
        return None, f"recipe {recipe.name}, was {state['recipe']}"
    if state.get("pq_m", choice.pq_m) != choice.pq_m:
        return None, f"PQ{choice.pq_m} codes to fit the memory budget, were PQ{state['pq_m']}"
    if state["dim"] != d:
        return None, f"vectors are {d}-d, the index {state['dim']}-d"
    growth = recipe.retrain_growth
    if growth and state["nlist"] and n >= float(growth) * state["trained_n"]:
        return None, (f"retrained, the collection grew {n / state['trained_n']:.1f}x since training on "
                      f"{state['trained_n']} vectors (retrain_growth {growth})")
    return state, ""


def _record(con: duckdb.DuckDBPyConnection, kind: str) -> dict | None:
    raw = Workspace.get_meta(con, f"index.{kind}")
    return json.loads(raw) if raw else None


def _recorded_shards(con: duckdb.DuckDBPyConnection, kind: str) -> list[tuple]:
    return [tuple(r) for r in con.execute(
        "SELECT part, rows, run_id FROM index_shards WHERE kind = ? ORDER BY part", [kind]).fetchall()]


def _save_record(con: duckdb.DuckDBPyConnection, kind: str, rec: dict | None, shards: list[tuple] | None) -> None:
    """One transaction: the meta record, and (unless None) the list of shards in index_shards."""
    with sql.transaction(con):
        if rec is None:
            Workspace.delete_meta(con, f"index.{kind}")
        else:
            Workspace.set_meta(con, f"index.{kind}", json.dumps(rec))
        if shards is not None:
            con.execute("DELETE FROM index_shards WHERE kind = ?", [kind])
            if shards:
                con.executemany("INSERT INTO index_shards VALUES (?, ?, ?, ?)", [(kind, *s) for s in shards])


def _fingerprint(path: Path, chunk: int = 1 << 20) -> str:
    """Size and a hash of the first and last MiB: tells one index file from another cheaply."""
    size = path.stat().st_size
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        h.update(f.read(chunk))
        if size > chunk:
            f.seek(max(chunk, size - chunk))
            h.update(f.read())
    return f"{size}:{h.hexdigest()}"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _install(tmp: Path, out: Path) -> None:
    os.replace(tmp, out)
    _fsync(out.parent)


def _dim(ws: Workspace, con: duckdb.DuckDBPyConnection, kind: str) -> int:
    for _ids, vecs in store.iter_embeddings(ws, con, kind, batch_rows=1):
        return int(vecs.shape[1])
    raise ValueError("no vectors")


def _training_sample(ws: Workspace, con: duckdb.DuckDBPyConnection, kind: str, n: int, recipe: Recipe,
                     nlist: int, seed: int) -> np.ndarray:
    return _sample_rows(ws, con, kind, n, recipe.train_size(n, nlist), seed)[1]


def _sample_rows(ws: Workspace, con: duckdb.DuckDBPyConnection, kind: str, n: int, want: int,
                 seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`want` of the n committed rows drawn at random (in shard order): their ids and vectors."""
    pick = np.sort(np.random.default_rng(seed).choice(n, size=want, replace=False))
    out, out_ids, offset = [], [], 0
    for shard in store.shard_files(ws, con, kind):
        rows = shard.rows
        lo, hi = np.searchsorted(pick, [offset, offset + rows])
        if hi > lo:
            ids, vecs = store.open_shard(shard)
            out.append(np.asarray(vecs[pick[lo:hi] - offset]))
            out_ids.append(np.asarray(ids[pick[lo:hi] - offset], dtype=np.int64))
        offset += rows
    return np.concatenate(out_ids), np.ascontiguousarray(np.concatenate(out), dtype=np.float32)


def _train(index, sample: np.ndarray, pq_bits: int | None = None) -> None:
    ivf = faiss.extract_index_ivf(index)
    if gpu_available():
        # k-means is the costly part of training; faiss runs it on the GPU through the
        # clustering index, and the trained index stays a plain CPU index.
        res = faiss.StandardGpuResources()
        ivf.clustering_index = faiss.index_cpu_to_gpu(res, 0, faiss.IndexFlatL2(ivf.d))
    if pq_bits != 4:
        index.train(sample)
        return
    # 4-bit codes: the lists' k-means on every thread, then one small k-means (16 centroids, a few
    # thousand points) per sub-quantizer on one: thousands of short parallel loops whose OpenMP
    # waits cost more than their work, 20x more on loaded cores (IVF128,PQ16x4fs on 5K 64-d
    # vectors trained in 22 s on two threads of two loaded cores, in 1.2 s on one).
    ivf.train_q1(len(sample), faiss.swig_ptr(sample), False, ivf.metric_type)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        index.train(sample)  # the lists' quantizer is trained: only the codes are
    finally:
        faiss.omp_set_num_threads(threads)
