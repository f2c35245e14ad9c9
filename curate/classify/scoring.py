"""The scoring maths of one batch, numpy only: cosine similarities of the stored vectors
with the label vectors, the exact float64 softmax over every label (log-sum-exp), each
item's top labels, the rows to store, and the study's ensemble of image and caption.

Nothing here reads a file or a database: `score_batch` takes arrays and returns columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The study's ensemble (section 4.2): 0.8 image + 0.2 caption, the caption counting
# when its own top probability reaches 0.5. Computed while scoring, over every label,
# into item_scores (the `ensemble` view); `ensemble_with(...)` in SQL does any other.
ENSEMBLE_TEXT_WEIGHT = 0.2
ENSEMBLE_TEXT_MIN = 0.5
_NO_LABEL = -1
# Items scored at a time within a batch: the [rows, labels] float64 arrays of 4,096 items
# (6.7 MB at 205 labels) stay in cache through the product, the top-k, the exp and the
# ensemble; a 32,768-item batch as one piece costs ~30% more CPU (bench/README figures).
# A batch is cut at fixed offsets from its start, so equal batches score bit for bit alike.
SCORE_CHUNK = 4096


@dataclass
class Batch:
    """Items in id order, with the vectors each has (an image, a caption, or both)."""

    ids: np.ndarray              # int64 [n], strictly increasing
    image_rows: np.ndarray       # positions in `ids` of the image vectors
    image: np.ndarray            # float32 [len(image_rows), d]
    caption_rows: np.ndarray
    caption: np.ndarray


@dataclass
class _Modality:
    """One modality's scores for the items of a batch that have its vector."""

    rows: np.ndarray             # positions in the batch
    sims: np.ndarray             # float64 [m, L]; after `finish`, exp(logit - max logit) in the same buffer
    top: np.ndarray              # int64 [m, k1], best first, ties by label order
    top_logit: np.ndarray        # float64 [m, k1]
    top_sim: np.ndarray          # float64 [m]: the top label's cosine
    lse: np.ndarray | None = None   # float64 [m], set by `finish`
    expsum: np.ndarray | None = None  # float64 [m]: sum of exp(logit - max logit), set by `finish`


def _similarities(vecs: np.ndarray, q_t: np.ndarray) -> np.ndarray:
    """float64 cosines [m, L]: float32 sums lose ~1e-4 in a logit at scale 100, so the product is float64."""
    return vecs.astype(np.float64) @ q_t


def _top(sims: np.ndarray, k1: int) -> np.ndarray:
    """Each row's k1 best labels [m, k1], best first, equal cosines by label order.

    numpy's partition finds each row's k1-th value (a third of torch.topk's time here,
    and no torch to import); the labels at or above it come out of nonzero in label
    order, so a stable sort by value keeps ties by label. A row with a tie at the k1-th
    value has more candidates; those rows (rare) are sorted whole.
    """
    m, n_labels = sims.shape
    if k1 >= n_labels:
        return np.argsort(-sims, axis=1, kind="stable")
    kth = np.partition(sims, n_labels - k1, axis=1)[:, n_labels - k1]
    r, c = np.nonzero(sims >= kth[:, None])
    counts = np.bincount(r, minlength=m)
    if (counts == k1).all():
        cand = c.reshape(m, k1)
    else:          # a tie at the cut (or a NaN): those rows sorted whole, the earlier label first
        cand = np.empty((m, k1), np.int64)
        odd = counts != k1
        cand[~odd] = c[~odd[r]].reshape(-1, k1)
        cand[odd] = np.argsort(-sims[odd], axis=1, kind="stable")[:, :k1]
    order = np.argsort(-np.take_along_axis(sims, cand, 1), axis=1, kind="stable")
    return np.take_along_axis(cand, order, 1)


def _score(vecs: np.ndarray, rows: np.ndarray, q_t: np.ndarray, scale: float, k1: int) -> _Modality:
    """Cosines and the top-(k+1) labels; the softmax's denominator comes later (`_finish`)."""
    sims = _similarities(vecs, q_t)
    top = _top(sims, k1)
    vals = np.take_along_axis(sims, top, 1)
    return _Modality(rows, sims, top, vals * scale, vals[:, 0].copy())


def _finish(mod: _Modality, scale: float) -> None:
    """The log-sum-exp, stable, in the cosines' own buffer (they are not read after this).

    The max logit is the top label's: fl(s * scale) is monotone in s, so it equals the
    max over the scaled row, with no pass over it. The buffer keeps exp(logit - max),
    which the ensemble reuses: p = e / sum(e).
    """
    z = mod.sims
    z *= scale
    z -= mod.top_logit[:, :1]
    np.exp(z, out=z)
    mod.expsum = z.sum(axis=1)
    mod.lse = mod.top_logit[:, 0] + np.log(mod.expsum)


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
    out[f"{prefix}_sim"][r] = mod.top_sim
    if mod.top.shape[1] > 1:
        out[f"{prefix}_label2"][r] = mod.top[:, 1]
        out[f"{prefix}_prob2"][r] = np.exp(mod.top_logit[:, 1] - mod.lse)
    # the best label without a row: the (k+1)-th; none when every label is stored
    out[f"{prefix}_rest"][r] = 0.0 if k is None else np.exp(mod.top_logit[:, k] - mod.lse)
    out[f"{prefix}_lse"][r] = mod.lse
    return out


@dataclass
class _Gathered:
    """One modality's cosines at the stored (row, label) cells, read before `_finish` reuses the buffer."""

    sim: np.ndarray              # float64 [cells], NaN where the item lacks this modality
    local: np.ndarray            # the cells' rows in the modality's arrays
    has: np.ndarray              # bool [cells]


