"""`curate classify`: exact scores against float64 numpy references, storage layouts, views, errors.

Workspaces come from the real `curate build-index` (conftest) or from the public
store API with vectors from the real curate-tiny encoder. Nothing here claims
meaning: random weights, mechanics only.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from classify_support import ensemble_reference, hand_workspace, references, softmax64, top2
from conftest import open_db, run_cli, write_jpeg

from curate.classify.labels import load_label_set
from curate.classify.prompts import prompts_for
from curate.classify.run import classify
from curate.classify.state import NotReady
from curate.core import store
from curate.core.workspace import ModelIdentity, ModelMismatch, Workspace
from curate.errors import WorkspaceError

TOL = 1e-9  # far inside the 1e-5 promised: the same float64 maths, summed in another order


@pytest.fixture
def ws(built_workspace, tmp_path) -> Path:
    dst = tmp_path / "ws"
    shutil.copytree(built_workspace, dst)
    return dst


def db(ws_path: Path) -> open_db:
    """A plain DuckDB connection, as a user's shell would open it."""
    return open_db(str(Path(ws_path) / "curate.duckdb"))


def rows_by_id(con, sql: str, params=None) -> dict[int, tuple]:
    return {r[0]: r[1:] for r in con.execute(sql, params or []).fetchall()}


def check_predictions(con, view: str, ids: np.ndarray, probs: np.ndarray, labels: list[str]) -> None:
    got = rows_by_id(con, f"SELECT id, label, prob, label2, prob2, margin FROM {view}")
    assert sorted(got) == sorted(ids.tolist())
    l1, p1, l2, p2 = top2(probs)
    for j, i in enumerate(ids.tolist()):
        label, prob, label2, prob2, margin = got[i]
        assert (label, label2) == (labels[l1[j]], labels[l2[j]])
        assert abs(prob - p1[j]) < TOL and abs(prob2 - p2[j]) < TOL
        assert abs(margin - (p1[j] - p2[j])) < TOL


@pytest.mark.parametrize("storage", ["full", "topk"])
def test_probabilities_equal_float64_softmax(ws, tiny_encoder, storage):
    r = classify(ws, "places205", "natural", tiny_encoder, storage=storage, top_k=5)
    assert (r.images, r.captions, r.n_labels, r.storage) == (12, 11, 205, storage)
    ref = references(ws)
    # the cached label vectors are the normalised embeddings of the natural prompts
    texts = [p[0] for p in prompts_for(load_label_set("places205"), "natural")]
    direct = tiny_encoder.encode_text(texts).astype(np.float64)
    np.testing.assert_allclose(ref["q"], direct / np.linalg.norm(direct, axis=1, keepdims=True), atol=1e-6)
    assert ref["scale"] == pytest.approx(tiny_encoder.logit_scale)
    con = db(ws)
    check_predictions(con, "predictions", *ref["image"], ref["labels"])
    check_predictions(con, "caption_predictions", *ref["caption"], ref["labels"])
    # every stored (item, label) probability, for both modalities
    for kind in ("image", "caption"):
        ids, probs = ref[kind]
        pos = {i: j for j, i in enumerate(ids.tolist())}
        rows = con.execute(f"SELECT id, label_idx, {kind}_prob, {kind}_sim FROM label_scores "
                           f"WHERE {kind}_prob IS NOT NULL").fetchall()
        assert rows
        for i, li, p, _sim in rows:
            assert abs(p - probs[pos[i], li]) < TOL
    n_rows = con.execute("SELECT count(*) FROM label_scores").fetchall()[0][0]
    if storage == "full":
        assert n_rows == 12 * 205
    else:  # the union of each item's top-5 by image and by caption
        expect = 0
        img_pos = {i: j for j, i in enumerate(ref["image"][0].tolist())}
        cap_pos = {i: j for j, i in enumerate(ref["caption"][0].tolist())}
        for i in img_pos:
            s = set(np.argsort(-ref["image"][1][img_pos[i]])[:5].tolist())
            if i in cap_pos:
                s |= set(np.argsort(-ref["caption"][1][cap_pos[i]])[:5].tolist())
            expect += len(s)
        assert n_rows == expect
        # the bound on labels without a row is the 6th best probability
        rest = rows_by_id(con, "SELECT id, image_rest FROM item_scores")
        for i, j in img_pos.items():
            assert abs(rest[i][0] - np.sort(ref["image"][1][j])[::-1][5]) < TOL
    con.close()


