"""Every interval of the report against a reference, and its coverage on a fixed-seed simulation."""

from __future__ import annotations

import math

import duckdb
import numpy as np
import pytest
from review_support import STUDY_CLASSES, study_marks, write_marks_csv
from scipy.stats import binomtest, norm

from curate.validate import intervals, report, report_render

THRESHOLDS = [k / 10 for k in range(11)]


# -- references ------------------------------------------------------------------------------

def test_wilson_and_clopper_pearson_match_newcombes_worked_example():
    """Newcombe (1998), Stat Med 17:857, table I: 81/263 -> Wilson 0.2553-0.3662, exact 0.2527-0.3676."""
    w = intervals.proportion(81, 263)
    assert (round(w.low, 4), round(w.high, 4)) == (0.2553, 0.3662)
    e = intervals.proportion(81, 263, method="exact")
    assert (round(e.low, 4), round(e.high, 4)) == (0.2527, 0.3676)
    assert w.value == 81 / 263 and w.n == 263
    # the ends: 0 of n and n of n still have an interval, on the side the marks allow
    assert intervals.proportion(0, 100).low == 0.0 and intervals.proportion(0, 100).high > 0.03
    assert intervals.proportion(0, 0) == intervals.NONE


def test_the_fractional_wilson_formula_is_scipys_at_whole_counts():
    for n in (1, 7, 100):
        for k in range(n + 1):
            ref = binomtest(k, n).proportion_ci(0.9, method="wilson")
            lo, hi = intervals.wilson(k / n, n, 0.9)
            assert lo == pytest.approx(ref.low, abs=1e-12) and hi == pytest.approx(ref.high, abs=1e-12)


def test_one_stratum_is_wilson_and_equal_strata_are_the_plain_mean():
    for h, n in ((0, 15), (7, 20), (100, 100), (43, 100)):
        one = intervals.stratified([h], [n], [3.0])
        ref = binomtest(h, n).proportion_ci(0.95, method="wilson")
        assert one.value == h / n and one.n == n
        assert one.low == pytest.approx(ref.low, abs=1e-12) and one.high == pytest.approx(ref.high, abs=1e-12)
    hits = [c[2] for c in STUDY_CLASSES]
    est = intervals.stratified(hits, [100] * 10, [1] * 10)
    assert est.value == pytest.approx(0.46) and est.n == 1000
    # by hand: sum of (1/10)^2 pt (1 - pt) / 100 at the Agresti-Coull points, around 0.46
    z2 = norm.ppf(0.975) ** 2
    pt = (np.array(hits) + z2 / 2) / (100 + z2)
    var = np.sum(0.01 * pt * (1 - pt) / 100)
    n_eff = pt.mean() * (1 - pt.mean()) / var
    assert (est.low, est.high) == pytest.approx(intervals.wilson(0.46, n_eff), abs=1e-12)
    assert 0.42 < est.low < 0.44 and 0.48 < est.high < 0.50


def test_weighted_precision_weights_each_class_by_its_frequency():
    freq = [f for _c, f, _a in STUDY_CLASSES]
    est = intervals.stratified([a for *_x, a in STUDY_CLASSES], [100] * 10, freq)
    assert est.value == pytest.approx(sum(f * a / 100 for _c, f, a in STUDY_CLASSES) / sum(freq))


def test_ratio_is_the_katz_log_interval_of_a_relative_risk():
    a, n1, c, n2 = 270, 460, 237, 540   # the study's row at 0.6
    r = intervals.ratio(a, n1, c, n2)
    se = math.sqrt(1 / a - 1 / n1 + 1 / c - 1 / n2)
    z = norm.ppf(0.975)
    assert r.value == pytest.approx((a / n1) / (c / n2))
    assert r.low == pytest.approx(r.value * math.exp(-z * se)) and r.high == pytest.approx(r.value * math.exp(z * se))
    assert intervals.ratio(0, 460, 0, 540) == intervals.NONE          # 0 / 0 at t = 1.0
    assert intervals.ratio(5, 460, 0, 540) == intervals.NONE          # no error kept: undefined
    zero = intervals.ratio(0, 460, 3, 540)
    assert zero.value == 0.0 and zero.low == 0.0 and zero.high is None


