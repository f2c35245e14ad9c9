"""`curate compare` reproduces, from the stored vectors, what plain numpy computes for two
classifications of the same images: Table 1 side by side for image, caption and ensemble,
agreement, images per label, and the hit rate on marked pairs."""

from __future__ import annotations

import csv
import zlib
from pathlib import Path

import numpy as np
import pytest
from classify_support import ensemble_reference, hand_workspace, softmax64, top2
from conftest import open_db, run_cli

from curate.classify.run import classify
from curate.core import store
from curate.core.workspace import ModelIdentity, Workspace
from curate.validate import sampling

N_LABELS = 8
NAMES = ("raw", "natural")
DIM = 32
IDENT = ModelIdentity("compare-test-model", "none", DIM, True)   # never loadable: the cache serves


class StandInEncoder:
    """A text tower's stand-in: a fixed random unit vector per prompt text."""

    identity = IDENT
    logit_scale = 30.0

    def encode_text(self, texts: list[str]) -> np.ndarray:
        out = []
        for t in texts:
            v = np.random.default_rng(zlib.crc32(t.encode())).standard_normal(DIM)
            out.append(v / np.linalg.norm(v))
        return np.array(out, dtype=np.float32)


@pytest.fixture(scope="module")
def compared(tmp_path_factory) -> dict:
    """A workspace whose vectors lie near the label vectors (so probabilities spread over
    0..1), classified with raw names and with a template; a few pairs marked; compared."""
    root = tmp_path_factory.mktemp("compare")
    labels = root / "labels.csv"
    labels.write_text("label\n" + "".join(f"place_{i}\n" for i in range(N_LABELS)), encoding="utf-8")
    enc = StandInEncoder()
    rng = np.random.default_rng(3)
    # near the label vectors of both wordings, so that the two classifications agree in part
    anchors = np.concatenate([enc.encode_text([f"place_{i}" for i in range(N_LABELS)]),
                              enc.encode_text([f"a photo of a place_{i}." for i in range(N_LABELS)])])

    def near() -> np.ndarray:
        v = anchors[rng.integers(len(anchors))] * rng.uniform(0.1, 1.2) + rng.standard_normal(anchors.shape[1]) * 0.1
        return (v / np.linalg.norm(v)).astype(np.float32)

    image = {i: near() for i in range(60)}
    caption = {i: near() for i in range(60) if i % 4 != 3}    # some images without a caption
    ws = hand_workspace(root / "ws", image, caption, IDENT, shard_rows=16)
    classify(ws, str(labels), "raw", encoder=enc, name="raw")
    classify(ws, str(labels), "a photo of a {label}.", encoder=enc, name="natural")
    con = Workspace(ws).connect()
    sampling.ensure_schema(con)
    preds = con.execute('SELECT id, label FROM "cls_raw".predictions ORDER BY id').fetchall()
    marks = [(i, label, ("hit", "miss", "skip")[k % 3]) for k, (i, label) in enumerate(preds[::2])]
    marks.append((1, "place_7", "hit"))      # a pair perhaps neither predicts
    con.executemany("INSERT OR REPLACE INTO judgments (id, label, mark) VALUES (?, ?, ?)", marks)
    con.close()
    out = root / "cmp"
    text = run_cli("compare", *NAMES, "-w", ws, "--out", out).output
    return {"ws": ws, "out": out, "text": text, "marks": {(i, lab): m for i, lab, m in marks}}


def _reference(ws: Path) -> dict:
    """name -> kind -> (ids, top label names, top probs), from the shards and the label vectors alone."""
    con = open_db(str(ws / "curate.duckdb"))
    w = Workspace(ws)
    out = {}
    try:
        vecs = {kind: store.load_all(w, con, kind) for kind in ("image", "caption")}
        for name in NAMES:
            key, scale = con.execute(f'SELECT cache_key, logit_scale FROM "cls_{name}".score_settings').fetchall()[0]
            q = np.array([r[0] for r in con.execute("SELECT vector FROM label_vectors WHERE cache_key = ? "
                                                    "ORDER BY label_idx", [key]).fetchall()], dtype=np.float64)
            names = [f"place_{i}" for i in range(N_LABELS)]
            p = {kind: (vecs[kind][0], softmax64(vecs[kind][1], q, scale)) for kind in vecs}
            per = {}
            for kind in ("image", "caption"):
                ids, probs = p[kind]
                label, prob, _l2, _p2 = top2(probs)
                per[kind] = (ids, [names[j] for j in label], prob)
            ens = ensemble_reference(dict(zip(p["image"][0].tolist(), p["image"][1], strict=True)),
                                     dict(zip(p["caption"][0].tolist(), p["caption"][1], strict=True)), 0.2, 0.5)
            eids = np.array(sorted(ens))
            per["ensemble"] = (eids, [names[ens[i][0]] for i in eids], np.array([ens[i][1] for i in eids]))
            out[name] = per
    finally:
        con.close()
    return out