def _prob_dicts(ref) -> tuple[dict, dict]:
    return ({int(i): p for i, p in zip(*ref["image"], strict=True)},
            {int(i): p for i, p in zip(*ref["caption"], strict=True)})


@pytest.fixture(scope="module")
def full_scores(built_workspace, tmp_path_factory, tiny_encoder) -> tuple[Path, dict]:
    """The shared workspace classified once with every (item, label) score stored, and its
    references; read only (each case of the ensemble test queries it with its parameters)."""
    ws = tmp_path_factory.mktemp("full") / "ws"
    shutil.copytree(built_workspace, ws)
    classify(ws, encoder=tiny_encoder, storage="full")
    return ws, references(ws)


@pytest.mark.parametrize("params", [
    dict(text_weight=0.2, text_min=0.5),                                     # the study's defaults
    dict(text_weight=0.5, text_min=0.0),                                     # caption always counts
    dict(text_weight=0.3, text_min=0.05, image_max=0.04),                    # conditional variant
    dict(text_weight=0.4, text_min=0.0, renormalize=False),                  # the literal formula
])
def test_ensemble_matches_reference(full_scores, params):
    ws, ref = full_scores
    p_img, p_cap = _prob_dicts(ref)
    want = ensemble_reference(p_img, p_cap, **params)
    con = db(ws)
    sql = ("SELECT id, label_idx, prob, prob2, caption_used, exact FROM ensemble_with(?, ?, image_min := ?, "
           "image_max := ?, renormalize := ?)")
    got = rows_by_id(con, sql, [params["text_weight"], params["text_min"], params.get("image_min", 0.0),
                                params.get("image_max", 1.0), params.get("renormalize", True)])
    assert sorted(got) == sorted(want)
    for i, (label, prob, prob2) in want.items():
        assert got[i][0] == label and abs(got[i][1] - prob) < TOL and abs(got[i][2] - prob2) < TOL
        assert got[i][4] is True
    if params == dict(text_weight=0.5, text_min=0.0):
        used = {i: got[i][3] for i in got}
        assert used == {i: i in p_cap for i in p_img}


@pytest.mark.parametrize("storage", ["full", "topk"])
def test_ensemble_view_is_the_studys_default_over_every_label(ws, tiny_encoder, storage):
    """The `ensemble` view is computed while scoring; it must equal the reference at any storage."""
    classify(ws, encoder=tiny_encoder, storage=storage, top_k=2, logit_scale=60.0)  # sharp: captions clear 0.5
    p_img, p_cap = _prob_dicts(references(ws))
    want = ensemble_reference(p_img, p_cap, 0.2, 0.5)
    con = db(ws)
    got = rows_by_id(con, "SELECT id, label_idx, prob, prob2, caption_used, exact FROM ensemble")
    assert sorted(got) == sorted(want)
    for i, (label, prob, prob2) in want.items():
        assert got[i][0] == label and abs(got[i][1] - prob) < TOL and abs(got[i][2] - prob2) < TOL
        assert got[i][4] is True
    used = {i for i in got if got[i][3]}
    assert used == {i for i in p_img if i in p_cap and p_cap[i].max() >= 0.5} and used
    if storage == "full":   # and the SQL macro with the same parameters agrees
        macro = rows_by_id(con, "SELECT id, label_idx, prob FROM ensemble_with(0.2, 0.5)")
        assert {i: v[0] for i, v in macro.items()} == {i: v[0] for i, v in got.items()}
        assert all(abs(macro[i][1] - got[i][1]) < TOL for i in got)


