"""Calibration from the human marks: a temperature, and per-class thresholds.

Temperature. CLIP's softmax over 205 labels is not a probability of being right: in
the study hits average 0.66 and misses 0.57. Dividing the logits by a temperature T
before the softmax keeps every image's ranking of labels and changes how confident the
top label looks. We fit T by maximum likelihood on the marks: a hit has probability q
and a miss 1 - q, where q is the calibrated top probability of the marked label.

    q = p1^(1/T) / sum_j p_j^(1/T)          (p = the softmax at T = 1; log p = logit + const)

For image and caption predictions, `curate classify` stores each image's probability
for every label (`label_scores`, storage full) or for its top k labels (storage topk):
labels without a row share what is left, 1 - sum(stored), and are taken as sharing it
evenly. That is exact with full storage, and an approximation of the tail otherwise
(exact at T = 1). The ensemble is a mix of two softmaxes, not one; its view carries the
top two probabilities (prob, prob2), and the same even-tail rule covers the other L - 2
labels. `Calibration.exact` says whether any tail was approximated.

Per-class thresholds. For a target precision (say 0.9), each class gets the lowest
calibrated probability t such that, among its marked images with q >= t (at least
`min_support` of them), the share of hits reaches the target; with how many images of
the whole collection it keeps. A class whose marks never reach the target gets none.

For `curate filter --calibrated`: `save` stores the fit in the workspace (meta key
`calibration`, table `calibration_thresholds`) and creates the view
`calibrated_predictions` (queries/calibration.sql: the source view's id, label, prob,
label2, prob2, margin + calibrated_prob, class_threshold, keep); `curate.classify.calibrated.load(con)` reads the fitted `Calibration` back.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import duckdb
import numpy as np

from ..classify import calibrated, registry
from ..classify.calibrated import META_KEY, Calibration, ClassThreshold
from ..core import sql
from ..core.workspace import Workspace
from ..errors import InputError
from . import sampling

# SQL and numpy evaluate the same formula in another order: an image whose calibrated
# probability *is* a class's threshold must stay kept when SQL lands one ulp below it.
TOLERANCE = 1e-12
T_RANGE = (0.05, 20.0)


# -- the model --------------------------------------------------------------------------

def stored_logp(own: Sequence[float], others: Sequence[Sequence[float]], n_labels: int
                ) -> tuple[np.ndarray, np.ndarray, bool]:
    """(log p [n, K], weights [n, K], exact) from each item's probability of its top label,
    the other labels' stored probabilities, and the label count: column 0 is the top label,
    the last column the labels without a row, sharing the rest evenly (weight = how many)."""
    n = len(own)
    width = max((len(o) for o in others), default=0) + 2
    logp = np.full((n, width), -np.inf)
    w = np.zeros((n, width))
    exact = True
    for i, (p1, rest_p) in enumerate(zip(own, others, strict=True)):
        logp[i, 0], w[i, 0] = math.log(p1) if p1 > 0 else -np.inf, 1.0
        for k, p in enumerate(rest_p, start=1):
            if p > 0:
                logp[i, k], w[i, k] = math.log(p), 1.0
        missing = n_labels - 1 - len(rest_p)
        mass = 1.0 - p1 - float(sum(rest_p))
        if missing > 0 and mass > 1e-12:
            logp[i, -1], w[i, -1] = math.log(mass / missing), float(missing)
            exact = False
    return logp, w, exact


def calibrated_top(logp: np.ndarray, weights: np.ndarray, temperature: float) -> np.ndarray:
    """q = softmax(log p / T) of column 0, each column j counted weights[:, j] times."""
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(weights > 0, logp / temperature + np.log(np.where(weights > 0, weights, 1.0)), -np.inf)
    m = np.max(a, axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.sum(np.exp(a - m), axis=1))
    return np.exp(logp[:, 0] / temperature - lse)


def nll(q: np.ndarray, hit: np.ndarray) -> float:
    """Mean negative log-likelihood of the marks (hit ~ Bernoulli(q))."""
    q = np.clip(q, 1e-12, 1 - 1e-12)
    return float(-np.mean(np.where(hit, np.log(q), np.log1p(-q))))


class CalibrationError(InputError, ValueError):
    """The marks do not determine a calibration (too few, or an optimum outside the search range)."""


def fit_temperature(logp: np.ndarray, weights: np.ndarray, hit: np.ndarray) -> float:
    """The T in [0.05, 20] that maximises the likelihood of the marks.

    One parameter: a log-spaced grid brackets the optimum, golden-section search refines
    it (deterministic, no optimiser dependency, 1e-6 relative precision). An optimum at an
    end of the range is no fit (the likelihood still improves beyond it): CalibrationError.
    """
    hit = np.asarray(hit, bool)
    if len(hit) == 0 or hit.all() or (~hit).all():
        raise CalibrationError("a temperature needs both hits and misses among the marks")

    def f(log_t: float) -> float:
        return nll(calibrated_top(logp, weights, math.exp(log_t)), hit)

    lo, hi = math.log(T_RANGE[0]), math.log(T_RANGE[1])
    grid = np.linspace(lo, hi, 61)
    vals = [f(x) for x in grid]
    i = int(np.argmin(vals))
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    while b - a > 1e-6:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    t = math.exp((a + b) / 2)
    _check_inside(t, f)
    return t


def _check_inside(t: float, f) -> None:
    """Refuse a temperature pinned to an end of T_RANGE: the search stopped at its edge."""
    lo, hi = T_RANGE
    step = 1e-3  # in log T: the golden-section search ends within 1e-6 of the edge it is pushed to
    for edge, inner, word, why in (
            (lo, math.log(lo) + step, "lowest", "every hit is more confident than every miss, so any sharper "
                                                "softmax fits better"),
            (hi, math.log(hi) - step, "highest", "the marks do not depend on the probability (misses are as "
                                                 "confident as hits, or more), so flatter always fits better")):
        if abs(math.log(t) - math.log(edge)) < step and f(math.log(edge)) <= f(inner):
            raise CalibrationError(
                f"the temperature search stopped at the {word} value it tries (T = {edge:g}, range "
                f"{lo:g}..{hi:g}): {why}; no temperature was fitted. Mark more images (a random sample of the "
                "set, hits and misses alike), then run `curate report` again")


def class_threshold(q: np.ndarray, hit: np.ndarray, target: float, min_support: int) -> tuple[float | None, float | None, int]:
    """(threshold, precision above it, marked images above it) for one class, or (None, ...)."""
    order = np.argsort(-q, kind="stable")
    qs, hs = q[order], np.asarray(hit, bool)[order]
    best = (None, None, 0)
    hits = 0
    for k in range(len(qs)):
        hits += int(hs[k])
        # only where the next image has a lower q: a threshold keeps all ties together
        if k + 1 < len(qs) and qs[k + 1] == qs[k]:
            continue
        n = k + 1
        if n >= min_support and hits / n >= target:
            best = (float(qs[k]), hits / n, n)
    return best


# -- the fit on a workspace -----------------------------------------------------------------

def n_labels(con: duckdb.DuckDBPyConnection, view: str) -> int:
    """How many labels the softmax ran over: the label set `curate classify` used, else
    every label seen as first or second choice (a lower bound)."""
    if sql.has_relation(con, "score_settings"):
        rows = con.execute("SELECT n_labels FROM score_settings").fetchall()
        if rows:
            return int(rows[0][0])
    return int(con.execute(
        f"SELECT count(DISTINCT l) FROM (SELECT label AS l FROM {view} UNION ALL SELECT label2 FROM {view})"
    ).fetchall()[0][0])


def scores_column(con: duckdb.DuckDBPyConnection, source: str) -> str | None:
    """The `label_scores` column holding this source's per-label softmax, when classify
    stored one (the ensemble is a mix of two softmaxes: it has none)."""
    col = {"image": "image_prob", "caption": "caption_prob"}.get(source)
    if col and sql.has_relation(con, "label_scores") and sql.has_relation(con, "labels"):
        return col
    return None


def _marked(con: duckdb.DuckDBPyConnection, set_name: str, view: str, col: str | None
            ) -> list[tuple[str, float, bool, list[float]]]:
    """(label, prob, hit, other labels' stored probabilities) of every hit/miss of a set.

    The set's own top label and probability are what was judged. Items whose top label
    changed since sampling (classify re-run) are left out.
    """
    base = (f" FROM review_items r"
            f" JOIN judgments j ON j.id = r.id AND j.label = r.label AND j.mark IN ('hit', 'miss')"
            f" JOIN {view} v ON v.id = r.id AND v.label = r.label"
            f" WHERE r.set_name = ?")
    if col is None:
        rows = con.execute(f"SELECT r.label, r.prob, j.mark = 'hit', [coalesce(v.prob2, 0)]{base}"
                           f" ORDER BY r.position", [set_name]).fetchall()
    else:
        rows = con.execute(
            f"SELECT r.label, r.prob, j.mark = 'hit',"
            f" coalesce((SELECT list(s.{col}) FROM label_scores s JOIN labels l ON l.label_idx = s.label_idx"
            f"  WHERE s.id = r.id AND l.label <> r.label AND s.{col} IS NOT NULL), [])"
            f"{base} ORDER BY r.position", [set_name]).fetchall()
    return [(label, float(p), bool(h), [float(x) for x in others]) for label, p, h, others in rows]


def fit(con: duckdb.DuckDBPyConnection, set_name: str | None = None, target_precision: float = 0.9,
        min_support: int = 10) -> Calibration:
    """Fit the temperature and the per-class thresholds on the marks of a review set."""
    rs = sampling.get_set(con, set_name)
    # the scores the set was drawn from (a set of an older curate: the active classification)
    name = rs.classification if rs.classification and registry.exists(con, rs.classification) else None
    with registry.selected(con, name) as name:
        cal = _fit(con, rs, target_precision, min_support)
        cal.classification = name
        cal.fingerprint = calibrated.fingerprint_of(con, registry.schema(name)) if name else None
    return cal


def _fit(con: duckdb.DuckDBPyConnection, rs: sampling.ReviewSet, target_precision: float,
         min_support: int) -> Calibration:
    view = sampling.SOURCES[rs.source]
    L = n_labels(con, view)
    col = scores_column(con, rs.source)
    rows = _marked(con, rs.name, view, col)
    if not rows:
        raise CalibrationError(f"review set {rs.name!r} has no hit/miss marks yet")
    labels = np.array([r[0] for r in rows], dtype=object)
    prob = np.array([r[1] for r in rows], np.float64)
    hit = np.array([r[2] for r in rows])
    logp, w, exact = stored_logp(prob, [r[3] for r in rows], L)
    T = fit_temperature(logp, w, hit)
    q = calibrated_top(logp, w, T)
    cal = Calibration(T, rs.source, rs.name, L, target_precision, min_support,
                      nll(calibrated_top(logp, w, 1.0), hit), nll(q, hit), len(hit), exact=exact,
                      raw=prob, calibrated=q, hits=hit)
    cal.scores_column = col
    for label, _rank, _freq in sampling.classes(con, rs.name):
        sel = labels == label
        t, prec, support = class_threshold(q[sel], hit[sel], target_precision, min_support)
        cal.classes.append(ClassThreshold(label, t, prec, support, int(sel.sum()), None))
    _count_kept(con, cal)
    return cal


def _count_kept(con: duckdb.DuckDBPyConnection, cal: Calibration) -> None:
    """Images of the whole collection each class threshold keeps, in one pass, by the macro
    `calibrated_probs` of queries/calibration.sql (the formula of `calibrated_predictions`)."""
    reached = [c for c in cal.classes if c.threshold is not None]
    if not reached:
        return
    # The fit runs on a read-only connection, before anything is saved: the macro is a TEMP one
    # (it shadows a stored one of an older curate).
    sql.run(con, "calibrated_probs")
    con.register("class_thresholds", {"label": np.array([c.label for c in reached], dtype=object),
                                      "threshold": np.array([c.threshold for c in reached], np.float64)})
    try:
        kept = dict(con.execute(
            "SELECT t.label, count(c.label) FROM class_thresholds t"
            " LEFT JOIN calibrated_probs($inv_t, $source, $n_labels, $col) c"
            " ON c.label = t.label AND c.calibrated_prob >= t.threshold - $tolerance GROUP BY t.label",
            {"inv_t": 1.0 / float(cal.temperature), "source": cal.source, "n_labels": int(cal.n_labels),
             "col": cal.scores_column, "tolerance": TOLERANCE}).fetchall())
    finally:
        con.unregister("class_thresholds")
    for c in reached:
        c.kept = int(kept[c.label])


# -- handing over to `curate filter --calibrated` -------------------------------------------

def save(con: duckdb.DuckDBPyConnection, cal: Calibration) -> None:
    """Store the fit for `curate filter --calibrated`: meta['calibration'], the table
    calibration_thresholds, and the view `calibrated_predictions` (queries/calibration.sql),
    which reads the stored temperature."""
    with sql.transaction(con):
        sql.run(con, "calibration")   # the table if new, and the view, which reads meta['calibration']
        con.execute("DELETE FROM calibration_thresholds")
        con.executemany("INSERT INTO calibration_thresholds VALUES (?, ?, ?, ?, ?, ?)",
                        [(c.label, c.threshold, c.precision, c.support, c.marked, c.kept) for c in cal.classes])
        Workspace.set_meta(con, META_KEY, json.dumps({
            "temperature": cal.temperature, "source": cal.source, "review_set": cal.set_name,
            "labels": cal.n_labels, "target_precision": cal.target_precision, "min_support": cal.min_support,
            "nll_before": cal.nll_before, "nll_after": cal.nll_after, "marks": cal.marks, "exact": cal.exact,
            "scores_column": cal.scores_column, "classification": cal.classification,
            "fingerprint": cal.fingerprint}))
        if cal.classification is not None:
            calibrated.install_view(con, registry.check_name(cal.classification))
