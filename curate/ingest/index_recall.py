"""An index's measured recall, and the search parameter tuned to reach a target.

After an index is built (or grown), a few thousand of the collection's own vectors are
drawn as queries. They stay in the index, like the queries of dedup and of search by
example; each query's own id is left out of both the exact and the approximate lists, so
finding itself earns nothing. The exact top-10 comes from a flat inner-product search
over every committed vector; the search parameter (nprobe for IVF, efSearch for HNSW) is
then raised from small values to the smallest one whose recall@10 surely reaches the target:
its lower confidence bound, not its estimate. The queries are a sample, and an estimate a
standard error above the target is as likely to come from a value whose true recall is
below it (at 1M nprobe 6 measured 0.958 on 195 queries, 0.949 held out: part sampling
error, part a short list longer than an outside query's, see _recall). The bound treats the
query as the unit (a query's ten neighbours sit in the same lists or graph region: they
are found or missed together), the ratio of found to true neighbours minus Z standard
errors of that ratio over queries.
A flat index is exact: recall 1, nothing to tune.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import faiss
import numpy as np

K = 10                    # recall@10
QUERIES = 2000            # queries drawn from the collection, at most ...
MIN_QUERIES = 200         # ... and at least
# The exact neighbours cost queries x vectors x d multiply-adds: fewer queries for a bigger
# collection. The bound's margin shrinks as 1/sqrt(queries), and the tuned value with it:
# at 1M x 512 (per-query recall's standard deviation ~0.1 at 0.95) 195 queries leave a
# margin of ~0.012, about one nprobe step (6 -> 8 -> 12 moved held-out recall 0.949 -> 0.958
# -> 0.967), 976 leave ~0.005, 1,953 ~0.004. 5e11 buys the 976: ~100 s on 2 cores shared
# at load 7 (4.9 G multiply-adds/s measured), a few times less on quiet ones, against an
# ivffs build of ~180 s; 2,000 would double that for a margin a third smaller.
EXACT_BUDGET = 5e11
Z = 1.645                 # one-sided 95%: a value accepted when its recall's lower bound reaches the target
RETUNE_GROWTH = 0.10      # an index grown by less than this keeps the parameter tuned before
LATENCY_QUERIES = 200     # of them, searched one at a time for the single-query latency
LATENCY_SECONDS = 2.0     # ... or as many as fit in this time
BATCH_QUERIES = 1000      # searched as one batch for queries/s
EF_SEARCH = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048)


@dataclass(frozen=True)
class Tuning:
    """What the index record keeps about how the index is searched."""
    param: str | None        # nprobe | efSearch | None (flat: exact)
    value: int | None
    recall: float            # recall@10 at `value`, on `queries` of the collection's vectors
    target: float
    queries: int
    latency_ms: float        # one query at a time, mean
    qps: float               # the queries searched as one batch
    n: int | None = None     # vectors in the index when it was tuned (None: an older record)
    recall_low: float | None = None  # recall's lower bound at Z (None: a record from before the bound)

    @property
    def reached(self) -> bool:
        return (self.recall if self.recall_low is None else self.recall_low) >= self.target

    def describe(self) -> str:
        at = f"{self.param} {self.value}, " if self.param else "exact, "
        bound = f" (>= {self.recall_low:.3f} at 95%)" if self.param and self.recall_low is not None else ""
        if self.reached:
            miss = ""
        elif self.recall >= self.target:
            miss = (f" (not surely above the target {self.target:g} on {self.queries:,} queries: "
                    f"the recipe's best)")
        else:
            miss = f" (below the target {self.target:g}: the recipe cannot reach it)"
        return (f"{at}recall@{K} {self.recall:.3f}{bound}{miss}, {self.latency_ms:.2f} ms a query, "
                f"{self.qps:,.0f} q/s batched")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict | None) -> Tuning | None:
        return cls(**raw) if raw else None


def queries_for(n: int, d: int) -> int:
    """How many of the collection's vectors to draw as queries (see EXACT_BUDGET)."""
    return min(n, QUERIES, max(MIN_QUERIES, int(EXACT_BUDGET / max(n * d, 1))))


def still_tuned(tuning: Tuning | None, target: float, n: int) -> bool:
    """Whether a tuning made earlier still stands for an index of n vectors: the same target,
    and the index grew by less than RETUNE_GROWTH since (more vectors, the same parameter,
    recall drifts down slowly)."""
    return (tuning is not None and tuning.target == target and tuning.n is not None
            and tuning.recall_low is not None  # accepted on its estimate alone: tuned again under the bound
            and tuning.n <= n <= tuning.n * (1 + RETUNE_GROWTH))


