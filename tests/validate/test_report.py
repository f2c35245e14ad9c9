"""The report's numbers against hand-computed values and against the study's own tables."""

from __future__ import annotations

import csv
import math

import duckdb
import numpy as np
import pytest
from conftest import run_cli
from PIL import Image
from review_support import (
    STUDY_CLASSES,
    STUDY_ERRORS,
    STUDY_HITS,
    STUDY_KEPT,
    fake_workspace,
    study_marks,
    write_marks_csv,
)

from curate import api
from curate.validate import report, report_render, sampling
from curate.validate.review import marks

# The study's threshold table as it printed it (4 decimals, truncated), with our fixed
# 4-decimal form: "1" -> "1.0000"; the ratio at 1.0 is undefined (0/0) and left empty.
STUDY_TABLE = [
    ("0.0", "1000", "460", "1.0000", "540", "1.0000", "1.0000"),
    ("0.1", "999", "460", "1.0000", "539", "0.9981", "1.0018"),
    ("0.2", "967", "455", "0.9891", "512", "0.9481", "1.0432"),
    ("0.3", "887", "442", "0.9608", "445", "0.8240", "1.1659"),
    ("0.4", "772", "396", "0.8608", "376", "0.6962", "1.2363"),
    ("0.5", "644", "335", "0.7282", "309", "0.5722", "1.2726"),
    ("0.6", "507", "270", "0.5869", "237", "0.4388", "1.3373"),
    ("0.7", "371", "194", "0.4217", "177", "0.3277", "1.2866"),
    ("0.8", "264", "137", "0.2978", "127", "0.2351", "1.2663"),
    ("0.9", "158", "89", "0.1934", "69", "0.1277", "1.5141"),
    ("1.0", "0", "0", "0.0000", "0", "0.0000", ""),
]

# A sample small enough to compute by hand (label, prob, mark); 0.3 sits exactly on a threshold.
HAND = [("a", 0.95, "hit"), ("a", 0.65, "hit"), ("a", 0.35, "miss"), ("a", 0.62, "miss"),
        ("b", 0.3, "hit"), ("b", 0.05, "miss"), ("b", 0.9, "skip"), ("b", 0.45, None)]


def _csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return [tuple(r) for r in csv.reader(f)]


# -- the study -----------------------------------------------------------------------------

def test_the_study_threshold_table_is_reproduced_from_its_counts(tmp_path):
    sheet = write_marks_csv(tmp_path / "study.csv", study_marks())
    rep = report.from_sheet(sheet)
    t = rep.main.thresholds
    assert [r.kept for r in t] == STUDY_KEPT and [r.hits for r in t] == STUDY_HITS
    assert [r.errors for r in t] == STUDY_ERRORS
    study = [report_render.THRESHOLD_COLUMNS.index(c)
             for c in ("threshold", "kept", "hits", "hit_rate", "errors", "error_rate", "ratio")]
    assert [[r[i] for i in study] for r in report_render.threshold_csv_rows(t)] == [list(r) for r in STUDY_TABLE]
    # exact values behind the printed ones, at the study's example row
    r6 = t[6]
    assert (r6.kept, r6.hits, r6.errors) == (507, 270, 237)
    assert r6.hit_rate == 270 / 460 and r6.error_rate == 237 / 540
    assert r6.ratio == pytest.approx((270 / 460) / (237 / 540), rel=1e-15)
    # the best threshold: 0.6 (1.3373), not 0.9 (1.5141, which keeps 19% of the hits)
    assert (rep.main.best.threshold, report.fmt4(rep.main.best.ratio)) == (0.6, "1.3373")
    assert (rep.main.best.unconstrained_threshold, report.fmt4(rep.main.best.unconstrained_ratio)) == (0.9, "1.5141")
    # Table 2's accuracy column and the means of hits and misses
    assert [(c.label, round(100 * c.accuracy)) for c in rep.main.classes] == [(c, a) for c, _f, a in STUDY_CLASSES]
    assert report.pct(rep.main.mean_class_accuracy) == "46%"
    s = rep.main.summary
    assert (report.fmt4(s.mean_prob_hits), report.fmt4(s.mean_prob_misses)) == ("0.6579", "0.5676")
    assert (s.hits, s.misses, report.fmt4(s.accuracy)) == (460, 540, "0.4600")

    out = tmp_path / "report"
    report_render.write(rep, out, plots=False)
    rows = _csv(out / "threshold_table.csv")
    # the study's columns, in its order, each estimate followed by its interval's low and high
    study_cols = ("threshold", "kept", "hits", "hit_rate", "errors", "error_rate", "ratio")
    assert [h for h in rows[0] if not h.endswith(("_low", "_high"))] == [*study_cols, "precision"]
    for name in ("hit_rate", "error_rate", "ratio", "precision"):
        i = rows[0].index(name)
        assert rows[0][i + 1:i + 3] == (f"{name}_low", f"{name}_high")
    cols = [rows[0].index(c) for c in study_cols]
    assert [tuple(r[i] for i in cols) for r in rows[1:]] == STUDY_TABLE
    summary = dict(_csv(out / "summary.csv")[1:])
    assert (summary["best_threshold"], summary["best_ratio"]) == ("0.6", "1.3373")
    assert (summary["mean_prob_hits"], summary["mean_prob_misses"]) == ("0.6579", "0.5676")


