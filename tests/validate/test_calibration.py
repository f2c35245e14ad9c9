"""Temperature by maximum likelihood on the marks, and per-class thresholds."""

from __future__ import annotations

import math

import numpy as np
import pytest
from review_support import fake_workspace

from curate.classify import calibrated
from curate.validate import calibration, sampling
from curate.validate.review import marks


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_with_every_label_stored_it_is_exactly_softmax_of_logits_over_t():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, (50, 6))
    p = softmax(z)
    top = p.argmax(axis=1)
    own = p[np.arange(50), top]
    others = [list(np.delete(p[i], top[i])) for i in range(50)]
    logp, w, exact = calibration.stored_logp(own, others, n_labels=6)
    assert exact
    for T in (0.4, 1.0, 2.5):
        want = softmax(z / T)[np.arange(50), top]
        np.testing.assert_allclose(calibration.calibrated_top(logp, w, T), want, rtol=1e-12)


def test_top_two_with_an_even_tail_is_exact_at_t_1_and_when_the_tail_is_even():
    p1, p2, L = np.array([0.5, 0.2, 0.9]), np.array([0.3, 0.1, 0.05]), 205
    logp, w, exact = calibration.stored_logp(p1, [[x] for x in p2], L)
    assert not exact
    np.testing.assert_allclose(calibration.calibrated_top(logp, w, 1.0), p1, rtol=1e-12)
    # a distribution whose tail really is even: the formula is then exact at any T
    tail = (1 - 0.5 - 0.3) / (L - 2)
    full = np.log(np.array([[0.5, 0.3] + [tail] * (L - 2)]))
    for T in (0.5, 3.0):
        want = softmax(full / T)[0, 0]
        got = calibration.calibrated_top(logp[:1], w[:1], T)[0]
        assert got == pytest.approx(want, rel=1e-12)
        # and by hand: p1^(1/T) / (p1^(1/T) + p2^(1/T) + (L-2) * tail^(1/T))
        assert got == pytest.approx(0.5 ** (1 / T) / (0.5 ** (1 / T) + 0.3 ** (1 / T) + (L - 2) * tail ** (1 / T)))