def test_topk_ensemble_is_exact_where_it_says_so(ws, tiny_encoder):
    classify(ws, encoder=tiny_encoder, storage="topk", top_k=3)
    p_img, p_cap = _prob_dicts(references(ws))
    want = ensemble_reference(p_img, p_cap, 0.5, 0.0)
    con = db(ws)
    got = rows_by_id(con, "SELECT id, label_idx, prob, exact FROM ensemble_with(0.5, 0.0)")
    assert sorted(got) == sorted(want)
    for i, (label, prob, _p2) in want.items():
        g_label, g_prob, exact = got[i]
        if exact:  # the bound was cleared: the full argmax, exactly
            assert g_label == label and abs(g_prob - prob) < TOL
        else:      # a candidate's probability is still exact for its own label
            mix = 0.5 * p_img[i] + 0.5 * p_cap[i] if i in p_cap else p_img[i]
            assert abs(g_prob - mix[g_label]) < TOL


def test_planted_caption_equal_to_raw_prompt_wins(tmp_path, tiny_encoder):
    """A caption that is exactly a label's raw prompt has cosine 1 with that label's query."""
    labels = load_label_set("places205")
    planted = {"img_0.jpg": "bakery/shop", "img_1.jpg": "cathedral/outdoor", "img_2.jpg": "skyscraper",
               "img_3.jpg": "subway_station/platform", "img_4.jpg": "art_gallery"}
    raw = dict(zip(labels.labels, (p[0] for p in prompts_for(labels, "raw")), strict=True))
    src = tmp_path / "photos"
    for n, (name, label) in enumerate(planted.items()):
        write_jpeg(src / name, seed=n)
        (src / name).with_suffix(".txt").write_text(raw[label], encoding="utf-8")
    ws = tmp_path / "ws"
    run_cli("build-index", src, "-w", ws, "--model", "curate-tiny", "--pretrained", "none", "--workers", "0")
    classify(ws, "places205", "raw", tiny_encoder)
    con = db(ws)
    got = dict(con.execute("SELECT i.source_id, c.label FROM caption_predictions c JOIN items i USING (id)")
               .fetchall())
    assert got == planted
    sims = [r[0] for r in con.execute("SELECT sim FROM caption_predictions").fetchall()]
    assert min(sims) > 0.9999


def test_coverage_is_table_1(ws, tiny_encoder):
    classify(ws, encoder=tiny_encoder, logit_scale=60.0)   # a sharper softmax spreads the top probabilities
    ids, probs = references(ws)["image"]
    top = probs.max(axis=1)
    con = db(ws)
    rows = con.execute("SELECT threshold, classified, images, share FROM coverage").fetchall()
    assert [r[0] for r in rows] == [i / 10 for i in range(11)]
    for t, classified, images, share in rows:
        assert images == len(ids)
        assert classified == int((top >= t).sum())
        assert share == pytest.approx(classified / images)
    assert rows[0][1] == len(ids)                       # at 0 every image is classified
    assert rows[-1][1] == int((top >= 1.0).sum()) == 0  # a softmax over 205 labels never reaches 1 here
    # the same table for the captions and for the study's ensemble
    ref = references(ws)
    p_img, p_cap = _prob_dicts(ref)
    ens_top = np.array([v[1] for v in ensemble_reference(p_img, p_cap, 0.2, 0.5).values()])
    for mode, tops in (("caption", ref["caption"][1].max(axis=1)), ("ensemble", ens_top)):
        got = con.execute("SELECT threshold, classified, images FROM coverage_for(?)", [mode]).fetchall()
        assert [(t, c, n) for t, c, n in got] == [(i / 10, int((tops >= i / 10).sum()), len(tops))
                                                  for i in range(11)]


def test_logit_scale_override(ws, tiny_encoder):
    r = classify(ws, encoder=tiny_encoder, logit_scale=100.0)
    assert r.logit_scale == 100.0
    ref = references(ws)
    assert ref["scale"] == 100.0
    check_predictions(db(ws), "predictions", *ref["image"], ref["labels"])