def unwrapped(index):
    """The index that searches, as its own type (faiss.downcast_index), past an IDMap (which
    only translates ids: the scores are the inner index's)."""
    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexIDMap2 | faiss.IndexIDMap):
        inner = faiss.downcast_index(inner.index)
    return inner


def param_name(index) -> str | None:
    """The knob that trades speed for recall in this index, or None for an exact one."""
    inner = unwrapped(index)
    if isinstance(inner, faiss.IndexHNSW):
        return "efSearch"
    try:
        faiss.extract_index_ivf(index)
        return "nprobe"
    except RuntimeError:
        return None


def set_param(index, value: int | None) -> None:
    name = param_name(index)
    if name and value:
        faiss.ParameterSpace().set_index_parameter(index, name, int(value))


def candidates(index) -> list[int]:
    """The values tried, smallest first."""
    name = param_name(index)
    if name == "efSearch":
        return list(EF_SEARCH)
    if name == "nprobe":
        # powers of two and the halves between them (1, 2, 3, 4, 6, 8, 12, ...): a search's cost
        # grows with nprobe, and the step from 8 to 16 is often more than the target needs
        nlist = faiss.extract_index_ivf(index).nlist
        steps = {2**i for i in range(nlist.bit_length() + 1)} | {3 * 2**i for i in range(nlist.bit_length())}
        return sorted({min(nlist, v) for v in steps})
    return []


