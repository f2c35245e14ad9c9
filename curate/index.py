"""FAISS indexes built from the committed embedding shards, following recipes in indexes/.

A recipe (indexes/*.json) says what an index is: the FAISS factory string, metric,
training sample size, and the collection sizes it suits. The recipe is picked by size
unless the user names one. Training runs on the GPU when faiss has one; the index is
always written as a CPU index, readable with plain `faiss.read_index`, and its ids are
item ids.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import duckdb
import faiss
import numpy as np

from . import store
from .workspace import Workspace


@dataclass(frozen=True)
class Recipe:
    name: str
    factory: str
    description: str
    min_items: int
    max_items: int | None
    raw: dict

    def factory_for(self, n: int, d: int) -> tuple[str, int]:
        """The factory string for n vectors of dimension d, and the number of lists (0 if none)."""
        nlist = 0
        if "{nlist}" in self.factory:
            rule = self.raw["nlist"]
            nlist = 2 ** round(math.log2(max(1.0, rule["per_sqrt_n"] * math.sqrt(max(n, 1)))))
            nlist = int(min(rule["max"], max(rule["min"], nlist)))
            nlist = max(1, min(nlist, n // 39 or 1))  # k-means wants ~39 points a centroid
        pq_m = max(1, int(d * self.raw.get("pq_bytes_per_dim", 0.125)))
        while d % pq_m:  # PQ needs sub-vectors of equal size
            pq_m -= 1
        return self.factory.format(nlist=nlist, pq_m=pq_m), nlist


def recipes() -> dict[str, Recipe]:
    out = {}
    for entry in files("curate.indexes").iterdir():
        if entry.name.endswith(".json"):
            raw = json.loads(entry.read_text())
            out[raw["name"]] = Recipe(raw["name"], raw["factory"], raw.get("description", ""),
                                      int(raw.get("min_items", 0)), raw.get("max_items"), raw)
    return out


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


def build_index(ws: Workspace, con: duckdb.DuckDBPyConnection, kind: str, recipe_name: str | None = None,
                progress: Callable[[int], None] | None = None, seed: int = 0) -> tuple[Path, str, int]:
    """(Re)build ws/indexes/<kind>s.faiss from the shards; returns (path, factory, ntotal)."""
    n = store.count_vectors(ws, con, kind)
    out = ws.index_path(kind)
    out.parent.mkdir(parents=True, exist_ok=True)
    if n == 0:
        out.unlink(missing_ok=True)
        return out, "", 0
    d = _dim(ws, con, kind)
    recipe = pick_recipe(n, recipe_name)
    factory, nlist = recipe.factory_for(n, d)
    index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        _train(index, _training_sample(ws, con, kind, n, recipe, nlist, seed))
        faiss.extract_index_ivf(index).nprobe = int(recipe.raw.get("nprobe", 16))
    for ids, vecs in store.iter_embeddings(ws, con, kind, batch_rows=100_000):
        index.add_with_ids(np.ascontiguousarray(vecs, dtype=np.float32), ids.astype(np.int64))
        if progress:
            progress(len(ids))
    tmp = out.with_name(out.name + ".tmp")
    faiss.write_index(index, str(tmp))
    tmp.replace(out)
    return out, factory, int(index.ntotal)


def _dim(ws: Workspace, con: duckdb.DuckDBPyConnection, kind: str) -> int:
    for _ids, vecs in store.iter_embeddings(ws, con, kind, batch_rows=1):
        return int(vecs.shape[1])
    raise ValueError("no vectors")


def _training_sample(ws: Workspace, con: duckdb.DuckDBPyConnection, kind: str, n: int, recipe: Recipe,
                     nlist: int, seed: int) -> np.ndarray:
    want = min(n, int(recipe.raw.get("train_max", 1_000_000)),
               max(nlist * int(recipe.raw.get("train_points_per_list", 64)), 10_000))
    pick = np.sort(np.random.default_rng(seed).choice(n, size=want, replace=False))
    out, offset = [], 0
    for vec_path, _ids_path, rows in ws.shard_files(con, kind):
        lo, hi = np.searchsorted(pick, [offset, offset + rows])
        if hi > lo:
            out.append(np.asarray(np.load(vec_path, mmap_mode="r")[pick[lo:hi] - offset]))
        offset += rows
    return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)


def _train(index, sample: np.ndarray) -> None:
    ivf = faiss.extract_index_ivf(index)
    if gpu_available():
        # k-means is the costly part of training; faiss runs it on the GPU through the
        # clustering index, and the trained index stays a plain CPU index.
        res = faiss.StandardGpuResources()
        ivf.clustering_index = faiss.index_cpu_to_gpu(res, 0, faiss.IndexFlatL2(ivf.d))
    index.train(sample)


def search(index_path: Path, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, item ids) for each query vector, on the GPU when there is one."""
    index = faiss.read_index(str(index_path))
    if gpu_available() and k <= 2048:
        try:
            index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
        except RuntimeError:  # some wrappers have no GPU twin; the CPU index answers the same
            pass
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