def _csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_coverage_side_by_side_equals_numpy(compared):
    ref = _reference(compared["ws"])
    for kind, file in (("image", "coverage.csv"), ("caption", "coverage_caption.csv"),
                       ("ensemble", "coverage_ensemble.csv")):
        rows = _csv(compared["out"] / file)
        assert [r["threshold"] for r in rows] == [f"{i / 10:.1f}" for i in range(11)]
        for name in NAMES:
            _ids, _labels, prob = ref[name][kind]
            for i, r in enumerate(rows):
                classified = int((prob >= i / 10).sum())
                assert int(r[f"{name}_classified"]) == classified, (kind, name, i)
                assert float(r[f"{name}_share"]) == pytest.approx(classified / len(prob), abs=1e-12)
    # the probabilities spread: the test is not about an empty table
    assert 0 < int(_csv(compared["out"] / "coverage.csv")[5]["raw_classified"]) < 60


def test_agreement_and_label_changes_equal_numpy(compared):
    ref = _reference(compared["ws"])
    rows = {r["kind"]: r for r in _csv(compared["out"] / "agreement.csv")}
    assert set(rows) == {"image", "caption", "ensemble"}
    for kind, r in rows.items():
        ids_a, lab_a, p_a = ref["raw"][kind]
        ids_b, lab_b, p_b = ref["natural"][kind]
        assert (ids_a == ids_b).all()
        same = np.array(lab_a) == np.array(lab_b)
        both = (p_a >= 0.5) & (p_b >= 0.5)
        assert (r["a"], r["b"], int(r["images"])) == ("raw", "natural", len(ids_a))
        assert int(r["same_top"]) == int(same.sum())
        assert int(r["both_classified"]) == int(both.sum())
        assert int(r["same_top_classified"]) == int((same & both).sum())
        if both.any():
            assert float(r["share_same_classified"]) == pytest.approx((same & both).sum() / both.sum(), abs=1e-12)
        changes = {}
        for x, y in zip(lab_a, lab_b, strict=True):
            if x != y:
                changes[(x, y)] = changes.get((x, y), 0) + 1
        top = sorted(changes.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
        assert r["most_changed"] == "; ".join(f"{x} -> {y} ({n})" for (x, y), n in top)
    assert 0 < int(rows["image"]["same_top"]) < 60      # they agree in part


def test_images_per_label_and_marks_equal_numpy(compared):
    ref = _reference(compared["ws"])
    rows = _csv(compared["out"] / "classes.csv")
    assert sorted(r["label"] for r in rows) == [f"place_{i}" for i in range(N_LABELS)]
    for name in NAMES:
        _ids, labels, prob = ref[name]["image"]
        for r in rows:
            want = sum(1 for lab, p in zip(labels, prob, strict=True) if lab == r["label"] and p >= 0.5)
            assert int(r[name]) == want
    marks = compared["marks"]
    got = {(r["classification"], r["kind"]): r for r in _csv(compared["out"] / "marks.csv")}
    for name in NAMES:
        for kind in ("image", "caption", "ensemble"):
            ids, labels, _prob = ref[name][kind]
            judged = [marks.get((int(i), lab)) for i, lab in zip(ids, labels, strict=True)]
            hits, misses = judged.count("hit"), judged.count("miss")
            r = got[(name, kind)]
            assert (int(r["hits"]), int(r["misses"]), int(r["marked"])) == (hits, misses, hits + misses)
    assert int(got[("raw", "image")]["hits"]) > 0       # marks were made on raw's own pairs


def test_page_plot_and_terminal_summary(compared):
    out = compared["out"]
    assert (out / "coverage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "coverage.png" in page and "raw" in page and "natural" in page
    # the model and its random weights on the page itself, not only on stderr
    assert "Model: <b>compare-test-model</b> (random weights" in page and "class='random'" in page
    assert "image: raw vs natural: same top label for" in compared["text"]
    assert "classified at p >= 0.5: raw" in compared["text"]


def test_compare_refuses_what_it_cannot_compare(compared, tmp_path):
    ws = compared["ws"]
    assert "at least two" in run_cli("compare", "raw", "-w", ws, "--out", tmp_path / "a", expect=1).output
    out = run_cli("compare", "raw", "nope", "-w", ws, "--out", tmp_path / "b", expect=1).output
    assert "no classification named 'nope'" in out and "natural, raw" in out
    assert "named twice" in run_cli("compare", "raw", "raw", "-w", ws, "--out", tmp_path / "c", expect=1).output
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine", encoding="utf-8")
    out = run_cli("compare", *NAMES, "-w", ws, "--out", tmp_path / "mine", expect=74).output
    assert "notes.txt" in out and (tmp_path / "mine" / "notes.txt").read_text(encoding="utf-8") == "mine"