def test_cli_report_on_a_sheet_made_elsewhere(tmp_path):
    sheet = write_marks_csv(tmp_path / "study.csv", study_marks())
    with open(sheet, "a", encoding="utf-8") as f:
        f.write("bridge,high,hit\nbridge,0.5,great\n")
    out = tmp_path / "r"
    r = run_cli("report", "--marks", sheet, "--out", out)
    assert "line 1002: prob 'high' is not a number" in r.output
    assert "line 1003: unknown mark 'great'" in r.output
    assert " 0.6    507    270    0.5869    237    0.4388  1.3373" in r.output
    assert "best threshold 0.6 (ratio 1.3373" in r.output
    rows = _csv(out / "threshold_table.csv")
    cols = [rows[0].index(c) for c in ("threshold", "kept", "hits", "hit_rate", "errors", "error_rate", "ratio")]
    assert [tuple(r[i] for i in cols) for r in rows[1:]] == STUDY_TABLE
    assert "line 1002" in (out / "problems.txt").read_text()
    # the floor is a choice: without it, the maximum is the study's 0.9
    r = run_cli("report", "--marks", sheet, "--out", tmp_path / "r2", "--min-hit-rate", "0", "--no-plots")
    assert "best threshold 0.9 (ratio 1.5141" in r.output


def test_no_plots_writes_the_same_tables_and_page_without_the_pictures(tmp_path):
    """--no-plots: the terminal's tables and every CSV byte for byte as with the plots, the page
    saying the plots were left out instead of showing them, and no PNG in the folder."""
    sheet = write_marks_csv(tmp_path / "study.csv", study_marks())
    with_plots = run_cli("report", "--marks", sheet, "--out", tmp_path / "with")
    without = run_cli("report", "--marks", sheet, "--out", tmp_path / "without", "--no-plots")
    drawn = {p.name for p in (tmp_path / "with").iterdir()}
    written = {p.name for p in (tmp_path / "without").iterdir()}
    assert {"rates.png", "class_accuracy.png"} <= drawn
    assert written == {n for n in drawn if not n.endswith(".png")} and any(n.endswith(".csv") for n in written)
    tables, _ = without.output.rsplit("\nwrote ", 1)
    assert with_plots.output.startswith(tables + "\nwrote ")   # the same tables, fewer files written
    for name in {n for n in written if n.endswith(".csv")}:
        assert (tmp_path / "without" / name).read_bytes() == (tmp_path / "with" / name).read_bytes(), name
    page = (tmp_path / "without" / "index.html").read_text(encoding="utf-8")
    assert "<h2>Plots</h2>" not in page and ".png" not in page
    assert "The plots were left out (<code>curate report --no-plots</code>)" in page
    assert "<h2>Plots</h2>" in (tmp_path / "with" / "index.html").read_text(encoding="utf-8")
    assert api.ReportOptions().plots is True


