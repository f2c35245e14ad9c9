"""The scoring maths of one batch on hand-made arrays: no workspace, no DuckDB, no model.

References are the textbook float64 softmax and the study's ensemble, label by label
(classify_support), so these tests say what `score_batch` computes, not how.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from classify_support import ensemble_reference, softmax64, top2, unit

from curate.classify.scoring import ENSEMBLE_TEXT_MIN, ENSEMBLE_TEXT_WEIGHT, Batch, score_batch

L, D, SCALE = 9, 16, 40.0


def _batch(seed: int = 0) -> tuple[Batch, np.ndarray]:
    """Items 10..15: 0-4 have an image, 2-5 a caption (so some have one, some both)."""
    rng = np.random.default_rng(seed)
    q = unit(rng, L, D).astype(np.float64)
    ids = np.arange(10, 16, dtype=np.int64)
    image_rows, caption_rows = np.arange(0, 5), np.arange(2, 6)
    b = Batch(ids, image_rows, unit(rng, len(image_rows), D), caption_rows, unit(rng, len(caption_rows), D))
    # a caption that agrees with its image makes a confident caption: the ensemble uses it
    b.caption[0] = b.image[2]
    return b, q


def test_every_label_stored_is_the_float64_softmax():
    b, q = _batch()
    items, rows = score_batch(b, q, SCALE, None)
    p_img, p_cap = softmax64(b.image, q, SCALE), softmax64(b.caption, q, SCALE)
    lab, prob, lab2, prob2 = top2(p_img)
    np.testing.assert_array_equal(items["image_label"][b.image_rows], lab)
    np.testing.assert_allclose(items["image_prob"][b.image_rows], prob, rtol=1e-12)
    np.testing.assert_array_equal(items["image_label2"][b.image_rows], lab2)
    np.testing.assert_allclose(items["image_prob2"][b.image_rows], prob2, rtol=1e-12)
    assert np.isnan(items["image_prob"][5]) and items["image_label"][5] == -1   # item 15 has no image
    np.testing.assert_array_equal(items["caption_label"][b.caption_rows], top2(p_cap)[0])
    assert (items["image_rest"][b.image_rows] == 0).all()                       # nothing left unstored
    # one row per (item, label); each probability is the item's softmax at that label
    assert len(rows["id"]) == len(b.ids) * L
    for i, pos in enumerate(b.image_rows):
        got = rows["image_prob"][rows["id"] == b.ids[pos]]
        np.testing.assert_allclose(got, p_img[i], rtol=1e-12)
    assert np.isnan(rows["caption_prob"][rows["id"] == b.ids[0]]).all()         # item 10 has no caption


def test_top_k_keeps_the_union_of_both_modalities_and_bounds_the_rest():
    b, q = _batch(seed=1)
    k = 2
    items, rows = score_batch(b, q, SCALE, k)
    p_img, p_cap = softmax64(b.image, q, SCALE), softmax64(b.caption, q, SCALE)
    for pos, item in enumerate(b.ids):
        want = set()
        if pos in b.image_rows:
            want |= set(np.argsort(-p_img[list(b.image_rows).index(pos)], kind="stable")[:k])
        if pos in b.caption_rows:
            want |= set(np.argsort(-p_cap[list(b.caption_rows).index(pos)], kind="stable")[:k])
        assert set(rows["label_idx"][rows["id"] == item]) == want
    # the bound on every label without a row: the (k+1)-th probability
    third = np.sort(p_img, axis=1)[:, -(k + 1)]
    np.testing.assert_allclose(items["image_rest"][b.image_rows], third, rtol=1e-12)


def test_the_ensemble_is_the_studys_mix_over_every_label():
    b, q = _batch(seed=2)
    items, _rows = score_batch(b, q, SCALE, None)
    p_img = {int(b.ids[r]): p for r, p in zip(b.image_rows, softmax64(b.image, q, SCALE), strict=True)}
    p_cap = {int(b.ids[r]): p for r, p in zip(b.caption_rows, softmax64(b.caption, q, SCALE), strict=True)}
    want = ensemble_reference(p_img, p_cap, ENSEMBLE_TEXT_WEIGHT, ENSEMBLE_TEXT_MIN)
    assert items["ensemble_caption_used"].any() and not items["ensemble_caption_used"].all()  # both cases
    for pos in b.image_rows:
        label, prob, prob2 = want[int(b.ids[pos])]
        assert items["ensemble_label"][pos] == label
        assert items["ensemble_prob"][pos] == pytest.approx(prob, rel=1e-12)
        assert items["ensemble_prob2"][pos] == pytest.approx(prob2, rel=1e-12)


def test_the_scoring_maths_loads_no_database_and_no_workspace():
    root = Path(__file__).resolve().parents[2]
    code = ("import json, sys; import curate.classify.scoring; "
            "print(json.dumps([m for m in ('duckdb', 'curate.core.workspace', 'torch') if m in sys.modules]))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True)
    assert json.loads(p.stdout) == []


# -- every stored value against plain float64 numpy, on batches that exercise every path ---------

def _reference(vecs: np.ndarray, q: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cosines, softmax, log-sum-exp) of each row, float64, written out plainly."""
    sims = vecs.astype(np.float64) @ q.T
    z = sims * scale
    m = z.max(axis=1, keepdims=True)
    e = np.exp(z - m)
    return sims, e / e.sum(axis=1, keepdims=True), m[:, 0] + np.log(e.sum(axis=1))


