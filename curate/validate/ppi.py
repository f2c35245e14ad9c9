"""Prediction-powered estimates of the report (PPI++), beside the classical ones.

When `curate report` has fitted a calibration, every image of a reviewed class has a
calibrated probability of being a hit, not only the marked ones. PPI++ (Angelopoulos,
Duchi and Zrnic 2023) uses them as a control variate: a class's accuracy is

    mean(y) + lambda (mean of f over all the class's images - mean of f over the marked ones)

with lambda tuned on the marks (intervals.ppi_mean). It is unbiased whatever f is (a bad
calibration only makes lambda small and the interval as wide as the classical one), and
narrower the more f tells hits from misses within the class. Valid when the marks are a
random sample of the class (a review set's are) and f does not depend on them; here the
temperature is fitted on the same marks, one parameter for all classes, whose effect is
of order 1/n (docs/validation.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np

from ..classify.calibrated import Calibration
from ..core import sql
from . import intervals
from .intervals import NONE, Estimate


@dataclass(frozen=True)
class PPIRow:
    label: str
    images: int              # images of the class in the collection (predictions with it)
    classical: Estimate      # Wilson on the marks alone
    ppi: Estimate            # PPI++ with the calibrated probabilities of every image
    lam: float               # the power-tuning weight (0: the classical mean)
    n_eff: float             # the PPI estimate's effective sample size (the marks' n when lam = 0)


@dataclass(frozen=True)
class PPIReport:
    rows: list[PPIRow]
    mean_classical: Estimate = NONE
    mean_ppi: Estimate = NONE
    weighted_classical: Estimate = NONE
    weighted_ppi: Estimate = NONE


def _install_macro(con: duckdb.DuckDBPyConnection) -> None:
    # a TEMP macro: the report's connection is read-only (as calibration.py)
    sql.run(con, "calibrated_probs")


def estimates(con: duckdb.DuckDBPyConnection, cal: Calibration, level: float = intervals.DEFAULT_LEVEL
              ) -> PPIReport:
    """Per class of the calibration's review set: the classical and the PPI++ accuracy."""
    _install_macro(con)
    sql.run(con, "report_ppi")
    rows = con.execute("SELECT * FROM report_ppi($inv_t, $source, $n_labels, $col, $set_name)", {
        "inv_t": 1.0 / float(cal.temperature), "source": cal.source, "n_labels": int(cal.n_labels),
        "col": cal.scores_column, "set_name": cal.set_name}).fetchall()
    out = []
    for label, images, f_all, y, f_marked in rows:
        y = np.asarray(y or [], np.float64)
        classical = intervals.proportion(int(y.sum()), len(y), level)
        ppi, lam, n_eff = intervals.ppi_mean(y, np.asarray(f_marked or [], np.float64),
                                             np.asarray(f_all, np.float64), level)
        out.append(PPIRow(label, int(images), classical, ppi, lam, n_eff))
    judged = [r for r in out if r.classical.n > 0]
    if not judged:
        return PPIReport(out)

    def combine(which: str, weights: list[float]) -> Estimate:
        # each class as (share x n, n) at its effective sample size: the marks' n for the
        # classical estimate, PPI's own for PPI (intervals.ppi_mean)
        ests = [getattr(r, which) for r in judged]
        n_eff = [float(r.classical.n) if which == "classical" else r.n_eff for r in judged]
        e = intervals.stratified([x.value * n for x, n in zip(ests, n_eff, strict=True)], n_eff, weights, level)
        return Estimate(e.value, e.low, e.high, sum(r.classical.n for r in judged))

    ones = [1.0] * len(judged)
    freq = [float(r.images) for r in judged]
    return PPIReport(out, combine("classical", ones), combine("ppi", ones), combine("classical", freq),
                     combine("ppi", freq))
