"""Label scores: every image and caption against every label, exact softmax, into DuckDB.

The label vectors are the queries. Scoring is an exact, chunked float64 matrix
product of the label vectors with the stored shards (streamed, never all in memory),
then per item the softmax over the whole label set with the model's logit scale.
What is stored depends on the collection's size (docs/scores.md):

- `full`: every (item, label) probability, where the matrix is small;
- `topk`: per item the union of its top-k labels by image and by caption, both
  modalities' probabilities on those rows, and a bound on everything not stored.

Either way each probability written is the float64 softmax over all labels.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import numpy as np

from ..core import sql, store
from ..core.integrity import verify_shards
from ..core.workspace import ModelIdentity, Workspace, check_same_model
from ..errors import CurateError
from .labels import LabelSet, load_label_set
from .prompts import Wording, prompts_for, resolve

if TYPE_CHECKING:  # the model module imports torch and open_clip; load it only when needed
    from ..ingest.model import Encoder

DEFAULT_TOP_K = 10
# Up to this many (item, label) cells the whole matrix is stored: 100K images x 205
# labels (20.5M) is; 1M images (205M rows, ~10x the rows of top-k) is not.
FULL_MAX_CELLS = 25_000_000
DEFAULT_BATCH_ROWS = 32_768
# DuckDB's buffer pool while scores are written: without a cap it keeps every block
# written (80% of RAM by default), so memory would grow with the collection.
DUCKDB_MEMORY = "1GB"
_NO_LABEL = -1
# Bumped whenever scoring changes what it writes: scores of another version are never resumed.
SCORES_FORMAT = 1
# The study's ensemble (section 4.2): 0.8 image + 0.2 caption, the caption counting
# when its own top probability reaches 0.5. Computed while scoring, over every label,
# into item_scores (the `ensemble` view); `ensemble_with(...)` in SQL does any other.
ENSEMBLE_TEXT_WEIGHT = 0.2
ENSEMBLE_TEXT_MIN = 0.5
# The tables of one classification (queries/scores_tables.sql). A run writes them under
# STAGE + name and publishes them when it completes (see _write_scores).
SCORE_TABLES = ("labels", "item_scores", "label_scores", "score_settings", "score_progress")
STAGE = "next_"


class NotReady(CurateError, RuntimeError):
    """The workspace lacks what this step needs (embeddings, or scores)."""


@dataclass(frozen=True)
class LabelQueries:
    """The label vectors of one (model, label set, wording): the queries of classification."""

    cache_key: str
    labels: tuple[str, ...]
    prompts: list[list[str]]
    vectors: np.ndarray          # float64 [n_labels, d], unit rows
    logit_scale: float           # the model's own


@dataclass(frozen=True)
class ClassifyResult:
    label_set: str
    prompts: str
    n_labels: int
    images: int
    captions: int
    storage: str
    top_k: int
    logit_scale: float
    label_score_rows: int
    seconds: float
    cached_vectors: bool
    resumed_vectors: int = 0     # vectors an earlier run had scored (a resumed run): not scored again


# -- label vectors --------------------------------------------------------------

def cache_key(ident: ModelIdentity, prompts: list[list[str]]) -> str:
    """Identity of the model and every prompt text, in label order."""
    blob = json.dumps([ident.model, ident.pretrained, ident.embed_dim, prompts], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


def label_queries(con: duckdb.DuckDBPyConnection, ident: ModelIdentity, label_set: LabelSet,
                  wording: Wording, encoder_factory: Callable[[], Encoder]) -> tuple[LabelQueries, bool]:
    """The label vectors, from the workspace's cache or encoded now (and cached).

    Returns (queries, came_from_cache). The encoder is only built on a cache miss.
    """
    sql.run(con, sql.CACHE)
    prompts = prompts_for(label_set, wording)
    key = cache_key(ident, prompts)
    cached = _cached(con, key, label_set, prompts)
    if cached is not None:
        return cached, True
    enc = encoder_factory()
    check_same_model(ident, enc.identity)
    flat = [p for ps in prompts for p in ps]
    emb = enc.encode_text(flat).astype(np.float64)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    vectors = np.empty((len(prompts), emb.shape[1]), np.float64)
    start = 0
    for i, ps in enumerate(prompts):  # prompt ensembling: the mean direction of the prompts
        v = emb[start:start + len(ps)].mean(axis=0)
        vectors[i] = v / np.linalg.norm(v)
        start += len(ps)
    q = LabelQueries(key, label_set.labels, prompts, vectors, float(enc.logit_scale))
    _store_cache(con, q, ident, label_set, wording)
    return q, False


def _cached(con: duckdb.DuckDBPyConnection, key: str, label_set: LabelSet,
            prompts: list[list[str]]) -> LabelQueries | None:
    head = con.execute("SELECT logit_scale FROM label_vector_sets WHERE cache_key = ?", [key]).fetchall()
    if not head:
        return None
    rows = con.execute("SELECT vector FROM label_vectors WHERE cache_key = ? ORDER BY label_idx", [key]).fetchall()
    if len(rows) != len(label_set):
        return None
    vectors = np.array([r[0] for r in rows], dtype=np.float64)
    return LabelQueries(key, label_set.labels, prompts, vectors, float(head[0][0]))


def _store_cache(con: duckdb.DuckDBPyConnection, q: LabelQueries, ident: ModelIdentity, label_set: LabelSet,
                 wording: Wording) -> None:
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute("DELETE FROM label_vectors WHERE cache_key = ?", [q.cache_key])
        con.execute("DELETE FROM label_vector_sets WHERE cache_key = ?", [q.cache_key])
        con.execute("INSERT INTO label_vector_sets (cache_key, model, pretrained, embed_dim, label_set, prompts, "
                    "logit_scale) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [q.cache_key, ident.model, ident.pretrained, ident.embed_dim, label_set.name, wording.name,
                     q.logit_scale])
        con.executemany("INSERT INTO label_vectors VALUES (?, ?, ?, ?, ?)",
                        [[q.cache_key, i, lab, ps, vec.tolist()]
                         for i, (lab, ps, vec) in enumerate(zip(q.labels, q.prompts, q.vectors, strict=True))])
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


# -- streaming image and caption vectors side by side ---------------------------

@dataclass
class Batch:
    """Items in id order, with the vectors each has (an image, a caption, or both)."""

    ids: np.ndarray              # int64 [n], strictly increasing
    image_rows: np.ndarray       # positions in `ids` of the image vectors
    image: np.ndarray            # float32 [len(image_rows), d]
    caption_rows: np.ndarray
    caption: np.ndarray


def aligned_batches(ws: Workspace, con: duckdb.DuckDBPyConnection, batch_rows: int,
                    after: int | None = None) -> Iterator[Batch]:
    """Image and caption vectors of the same items together, in item-id order.

    Shards are written in id order by build-index, so the two streams merge like
    sorted lists with bounded memory. A kind whose shards are not in id order is
    read through an id index instead (8 bytes an item, still no vector held twice).

    `after`: only items with a greater id (a resumed run). The batches are then the
    ones a run from the start would make from there on, provided `after` ends one
    of them: float64 products are not bit-for-bit the same when a batch holds other
    rows, so the same batches are what makes a resumed run equal an uninterrupted one.
    """
    img = _Buffered(_stream(ws, con, "image", batch_rows, after))
    cap = _Buffered(_stream(ws, con, "caption", batch_rows, after))
    while True:
        ids_i, v_i = img.next_batch()
        if ids_i is None:
            while True:  # captions of items that have no image vector
                ids_c, v_c = cap.next_batch()
                if ids_c is None:
                    return
                yield Batch(ids_c, np.zeros(0, np.int64), v_c[:0], np.arange(len(ids_c)), v_c)
        ids_c, v_c = cap.take_upto(int(ids_i[-1]))
        if len(ids_c) == 0:
            yield Batch(ids_i, np.arange(len(ids_i)), v_i, np.zeros(0, np.int64), v_c)
            continue
        ids = np.union1d(ids_i, ids_c)
        yield Batch(ids, np.searchsorted(ids, ids_i), v_i, np.searchsorted(ids, ids_c), v_c)


def _chunk_start(sorted_ids: np.ndarray, after: int | None, batch_rows: int) -> tuple[int, int]:
    """(first chunk's start, first row to yield) among sorted ids, for items after `after`.

    Chunks stay where a run from the start puts them (multiples of batch_rows); the
    first one is cut at the resume point.
    """
    if after is None:
        return 0, 0
    first = int(np.searchsorted(sorted_ids, after, side="right"))
    return first - first % batch_rows, first


def _stream(ws: Workspace, con: duckdb.DuckDBPyConnection, kind: str, batch_rows: int,
            after: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    if _in_id_order(ws, con, kind):  # shard by shard, in chunks of batch_rows (store.iter_embeddings)
        for vec_path, ids_path, _n in ws.shard_files(con, kind):
            ids = np.load(ids_path)
            if len(ids) == 0 or (after is not None and ids[-1] <= after):
                continue  # scored already: its vectors are not read
            start, first = _chunk_start(ids, after, batch_rows)
            vecs = np.load(vec_path, mmap_mode="r")
            for s in range(start, len(ids), batch_rows):
                lo = max(s, first)
                yield ids[lo:s + batch_rows], np.asarray(vecs[lo:s + batch_rows])
        return
    shards = ws.shard_files(con, kind)
    ids = [np.load(p) for _v, p, _n in shards]
    where = np.concatenate([np.full(len(a), s, np.int32) for s, a in enumerate(ids)])
    row = np.concatenate([np.arange(len(a), dtype=np.int64) for a in ids])
    all_ids = np.concatenate(ids)
    del ids
    order = np.argsort(all_ids, kind="stable")
    if len(order) > 1 and (np.diff(all_ids[order]) == 0).any():
        raise ValueError(f"the {kind} shards hold an item twice; rebuild the workspace")
    start, first = _chunk_start(all_ids[order], after, batch_rows)
    if first >= len(order):
        return
    mm = [np.load(v, mmap_mode="r") for v, _p, _n in shards]
    for s in range(start, len(order), batch_rows):
        sel = order[max(s, first):s + batch_rows]
        out = np.empty((len(sel), mm[0].shape[1]), np.float32)
        for sh in np.unique(where[sel]):
            m = where[sel] == sh
            out[m] = mm[sh][row[sel][m]]
        yield all_ids[sel], out


def _in_id_order(ws: Workspace, con: duckdb.DuckDBPyConnection, kind: str) -> bool:
    last = -(2 ** 63)
    for _v, ids_path, _n in ws.shard_files(con, kind):
        ids = np.load(ids_path)
        if len(ids) == 0:
            continue
        if ids[0] <= last or (len(ids) > 1 and (np.diff(ids) <= 0).any()):
            return False
        last = int(ids[-1])
    return True


class _Buffered:
    """A sorted (ids, vectors) stream that can be read up to a given id."""

    def __init__(self, it: Iterator[tuple[np.ndarray, np.ndarray]]):
        self._it = it
        self._ids: list[np.ndarray] = []
        self._vecs: list[np.ndarray] = []
        self._done = False

    def _pull(self) -> bool:
        if self._done:
            return False
        nxt = next(self._it, None)
        if nxt is None:
            self._done = True
            return False
        self._ids.append(nxt[0])
        self._vecs.append(nxt[1])
        return True

    def next_batch(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        if not self._ids and not self._pull():
            return None, None
        ids, vecs = self._ids.pop(0), self._vecs.pop(0)
        return ids, vecs

    def take_upto(self, cut: int) -> tuple[np.ndarray, np.ndarray]:
        while (not self._ids or self._ids[-1][-1] <= cut) and self._pull():
            pass
        take_i, take_v = [], []
        while self._ids and self._ids[0][0] <= cut:
            ids, vecs = self._ids.pop(0), self._vecs.pop(0)
            n = int(np.searchsorted(ids, cut, side="right"))
            take_i.append(ids[:n])
            take_v.append(vecs[:n])
            if n < len(ids):
                self._ids.insert(0, ids[n:])
                self._vecs.insert(0, vecs[n:])
                break
        if not take_i:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        return np.concatenate(take_i), np.concatenate(take_v)


# -- scoring one batch ----------------------------------------------------------

@dataclass
class _Modality:
    """One modality's scores for the items of a batch that have its vector."""

    rows: np.ndarray             # positions in the batch
    sims: np.ndarray             # float64 [m, L]
    lse: np.ndarray              # float64 [m]
    top: np.ndarray              # int64 [m, k1], best first, ties by label order
    top_logit: np.ndarray        # float64 [m, k1]


def _score(vecs: np.ndarray, rows: np.ndarray, q: np.ndarray, scale: float, k1: int) -> _Modality:
    sims = vecs.astype(np.float64) @ q.T           # float64: float32 sums lose ~1e-4 in a logit at scale 100
    # log-sum-exp, stable (max subtracted; exp(100 * sim) overflows a float32), in place
    z = sims * scale
    top = z.max(axis=1)
    z -= top[:, None]
    np.exp(z, out=z)
    lse = top + np.log(z.sum(axis=1))
    del z
    # top-(k+1) by cosine (the same order as the logits); torch's is the fastest on CPU
    import torch  # here, not at the top: readers of the scores (filter, sample) need no torch
    vals, idx = torch.topk(torch.from_numpy(sims), k1, dim=1)
    vals, idx = vals.numpy(), idx.numpy()
    order = np.lexsort((idx, -vals), axis=1)       # equal scores: the earlier label first
    top_logit = np.take_along_axis(vals, order, 1) * scale
    return _Modality(rows, sims, lse, np.take_along_axis(idx, order, 1), top_logit)


def _item_columns(prefix: str, mod: _Modality | None, n: int, k: int | None) -> dict[str, np.ndarray]:
    """item_scores columns of one modality; NaN / -1 where an item lacks it."""
    out = {f"{prefix}_label": np.full(n, _NO_LABEL, np.int32), f"{prefix}_prob": np.full(n, np.nan),
           f"{prefix}_sim": np.full(n, np.nan, np.float32), f"{prefix}_label2": np.full(n, _NO_LABEL, np.int32),
           f"{prefix}_prob2": np.full(n, np.nan), f"{prefix}_rest": np.full(n, np.nan),
           f"{prefix}_lse": np.full(n, np.nan)}
    if mod is None or len(mod.rows) == 0:
        return out
    r = mod.rows
    out[f"{prefix}_label"][r] = mod.top[:, 0]
    out[f"{prefix}_prob"][r] = np.exp(mod.top_logit[:, 0] - mod.lse)
    out[f"{prefix}_sim"][r] = np.take_along_axis(mod.sims, mod.top[:, :1], 1)[:, 0]
    if mod.top.shape[1] > 1:
        out[f"{prefix}_label2"][r] = mod.top[:, 1]
        out[f"{prefix}_prob2"][r] = np.exp(mod.top_logit[:, 1] - mod.lse)
    # the best label without a row: the (k+1)-th; none when every label is stored
    out[f"{prefix}_rest"][r] = 0.0 if k is None else np.exp(mod.top_logit[:, k] - mod.lse)
    out[f"{prefix}_lse"][r] = mod.lse
    return out


def _gather(mod: _Modality | None, n: int, r: np.ndarray, c: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """(sim, prob) at batch rows r and labels c; NaN where the item lacks this modality."""
    sim = np.full(len(r), np.nan)
    if mod is None or len(mod.rows) == 0:
        return sim.astype(np.float32), sim
    local = np.full(n, -1, np.int64)
    local[mod.rows] = np.arange(len(mod.rows))
    li = local[r]
    has = li >= 0
    sim[has] = mod.sims[li[has], c[has]]
    prob = np.full(len(r), np.nan)
    prob[has] = np.exp(sim[has] * scale - mod.lse[li[has]])
    return sim.astype(np.float32), prob


def _ensemble_columns(img: _Modality | None, cap: _Modality | None, items: dict, n: int, scale: float,
                      text_weight: float, text_min: float) -> dict[str, np.ndarray]:
    """The default ensemble's top two labels, over every label (the same formula as ensemble_with).

    Where the caption does not count the ensemble is the image's own softmax, so only
    the items whose caption counts need the full mix.
    """
    out = {"ensemble_label": items["image_label"].copy(), "ensemble_prob": items["image_prob"].copy(),
           "ensemble_label2": items["image_label2"].copy(), "ensemble_prob2": items["image_prob2"].copy(),
           "ensemble_caption_used": np.zeros(n, bool)}
    if img is None or cap is None:
        return out
    cap_local = np.full(n, -1, np.int64)
    cap_local[cap.rows] = np.arange(len(cap.rows))
    ci = cap_local[img.rows]
    use = (ci >= 0) & (items["caption_prob"][img.rows] >= text_min)
    if not use.any():
        return out
    ii, ci, rows = np.flatnonzero(use), ci[use], img.rows[use]
    p_img = np.exp(img.sims[ii] * scale - img.lse[ii, None])
    p_cap = np.exp(cap.sims[ci] * scale - cap.lse[ci, None])
    mix = (1 - text_weight) * p_img + text_weight * p_cap
    first = mix.argmax(axis=1)                      # the first of equal maxima: the earlier label
    top = mix[np.arange(len(mix)), first]
    mix[np.arange(len(mix)), first] = -np.inf
    second = mix.argmax(axis=1) if mix.shape[1] > 1 else None
    out["ensemble_label"][rows] = first
    out["ensemble_prob"][rows] = top
    if second is not None:
        out["ensemble_label2"][rows] = second
        out["ensemble_prob2"][rows] = mix[np.arange(len(mix)), second]
    out["ensemble_caption_used"][rows] = True
    return out


def score_batch(b: Batch, q: np.ndarray, scale: float, top_k: int | None) -> tuple[dict, dict]:
    """(item_scores columns, label_scores columns) of one batch; top_k None = store all labels."""
    n, n_labels = len(b.ids), q.shape[0]
    k1 = min(2, n_labels) if top_k is None else min(top_k + 1, n_labels)
    img = _score(b.image, b.image_rows, q, scale, k1) if len(b.image_rows) else None
    cap = _score(b.caption, b.caption_rows, q, scale, k1) if len(b.caption_rows) else None
    k = None if top_k is None or top_k >= n_labels else top_k
    items = {"id": b.ids, **_item_columns("image", img, n, k), **_item_columns("caption", cap, n, k)}
    items |= _ensemble_columns(img, cap, items, n, scale, ENSEMBLE_TEXT_WEIGHT, ENSEMBLE_TEXT_MIN)

    if k is None:  # every label of every item
        r = np.repeat(np.arange(n), n_labels)
        c = np.tile(np.arange(n_labels), n)
    else:          # the union of each item's top-k by image and by caption
        keep = np.zeros((n, n_labels), bool)
        for mod in (img, cap):
            if mod is not None:
                keep[mod.rows[:, None], mod.top[:, :k]] = True
        r, c = np.nonzero(keep)
    i_sim, i_prob = _gather(img, n, r, c, scale)
    c_sim, c_prob = _gather(cap, n, r, c, scale)
    rows = {"id": b.ids[r], "label_idx": c.astype(np.int32), "image_sim": i_sim, "image_prob": i_prob,
            "caption_sim": c_sim, "caption_prob": c_prob}
    return items, rows


_INSERT_ITEMS = """
INSERT INTO {table}
SELECT id,
       nullif(image_label, -1), nan_null(image_prob), nan_null(image_sim),
       nullif(image_label2, -1), nan_null(image_prob2), nan_null(image_rest), nan_null(image_lse),
       nullif(caption_label, -1), nan_null(caption_prob), nan_null(caption_sim),
       nullif(caption_label2, -1), nan_null(caption_prob2), nan_null(caption_rest), nan_null(caption_lse),
       nullif(ensemble_label, -1), nan_null(ensemble_prob), nullif(ensemble_label2, -1), nan_null(ensemble_prob2),
       CASE WHEN image_label = -1 THEN NULL ELSE ensemble_caption_used END
FROM batch_items
"""
_INSERT_ROWS = """
INSERT INTO {table}
SELECT id, label_idx, nan_null(image_sim), nan_null(image_prob), nan_null(caption_sim), nan_null(caption_prob)
FROM batch_rows
"""


# -- the classify step ----------------------------------------------------------

def classify(ws_path: str | Path, label_set: str | Path | LabelSet = "places205", prompts: str | Path = "natural",
             encoder: Encoder | None = None, *, logit_scale: float | None = None, top_k: int = DEFAULT_TOP_K,
             storage: str = "auto", batch_rows: int = DEFAULT_BATCH_ROWS, device: str | None = None,
             progress: Callable[[int], None] | None = None, restart: bool = False,
             log: Callable[[str], None] | None = None, plan: Callable[[int], None] | None = None) -> ClassifyResult:
    """Score every image and caption of a workspace against a label set; (re)create the views.

    `encoder` is only needed when the label vectors are not cached yet; by default the
    workspace's own model is loaded then. `storage` is full, topk or auto (by size).
    A run with the settings of the scores already in the workspace (a killed run, or
    a finished one before more items were embedded) continues after the last item
    they hold; `restart` starts over anyway. `plan` hears how many vectors this run will
    score, `progress` the vectors of each committed batch, `log` a line when a run resumes
    or starts over.
    """
    started = time.time()
    ws = Workspace(ws_path)
    if not ws.exists():
        raise NotReady(f"no workspace at {ws.root}: run `curate build-index` first")
    ls = label_set if isinstance(label_set, LabelSet) else load_label_set(label_set)
    wording = resolve(prompts)
    if storage not in ("auto", "full", "topk"):
        raise ValueError(f"storage must be auto, full or topk, not {storage!r}")
    if top_k < 1:
        raise ValueError("top_k must be at least 1")
    if batch_rows < 1:
        raise ValueError("batch_rows must be at least 1")
    if logit_scale is not None and not (logit_scale > 0 and np.isfinite(logit_scale)):
        raise ValueError("the logit scale must be a positive number (1 / temperature)")
    con = ws.connect()
    try:
        ident = Workspace.model_identity(con)
        if ident is None:
            raise NotReady(f"the workspace {ws.root} has no embeddings yet: run `curate build-index` first")
        if encoder is not None:
            check_same_model(ident, encoder.identity)

        def factory():
            if encoder is not None:
                return encoder
            from ..ingest.model import load_encoder
            return load_encoder(ident.model, ident.pretrained, device)

        q, was_cached = label_queries(con, ident, ls, wording, factory)
        if q.vectors.shape[1] != ident.embed_dim:
            raise NotReady(f"label vectors are {q.vectors.shape[1]}-d but the workspace is {ident.embed_dim}-d")
        scale = float(logit_scale) if logit_scale is not None else q.logit_scale
        n_img = store.count_vectors(ws, con, "image")
        n_cap = store.count_vectors(ws, con, "caption")
        if storage == "auto":
            storage = "full" if max(n_img, n_cap) * len(ls) <= FULL_MAX_CELLS else "topk"
        if top_k >= len(ls):
            storage = "full"
        keep_k = None if storage == "full" else top_k
        rows, resumed = _write_scores(ws, con, q, ls, wording, ident, scale, storage, keep_k, n_img, n_cap,
                                      batch_rows, progress, restart, log or (lambda _line: None), plan)
    finally:
        con.close()
    return ClassifyResult(ls.name, wording.name, len(ls), n_img, n_cap, storage,
                          len(ls) if keep_k is None else keep_k, scale, rows, time.time() - started, was_cached,
                          resumed)


# -- resume ---------------------------------------------------------------------

def fingerprint(q: LabelQueries, ls: LabelSet, ident: ModelIdentity, scale: float, storage: str,
                keep_k: int | None) -> str:
    """Everything the stored values depend on, as JSON: only scores made with all of it are resumed.

    (The label set's name and the wording's name are not in it: the same labels and
    prompt texts from another file give the same scores.)
    """
    return json.dumps({"format": SCORES_FORMAT, "label_set_digest": ls.digest, "n_labels": len(ls),
                       "cache_key": q.cache_key, "model": [ident.model, ident.pretrained, ident.embed_dim],
                       "logit_scale": scale, "storage": storage, "top_k": keep_k,
                       "ensemble": [ENSEMBLE_TEXT_WEIGHT, ENSEMBLE_TEXT_MIN]}, sort_keys=True)


def _wrap64(x: int) -> int:
    """x as a BIGINT, modulo 2**64 (the id sums wrap the way numpy's int64 sums do)."""
    return (x + 2 ** 63) % 2 ** 64 - 2 ** 63


@dataclass
class _Progress:
    """The score_progress row: how far the scores go, and what they hold up to there."""

    last_id: int | None          # the highest item id of the last committed batch; None: no batch yet
    images: int                  # image vectors scored
    captions: int
    image_id_sum: int            # sums of their item ids (modulo 2**64)
    caption_id_sum: int

    def add(self, b: Batch) -> None:
        img, cap = b.ids[b.image_rows], b.ids[b.caption_rows]
        self.images += len(img)
        self.captions += len(cap)
        self.image_id_sum = _wrap64(self.image_id_sum + int(img.sum()))
        self.caption_id_sum = _wrap64(self.caption_id_sum + int(cap.sum()))
        self.last_id = int(b.ids[-1])

    def save(self, con: duckdb.DuckDBPyConnection, prefix: str = "", finished: bool = False) -> None:
        con.execute(f"UPDATE {prefix}score_progress SET last_id = ?, images = ?, captions = ?, image_id_sum = ?, "
                    "caption_id_sum = ?, finished = ?, updated_at = current_timestamp",
                    [self.last_id, self.images, self.captions, self.image_id_sum, self.caption_id_sum, finished])


def _vectors_upto(ws: Workspace, con: duckdb.DuckDBPyConnection, kind: str,
                  upto: int | None) -> tuple[int, int, int | None, bool]:
    """(count, id sum, largest id) of the committed vectors of a kind with id <= upto, and
    whether there are vectors with a greater id. Reads the id files only."""
    n, total, top, more = 0, 0, None, False
    for _v, ids_path, _n in ws.shard_files(con, kind):
        ids = np.load(ids_path)
        if upto is None:
            more = more or len(ids) > 0
            continue
        m = ids <= upto
        k = int(m.sum())
        if k:
            n += k
            total = _wrap64(total + int(ids[m].sum()))
            top = max(int(ids[m].max()), top if top is not None else int(ids[m].max()))
        more = more or k < len(ids)
    return n, total, top, more


def _resume_point(ws: Workspace, con: duckdb.DuckDBPyConnection, fp: str, n_labels: int,
                  log: Callable[[str], None], prefix: str = "") -> tuple[_Progress, bool] | None:
    """Where the scores of the tables `<prefix>item_scores`... stop, if this run can continue
    them: (progress, whether the rows after progress.last_id must go first). None: they
    cannot be continued (absent, other settings, other vectors)."""
    if not all(sql.has_relation(con, prefix + t) for t in SCORE_TABLES):
        return None
    rows = con.execute(f"SELECT fingerprint, last_id, images, captions, image_id_sum, caption_id_sum "
                       f"FROM {prefix}score_progress").fetchall()
    if len(rows) != 1:
        return None
    if rows[0][0] != fp:
        log("starting over: discarding an unfinished classify run made with other settings" if prefix else
            "starting over: the workspace's scores were made with other settings (they stay in use until "
            "this run completes)")
        return None
    if con.execute(f"SELECT count(*) FROM {prefix}labels").fetchall()[0][0] != n_labels:
        return None
    p = _Progress(*rows[0][1:])
    if p.last_id is None:
        return p, False
    # The shards must still hold exactly the vectors scored, up to the last id scored;
    # what was embedded since must come after it.
    n_img, sum_img, top_img, more_img = _vectors_upto(ws, con, "image", p.last_id)
    n_cap, sum_cap, _top, _more = _vectors_upto(ws, con, "caption", p.last_id)
    if (n_img, sum_img, n_cap, sum_cap) != (p.images, p.image_id_sum, p.captions, p.caption_id_sum):
        log("starting over: the embeddings are not the ones the scores in the workspace were made from")
        return None
    if more_img and (top_img is None or top_img < p.last_id):
        # The last batches held captions only (items after the last image). Images
        # embedded since come after them, and a run from the start puts those captions
        # in one batch with the next images: score them again that way.
        n_cap, sum_cap, _top, _more = _vectors_upto(ws, con, "caption", top_img)
        return _Progress(top_img, n_img, n_cap, sum_img, sum_cap), True
    return p, False


def _staged_sql() -> str:
    """queries/scores_tables.sql with every table named next_<table>: the staging copies."""
    return re.sub(r"CREATE OR REPLACE TABLE (\w+)", lambda m: f"CREATE OR REPLACE TABLE {STAGE}{m.group(1)}",
                  sql.text(sql.SCORE_TABLES))


def drop_staged(con: duckdb.DuckDBPyConnection) -> None:
    for t in SCORE_TABLES:
        con.execute(f"DROP TABLE IF EXISTS {STAGE}{t}")


def _staged_point(ws: Workspace, con: duckdb.DuckDBPyConnection, fp: str, n_labels: int,
                  log: Callable[[str], None]) -> tuple[_Progress, bool, int | None] | None:
    """An unfinished run with these settings in the staging tables: (progress, roll back, append_after).

    Staging tables of other settings (or that cannot be continued) are dropped.
    """
    if not any(sql.has_relation(con, STAGE + t) for t in SCORE_TABLES):
        return None
    point = _resume_point(ws, con, fp, n_labels, log, prefix=STAGE)
    append_after = None
    if point is not None:
        append_after = con.execute(f"SELECT append_after FROM {STAGE}score_progress").fetchall()[0][0]
        if append_after is not None and not _live_is(con, fp):
            point = None       # staged for a base that is no longer the workspace's scores
    if point is None:
        _in_transaction(con, lambda: drop_staged(con))
        return None
    return point[0], point[1], append_after


def _live_is(con: duckdb.DuckDBPyConnection, fp: str) -> bool:
    if not (sql.has_relation(con, "score_progress") and sql.has_relation(con, "score_settings")):
        return False
    rows = con.execute("SELECT fingerprint FROM score_progress").fetchall()
    return len(rows) == 1 and rows[0][0] == fp


def _write_scores(ws: Workspace, con: duckdb.DuckDBPyConnection, q: LabelQueries, ls: LabelSet, wording: Wording,
                  ident: ModelIdentity, scale: float, storage: str, keep_k: int | None, n_img: int, n_cap: int,
                  batch_rows: int, progress: Callable[[int], None] | None, restart: bool,
                  log: Callable[[str], None], plan: Callable[[int], None] | None = None) -> tuple[int, int]:
    """Write the scores; returns (label_scores rows, vectors scored by an earlier run).

    The workspace's scores (labels, item_scores, label_scores, score_settings,
    score_progress) always hold one complete classification, or none: a run writes into
    staging copies (next_*), batch by batch, and publishes them in one transaction at the
    end, so every reader (filter, sample, report, the views in the duckdb shell) sees the
    previous complete scores until then. Batches commit one by one because DuckDB holds a
    transaction's appended rows in memory: one transaction would grow with the collection
    (35 MB a batch, 2 GB at 1M items). Each commits its rows with next_score_progress,
    so the next run with the same settings continues after the last batch committed.

    A run that continues the workspace's own finished scores (items embedded since)
    stages only the new items' rows (append_after: the last id of the scores it
    extends) and appends them when it completes; any other run stages a whole
    classification, published by renaming the tables (no copy).
    """
    con.execute("CREATE OR REPLACE TEMP MACRO nan_null(x) AS CASE WHEN isnan(x) THEN NULL ELSE x END")
    con.execute(f"SET memory_limit = '{DUCKDB_MEMORY}'")  # a constant of ours, not user text
    fp = fingerprint(q, ls, ident, scale, storage, keep_k)
    verify_shards(ws, con)  # a shard lost or damaged under the workspace fails here, not half way
    if restart:
        _in_transaction(con, lambda: drop_staged(con))
    staged = None if restart else _staged_point(ws, con, fp, len(ls), log)
    if staged is None:
        live = None if restart else _resume_point(ws, con, fp, len(ls), log)
        done = _Progress(None, 0, 0, 0, 0) if live is None else live[0]
        append_after = done.last_id

        def start():
            drop_staged(con)
            con.execute(_staged_sql())
            con.executemany(f"INSERT INTO {STAGE}labels VALUES (?, ?, ?, ?, ?)",
                            [[i, lab, ps[0], ps, scene]
                             for i, (lab, ps, scene) in enumerate(zip(ls.labels, q.prompts, ls.scenes, strict=True))])
            con.execute(f"INSERT INTO {STAGE}score_progress (fingerprint, last_id, images, captions, image_id_sum, "
                        "caption_id_sum, finished, append_after) VALUES (?, ?, ?, ?, ?, ?, false, ?)",
                        [fp, done.last_id, done.images, done.captions, done.image_id_sum, done.caption_id_sum,
                         append_after])

        _in_transaction(con, start)
    else:
        done, roll_back, append_after = staged
        if roll_back:
            if append_after is not None and (done.last_id is None or done.last_id < append_after):
                append_after = done.last_id

            def reopen():
                where, args = ("", []) if done.last_id is None else (" WHERE id > ?", [done.last_id])
                con.execute(f"DELETE FROM {STAGE}item_scores" + where, args)
                con.execute(f"DELETE FROM {STAGE}label_scores" + where, args)
                done.save(con, STAGE)
                con.execute(f"UPDATE {STAGE}score_progress SET append_after = ?", [append_after])

            _in_transaction(con, reopen)
    if done.last_id is not None:
        log(f"resuming after item id {done.last_id:,}: {done.images:,} image and {done.captions:,} caption "
            "vectors are scored already")
    resumed = done.images + done.captions
    if plan:
        plan(max(0, n_img + n_cap - resumed))
    insert_items, insert_rows = _INSERT_ITEMS.format(table=STAGE + "item_scores"), \
        _INSERT_ROWS.format(table=STAGE + "label_scores")
    for b in aligned_batches(ws, con, batch_rows, done.last_id):
        items, scored = score_batch(b, q.vectors, scale, keep_k)
        done.add(b)
        con.register("batch_items", items)
        con.register("batch_rows", scored)
        _in_transaction(con, lambda: (con.execute(insert_items), con.execute(insert_rows), done.save(con, STAGE)))
        con.unregister("batch_items")
        con.unregister("batch_rows")
        if progress:
            progress(len(b.image_rows) + len(b.caption_rows))

    def publish():
        target = STAGE if append_after is None else ""
        con.execute(f"DELETE FROM {target}score_settings")
        con.execute(f"INSERT INTO {target}score_settings (label_set, label_set_digest, prompts, model, pretrained, "
                    "embed_dim, logit_scale, storage, top_k, n_labels, images, captions, cache_key, "
                    "ensemble_text_weight, ensemble_text_min) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [ls.name, ls.digest, wording.name, ident.model, ident.pretrained, ident.embed_dim, scale,
                     storage, len(ls) if keep_k is None else keep_k, len(ls), n_img, n_cap, q.cache_key,
                     ENSEMBLE_TEXT_WEIGHT, ENSEMBLE_TEXT_MIN])
        if append_after is None:   # a whole classification: the staging tables become the scores
            con.execute(f"UPDATE {STAGE}score_progress SET append_after = NULL")
            done.save(con, STAGE, finished=True)
            for t in SCORE_TABLES:
                con.execute(f"DROP TABLE IF EXISTS {t}")
                con.execute(f"ALTER TABLE {STAGE}{t} RENAME TO {t}")
        else:                      # the new items' rows join the scores they extend
            for t in ("item_scores", "label_scores"):
                con.execute(f"DELETE FROM {t} WHERE id > ?", [append_after])
                con.execute(f"INSERT INTO {t} BY NAME SELECT * FROM {STAGE}{t}")
            done.save(con, "", finished=True)
            drop_staged(con)
        sql.install_views(con)

    _in_transaction(con, publish)
    rows = con.execute("SELECT count(*) FROM label_scores").fetchall()[0][0]
    return int(rows), resumed


def _in_transaction(con: duckdb.DuckDBPyConnection, work: Callable[[], object]) -> None:
    con.execute("BEGIN TRANSACTION")
    try:
        work()
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def settings(con: duckdb.DuckDBPyConnection) -> dict | None:
    """The score_settings row of the last complete classify, or None before the first."""
    if not sql.has_relation(con, "score_settings"):
        return None
    rel = con.execute("SELECT * FROM score_settings")
    cols = [d[0] for d in rel.description]
    rows = rel.fetchall()
    return dict(zip(cols, rows[0], strict=True)) if rows else None


def unfinished(con: duckdb.DuckDBPyConnection) -> str | None:
    """A classify run that has not completed, in words ("scored 12,000 of 40,000 vectors"), or None."""
    for table in (STAGE + "score_progress", "score_progress"):
        if not sql.has_relation(con, table):
            continue
        rows = con.execute(f"SELECT images + captions, finished FROM {table}").fetchall()
        if len(rows) == 1 and not rows[0][1]:
            total = con.execute("SELECT coalesce(sum(rows), 0) FROM shards").fetchall()[0][0]
            return f"scored {rows[0][0]:,} of {total:,} vectors"
    return None


def require_complete(con: duckdb.DuckDBPyConnection, where: str | Path = "the workspace",
                     *, needed: bool = True) -> dict | None:
    """The settings of the workspace's complete scores; NotReady when there are none.

    Readers (filter, sample, report) call this first. The published tables always hold a
    complete classification (a run in progress writes staging tables), except in a
    workspace written by a curate that scored in place, where a killed run left partial
    tables without score_settings: that is refused too, naming what is incomplete.
    `needed=False`: only refuse half a classification (None when there are no scores,
    for readers of prediction views made some other way).
    """
    st = settings(con)
    if st is not None:
        return st
    stopped = unfinished(con)
    if stopped is not None:
        raise NotReady(f"{where} has no complete scores: a `curate classify` run stopped after it {stopped}; "
                       "run the same `curate classify` command again to finish it")
    if needed:
        raise NotReady(f"{where} has no scores yet: run `curate classify` first")
    return None