def _check_against_numpy(b: Batch, q: np.ndarray, scale: float, top_k: int | None) -> None:
    items, rows = score_batch(b, q, scale, top_k)
    n, n_labels = len(b.ids), len(q)
    k = None if top_k is None or top_k >= n_labels else top_k
    kept: dict[int, set] = {int(i): set() for i in b.ids}
    probs = {}
    for kind, pos, vecs in (("image", b.image_rows, b.image), ("caption", b.caption_rows, b.caption)):
        sims, p, lse = _reference(vecs, q, scale)
        probs[kind] = dict(zip(pos.tolist(), p, strict=True))
        order = np.argsort(-sims, axis=1, kind="stable")          # ties: the earlier label first
        at = np.arange(len(pos))
        np.testing.assert_array_equal(items[f"{kind}_label"][pos], order[:, 0])
        np.testing.assert_array_equal(items[f"{kind}_label2"][pos], order[:, 1])
        np.testing.assert_allclose(items[f"{kind}_prob"][pos], p[at, order[:, 0]], rtol=1e-12, atol=0)
        np.testing.assert_allclose(items[f"{kind}_prob2"][pos], p[at, order[:, 1]], rtol=1e-12, atol=0)
        np.testing.assert_allclose(items[f"{kind}_lse"][pos], lse, rtol=1e-12, atol=0)
        np.testing.assert_array_equal(items[f"{kind}_sim"][pos], sims[at, order[:, 0]].astype(np.float32))
        rest = np.zeros(len(pos)) if k is None else p[at, order[:, k]]
        np.testing.assert_allclose(items[f"{kind}_rest"][pos], rest, rtol=1e-12, atol=0)
        lacking = np.setdiff1d(np.arange(n), pos)
        assert (items[f"{kind}_label"][lacking] == -1).all() and np.isnan(items[f"{kind}_prob"][lacking]).all()
        for j, i in enumerate(pos):
            kept[int(b.ids[i])] |= set((order[j] if k is None else order[j, :k]).tolist())
        # every stored cell of an item with this vector: its cosine and its softmax, NaN-free
        row_of = {int(b.ids[i]): j for j, i in enumerate(pos)}
        has = np.array([int(i) in row_of for i in rows["id"]])
        ri = np.array([row_of[int(i)] for i in rows["id"][has]], dtype=np.int64)
        ci = rows["label_idx"][has]
        np.testing.assert_allclose(rows[f"{kind}_prob"][has], p[ri, ci], rtol=1e-12, atol=0)
        np.testing.assert_array_equal(rows[f"{kind}_sim"][has], sims[ri, ci].astype(np.float32))
        assert np.isfinite(rows[f"{kind}_prob"][has]).all() and np.isnan(rows[f"{kind}_prob"][~has]).all()
    # the rows: the union of each item's top-k by image and by caption, in (id, label) order
    want = sorted((i, c) for i, cs in kept.items() for c in cs)
    assert list(zip(rows["id"].tolist(), rows["label_idx"].tolist(), strict=True)) == want
    # the ensemble over every label, where an item has an image; none for a caption alone
    ens = ensemble_reference({int(b.ids[i]): p for i, p in probs["image"].items()},
                             {int(b.ids[i]): p for i, p in probs["caption"].items()},
                             ENSEMBLE_TEXT_WEIGHT, ENSEMBLE_TEXT_MIN)
    for pos in range(n):
        if pos not in probs["image"]:
            assert items["ensemble_label"][pos] == -1 and np.isnan(items["ensemble_prob"][pos])
            continue
        label, prob, prob2 = ens[int(b.ids[pos])]
        assert items["ensemble_label"][pos] == label
        assert items["ensemble_prob"][pos] == pytest.approx(prob, rel=1e-12, abs=0)
        assert items["ensemble_prob2"][pos] == pytest.approx(prob2, rel=1e-12, abs=0)
        used = pos in probs["caption"] and probs["caption"][pos].max() >= ENSEMBLE_TEXT_MIN
        assert items["ensemble_caption_used"][pos] == used