def _gather_sims(mod: _Modality | None, n: int, r: np.ndarray, c: np.ndarray) -> _Gathered:
    sim = np.full(len(r), np.nan)
    if mod is None or len(mod.rows) == 0:
        return _Gathered(sim, np.zeros(0, np.int64), np.zeros(len(r), bool))
    local = np.full(n, -1, np.int64)
    local[mod.rows] = np.arange(len(mod.rows))
    li = local[r]
    has = li >= 0
    li = li[has]
    sim[has] = mod.sims[li, c[has]]
    return _Gathered(sim, li, has)


def _gathered_columns(g: _Gathered, mod: _Modality | None, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """(sim float32, prob) of the stored cells: prob = exp(logit - lse), NaN where the item lacks it."""
    prob = np.full(len(g.sim), np.nan)
    if mod is not None and len(g.local):
        prob[g.has] = np.exp(g.sim[g.has] * scale - mod.lse[g.local])
    return g.sim.astype(np.float32), prob


def _ensemble_columns(img: _Modality | None, cap: _Modality | None, items: dict, n: int,
                      text_weight: float, text_min: float) -> dict[str, np.ndarray]:
    """The default ensemble's top two labels, over every label (the same formula as ensemble_with).

    Where the caption does not count the ensemble is the image's own softmax, so only
    the items whose caption counts need the full mix. Each modality's buffer holds
    e = exp(logit - max) after `_finish`, so p = e / sum(e) needs no second exp, and the
    weight and the division are one factor per row.
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
    mix = img.sims[ii]                              # a copy: e of the image, these items
    mix *= ((1 - text_weight) / img.expsum[ii])[:, None]
    part = cap.sims[ci]
    part *= (text_weight / cap.expsum[ci])[:, None]
    mix += part
    del part
    at = np.arange(len(mix))
    first = mix.argmax(axis=1)                      # the first of equal maxima: the earlier label
    top = mix[at, first]
    mix[at, first] = -np.inf
    second = mix.argmax(axis=1) if mix.shape[1] > 1 else None
    out["ensemble_label"][rows] = first
    out["ensemble_prob"][rows] = top
    if second is not None:
        out["ensemble_label2"][rows] = second
        out["ensemble_prob2"][rows] = mix[at, second]
    out["ensemble_caption_used"][rows] = True
    return out


def score_batch(b: Batch, q: np.ndarray, scale: float, top_k: int | None) -> tuple[dict, dict]:
    """(item_scores columns, label_scores columns) of one batch; top_k None = store all labels."""
    q_t = np.ascontiguousarray(q.T, dtype=np.float64)   # [d, L], once a batch
    if len(b.ids) <= SCORE_CHUNK:
        return _score_chunk(b, q_t, scale, top_k)
    parts = [_score_chunk(_sub_batch(b, s, s + SCORE_CHUNK), q_t, scale, top_k)
             for s in range(0, len(b.ids), SCORE_CHUNK)]
    return ({c: np.concatenate([p[0][c] for p in parts]) for c in parts[0][0]},
            {c: np.concatenate([p[1][c] for p in parts]) for c in parts[0][1]})


def _sub_batch(b: Batch, start: int, stop: int) -> Batch:
    """The items at positions [start, stop) of a batch, with the vectors they have (views, no copy)."""
    i0, i1 = np.searchsorted(b.image_rows, [start, stop])
    c0, c1 = np.searchsorted(b.caption_rows, [start, stop])
    return Batch(b.ids[start:stop], b.image_rows[i0:i1] - start, b.image[i0:i1],
                 b.caption_rows[c0:c1] - start, b.caption[c0:c1])


def _score_chunk(b: Batch, q_t: np.ndarray, scale: float, top_k: int | None) -> tuple[dict, dict]:
    n, n_labels = len(b.ids), q_t.shape[1]
    k1 = min(2, n_labels) if top_k is None else min(top_k + 1, n_labels)
    img = _score(b.image, b.image_rows, q_t, scale, k1) if len(b.image_rows) else None
    cap = _score(b.caption, b.caption_rows, q_t, scale, k1) if len(b.caption_rows) else None
    k = None if top_k is None or top_k >= n_labels else top_k

    if k is None:  # every label of every item
        r = np.repeat(np.arange(n), n_labels)
        c = np.tile(np.arange(n_labels), n)
    else:          # the union of each item's top-k by image and by caption
        keep = np.zeros((n, n_labels), bool)
        for mod in (img, cap):
            if mod is not None:
                keep[mod.rows[:, None], mod.top[:, :k]] = True
        r, c = np.nonzero(keep)
    g_img, g_cap = _gather_sims(img, n, r, c), _gather_sims(cap, n, r, c)
    for mod in (img, cap):   # the cosines are read: their buffers become exp(logit - max)
        if mod is not None:
            _finish(mod, scale)

    items = {"id": b.ids, **_item_columns("image", img, n, k), **_item_columns("caption", cap, n, k)}
    items |= _ensemble_columns(img, cap, items, n, ENSEMBLE_TEXT_WEIGHT, ENSEMBLE_TEXT_MIN)
    i_sim, i_prob = _gathered_columns(g_img, img, scale)
    c_sim, c_prob = _gathered_columns(g_cap, cap, scale)
    rows = {"id": b.ids[r], "label_idx": c.astype(np.int32), "image_sim": i_sim, "image_prob": i_prob,
            "caption_sim": c_sim, "caption_prob": c_prob}
    return items, rows
