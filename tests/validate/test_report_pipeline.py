"""End to end through the real pipeline: build-index -> classify -> sample -> review sheet -> report.

Random-weight tiny model: the test checks mechanics (the same numbers computed
independently from the stored scores), never meaning.
"""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
from conftest import run_cli

from curate.classify import calibrated
from curate.classify.run import classify
from curate.core.workspace import Workspace
from curate.validate import calibration


@pytest.fixture(scope="module")
def classified_full(built_workspace, tmp_path_factory, tiny_encoder):
    """Classified once for the module, never written: each test gets its own copy."""
    ws = tmp_path_factory.mktemp("full") / "ws"
    shutil.copytree(built_workspace, ws)
    classify(ws, "places205", "natural", tiny_encoder, storage="full")
    return ws


@pytest.fixture()
def classified(classified_full, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(classified_full, ws)
    return ws


def test_sample_review_report_on_a_classified_workspace(classified, tmp_path):
    ws = classified
    r = run_cli("sample", "-w", ws, "--top-classes", "3", "--per-class", "4", "--seed", "7")
    assert "image-top3x4-seed7" in r.output
    con = Workspace(ws).connect(read_only=True)
    # the set's labels and probabilities are the predictions view's
    got = con.execute("SELECT r.id, r.label, r.prob, p.label, p.prob FROM review_items r"
                      " JOIN predictions p USING (id)").fetchall()
    assert got and all(a == c and b == d for _i, a, b, c, d in got)
    freq = dict(con.execute("SELECT label, count(*) FROM predictions GROUP BY label").fetchall())
    con.close()

    # mark through the sheet: every other image a hit
    sheet = tmp_path / "review.csv"
    run_cli("review", "-w", ws, "--export", sheet)
    with open(sheet, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    for k, row in enumerate(rows):
        row["mark"] = "hit" if k % 2 == 0 else "miss"
    with open(sheet, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    r = run_cli("review", "-w", ws, "--import", sheet)
    assert f"imported {len(rows)} new or changed marks" in r.output

    out = tmp_path / "report"
    r = run_cli("report", "-w", ws, "--out", out, "--target-precision", "0.5", "--min-support", "1")
    assert "calibration: temperature" in r.output
    with open(out / "class_accuracy.csv", newline="", encoding="utf-8") as f:
        classes = list(csv.DictReader(f))
    assert all(int(c["frequency"]) == freq[c["class"]] for c in classes)
    assert sum(int(c["hits"]) for c in classes) == (len(rows) + 1) // 2
    assert (out / "index.html").exists() and (out / "rates.png").exists() and (out / "coverage.png").exists()
    # the model and its random weights on the page itself, not only on stderr
    page = (out / "index.html").read_text(encoding="utf-8")
    model = Workspace(ws).connect(read_only=True)
    try:
        ident = Workspace.model_identity(model)
    finally:
        model.close()
    assert ident.random_weights and f"Model: <b>{ident.model}</b> (random weights" in page
    assert "Random weights: this workspace was embedded with an untrained model" in page

    # calibration used every stored label (storage full): exact temperature scaling,
    # checked against a softmax of log p / T over the label_scores matrix in numpy
    con = Workspace(ws).connect(read_only=True)
    cal = calibrated.for_workspace(ws)
    assert cal is not None and cal.scores_column == "image_prob" and cal.exact
    assert set(cal.thresholds) <= {c["class"] for c in classes}
    long = con.execute("SELECT id, label_idx, image_prob FROM label_scores ORDER BY id, label_idx").fetchall()
    ids = sorted({i for i, _l, _p in long})
    n_labels = con.execute("SELECT n_labels FROM score_settings").fetchall()[0][0]
    P = np.zeros((len(ids), n_labels))
    row_of = {i: k for k, i in enumerate(ids)}
    for i, lab, p in long:
        P[row_of[i], lab] = p
    logits = np.log(P) / cal.temperature
    Q = np.exp(logits - logits.max(axis=1, keepdims=True))
    Q /= Q.sum(axis=1, keepdims=True)
    view = con.execute("SELECT id, calibrated_prob FROM calibrated_predictions").fetchall()
    for i, q in view:
        assert q == pytest.approx(Q[row_of[i]].max(), rel=1e-9)

    con.close()

    # filter --calibrated keeps exactly the images whose calibrated top probability
    # reaches their label's own threshold, and reports the calibrated probability
    top = dict(_top_labels(ws))
    kept_ref = {i for i, q in view
                if top[i] in cal.thresholds and q >= cal.thresholds[top[i]] - calibration.TOLERANCE}
    out_csv = tmp_path / "calibrated.csv"
    r = run_cli("filter", "-w", ws, "--calibrated", "--out", out_csv)
    assert "calibrated image prob >= its class threshold" in r.output
    with open(out_csv, newline="", encoding="utf-8") as f:
        got = {int(row["id"]): float(row["prob"]) for row in csv.DictReader(f)}
    assert set(got) == kept_ref
    for i, p in got.items():
        assert p == pytest.approx(dict(view)[i], rel=1e-12)
    r = run_cli("filter", "-w", ws, "--calibrated", "--unmatched", "--out", tmp_path / "dropped.csv")
    assert f"unmatched: {len(view) - len(kept_ref)} of {len(view)}" in r.output
    r = run_cli("filter", "-w", ws, "--calibrated", "--mode", "caption", expect=1)
    assert "fitted on image predictions: use --mode image" in r.output


def _top_labels(ws):
    con = Workspace(ws).connect(read_only=True)
    try:
        return con.execute("SELECT id, label FROM predictions").fetchall()
    finally:
        con.close()


def test_filter_calibrated_needs_a_fit(classified):
    r = run_cli("filter", "-w", classified, "--calibrated", expect=1)
    assert "no calibration in this workspace yet" in r.output
