"""Collection-wide estimates from random review marks: the report's, and `curate filter`'s.

The filter's printed precision is checked against a hand computation from the rows it
wrote and the set's marks; marks made outside a random review set are planted and must
never enter an estimate.
"""

from __future__ import annotations

import csv
import shutil
import warnings

import pytest
from conftest import run_cli
from PIL import Image
from review_support import fake_workspace, write_marks_csv
from scipy.stats import binomtest

from curate import api
from curate.core.workspace import Workspace
from curate.validate import intervals, report, report_render, sampling
from curate.validate.review import marks


@pytest.fixture()
def ws(classified, tmp_path):
    """The shared classified workspace (12 real JPEGs, random weights), copied to write in."""
    root = tmp_path / "ws"
    shutil.copytree(classified, root)
    return root


def _rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return [(int(r["id"]), r["label"]) for r in csv.DictReader(f)]


def _plant(con, pairs, mark):
    """Marks on (id, label) pairs outside any review set: chosen by hand, not at random."""
    for i, label in pairs:
        marks.set_mark(con, i, label, mark)


def test_filter_prints_the_precision_of_what_it_wrote_from_random_marks_only(ws, tmp_path):
    con = Workspace(ws).connect()
    rs = sampling.draw(con, top_classes=2, per_class=2, seed=3, name="s")
    items = marks.rows(con, rs.name)
    for k, r in enumerate(items):
        marks.set_mark(con, r.id, r.label, "hit" if k % 2 == 0 else "miss")
    in_set = {r.id for r in items}
    # every other image of the collection marked a miss for its predicted label: if any of
    # these entered, the estimate of the set's classes would fall
    others = [(i, lab) for i, lab in con.execute("SELECT id, label FROM predictions").fetchall() if i not in in_set]
    assert others, "the fixture needs images outside the set"
    _plant(con, others, "miss")
    classes = [label for label, _r, _f in sampling.classes(con, rs.name)]
    con.close()

    out = tmp_path / "all.csv"
    r = run_cli("filter", "-w", ws, "--min-prob", "0", "--out", out)
    kept = _rows(out)
    # by hand: per class, its rows in the subset and the set's marks among them
    per = []
    for label in classes:
        n_rows = sum(1 for _i, lab in kept if lab == label)
        judged = [(k % 2 == 0) for k, it in enumerate(items) if it.label == label and (it.id, label) in set(kept)]
        if n_rows and judged:
            per.append((n_rows, sum(judged), len(judged)))
    want = sum(n * h / m for n, h, m in per) / sum(n for n, _h, _m in per)
    est = intervals.stratified([h for _n, h, _m in per], [m for _n, _h, m in per], [n for n, _h, _m in per])
    assert est.value == pytest.approx(want)
    assert f"estimated precision {report.pct_ci(est)}" in r.output
    assert f"from {sum(m for _n, _h, m in per)} random marks of review set s" in r.output
    # labels of the subset without marks are named, never estimated from the planted ones
    uncovered = sorted({lab for _i, lab in kept if lab not in classes})
    if uncovered:
        assert "no marks cover label" in r.output or "no marks cover" in r.output

    # one label: exactly Wilson's interval on its marks, as scipy computes it
    label = classes[0]
    r = run_cli("filter", "-w", ws, "--label", label, "--min-prob", "0", "--out", tmp_path / "one.csv")
    judged = [(k % 2 == 0) for k, it in enumerate(items) if it.label == label]
    ci = binomtest(sum(judged), len(judged)).proportion_ci(0.95, method="wilson")
    one = intervals.Estimate(sum(judged) / len(judged), ci.low, ci.high, len(judged))
    assert f"estimated precision {report.pct_ci(one)}: 95% interval from {len(judged)} random marks" in r.output

    # the API carries it as a field of the result
    f = api.filter(ws, api.FilterSpec(labels=[label], min_prob=0.0))
    assert f.precision is not None and f.precision.marks == len(judged)
    assert f.precision.estimate.value == pytest.approx(sum(judged) / len(judged))