@pytest.mark.slow
def test_vectorised_best_threshold_is_the_reports_rule_on_every_resample():
    """The bootstrap's rule (numpy over counts) against report.best_threshold (on the SQL
    table) for 15 resamples of the study's marks, with and without the hit-rate floor."""
    marks = study_marks()
    rng = np.random.default_rng(3)
    con = duckdb.connect()
    p = np.array([m[1] for m in marks])
    h = np.array([m[2] == "hit" for m in marks])
    hk, ek = intervals.threshold_table_counts(p, h, THRESHOLDS)
    for floor in (0.5, 0.0, 0.9):
        for _ in range(5):
            pick = rng.integers(0, len(marks), len(marks))
            counts = np.bincount(pick, minlength=len(marks))
            fast = intervals.best_of_counts((counts @ hk.T)[None], (counts @ ek.T)[None], THRESHOLDS, floor)[0]
            sr = report.analyse(con, "x", "sheet", [report.Marked(*marks[i]) for i in pick], min_hit_rate=floor)
            assert (None if fast < 0 else THRESHOLDS[fast]) == sr.best.threshold


def test_the_studys_best_threshold_is_chosen_in_most_resamples(tmp_path):
    sheet = write_marks_csv(tmp_path / "study.csv", study_marks())
    rep = report.from_sheet(sheet)
    stab = rep.main.stability
    assert sum(stab.values()) == pytest.approx(1.0)
    assert max(stab, key=stab.get) == 0.6 and stab[0.6] > 0.8
    # deterministic: the same report twice
    assert report.from_sheet(sheet).main.stability == stab


def test_text_forms():
    assert report.pct_ci(intervals.proportion(96, 100)) == "96% (90-99%)"
    assert report.pct_ci(intervals.proportion(0, 100)) == "0% (0-4%)"
    assert report.num_ci(intervals.ratio(270, 460, 237, 540)) == "1.3373 (1.18-1.52)"
    ref = binomtest(96, 100).proportion_ci(0.95, method="wilson")   # 0.9016-0.9843
    assert report.count_ci(intervals.proportion(96, 100).scaled(7410)) == (
        f"7,114 ({math.floor(7410 * ref.low):,}-{math.ceil(7410 * ref.high):,})") == "7,114 (6,681-7,294)"
    e = intervals.proportion(96, 100)
    assert report_render.lo4(e) == f"{math.floor(e.low * 1e4) / 1e4:.4f}"
    assert report_render.hi4(e) == f"{math.ceil(e.high * 1e4) / 1e4:.4f}"


# -- coverage ------------------------------------------------------------------------------

ACC = np.array([a for *_x, a in STUDY_CLASSES]) / 100
FREQ = np.array([f for _c, f, _a in STUDY_CLASSES], float)


@pytest.mark.slow
def test_coverage_of_class_mean_and_weighted_intervals_on_a_fixed_seed_simulation():
    """400 simulated studies (100 marks a class from Table 2's accuracies): each interval
    holds its true value in at least 93% of them (95% nominal; Wilson dips near 0 and 1)."""
    rng = np.random.default_rng(0)
    reps = 400
    hits = rng.binomial(100, ACC, size=(reps, 10))
    mean_truth, w_truth = ACC.mean(), (FREQ * ACC).sum() / FREQ.sum()
    cover = {"class": 0, "mean": 0, "weighted": 0}
    for r in range(reps):
        for k in range(10):
            e = intervals.proportion(int(hits[r, k]), 100)
            cover["class"] += e.low <= ACC[k] <= e.high
        m = intervals.stratified(hits[r], [100] * 10, [1] * 10)
        cover["mean"] += m.low <= mean_truth <= m.high
        w = intervals.stratified(hits[r], [100] * 10, FREQ)
        cover["weighted"] += w.low <= w_truth <= w.high
    assert cover["class"] / (10 * reps) >= 0.94
    assert cover["mean"] / reps >= 0.93 and cover["weighted"] / reps >= 0.93