def test_ties_go_to_the_first_label(ws, tiny_encoder, tmp_path):
    """Labels with the same prompt have the same vector, so every image and caption ties between them:
    the label that comes first in the file wins (not the alphabetical one), in the views and in filters."""
    from curate.select.filter import FilterSpec, write_subset

    f = tmp_path / "triplets.csv"
    f.write_text("label,prompt\nzebra,a photo of a street\nalpha,a photo of a street\nmango,a photo of a street\n",
                 encoding="utf-8")
    classify(ws, f, "natural", tiny_encoder)
    con = db(ws)
    for view, n in (("predictions", 12), ("caption_predictions", 11), ("ensemble", 12)):
        rows = con.execute(f"SELECT label, label2, prob, prob2, margin FROM {view}").fetchall()
        assert len(rows) == n, view
        for label, label2, prob, prob2, margin in rows:
            assert (label, label2) == ("zebra", "alpha"), view     # file order, not alphabetical
            assert prob == pytest.approx(1 / 3, abs=1e-12) and prob2 == pytest.approx(1 / 3, abs=1e-12)
            assert margin == pytest.approx(0, abs=1e-12), view
    con.close()
    for mode, n in (("image", 12), ("caption", 11), ("ensemble", 12)):
        assert write_subset(ws, FilterSpec(labels=("zebra",), min_prob=0.3, mode=mode), None).kept == n, mode
        for loser in ("alpha", "mango"):
            assert write_subset(ws, FilterSpec(labels=(loser,), min_prob=0.3, mode=mode), None).kept == 0, mode
        assert write_subset(ws, FilterSpec(min_prob=0.34, mode=mode), None).kept == 0, mode


def test_label_vectors_are_cached_per_model_and_prompts(ws, tiny_encoder):
    first = classify(ws, "places205", "raw", tiny_encoder)
    assert not first.cached_vectors
    again = classify(ws, "places205", "raw")          # no encoder needed: the vectors are cached
    assert again.cached_vectors
    other = classify(ws, "places205", "natural", tiny_encoder)
    assert not other.cached_vectors
    con = db(ws)
    assert con.execute("SELECT count(*) FROM label_vector_sets").fetchall()[0][0] == 2
    assert con.execute("SELECT prompts FROM score_settings").fetchall()[0][0] == "natural"


def test_unsorted_shards_and_caption_only_items(tmp_path, tiny_encoder):
    """Shards out of id order and a caption whose image never embedded give the same exact scores."""
    texts = [f"street scene number {i}" for i in range(11)]
    caps = tiny_encoder.encode_text(texts)
    imgs = tiny_encoder.encode_image_tensor(torch.rand(9, 3, 224, 224, generator=torch.Generator().manual_seed(1)))
    image = {i * 3: imgs[i] for i in range(9)}                  # ids 0, 3, ..., 24
    caption = {i * 3: caps[i] for i in range(9)} | {25: caps[9], 1: caps[10]}   # 25 and 1: caption only
    results = []
    for reverse in (False, True):
        root = hand_workspace(tmp_path / f"ws{reverse}", image, caption, tiny_encoder.identity,
                              shard_rows=4, reverse_shards=reverse)
        classify(root, encoder=tiny_encoder, batch_rows=3)
        ref = references(root)
        con = db(root)
        check_predictions(con, "predictions", *ref["image"], ref["labels"])
        check_predictions(con, "caption_predictions", *ref["caption"], ref["labels"])
        assert sorted(rows_by_id(con, "SELECT id FROM caption_predictions")) == sorted(caption)
        assert sorted(rows_by_id(con, "SELECT id FROM ensemble")) == sorted(image)
        results.append(sorted(con.execute("SELECT * FROM label_scores").fetchall()))
    a, b = results
    assert [r[:2] for r in a] == [r[:2] for r in b]    # the same (item, label) rows ...
    np.testing.assert_allclose(np.array([r[2:] for r in a], dtype=float),   # ... to the last bits of a matmul
                               np.array([r[2:] for r in b], dtype=float), rtol=1e-12, atol=1e-15)


def test_other_model_is_refused(tmp_path, tiny_encoder):
    other = ModelIdentity("ViT-B-32", "laion2b_s34b_b79k", 512, False)
    rng = np.random.default_rng(0)
    v = rng.standard_normal((3, 512)).astype(np.float32)
    root = hand_workspace(tmp_path / "ws", {i: v[i] / np.linalg.norm(v[i]) for i in range(3)}, {}, other)
    with pytest.raises(ModelMismatch, match="ViT-B-32"):
        classify(root, encoder=tiny_encoder)
    # the command line loads the workspace's own model; without its weights it says so
    out = run_cli("classify", "-w", root, expect=1)
    assert out.output.startswith("curate: ") and "ViT-B-32" in out.output


