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