def _synthetic(T0: float, n: int, seed: int = 1):
    """Marks drawn from a model calibrated at T0: hit ~ Bernoulli(softmax(z / T0)[top])."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2.0, (n, 8))
    p = softmax(z)
    top = p.argmax(axis=1)
    own = p[np.arange(n), top]
    others = [list(np.delete(p[i], top[i])) for i in range(n)]
    q0 = softmax(z / T0)[np.arange(n), top]
    hit = rng.random(n) < q0
    logp, w, _ = calibration.stored_logp(own, others, 8)
    return logp, w, hit


@pytest.mark.parametrize("T0", [0.6, 2.0])
def test_fit_recovers_the_temperature_that_made_the_marks(T0):
    logp, w, hit = _synthetic(T0, 20_000)
    assert calibration.fit_temperature(logp, w, hit) == pytest.approx(T0, rel=0.05)


def test_fit_is_the_maximum_of_the_likelihood():
    logp, w, hit = _synthetic(1.5, 2000, seed=3)
    T = calibration.fit_temperature(logp, w, hit)

    def f(t):
        return calibration.nll(calibration.calibrated_top(logp, w, t), hit)

    grid = np.exp(np.linspace(math.log(0.05), math.log(20), 500))
    assert f(T) <= min(f(t) for t in grid) + 1e-12
    h = 1e-4 * T
    assert abs((f(T + h) - f(T - h)) / (2 * h)) < 1e-4   # the derivative vanishes there


def test_fit_needs_hits_and_misses():
    logp, w, _ = calibration.stored_logp([0.5, 0.6], [[0.2], [0.1]], 10)
    with pytest.raises(ValueError, match="both hits and misses"):
        calibration.fit_temperature(logp, w, np.array([True, True]))


def test_class_threshold_by_hand():
    q = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])
    hit = np.array([1, 1, 0, 1, 1, 0, 0], bool)
    # precision above each cut: 1/1, 2/2, 2/3, 3/4, 4/5, 4/6, 4/7 -> lowest reaching 0.75 is 0.5
    assert calibration.class_threshold(q, hit, 0.75, min_support=2) == (0.5, 0.8, 5)
    assert calibration.class_threshold(q, hit, 0.95, min_support=2) == (0.8, 1.0, 2)
    assert calibration.class_threshold(q, hit, 0.95, min_support=3) == (None, None, 0)
    # ties go together: a cut at 0.5 keeps both images, precision 0.5
    assert calibration.class_threshold(np.array([0.5, 0.5]), np.array([True, False]), 1.0, 1) == (None, None, 0)


def test_fit_save_load_and_the_view_for_filter(tmp_path):
    """On a workspace (top-two views): T, thresholds, kept counts and the view
    `calibrated_predictions`, each checked against numpy written here from the formula."""
    rng = np.random.default_rng(5)
    n = 600
    labels = np.array(["skyscraper", "bridge", "hospital"])[rng.integers(0, 3, n)]
    p1 = rng.uniform(0.1, 0.9, n)
    p2 = p1 * rng.uniform(0.1, 0.9, n)
    p2 = np.minimum(p2, 1 - p1)
    # scores stored as `curate classify --storage topk --top-k 2` stores them: each item's top
    # two labels' probabilities, the rest of the 53 labels (3 + l0..l49) not stored
    ws = fake_workspace(tmp_path / "ws", [(i, str(labels[i]), float(p1[i])) for i in range(n)], images=False,
                        runner_up={i: (f"l{i % 50}", float(p2[i])) for i in range(n)})
    con = ws.connect()
    rs = sampling.draw(con, top_classes=3, per_class=80, seed=2, name="s")
    # marks: hospital is never right, the other two are right when p1 is high
    for r in marks.rows(con, rs.name):
        right = r.label != "hospital" and r.prob > 0.35
        marks.set_mark(con, r.id, r.label, "hit" if right else "miss")
    cal = calibration.fit(con, "s", target_precision=0.9, min_support=5)
    assert cal.n_labels == 53 and not cal.exact and cal.marks == 240

    L, T = 53, cal.temperature

    def q_numpy(a, b):  # the formula, written out
        rest = np.clip(1 - a - b, 0, None)
        return a ** (1 / T) / (a ** (1 / T) + b ** (1 / T) + (L - 2) * (rest / (L - 2)) ** (1 / T))

    # T is the likelihood maximum of the marks under that formula
    sel = [(r.prob, p2[r.id], r.mark == "hit") for r in marks.rows(con, "s")]
    a, b, hit = (np.array(x) for x in zip(*sel, strict=True))

    def f(t):
        rest = np.clip(1 - a - b, 0, None)
        q = a ** (1 / t) / (a ** (1 / t) + b ** (1 / t) + (L - 2) * (rest / (L - 2)) ** (1 / t))
        q = np.clip(q, 1e-12, 1 - 1e-12)
        return -np.mean(np.where(hit, np.log(q), np.log1p(-q)))

    assert f(T) <= min(f(t) for t in np.exp(np.linspace(-2.9, 2.9, 600))) + 1e-12
    by = {c.label: c for c in cal.classes}
    assert by["hospital"].threshold is None and by["hospital"].kept is None
    for label in ("skyscraper", "bridge"):
        c = by[label]
        assert c.threshold is not None and c.precision >= 0.9 and c.support >= 5
        qc = q_numpy(a, b)[np.array([r.label == label for r in marks.rows(con, "s")])]
        assert np.isclose(qc, c.threshold, rtol=1e-12, atol=0).any()   # a threshold is a marked image's q
        mask = labels == label
        assert c.kept == int((q_numpy(p1[mask], p2[mask]) >= c.threshold - 1e-12).sum())

    calibration.save(con, cal)
    got = calibrated.load(con)
    assert got.temperature == cal.temperature and got.thresholds == cal.thresholds
    rows = con.execute("SELECT id, calibrated_prob, class_threshold, keep FROM calibrated_predictions ORDER BY id"
                       ).fetchall()
    ids = np.array([r[0] for r in rows])
    np.testing.assert_allclose([r[1] for r in rows], q_numpy(p1[ids], p2[ids]), rtol=1e-12)
    keep = {label: sum(1 for r in rows if r[3] and labels[r[0]] == label) for label in by}
    assert keep == {label: (by[label].kept or 0) for label in by}


@pytest.mark.parametrize("p1,p2,hits,n_labels,edge", [
    # misses as confident as hits, or more: flatter always fits better (T would run past 20)
    ([0.55, 0.6, 0.7, 0.8, 0.9, 0.52, 0.58, 0.65], None, [1, 1, 0, 0, 0, 1, 0, 1], 2, "highest"),
    # every hit sharper than every tied miss: sharper always fits better (T would run under 0.05)
    ([0.6, 0.7, 0.8, 0.45, 0.45, 0.45], [0.2, 0.2, 0.1, 0.45, 0.45, 0.45], [1, 1, 1, 0, 0, 0], 3, "lowest"),
])
def test_a_temperature_at_the_edge_of_the_range_is_no_fit(p1, p2, hits, n_labels, edge):
    p1 = np.array(p1)
    p2 = [1 - x for x in p1] if p2 is None else p2
    logp, w, _ = calibration.stored_logp(p1, [[x] for x in p2], n_labels)
    with pytest.raises(calibration.CalibrationError, match=f"stopped at the {edge} value it tries"):
        calibration.fit_temperature(logp, w, np.array(hits, bool))