def test_no_random_marks_no_estimate(ws, tmp_path):
    con = Workspace(ws).connect()
    sampling.ensure_schema(con)
    pairs = con.execute("SELECT id, label FROM predictions").fetchall()
    _plant(con, pairs, "hit")          # every image marked, none through a review set
    con.close()
    # no review set at all: no validation under way, nothing said, nothing estimated
    r = run_cli("filter", "-w", ws, "--min-prob", "0")
    assert "estimated precision" not in r.output and "no marks" not in r.output
    f = api.filter(ws, api.FilterSpec(min_prob=0.0))
    assert f.precision.estimate == intervals.NONE and f.precision.marks == 0 and not f.precision.reviewed
    # a review set of one class whose own images are unmarked: the planted marks on every
    # other image still never count (a mark on a set's own image would: marks judge pairs)
    con = Workspace(ws).connect()
    rs = sampling.draw(con, top_classes=1, per_class=3, seed=0)
    con.execute("DELETE FROM judgments WHERE (id, label) IN (SELECT id, label FROM review_items)")
    con.close()
    r = run_cli("filter", "-w", ws, "--min-prob", "0")
    assert "estimated precision" not in r.output
    assert "no precision estimate: no marks of a random review set cover its" in r.output
    label = sampling.classes(Workspace(ws).connect(read_only=True), rs.name)[0][0]
    r = run_cli("filter", "-w", ws, "--label", label, "--min-prob", "0")
    assert f"no marks cover label {label} (" in r.output and "estimated precision" not in r.output


def test_a_set_of_another_scope_or_kind_is_not_used(ws, tmp_path):
    """A set drawn under --where is a random sample of that scope only; a caption set says
    nothing of image predictions."""
    con = Workspace(ws).connect()
    city = con.execute("SELECT source_id FROM items ORDER BY id LIMIT 1").fetchall()[0][0]
    rs = sampling.draw(con, top_classes=3, per_class=5, seed=1, where=(("source_id", city),))
    for it in marks.rows(con, rs.name):
        marks.set_mark(con, it.id, it.label, "hit")
    con.close()
    r = run_cli("filter", "-w", ws, "--min-prob", "0")
    assert "estimated precision" not in r.output
    r = run_cli("filter", "-w", ws, "--min-prob", "0", "--where", f"source_id={city}")
    assert "estimated precision" in r.output and f"review set {rs.name}" in r.output
    r = run_cli("filter", "-w", ws, "--min-prob", "0", "--mode", "caption", "--where", f"source_id={city}")
    assert "estimated precision" not in r.output


# -- the report's collection-wide estimates ----------------------------------------------------

def _study_like(tmp_path):
    """40 images of 'a' (probabilities 0.05 .. 0.98) and 10 of 'b'; 10 of each drawn and marked."""
    preds = [(i, "a", round(0.05 + i * 0.0235, 4)) for i in range(40)] + [(40 + i, "b", 0.55) for i in range(10)]
    ws = fake_workspace(tmp_path / "ws", preds, images=False)
    con = ws.connect()
    rs = sampling.draw(con, top_classes=2, per_class=10, seed=0)
    for it in marks.rows(con, rs.name):
        marks.set_mark(con, it.id, it.label, "hit" if (it.label == "b" or it.prob >= 0.5) else "miss")
    return ws, con, rs, preds


