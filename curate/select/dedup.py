"""Near-duplicates: groups of items that are the same photo, or carry the same caption text.

Two pairs (a, b) are duplicates when the cosine of their stored vectors is >= the threshold
(less TOLERANCE). Two ways find them:

- Clusters (a whole collection of CLUSTER_MIN vectors or more; `--by clusters`): the stored
  vectors, not the index. Spherical k-means (FAISS, trained on a sample) gives each vector a
  primary cluster, its nearest centroid; each vector also joins, as a secondary member, the
  other clusters whose cell a vector within the pair distance r of it could lie in. That
  margin is provable: for unit centroids, a vector a lies in the cell of c only if <a, c - c'>
  >= 0 for every c', so a b with ||a - b|| <= r can have its partner in the cell of c only if
  <b, c_b - c> <= r ||c_b - c|| (c_b: b's nearest centroid); r = sqrt(2 max|v|^2 - 2 t) bounds
  ||a - b|| for every pair at cosine >= t. Within each cluster, exact float32 matrix
  products (BLAS, blocks of bounded size) compare every primary member with every member; the
  threshold decides on each proposed pair's dot product in float64 (no float32 sum order can
  move it): a pair reported is a pair, always (exact precision). A vector joins at most
  SPILL clusters beside its own (those of smallest margin): where its provable list is longer it is capped, and only a pair whose two members
  were both capped can be missed. The run says the share of vectors whose list was complete;
  recall is measured (bench/bench_dedup.py: against brute force on a sample and every planted
  pair); with no vector capped the result is exactly brute force's.
- The index (incremental reruns, small collections, `--by index`): each stored vector is a
  query, and every other vector at cosine >= the threshold is its duplicate. How the index is asked
depends on its type, never on trying and catching: FAISS's range search is used only where it
is exact and safe, a flat index and IVF lists of full vectors (the tuned nprobe). Every other
index (HNSW, PQ codes, a GPU copy) answers a k-NN search whose k doubles for the queries whose
k-th neighbour still scores at the threshold, so no neighbour above it is cut off at k.
HNSW's range search is not used: in faiss 1.15 it finalises its results once per block of
queries that the Python interrupt check cuts (1e8 / (levels x d x efSearch) queries: a few dozen
at efSearch 2048, 512-d), and a second block can abort the process
(RangeSearchResult::do_allocation: 100K x 512-d at efSearch 2048, 5K x 64-d at 384). Indexes whose scores are
approximate (PQ codes) only propose candidates: each is scored again from the stored vectors,
so a pair reported is at the threshold by its true cosine.

Queries stream shard by shard in batches, so memory holds one batch's results and the pairs
found, never an n x n matrix. The clusters hold every vector in memory (n x d float32: 2 GiB at
1M x 512) and one block of products at a time. Groups are the connected components of the pairs.

The pairs are kept (table duplicate_pairs, queries/duplicates.sql) with the shards they
came from, so a rerun after new items were embedded queries only the new shards: their
vectors meet the old ones through the index, which already holds them. A changed
threshold, or a shard rewritten since (items re-embedded), makes the rerun start over.
Everything a run finds is written in one transaction at its end: a killed dedup leaves the
previous run's results as they were, and the next run starts again from the beginning (it
does not resume).

Caption-text groups are SQL only (the view caption_text_duplicates), stored the same way.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np

from ..classify.state import NotReady
from ..core import sql, store
from ..core.workspace import Workspace
from ..errors import InputError

# Cosine on the image embeddings. clip-retrieval's dedup (clip_back.py, get_non_uniques)
# range-searches CLIP image embeddings at 0.94; curate-tiny's random weights cannot tell
# what a trained model would need (README, "Near-duplicates", has the measurements).
DEFAULT_THRESHOLD = 0.94
KINDS = ("image", "caption-text")
BATCH_ROWS = 4096
KNN_K = 32          # neighbours a query first gets when the index is asked by k-NN (doubled as needed)
KNN_ENTRIES = 1 << 22   # rows x k of one k-NN call: memory stays bounded as k grows for big groups
GPU_MAX_K = 2048    # FAISS's GPU indexes answer k <= 2048: beyond, the CPU index answers
# Byte-identical images have the same stored vector, yet its cosine with itself comes out of
# float32 as 0.99999994 or 1.0000001 (measured up to 7e-7 from 1 at 512-d; the rounding of a
# d-term dot product is bounded by about d x 6e-8). A pair within TOLERANCE below the
# threshold counts, so --threshold 1 groups exact copies; no two different photos are told
# apart by a cosine difference that small.
TOLERANCE = 1e-5
META_KEY = "dedup.image"
RANGE = "range search"
KNN = "k-NN"
CLUSTERS = "clusters"
BY = ("auto", "clusters", "index")
# A whole collection this large is compared within k-means clusters, not through the index:
# at 100K x 512 asking auto's HNSW (efSearch 2048) takes ~2 h, the clusters seconds.
CLUSTER_MIN = 20_000
CLUSTER_SIZE = 400      # vectors a cluster, on average (k = n / CLUSTER_SIZE centroids)
TRAIN_PER_CENTROID = 24 # k-means trains on this many sampled vectors a centroid
KMEANS_ITER = 6         # the clusters' quality sets the speed, never which pairs are true
SPILL = 2               # clusters a vector joins beside its own, at most (those of smallest margin)
BLOCK_ENTRIES = 1 << 23 # entries of one block of products (32 MiB of float32)
ASSIGN_ROWS = 4096      # vectors assigned to centroids at a time
PROPOSE_SLACK = np.float32(1e-4)  # float32 products propose pairs this far below the floor; float64 decides


class DedupError(InputError, ValueError):
    """A dedup that cannot run as asked."""


@dataclass(frozen=True)
class DedupResult:
    kind: str
    threshold: float | None       # None for caption-text
    items: int                    # items in the collection looked at (embedded)
    queried: int                  # vectors queried by this run (0 for caption-text)
    pairs: int                    # pairs at or above the threshold (all runs)
    groups: int
    in_groups: int                # items in a group of two or more
    method: str                   # how the index was asked, or the clusters compared
    started_over: bool            # every vector queried (first run, new threshold, rewritten shards)
    seconds: float

    @property
    def removed(self) -> int:
        """What `filter --dedup` leaves out: every member of a group but one."""
        return self.in_groups - self.groups

    def summary(self) -> str:
        what = ("images at cosine >= " + f"{self.threshold:g}") if self.kind == "image" else "same caption text"
        groups = f"{self.groups:,} group{'' if self.groups == 1 else 's'} of {what} hold{'s' if self.groups == 1 else ''}"
        line = (f"dedup {self.kind}: {groups} {self.in_groups:,} of {self.items:,} "
                f"items ({self.removed:,} beside one per group")
        line += (", what `filter --dedup` leaves out)" if self.kind == "image" else ")")
        if self.kind == "image":
            how = "compared within" if self.method.startswith(CLUSTERS) else "queried by"
            line += (f" ({self.queried:,} vector{'' if self.queried == 1 else 's'} {how} {self.method}"
                     f"{', all again' if self.started_over else ', new shards only'}, {self.seconds:.1f}s)")
        return line


@dataclass(frozen=True)
class Effort:
    """How much work each way does: `batch_rows` vectors a query to the index, `k` neighbours
    a k-NN query first gets, `clusters` k-means centroids (default n / CLUSTER_SIZE), `spill`
    clusters a vector joins beside its own at most. They set speed and memory; the pairs an
    exact way finds do not depend on them (the spill cap aside: see the module's docstring)."""
    batch_rows: int = BATCH_ROWS
    k: int = KNN_K
    clusters: int | None = None
    spill: int = SPILL


def find_duplicates(ws_path: str | Path, kind: str = "image", threshold: float = DEFAULT_THRESHOLD, *,
                    fresh: bool = False, by: str = "auto", effort: Effort = Effort(),
                    progress: Callable[[int], None] | None = None) -> DedupResult:
    """Find the groups of `kind` and store them in the table duplicates (replacing that kind's rows).

    `by`: "clusters" compares the stored vectors within k-means clusters (`effort.clusters`
    centroids; each vector in at most `effort.spill` clusters beside its own), "index"
    asks the image index, "auto" the clusters for a whole collection of CLUSTER_MIN vectors
    or more, else the index. A rerun that has only new shards to query always asks the index."""
    if kind not in KINDS:
        raise DedupError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if by not in BY:
        raise DedupError(f"by must be one of {', '.join(BY)}, not {by!r}")
    if not 0.0 < threshold <= 1.0:
        raise DedupError(f"threshold must lie in (0, 1], not {threshold}")
    ws = Workspace(ws_path).require()
    started = time.monotonic()
    with ws.writing() as con:
        sql.run(con, "duplicates")
        items = con.execute("SELECT count(*) FROM items WHERE status = 'embedded'").fetchall()[0][0]
        if kind == "caption-text":
            with sql.transaction(con):
                con.execute("DELETE FROM duplicates WHERE kind = 'caption-text'")
                con.execute("INSERT INTO duplicates SELECT 'caption-text', id, group_id, representative, similarity "
                            "FROM caption_text_duplicates")
            groups, members = _counts(con, kind)
            return DedupResult(kind, None, items, 0, 0, groups, members, "SQL", True,
                               time.monotonic() - started)
        ask = _Ask(float(threshold), effort.batch_rows, effort.k, fresh, by, effort.clusters, effort.spill)
        queried, pairs, how, start_over = _image(ws, con, ask, progress)
        groups, members = _counts(con, "image")
        return DedupResult("image", ask.threshold, items, queried, pairs, groups, members, how, start_over,
                           time.monotonic() - started)


@dataclass(frozen=True)
class _Ask:
    """How the image index is asked: pairs at `threshold` or above, `batch_rows` vectors a query
    (k neighbours each where the index has no exact range search), from scratch if `fresh`."""
    threshold: float
    batch_rows: int
    k: int
    fresh: bool
    by: str = "auto"
    clusters: int | None = None
    spill: int = SPILL


def _image(ws: Workspace, con: duckdb.DuckDBPyConnection, ask: _Ask,
           progress: Callable[[int], None] | None) -> tuple[int, int, str, bool]:
    """The image groups found and stored: (vectors queried, pairs held, how the index was
    asked, whether it started over)."""
    shards = store.shard_files(ws, con, "image")
    held = sum(s.rows for s in shards)
    names = [s.vectors.name for s in shards]
    before = json.loads(Workspace.get_meta(con, META_KEY) or "null")
    start_over = (ask.fresh or before is None or before.get("threshold") != ask.threshold
                  or not set(before.get("shards", [])) <= set(names))
    if start_over and (ask.by == "clusters" or (ask.by == "auto" and held >= CLUSTER_MIN)):
        a, b, sim, how = cluster_pairs(shards, ask.threshold, clusters=ask.clusters, spill=ask.spill,
                                       progress=progress)
        queried = held
    else:
        todo = shards if start_over else [s for s in shards if s.vectors.name not in set(before["shards"])]
        a, b, sim, how = _index_pairs(ws, con, ask, shards, todo, progress)
        queried = sum(s.rows for s in todo)

    with sql.transaction(con):
        if start_over:
            con.execute("DELETE FROM duplicate_pairs WHERE kind = 'image'")
        con.register("found_pairs", {"a": a, "b": b, "s": sim})
        try:
            con.execute("INSERT INTO duplicate_pairs SELECT 'image', f.a, f.b, max(f.s) FROM found_pairs f "
                        "ANTI JOIN (SELECT a, b FROM duplicate_pairs WHERE kind = 'image') p "
                        "ON p.a = f.a AND p.b = f.b GROUP BY f.a, f.b")
        finally:
            con.unregister("found_pairs")
        got = con.execute("SELECT a, b FROM duplicate_pairs WHERE kind = 'image'").fetchnumpy()
        pa, pb = np.asarray(got["a"], dtype=np.int64), np.asarray(got["b"], dtype=np.int64)
        node, group = components(pa, pb)
        con.execute("DELETE FROM duplicates WHERE kind = 'image'")
        if len(node):
            con.register("members", {"id": node, "group_id": group})
            try:
                con.execute(
                    "INSERT INTO duplicates SELECT 'image', m.id, m.group_id, r.representative, NULL "
                    "FROM members m JOIN (SELECT m.group_id, arg_max(m.id, (coalesce(f.size, -1), -m.id)) "
                    "AS representative FROM members m LEFT JOIN item_files f ON f.item_id = m.id "
                    "GROUP BY m.group_id) r USING (group_id)")
            finally:
                con.unregister("members")
            _similarities(ws, con, shards)
        Workspace.set_meta(con, META_KEY, json.dumps({"threshold": ask.threshold, "shards": names}))
    return queried, len(pa), how, start_over


def _index_pairs(ws: Workspace, con: duckdb.DuckDBPyConnection, ask: _Ask, shards: list, todo: list,
                 progress: Callable[[int], None] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """The pairs of the vectors of the shards `todo` with every vector, asked of the image index."""
    import faiss

    from ..ingest import faiss_index, index_recall

    path = ws.index_path("image")
    if not path.exists():
        raise NotReady(f"the workspace {ws.root} has no image index: run `curate build-index` first")
    index = faiss.read_index(str(path))
    held = sum(s.rows for s in shards)
    if index.ntotal != held:
        raise NotReady(f"the image index holds {index.ntotal:,} vectors but the workspace {held:,}: "
                       "run `curate build-index` again to bring it up to date")
    tuned = faiss_index.search_setting(con, "image")
    index_recall.set_param(index, tuned.value if tuned else None)
    method, exact = ask_by(index)
    asked = _Asker(index, method, exact, ask.threshold, ask.k, shards)
    found_a, found_b, found_s = [], [], []
    for shard in todo:
        ids, vecs = store.open_shard(shard)
        for s in range(0, len(ids), ask.batch_rows):
            q_ids = np.asarray(ids[s:s + ask.batch_rows], dtype=np.int64)
            q = np.ascontiguousarray(vecs[s:s + ask.batch_rows], dtype=np.float32)
            a, b, sim = asked.pairs(q_ids, q)
            found_a.append(a)
            found_b.append(b)
            found_s.append(sim)
            if progress:
                progress(len(q_ids))
    a = np.concatenate(found_a) if found_a else np.zeros(0, np.int64)
    b = np.concatenate(found_b) if found_b else np.zeros(0, np.int64)
    sim = np.concatenate(found_s) if found_s else np.zeros(0, np.float32)
    return a, b, sim, asked.describe()


# --------------------------------------------------------------------------- clusters

def cluster_pairs(shards: list, threshold: float, *, clusters: int | None = None, spill: int = SPILL,
                  progress: Callable[[int], None] | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Every pair (a < b, by item id) whose stored vectors' dot product is >= threshold - TOLERANCE,
    found within k-means clusters (the module docstring: what is exact, what is measured), with
    its cosine; and a description of the clusters."""
    ids, vecs = _load(shards)
    return pairs_in_clusters(ids, vecs, threshold, clusters=clusters, spill=spill, progress=progress)


def pairs_in_clusters(ids: np.ndarray, vecs: np.ndarray, threshold: float, *, clusters: int | None = None,
                      spill: int = SPILL, progress: Callable[[int], None] | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """cluster_pairs on vectors in memory (float32 [n, d], C order) with their ids."""
    n = len(ids)
    floor = np.float32(threshold - TOLERANCE)
    if n < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), f"{CLUSTERS} (none)"
    norm_max = float(np.sqrt(np.max(np.einsum("ij,ij->i", vecs, vecs))))
    # ||a - b||^2 = |a|^2 + |b|^2 - 2 <a, b> <= 2 max|v|^2 - 2 floor; slack for float32 rounding
    r = float(np.sqrt(max(0.0, 2 * norm_max**2 - 2 * float(floor)))) * (1 + 1e-4) + 1e-4
    k = max(1, min(n // 2, clusters if clusters is not None else round(n / CLUSTER_SIZE)))
    t0 = time.monotonic()
    cent = _centroids(vecs, k)
    t1 = time.monotonic()
    prim, extra, capped = _assign(vecs, cent, r, spill)
    t2 = time.monotonic()
    found_i, found_j, found_s = [], [], []
    order = np.argsort(prim, kind="stable")
    starts = np.searchsorted(prim[order], np.arange(k + 1))
    sec_rows, sec_cl = extra
    sec_order = np.argsort(sec_cl, kind="stable")
    sec_starts = np.searchsorted(sec_cl[sec_order], np.arange(k + 1))
    for c in range(k):
        p = order[starts[c]:starts[c + 1]]
        if len(p) == 0:
            continue
        sec = sec_rows[sec_order[sec_starts[c]:sec_starts[c + 1]]]
        i, j, s = _compare(vecs, p, sec, floor)
        found_i.append(i)
        found_j.append(j)
        found_s.append(s)
        if progress:
            progress(len(p))
    i = np.concatenate(found_i)
    j = np.concatenate(found_j)
    s = np.concatenate(found_s)
    a, b = np.minimum(ids[i], ids[j]), np.maximum(ids[i], ids[j])
    # a pair meets in the clusters of both its members when each spills into the other's
    key = np.lexsort((-s, b, a))
    a, b, s = a[key], b[key], s[key]
    first = np.ones(len(a), bool)
    first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    complete = 1 - capped / n
    how = (f"{CLUSTERS} ({k:,} k-means clusters, each vector in up to {spill} beside its own by a provable margin; "
           f"the margin's list complete for {100 * complete:.{1 if capped else 0}f}% of vectors; k-means "
           f"{t1 - t0:.0f}s, margins {t2 - t1:.0f}s, products {time.monotonic() - t2:.0f}s)")
    return a[first], b[first], np.minimum(s[first], np.float32(1.0)), how


def _load(shards: list) -> tuple[np.ndarray, np.ndarray]:
    """Every stored vector in memory (float32) with its item id, shard by shard."""
    total = sum(s.rows for s in shards)
    ids = np.empty(total, np.int64)
    vecs: np.ndarray | None = None
    at = 0
    for shard in shards:
        sid, v = store.open_shard(shard)
        if vecs is None:
            vecs = np.empty((total, v.shape[1]), np.float32)
        ids[at:at + len(sid)] = sid
        vecs[at:at + len(sid)] = v
        at += len(sid)
        del v
    return ids, (vecs if vecs is not None else np.zeros((0, 0), np.float32))


def _centroids(vecs: np.ndarray, k: int) -> np.ndarray:
    """k unit centroids: spherical k-means on a fixed sample (seeded: the same run gives the same clusters)."""
    import faiss

    if k == 1:
        c = vecs.mean(0, keepdims=True)
        return (c / max(float(np.linalg.norm(c)), 1e-12)).astype(np.float32)
    rng = np.random.default_rng(0)
    m = min(len(vecs), k * TRAIN_PER_CENTROID)
    sample = vecs[np.sort(rng.choice(len(vecs), m, replace=False))]
    km = faiss.Kmeans(vecs.shape[1], k, niter=KMEANS_ITER, spherical=True, seed=1,
                      max_points_per_centroid=TRAIN_PER_CENTROID, min_points_per_centroid=1, verbose=False)
    km.train(sample)
    c = km.centroids.astype(np.float32)
    return c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)


def _assign(vecs: np.ndarray, cent: np.ndarray, r: float, spill: int
            ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], int]:
    """Each vector's primary cluster (its nearest centroid), its secondary memberships (rows,
    clusters): the clusters c whose cell a vector within r of it could lie in, <b, c_b - c> <=
    r ||c_b - c||, at most `spill` of them (smallest margin first); and how many vectors had
    more than `spill` (capped)."""
    n, k = len(vecs), len(cent)
    gap = np.sqrt(np.maximum(2.0 - 2.0 * (cent @ cent.T), 0.0)).astype(np.float32)  # ||c - c'||, unit centroids
    prim = np.empty(n, np.int32)
    rows, cls = [], []
    capped = 0
    for s in range(0, n, ASSIGN_ROWS):
        sc = vecs[s:s + ASSIGN_ROWS] @ cent.T
        best = sc.argmax(1)
        prim[s:s + len(sc)] = best
        if k == 1:
            continue
        top = sc[np.arange(len(sc)), best]
        # the margin test <b, c_b - c> <= r ||c_b - c||, kept sparse: a vector passes it for few clusters
        rr, cc = np.nonzero(sc >= top[:, None] - np.float32(r) * gap[best])
        other = cc != best[rr]
        rr, cc = rr[other], cc[other]
        margin = (top[rr] - sc[rr, cc]) / np.maximum(gap[best[rr], cc], np.float32(1e-12))
        order = np.lexsort((margin, rr))                      # each vector's smallest margins first
        rr, cc = rr[order], cc[order]
        start = np.searchsorted(rr, rr, side="left")          # rank of each within its vector's list
        rank = np.arange(len(rr)) - start
        capped += int(np.count_nonzero(rank == spill))
        keep = rank < spill
        rows.append((s + rr[keep]).astype(np.int64))
        cls.append(cc[keep].astype(np.int32))
    extra = (np.concatenate(rows) if rows else np.zeros(0, np.int64),
             np.concatenate(cls) if cls else np.zeros(0, np.int32))
    return prim, extra, capped


def _compare(vecs: np.ndarray, prim: np.ndarray, sec: np.ndarray, floor: np.float32
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Within one cluster: every (primary, primary) pair once and every (primary, secondary)
    pair whose dot product is >= floor (rows of vecs; i != j). The float32 products only
    propose (from PROPOSE_SLACK below the floor: BLAS's sum order moves a 512-d product by
    ~1e-7); each proposal is decided by its dot product in float64, so the decision does not
    depend on the order of a sum, and any recomputation agrees with it."""
    every = np.concatenate([prim, sec])
    y = vecs[every]
    step = max(1, BLOCK_ENTRIES // max(1, len(every)))
    low = floor - PROPOSE_SLACK
    out_i, out_j, out_s = [], [], []
    for s in range(0, len(prim), step):
        x = y[s:s + step]
        g = x @ y.T
        # a row's product with itself is no pair; the rest of a block is mostly below the floor,
        # and np.nonzero over all of it cost as much as the product (64-d): only the rows that
        # reach the floor somewhere are searched (fmax: a NaN product hides no other in its row).
        # 100,000 512-d vectors with 1,000 planted pairs: 14.8 s -> 12.1 s, the same pairs.
        g[np.arange(len(x)), np.arange(s, s + len(x))] = -np.inf
        hit = np.flatnonzero(np.fmax.reduce(g, axis=1) >= low)
        i, j = np.nonzero(g[hit] >= low)
        i = hit[i] + s
        keep = j > i        # primaries against later primaries (each pair once) and every secondary
        i, j = i[keep], j[keep]
        exact = np.einsum("ij,ij->i", y[i].astype(np.float64), y[j].astype(np.float64))
        ok = exact >= float(floor)
        out_i.append(every[i[ok]])
        out_j.append(every[j[ok]])
        out_s.append(exact[ok])
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_s).astype(np.float32)


def ask_by(index) -> tuple[str, bool]:
    """How dedup asks this (CPU) index, by its type: RANGE where FAISS's range search is exact
    and safe (flat; IVF lists of full vectors), else KNN; and whether the index's scores are
    true inner products of the stored vectors (full vectors: flat, IVF-Flat, HNSW-Flat) or
    approximate ones to be scored again (PQ or scalar-quantised codes, anything unknown)."""
    import faiss

    from ..ingest.index_recall import exact_scores, unwrapped

    ranged = isinstance(unwrapped(index), faiss.IndexFlat | faiss.IndexIVFFlat)
    return (RANGE if ranged else KNN), exact_scores(index)


class _Asker:
    """The pairs of one batch of queries at or above the threshold, asked the way ask_by says."""

    def __init__(self, index, method: str, exact: bool, threshold: float, k: int, shards: list) -> None:
        self.cpu = index
        self.index, self.on_gpu = _to_gpu(index)
        self.method = KNN if self.on_gpu else method
        self.exact = exact
        self.floor = np.float32(threshold - TOLERANCE)   # a pair's true cosine must reach this
        self.k = k
        self.k_max = 0                 # the largest k asked
        self.margin: float | None = 0.0 if exact else None   # how far below the floor candidates are taken
        self.stored = None if exact else _StoredVectors(shards)

    def describe(self) -> str:
        if self.method == RANGE:
            return RANGE
        grown = f", up to {self.k_max - 1} where groups are larger" if self.k_max > self.k + 1 else ""
        checked = "" if self.exact else (f"; approximate scores, candidates from {self.margin:.3f} below the "
                                         "threshold scored again from the stored vectors")
        return f"{KNN} ({self.k} neighbours a query{grown}{checked})"

    def pairs(self, q_ids: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.method == RANGE:
            # FAISS keeps scores strictly above the radius: the floor itself must pass
            lims, dist, hit = self.index.range_search(q, float(np.nextafter(self.floor, np.float32(-2))))
            src = np.repeat(q_ids, np.diff(lims).astype(np.int64))
        else:
            if self.margin is None:
                self.margin = self._measure_margin(q_ids, q)
            src, hit, dist = self._knn(q_ids, q, np.float32(self.floor - self.margin))
            if not self.exact:
                dist = self.stored.dots(q, q_ids, src, hit)
        keep = (hit >= 0) & (hit != src) & (dist >= self.floor)
        src, hit, dist = src[keep], hit[keep].astype(np.int64), dist[keep].astype(np.float32)
        return np.minimum(src, hit), np.maximum(src, hit), np.minimum(dist, np.float32(1.0))

    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        self.k_max = max(self.k_max, k)
        index = self.cpu if self.on_gpu and k > GPU_MAX_K else self.index
        return index.search(q, k)

    def _knn(self, q_ids: np.ndarray, q: np.ndarray, floor: np.float32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every neighbour scoring >= floor: k doubles for the queries whose k-th neighbour still does."""
        n = int(self.cpu.ntotal)
        k = min(self.k + 1, n)         # + 1: the query itself is among its neighbours
        rows = np.arange(len(q))
        src, hit, dist = [], [], []
        while len(rows):
            more = []
            step = max(1, KNN_ENTRIES // k)
            for s in range(0, len(rows), step):
                r = rows[s:s + step]
                d, i = self._search(q[r], k)
                full = (i[:, -1] >= 0) & (d[:, -1] >= floor) if k < n else np.zeros(len(r), bool)
                d, i = d[~full], i[~full]
                keep = (i >= 0) & (d >= floor)
                src.append(np.repeat(q_ids[r[~full]], k).reshape(d.shape)[keep])
                hit.append(i[keep])
                dist.append(d[keep])
                more.append(r[full])
            rows = np.concatenate(more)
            k = min(2 * k, n)
        return np.concatenate(src), np.concatenate(hit).astype(np.int64), np.concatenate(dist)

    def _measure_margin(self, q_ids: np.ndarray, q: np.ndarray) -> float:
        """How far an approximate score strays from the true cosine, measured on the first
        batch's nearest neighbours (twice the largest error seen): candidates are taken that far
        below the threshold, then scored exactly."""
        d, i = self._search(q, min(self.k + 1, int(self.cpu.ntotal)))
        src = np.repeat(q_ids, d.shape[1])
        ok = i.ravel() >= 0
        true = self.stored.dots(q, q_ids, src[ok], i.ravel()[ok])
        err = np.abs(d.ravel()[ok] - true)
        return float(2 * err.max()) if len(err) else 0.0


class _StoredVectors:
    """The workspace's stored vectors by item id (memory-mapped shards), to score candidate pairs exactly."""

    def __init__(self, shards: list) -> None:
        self.vecs = []
        ids, where = [], []
        for j, shard in enumerate(shards):
            sid, v = store.open_shard(shard)
            self.vecs.append(v)
            ids.append(np.asarray(sid, dtype=np.int64))
            where.append(np.full(len(sid), j, dtype=np.int32))
        self.ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
        self.shard = np.concatenate(where) if where else np.zeros(0, np.int32)
        self.row = np.concatenate([np.arange(len(x)) for x in ids]) if ids else np.zeros(0, np.int64)
        self.order = np.argsort(self.ids, kind="stable")

    def get(self, ids: np.ndarray) -> np.ndarray:
        pos = self.order[np.searchsorted(self.ids, ids, sorter=self.order)]
        out = np.empty((len(ids), self.vecs[0].shape[1] if self.vecs else 0), dtype=np.float32)
        for j in np.unique(self.shard[pos]):
            sel = np.flatnonzero(self.shard[pos] == j)
            rows = self.row[pos[sel]]
            by = np.argsort(rows, kind="stable")           # in file order: the memory map reads forward
            out[sel[by]] = self.vecs[j][rows[by]]
        return out

    def dots(self, q: np.ndarray, q_ids: np.ndarray, src: np.ndarray, hit: np.ndarray) -> np.ndarray:
        """The cosine of each pair (src[i], hit[i]): src among the batch's queries q_ids (rows of q)."""
        if len(src) == 0:
            return np.zeros(0, np.float32)
        order = np.argsort(q_ids, kind="stable")
        at = order[np.searchsorted(q_ids, src, sorter=order)]
        return np.einsum("ij,ij->i", q[at], self.get(hit)).astype(np.float32)


def _to_gpu(index):
    """The index on the GPUs when FAISS has them (k-NN there: GPU indexes have no range search)."""
    import faiss

    try:
        n = faiss.get_num_gpus()
    except AttributeError:
        n = 0
    if n <= 0:
        return index, False
    try:
        return faiss.index_cpu_to_all_gpus(index), True
    except (RuntimeError, AttributeError):   # an index type the GPU does not take (HNSW): stay on the CPU
        return index, False


def components(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Connected components of the edges a[i] - b[i]: (node ids, sorted; each one's group = its
    component's smallest id). Label propagation with pointer jumping, numpy only: O(edges) a round,
    a few rounds for the chains of duplicates."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    if len(a) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    node, inv = np.unique(np.concatenate([a, b]), return_inverse=True)
    ea, eb = inv[:len(a)], inv[len(a):]
    label = np.arange(len(node))
    while True:
        low = np.minimum(label[ea], label[eb])
        new = label.copy()
        np.minimum.at(new, ea, low)
        np.minimum.at(new, eb, low)
        while True:                     # pointer jumping: each node to its label's label
            jumped = new[new]
            if np.array_equal(jumped, new):
                break
            new = jumped
        if np.array_equal(new, label):
            break
        label = new
    return node, node[label]            # labels are indices of the smallest node: sorted ids


def _similarities(ws: Workspace, con: duckdb.DuckDBPyConnection, shards: list) -> None:
    """Each member's cosine to its representative, from the stored vectors: one pass gathers the
    representatives' vectors (one per group), a second scores the members."""
    rep_of = dict(con.execute("SELECT id, representative FROM duplicates WHERE kind = 'image'").fetchall())
    members = np.fromiter(rep_of.keys(), dtype=np.int64, count=len(rep_of))
    reps = np.unique(np.fromiter(rep_of.values(), dtype=np.int64, count=len(rep_of)))
    rep_vec: dict[int, np.ndarray] = {}
    for shard in shards:
        ids, vecs = store.open_shard(shard)
        for j in np.flatnonzero(np.isin(ids, reps)):
            rep_vec[int(ids[j])] = np.asarray(vecs[j], dtype=np.float32)
    out_id, out_s = [], []
    for shard in shards:
        ids, vecs = store.open_shard(shard)
        sel = np.flatnonzero(np.isin(ids, members))
        if len(sel) == 0:
            continue
        mine = np.asarray(vecs[sel], dtype=np.float32)
        theirs = np.stack([rep_vec[rep_of[int(i)]] for i in ids[sel]])
        out_id.append(np.asarray(ids[sel], dtype=np.int64))
        out_s.append(np.einsum("ij,ij->i", mine, theirs).astype(np.float32))
    if not out_id:
        return
    con.register("sims", {"id": np.concatenate(out_id), "s": np.minimum(np.concatenate(out_s), np.float32(1.0))})
    try:
        con.execute("UPDATE duplicates SET similarity = sims.s FROM sims "
                    "WHERE duplicates.kind = 'image' AND duplicates.id = sims.id")
    finally:
        con.unregister("sims")


def _counts(con: duckdb.DuckDBPyConnection, kind: str) -> tuple[int, int]:
    groups, members = con.execute("SELECT count(DISTINCT group_id), count(*) FROM duplicates WHERE kind = ?",
                                  [kind]).fetchall()[0]
    return int(groups), int(members)


# --------------------------------------------------------------------------- filter --dedup

def not_found(con: duckdb.DuckDBPyConnection) -> str | None:
    """Why `filter --dedup` (and the app's duplicates control) has no image groups to use, in one
    line; None when `curate dedup` stored them (some or none found)."""
    if not sql.has_relation(con, "duplicates"):
        return "no duplicates found yet: run `curate dedup` first"
    if Workspace.get_meta(con, META_KEY) is None:
        return "no image duplicates found yet: run `curate dedup` first"
    return None


def restrict_kept(con: duckdb.DuckDBPyConnection, removed: bool) -> None:
    """`filter --dedup` on the TEMP table kept: one row per image group (the representative when
    it is kept, else the kept member of highest prob, then smallest id: queries/dedup_keep.sql);
    `removed`: instead the kept rows dedup leaves out, with their group, representative and cosine to it."""
    why = not_found(con)
    if why is not None:
        raise DedupError(why)
    sql.run(con, "dedup_keep")   # the rule, shared with the app's "representatives only" (its browse grid)
    con.execute("CREATE TEMP TABLE dedup_drop AS SELECT id FROM dedup_dropped('kept')")
    if not removed:
        con.execute("DELETE FROM kept WHERE id IN (SELECT id FROM dedup_drop)")
        return
    con.execute("DELETE FROM kept WHERE id NOT IN (SELECT id FROM dedup_drop)")
    con.execute("ALTER TABLE kept ADD COLUMN dup_group BIGINT")
    con.execute("ALTER TABLE kept ADD COLUMN dup_representative BIGINT")
    con.execute("ALTER TABLE kept ADD COLUMN dup_similarity FLOAT")
    con.execute("UPDATE kept SET dup_group = d.group_id, dup_representative = d.representative, "
                "dup_similarity = d.similarity FROM duplicates d WHERE d.kind = 'image' AND d.id = kept.id")