def _mixed_batch(rng: np.random.Generator, n: int, n_labels: int, d: int, q: np.ndarray | None = None,
                 ) -> tuple[Batch, np.ndarray]:
    """n items: about a third image only, a third caption only, a third both; some captions agree."""
    q = unit(rng, n_labels, d).astype(np.float64) if q is None else q
    kind = rng.integers(0, 3, n)
    image_rows, caption_rows = np.flatnonzero(kind != 1), np.flatnonzero(kind != 0)
    b = Batch(np.arange(n, dtype=np.int64) * 3 + 7, image_rows, unit(rng, len(image_rows), d),
              caption_rows, unit(rng, len(caption_rows), d))
    # captions close to a label: confident, so the ensemble's mix is used for some items
    b.caption[::2] = q[rng.integers(0, n_labels, len(b.caption[::2]))] + 0.3 * b.caption[::2]
    b.caption /= np.linalg.norm(b.caption, axis=1, keepdims=True)
    return b, q


@pytest.mark.parametrize("top_k", [1, 5, None, 39])
def test_every_stored_value_is_plain_float64_numpy(top_k):
    b, q = _mixed_batch(np.random.default_rng(7), 300, 40, 24)
    items, _ = score_batch(b, q, 60.0, top_k)
    assert items["ensemble_caption_used"].any() and not items["ensemble_caption_used"][b.image_rows].all()
    _check_against_numpy(b, q, 60.0, top_k)


def test_equal_scores_go_to_the_earlier_label_also_at_the_top_k_cut():
    rng = np.random.default_rng(11)
    base = unit(rng, 6, 8).astype(np.float64)
    # labels 0, 3, 5, 8 are one vector, 1 and 6 another: every item has ties, some at the cut
    q = base[[0, 1, 2, 0, 4, 0, 1, 3, 0, 5]]
    b, _ = _mixed_batch(rng, 120, len(q), 8, q=q)
    b.image[:10] = base[0].astype(np.float32)                    # exact ties at the top
    for top_k in (1, 2, 3, 5, None):
        _check_against_numpy(b, q, 25.0, top_k)


def test_a_batch_with_one_modality_only():
    rng = np.random.default_rng(5)
    q = unit(rng, 12, 16).astype(np.float64)
    ids = np.arange(50, dtype=np.int64)
    none = np.zeros(0, np.int64)
    only_images = Batch(ids, np.arange(50), unit(rng, 50, 16), none, np.zeros((0, 16), np.float32))
    only_captions = Batch(ids, none, np.zeros((0, 16), np.float32), np.arange(50), unit(rng, 50, 16))
    for b in (only_images, only_captions):
        for top_k in (3, None):
            _check_against_numpy(b, q, 50.0, top_k)


def test_a_batch_scored_in_pieces_is_the_same_maths(monkeypatch):
    """Batches are scored SCORE_CHUNK items at a time: cut at odd places, every value still holds."""
    import curate.classify.scoring as scoring

    monkeypatch.setattr(scoring, "SCORE_CHUNK", 37)
    b, q = _mixed_batch(np.random.default_rng(13), 300, 40, 24)
    for top_k in (5, None):
        _check_against_numpy(b, q, 60.0, top_k)