def test_collection_precision_per_threshold_by_hand(tmp_path):
    _ws, con, rs, preds = _study_like(tmp_path)
    # planted: every unsampled image of 'a' marked a hit; none may count
    drawn = {r.id for r in marks.rows(con, rs.name)}
    _plant(con, [(i, lab) for i, lab, _p in preds if i not in drawn], "hit")
    rep = report.from_workspace(con, rs.name)
    by_t = {t.threshold: t for t in rep.main.collection}
    items = marks.rows(con, rs.name)
    for t in (0.0, 0.5, 0.7):
        n = {lab: sum(1 for _i, lab2, p in preds if lab2 == lab and p >= t) for lab in ("a", "b")}
        m = {lab: [it.mark == "hit" for it in items if it.label == lab and it.prob >= t] for lab in ("a", "b")}
        cov = [lab for lab in ("a", "b") if n[lab] and m[lab]]
        assert by_t[t].images == n["a"] + n["b"] and by_t[t].covered == sum(n[lab] for lab in cov)
        want = sum(n[lab] * sum(m[lab]) / len(m[lab]) for lab in cov) / sum(n[lab] for lab in cov)
        assert by_t[t].estimate.value == pytest.approx(want)
        assert by_t[t].uncovered == tuple(lab for lab in ("a", "b") if n[lab] and not m[lab])
    # correct images per class: frequency x accuracy, interval scaled the same
    a = rep.main.classes[0]
    assert a.correct_ci.value == pytest.approx(40 * a.accuracy)
    assert a.correct_ci.low == pytest.approx(40 * a.accuracy_ci.low)
    assert rep.main.weighted_ci.value == pytest.approx(
        sum(c.frequency * c.accuracy for c in rep.main.classes) / 50)
    out = tmp_path / "out"
    report_render.write(rep, out, grid_size=0, plots=False)
    with open(out / "collection_precision.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["threshold"] for r in rows] == [f"{k / 10:.1f}" for k in range(11)]
    with open(out / "class_accuracy.csv", newline="", encoding="utf-8") as f:
        row = next(csv.DictReader(f))
    assert float(row["accuracy_low"]) <= float(row["accuracy"]) <= float(row["accuracy_high"])


def test_one_marked_class_plots_without_warnings_and_skips_unmarked_grids(tmp_path):
    """Issue 26 item 7: one class with marks -> no 'Tight layout not applied', a title that
    fits, and no 'none' grids for the classes nobody marked."""
    preds = [(i, ["a long label name for a class", "b", "c"][i % 3], 0.3 + (i % 5) / 10) for i in range(30)]
    ws = fake_workspace(tmp_path / "ws", preds)
    con = ws.connect()
    rs = sampling.draw(con, top_classes=3, per_class=4, seed=0)
    for it in marks.rows(con, rs.name):
        if it.label.startswith("a long"):
            marks.set_mark(con, it.id, it.label, "hit")
    rep = report.from_workspace(con, rs.name)
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        files = report_render.write(rep, out, grid_size=4)
    names = {p.relative_to(out).as_posix() for p in files}
    grids = sorted(n for n in names if n.startswith("grids/"))
    assert len(grids) == 2 and all("a-long-label" in n for n in grids)
    with Image.open(out / "class_accuracy.png") as im:
        assert im.size[1] >= 1.6 * 110
    # the empty side is a title band, not a tile
    (misses,) = (out / "grids").glob("*-misses.png")
    with Image.open(misses) as im:
        assert im.size[1] == 22


def test_cli_report_level_and_exact_intervals(tmp_path):
    rows = [("a", 0.6, "hit")] * 17 + [("a", 0.4, "miss")] * 6 + [("b", 0.7, "hit")] * 3
    sheet = write_marks_csv(tmp_path / "m.csv", rows)
    r = run_cli("report", "--marks", sheet, "--out", tmp_path / "r", "--level", "0.9", "--interval", "exact")
    assert "every estimate with its 90% interval" in r.output
    ci = binomtest(17, 23).proportion_ci(0.9, method="exact")
    want = report.pct_ci(intervals.Estimate(17 / 23, ci.low, ci.high, 23))
    assert f"a {want}" in " ".join(r.output.split())
    with open(tmp_path / "r" / "class_accuracy.csv", newline="", encoding="utf-8") as f:
        row = next(csv.DictReader(f))
    assert float(row["accuracy_low"]) <= ci.low and float(row["accuracy_high"]) >= ci.high
    assert float(row["accuracy_low"]) == pytest.approx(ci.low, abs=1e-4)
    run_cli("report", "--marks", sheet, "--out", tmp_path / "r", "--level", "1", expect=2)


def test_report_gives_ppi_beside_the_classical_estimates_when_calibrated(ws, tmp_path):
    run_cli("sample", "-w", ws, "--top-classes", "3", "--per-class", "4", "--seed", "7")
    con = Workspace(ws).connect()
    rs = sampling.get_set(con)
    for k, it in enumerate(marks.rows(con, rs.name)):
        marks.set_mark(con, it.id, it.label, "hit" if k % 2 == 0 else "miss")
    con.close()
    out = tmp_path / "r"
    r = run_cli("report", "-w", ws, "--out", out, "--target-precision", "0.5", "--min-support", "1",
                "--no-plots")
    assert "calibration: temperature" in r.output and "prediction-powered (PPI++" in r.output
    with open(out / "ppi.csv", newline="", encoding="utf-8") as f:
        rows = {row["class"]: row for row in csv.DictReader(f)}
    with open(out / "class_accuracy.csv", newline="", encoding="utf-8") as f:
        acc = {row["class"]: row for row in csv.DictReader(f)}
    for label, a in acc.items():
        if a["accuracy"]:
            # the classical column is Table 2's; PPI's interval holds its own estimate
            assert (rows[label]["classical"], rows[label]["classical_low"], rows[label]["classical_high"]) == (
                a["accuracy"], a["accuracy_low"], a["accuracy_high"])
            assert float(rows[label]["ppi_low"]) <= float(rows[label]["ppi"]) <= float(rows[label]["ppi_high"])
            assert int(rows[label]["images"]) == int(a["frequency"])
    assert "Prediction-powered estimates (PPI++)" in (out / "index.html").read_text(encoding="utf-8")