def test_coverage_of_ratio_intervals_on_a_fixed_seed_simulation():
    """Hits kept ~ Binomial(460, 0.587), errors kept ~ Binomial(540, 0.439): the study's row at 0.6."""
    rng = np.random.default_rng(1)
    hr, er = 270 / 460, 237 / 540
    a = rng.binomial(460, hr, 500)
    c = rng.binomial(540, er, 500)
    hits = sum(intervals.ratio(int(x), 460, int(y), 540).low <= hr / er <= intervals.ratio(int(x), 460, int(y), 540).high
               for x, y in zip(a, c, strict=True))
    assert hits / 500 >= 0.93


def test_a_skewed_stratified_design_keeps_its_coverage():
    """A heavy class with few marks and a share near 0: the plain stratified variance calls it
    exact (coverage ~0.63); the Agresti-Coull point keeps it honest."""
    rng = np.random.default_rng(2)
    p, n, w = np.array([0.1, 0.9, 0.5]), np.array([10, 50, 20]), np.array([10, 1, 1.0])
    truth = (w * p).sum() / w.sum()
    h = rng.binomial(n, p, size=(600, 3))
    ok = sum(e.low <= truth <= e.high for e in (intervals.stratified(row, n, w) for row in h))
    assert ok / 600 >= 0.94


# -- prediction-powered ---------------------------------------------------------------------

def test_ppi_mean_by_hand_and_its_classical_ends():
    rng = np.random.default_rng(5)
    f_all = rng.uniform(0, 1, 500)
    pick = rng.choice(500, 60, replace=False)
    y = (rng.random(60) < f_all[pick]).astype(float)
    est, lam, n_eff = intervals.ppi_mean(y, f_all[pick], f_all)
    f = f_all[pick]
    want_lam = np.clip(np.cov(y, f, ddof=1)[0, 1] / ((1 + 60 / 500) * np.var(f, ddof=1)), 0, 1)
    assert lam == pytest.approx(want_lam)
    assert est.value == pytest.approx(y.mean() + lam * (f_all.mean() - f.mean()))
    var = np.var(y - lam * f, ddof=1) / 60 + lam ** 2 * np.var(f_all, ddof=1) / 500
    assert n_eff == pytest.approx(60 * (np.var(y, ddof=1) / 60) / var)
    assert (est.low, est.high) == pytest.approx(intervals.wilson(est.value, n_eff))
    # marks all hits (or a prediction that says nothing): exactly the classical Wilson interval
    ones, lam1, _ = intervals.ppi_mean(np.ones(20), f_all[:20], f_all)
    assert lam1 == 0.0 and ones == intervals.proportion(20, 20)
    flat, lam2, _ = intervals.ppi_mean(y, np.full(60, 0.3), np.full(500, 0.3))
    assert lam2 == 0.0 and flat == intervals.proportion(int(y.sum()), 60)


@pytest.mark.slow
def test_ppi_coverage_and_width_on_a_fixed_seed_simulation():
    """A class of 2,000 images whose hit probability rises with the score; 400 reviews of 100
    marks: PPI++ with the true probabilities covers >= 0.93 and is narrower than Wilson."""
    rng = np.random.default_rng(6)
    s = rng.uniform(0.2, 1.0, 2000)
    f = 1 / (1 + np.exp(-(8 * (s - 0.6))))
    ok, w_ppi, w_cl = 0, [], []
    for _ in range(400):
        y_all = rng.random(2000) < f
        pick = rng.choice(2000, 100, replace=False)
        est, _lam, _n = intervals.ppi_mean(y_all[pick].astype(float), f[pick], f)
        ok += est.low <= y_all.mean() <= est.high
        w_ppi.append(est.width)
        w_cl.append(intervals.proportion(int(y_all[pick].sum()), 100).width)
    assert ok / 400 >= 0.93
    assert np.mean(w_ppi) / np.mean(w_cl) < 0.9