def exact_neighbours(chunks, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores and ids [nq, k] of the exact top-k by inner product over `chunks` of (ids, vectors),
    streamed."""
    best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_i = np.full((len(queries), k), -1, dtype=np.int64)
    for ids, vecs in chunks:
        s, pos = faiss.knn(queries, np.ascontiguousarray(vecs, dtype=np.float32), min(k, len(ids)),
                           metric=faiss.METRIC_INNER_PRODUCT)
        all_s = np.concatenate([best_s, s], axis=1)
        all_i = np.concatenate([best_i, np.where(pos >= 0, ids[np.maximum(pos, 0)], -1)], axis=1)
        top = np.argsort(-all_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(all_s, top, 1), np.take_along_axis(all_i, top, 1)
    return best_s, best_i


def hits_per_query(found: np.ndarray, truth: np.ndarray, self_ids: np.ndarray, k: int = K,
                   found_scores: np.ndarray | None = None,
                   truth_scores: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each query's true top-k neighbours found, and their number (its own id left out of both).

    With scores (exact ones: an index of full vectors), a found neighbour as near as the true
    k-th also counts: among equal scores (duplicates) either id is a right answer."""
    hits = np.zeros(len(found), dtype=np.int64)
    totals = np.zeros(len(found), dtype=np.int64)
    for row, (f, t, own) in enumerate(zip(found, truth, self_ids, strict=True)):
        keep_t = (t != own) & (t >= 0)
        t_ids = t[keep_t][:k]
        keep_f = (f != own) & (f >= 0)
        f_ids = f[keep_f][:k]
        hit = np.isin(f_ids, t_ids)
        if found_scores is not None and truth_scores is not None and len(t_ids):
            kth = truth_scores[row][keep_t][:k][-1]
            hit |= found_scores[row][keep_f][:k] >= kth - 1e-5
        hits[row] = min(int(hit.sum()), len(t_ids))
        totals[row] = len(t_ids)
    return hits, totals


def recall_at_k(found: np.ndarray, truth: np.ndarray, self_ids: np.ndarray, k: int = K,
                found_scores: np.ndarray | None = None, truth_scores: np.ndarray | None = None) -> float:
    """Share of the queries' true top-k neighbours that was found (see hits_per_query)."""
    hits, totals = hits_per_query(found, truth, self_ids, k, found_scores, truth_scores)
    return float(hits.sum() / totals.sum()) if totals.sum() else 1.0


def recall_bounds(hits: np.ndarray, totals: np.ndarray, z: float = Z) -> tuple[float, float]:
    """recall (found over true neighbours) and its lower confidence bound, the query the unit:
    the ratio minus z standard errors of a ratio estimator over queries (the spread of each
    query's hits - recall x its true neighbours). One query has no spread to measure: its
    bound is 0."""
    keep = totals > 0
    hits, totals = hits[keep].astype(np.float64), totals[keep].astype(np.float64)
    if not len(totals):
        return 1.0, 1.0
    r = float(hits.sum() / totals.sum())
    if len(totals) < 2:
        return r, 0.0
    resid = hits - r * totals
    se = float(np.sqrt((resid ** 2).sum() / (len(totals) * (len(totals) - 1))) / totals.mean())
    return r, max(0.0, r - z * se)


def exact_scores(index) -> bool:
    """Whether the index returns true inner products: it scores full vectors (flat, IVF-Flat,
    HNSW over flat storage, or a short list re-ranked by a flat index), not codes (PQ, fast-scan
    PQ, scalar quantisers) nor anything unknown."""
    inner = unwrapped(index)
    if isinstance(inner, faiss.IndexRefine):
        return isinstance(faiss.downcast_index(inner.refine_index), faiss.IndexFlat)
    if isinstance(inner, faiss.IndexHNSW):
        return isinstance(faiss.downcast_index(inner.storage), faiss.IndexFlat)
    return isinstance(inner, faiss.IndexFlat | faiss.IndexIVFFlat)


def _refine(index):
    """The IndexRefine inside `index` (re-ranking a short list of k x k_factor), or None."""
    inner = unwrapped(index)
    return inner if isinstance(inner, faiss.IndexRefine) else None


def _recall(index, queries, self_ids, truth) -> tuple[float, float]:
    """recall@10 and its lower bound, as a query from outside the collection would see it.

    The queries are in the index, so each asks for K + 1 and its own id is dropped. A
    re-ranked index takes (K + 1) x k_factor candidates for that, where an outside query's
    k = 10 takes K x k_factor: 7 more at k_factor 8, which lifted the measured recall above the
    held-out one (0.955 on 976 own vectors, 0.949 held out, nprobe 6 at 1M). While measuring,
    the short list is K x k_factor + 1: the outside query's, plus the slot its own vector takes."""
    refine = _refine(index)
    kept = refine.k_factor if refine is not None else None
    if refine is not None:
        refine.k_factor = (K * kept + 1.5) / (K + 1)  # faiss truncates (K + 1) x k_factor: K x kept + 1
    try:
        scores, found = index.search(queries, K + 1)
    finally:
        if refine is not None:
            refine.k_factor = kept
    if exact_scores(index):
        return recall_bounds(*hits_per_query(found, truth[1], self_ids, K, scores, truth[0]))
    return recall_bounds(*hits_per_query(found, truth[1], self_ids, K))


def _speed(index, queries: np.ndarray) -> tuple[float, float]:
    """Single-query latency (ms) and batch queries/s, within a few seconds even for a big flat index."""
    batch = queries[:BATCH_QUERIES]
    t = time.perf_counter()
    index.search(batch, K)
    qps = len(batch) / max(time.perf_counter() - t, 1e-9)
    t = time.perf_counter()
    done = 0
    for q in queries[:LATENCY_QUERIES]:
        index.search(q[None, :], K)
        done += 1
        if time.perf_counter() - t > LATENCY_SECONDS:
            break
    return (time.perf_counter() - t) / done * 1000, qps


def tune(index, queries: np.ndarray, self_ids: np.ndarray, truth: tuple[np.ndarray, np.ndarray] | None,
         target: float) -> Tuning:
    """The smallest search parameter whose recall@10's lower bound reaches `target` (the one
    with the best bound when none does), set on `index`, with its recall, bound and speed.
    `truth` is exact_neighbours' (scores, ids) for K + 1 (the query itself among them); None
    for an exact index."""
    name = param_name(index)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if name is None:
        lat, qps = _speed(index, queries)
        return Tuning(None, None, 1.0, target, len(queries), round(lat, 4), round(qps, 1), int(index.ntotal), 1.0)
    best = None
    for value in candidates(index):
        set_param(index, value)
        r, low = _recall(index, queries, self_ids, truth)
        if best is None or low > best[2] + 1e-9:
            best = (value, r, low)
        if low >= target:
            break
    value, r, low = best
    set_param(index, value)
    lat, qps = _speed(index, queries)
    return Tuning(name, int(value), round(float(r), 4), target, len(queries), round(lat, 4), round(qps, 1),
                  int(index.ntotal), math.floor(float(low) * 1e4) / 1e4)  # down: never above the bound
