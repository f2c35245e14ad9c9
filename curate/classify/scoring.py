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