def test_empty_workspace(tmp_path, tiny_encoder):
    bare = tmp_path / "bare"
    Workspace(bare).connect().close()
    with pytest.raises(NotReady, match="build-index"):
        classify(bare, encoder=tiny_encoder)
    assert "build-index" in run_cli("classify", "-w", bare, expect=1).output
    # no workspace at all: refused by -w before anything opens it (exit 4, curate/errors.py)
    assert "build-index" in run_cli("classify", "-w", tmp_path / "nothing", expect=4).output
    assert not (tmp_path / "nothing").exists()
    # a model but no vectors yet: empty views, coverage without shares
    con = Workspace(bare).connect()
    Workspace.bind_model(con, tiny_encoder.identity)
    con.close()
    r = classify(bare, encoder=tiny_encoder)
    assert (r.images, r.captions) == (0, 0)
    con = db(bare)
    for view in ("predictions", "caption_predictions", "ensemble"):
        assert con.execute(f"SELECT count(*) FROM {view}").fetchall()[0][0] == 0
    assert con.execute("SELECT count(*), count(share), sum(images) FROM coverage").fetchall()[0] == (11, 0, 0)


def test_views_work_from_a_plain_duckdb_connection(ws, tiny_encoder):
    """No Python UDFs: a fresh connection (the shell) runs every view and macro."""
    classify(ws, encoder=tiny_encoder)
    con = db(ws)
    for sql in ("SELECT label, count(*) FROM predictions WHERE prob >= 0 GROUP BY ALL ORDER BY 2 DESC LIMIT 10",
                "SELECT * FROM caption_predictions", "SELECT * FROM ensemble", "SELECT * FROM coverage",
                "SELECT * FROM ensemble_with(0.3, 0.1, image_max := 0.5)",
                "SELECT * FROM subset('image', ['skyscraper'], 0.0)", "SELECT * FROM labels"):
        con.execute(sql).fetchall()
    assert con.execute("SELECT count(*) FROM labels").fetchall()[0][0] == 205
    assert con.execute("SELECT label FROM labels WHERE label_idx = 61").fetchall()[0][0] == "cathedral/outdoor"


def test_cli_classify(ws):
    out = run_cli("classify", "-w", ws, "--set", "places205", "--prompts", "natural").output
    assert "classified 12 images and 11 captions against 205 labels" in out
    assert "prompts natural" in out
    out = run_cli("classify", "-w", ws, "--prompts", "raw", "--temperature", "0.02", "--storage", "topk").output
    assert "logit scale 50;" in out and "top 10 labels per item" in out
    assert "not both" in run_cli("classify", "-w", ws, "--temperature", "0.02", "--logit-scale", "3",
                                 expect=2).output


def test_softmax_reference_is_sound():
    """The reference itself: rows sum to 1, and it agrees with a naive per-image loop."""
    rng = np.random.default_rng(3)
    v, q = rng.standard_normal((4, 8)), rng.standard_normal((5, 8))
    p = softmax64(v, q, 10.0)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    for i in range(4):
        e = [np.exp(10.0 * float(v[i] @ q[j])) for j in range(5)]
        np.testing.assert_allclose(p[i], np.array(e) / sum(e), rtol=1e-12)


def test_a_failed_run_leaves_the_previous_scores(ws, tiny_encoder):
    """(Issue 8: a failed run no longer hides the complete scores before it; it never publishes its own.)"""
    classify(ws, encoder=tiny_encoder)
    before = run_cli("filter", "-w", ws, "--min-prob", "0").output
    con = Workspace(ws).connect()
    vec_path = store.shard_files(Workspace(ws), con, "caption")[-1].vectors
    con.close()
    vec_path.unlink()                                   # a shard lost from under the workspace
    with pytest.raises(WorkspaceError, match="build-index SOURCE again to repair"):
        classify(ws, encoder=tiny_encoder, logit_scale=3.0)
    assert run_cli("filter", "-w", ws, "--min-prob", "0").output == before