def test_study_table_2_with_frequencies_through_a_workspace(tmp_path):
    """The study's design end to end on its own numbers: ~94K predictions with Table 2's
    frequencies, 10 x 100 drawn, marked with Table 2's accuracies."""
    def frequencies(con):
        con.execute("CREATE TEMP TABLE freq (label VARCHAR, n INTEGER, acc INTEGER)")
        con.executemany("INSERT INTO freq VALUES (?, ?, ?)", STUDY_CLASSES)
        # 200 other labels of 300 images each: all rarer than the 10th class (1763)
        con.execute("INSERT INTO freq SELECT 'other ' || range, 300, NULL FROM range(200)")

    mem = duckdb.connect()
    frequencies(mem)
    preds = mem.execute("""
        SELECT (row_number() OVER (ORDER BY f.label, g.i) - 1)::BIGINT AS id, f.label,
               ((hash(f.label, g.i) % 1000) / 1000.0)::DOUBLE AS prob
        FROM freq f, LATERAL (SELECT range AS i FROM range(f.n)) g ORDER BY id""").fetchall()
    ws = fake_workspace(tmp_path / "ws", preds, images=False)   # scored as classify stores scores
    con = ws.connect()
    frequencies(con)
    rs = sampling.draw(con, top_classes=10, per_class=100, seed=7)
    assert rs.items == 1000
    # mark the first acc% of each class's images as hits, the rest as misses
    con.execute("""
        INSERT INTO judgments
        SELECT r.id, r.label,
               CASE WHEN row_number() OVER (PARTITION BY r.label ORDER BY r.position) <= f.acc
                    THEN 'hit' ELSE 'miss' END, now()
        FROM review_items r JOIN freq f USING (label) WHERE r.set_name = ?""", [rs.name])
    rep = report.from_workspace(con, rs.name)
    got = [(c.label, c.frequency, round(100 * c.accuracy)) for c in rep.main.classes]
    assert got == list(STUDY_CLASSES)
    assert sum(c.frequency for c in rep.main.classes) == 35354
    assert report.pct(rep.main.mean_class_accuracy) == "46%" and rep.main.summary.hits == 460
    # coverage of the whole collection, checked against a count in numpy
    probs = np.array([p for (p,) in con.execute("SELECT prob FROM predictions").fetchall()])
    cov = dict((t, (n, s)) for t, n, s in rep.coverage["image"])
    for t in (0.0, 0.3, 0.5, 1.0):
        assert cov[t] == (int((probs >= t).sum()), (probs >= t).mean())


# -- by hand -------------------------------------------------------------------------------

def _check_hand(sr):
    t = {r.threshold: r for r in sr.thresholds}
    assert [(r.kept, r.hits, r.errors) for r in sr.thresholds] == [
        (6, 3, 3), (5, 3, 2), (5, 3, 2), (5, 3, 2), (3, 2, 1), (3, 2, 1), (3, 2, 1), (1, 1, 0), (1, 1, 0),
        (1, 1, 0), (0, 0, 0)]
    assert t[0.1].error_rate == 2 / 3 and t[0.1].ratio == 1.5
    assert t[0.4].hit_rate == 2 / 3 and t[0.4].error_rate == 1 / 3 and t[0.4].ratio == 2.0
    assert t[0.4].precision == 2 / 3 and t[0.7].precision == 1.0
    assert t[0.7].ratio is None and t[1.0].ratio is None and t[1.0].precision is None
    assert (sr.best.threshold, sr.best.ratio) == (0.4, 2.0)  # ties at 2.0: the lowest keeps most
    a, b = sr.classes
    assert (a.label, a.sampled, a.hits, a.misses, a.skipped, a.unmarked, a.accuracy) == ("a", 4, 2, 2, 0, 0, 0.5)
    assert a.mean_prob_hits == pytest.approx(0.8) and a.mean_prob_misses == pytest.approx(0.485)
    assert (b.label, b.sampled, b.hits, b.misses, b.skipped, b.unmarked, b.accuracy) == ("b", 4, 1, 1, 1, 1, 0.5)
    assert b.mean_prob_hits == pytest.approx(0.3) and b.mean_prob_misses == pytest.approx(0.05)
    s = sr.summary
    assert (s.sampled, s.hits, s.misses, s.skipped, s.unmarked, s.accuracy) == (8, 3, 3, 1, 1, 0.5)
    assert s.mean_prob_hits == pytest.approx((0.95 + 0.65 + 0.3) / 3)
    assert s.mean_prob_misses == pytest.approx((0.35 + 0.62 + 0.05) / 3)


def test_hand_computed_tables_from_marks():
    import duckdb

    sr = report.analyse(duckdb.connect(), "hand", "sheet", [report.Marked(lab, p, m) for lab, p, m in HAND])
    _check_hand(sr)
    assert [c.frequency for c in sr.classes] == [None, None]


def _hand_workspace(tmp_path, ensemble=None):
    preds = [(i, lab, p) for i, (lab, p, _m) in enumerate(HAND)]
    ws = fake_workspace(tmp_path / "ws", preds, ensemble=ensemble)
    con = ws.connect()
    rs = sampling.draw(con, top_classes=2, per_class=10, seed=0, name="hand")
    for i, (lab, _p, m) in enumerate(HAND):
        if m:
            marks.set_mark(con, i, lab, m)
    return ws, con, rs


def test_hand_computed_tables_from_a_workspace(tmp_path):
    _ws, con, _rs = _hand_workspace(tmp_path)
    rep = report.from_workspace(con)
    _check_hand(rep.main)
    assert [c.frequency for c in rep.main.classes] == [4, 4]
    # coverage: 8 images with top probabilities HAND[:, 1]
    cov = {t: (n, s) for t, n, s in rep.coverage["image"]}
    assert cov[0.0] == (8, 1.0) and cov[0.3] == (7, 7 / 8) and cov[0.5] == (4, 0.5)
    assert cov[0.9] == (2, 0.25) and cov[1.0] == (0, 0.0)


def test_ensemble_beside_image_only(tmp_path):
    # the ensemble agrees on every label and is more confident on the hits
    ens = [(i, lab, min(p + (0.2 if m == "hit" else 0.0), 0.99)) for i, (lab, p, m) in enumerate(HAND)]
    ws, con, _rs = _hand_workspace(tmp_path, ensemble=ens)
    es = sampling.draw(con, source="ensemble", top_classes=2, per_class=10, seed=0)
    assert marks.progress(con, es.name).done == 7  # every pair already judged: nothing to mark again
    rep = report.from_workspace(con)
    assert rep.main.source == "image" and [o.source for o in rep.others] == ["ensemble"]
    e = {r.threshold: r for r in rep.others[0].thresholds}
    # hits at 0.99 (0.95+0.2), 0.85, 0.5; misses unchanged at 0.35, 0.62, 0.05
    assert (e[0.5].kept, e[0.5].hits, e[0.5].errors, e[0.5].precision) == (4, 3, 1, 0.75)
    assert (e[0.7].kept, e[0.7].hits, e[0.7].precision) == (2, 2, 1.0)
    header, rows = report_render.comparison_rows(rep)
    assert header[:6] == ["threshold", "image_kept", "image_precision", "image_hit_rate", "image_error_rate",
                          "image_ratio"]
    assert rows[5][:3] == ["0.5", "3", "0.6666"] and rows[5][6:8] == ["4", "0.7500"]
    assert "ensemble" in rep.coverage


def test_files_plots_grids_and_escaping(tmp_path):
    evil = "<script>alert('x')</script> & co"
    preds = [(i, evil if i % 2 else "bridge", 0.2 + i / 20) for i in range(12)]
    ws = fake_workspace(tmp_path / "ws", preds)
    con = ws.connect()
    rs = sampling.draw(con, top_classes=2, per_class=6, seed=0)
    for i, r in enumerate(marks.rows(con, rs.name)):
        marks.set_mark(con, r.id, r.label, "hit" if i % 3 else "miss")
    out = tmp_path / "out"
    files = report_render.write(report.from_workspace(con), out, grid_size=4)
    names = {p.relative_to(out).as_posix() for p in files}
    assert {"threshold_table.csv", "class_accuracy.csv", "summary.csv", "coverage.csv", "rates.png", "coverage.png",
            "class_accuracy.png", "index.html"} <= names
    grids = sorted(n for n in names if n.startswith("grids/"))
    assert len(grids) == 4 and all(n.endswith(("-hits.png", "-misses.png")) for n in grids)
    for n in names:
        if n.endswith(".png"):
            with Image.open(out / n) as im:
                assert im.format == "PNG" and im.size[0] > 100
    # a grid of 4 hits: 4 tiles of 128 px in a row, under a title band
    (bridge_hits,) = (out / "grids").glob("*-bridge-hits.png")
    with Image.open(bridge_hits) as im:
        assert im.size == (4 * 128, 22 + 128)
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "<script>" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; co" in page
    assert "http://" not in page and "https://" not in page
    header = _csv(out / "class_accuracy.csv")[0]
    assert header[:3] == ("class", "frequency", "sampled") and "accuracy" in header


def test_the_page_names_the_model_and_says_random_weights():
    from curate.core.workspace import ModelIdentity

    trained = report_render.model_html(ModelIdentity("ViT-B-32", "laion2b_s34b_b79k", 512, False))
    assert "ViT-B-32" in trained and "pretrained laion2b_s34b_b79k" in trained and "random" not in trained.lower()
    untrained = report_render.model_html(ModelIdentity("<b>x</b>", "none", 64, True))
    assert "&lt;b&gt;x&lt;/b&gt;" in untrained and "<b>x</b>" not in untrained
    assert "class='random'" in untrained and "carry no meaning" in untrained
    assert report_render.model_html(None) == ""     # marks from a sheet: no workspace, no model to name


def test_nothing_marked_yet_gives_empty_rates(tmp_path):
    import duckdb

    sr = report.analyse(duckdb.connect(), "x", "sheet", [report.Marked("a", 0.5, None)])
    assert all(r.hit_rate is None and r.ratio is None for r in sr.thresholds)
    assert sr.best.threshold is None and sr.summary.accuracy is None


@pytest.mark.parametrize("x,want", [(270 / 460, "0.5869"), (0.45999999999999996, "0.4600"), (1.0, "1.0000"),
                                    (0.29, "0.2900"), (None, ""), (math.inf, "inf"), (445 / 540, "0.8240")])
def test_four_decimals_truncated_as_the_study(x, want):
    assert report.fmt4(x) == want
