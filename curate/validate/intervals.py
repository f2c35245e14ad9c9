"""Intervals for every number the report states: how far the marks pin each one down.

The marks of a review set are a random sample: each class's images are drawn in the
order of hash(id, seed), and the page shows them in that order (sample_items.sql). So a
class's accuracy is a binomial proportion, the mean over classes and the precision
weighted by frequency are stratified estimates, and the threshold table's rates are
proportions among the sample's hits or errors.

- `proportion`: Wilson's score interval (the default: close to the nominal level on
  average, never outside [0, 1], sensible at 0 and n hits) or Clopper-Pearson's
  (`method="exact"`: never below the nominal level, wider), both from
  scipy.stats.binomtest. Newcombe (1998)'s worked example 81/263 gives 0.2553-0.3662.
- `stratified`: sum_k w_k p_k for known weights w_k (1/K: the study's mean over
  classes; N_k / N: the precision of the collection), with the stratified variance
  sum_k w_k^2 p_k (1 - p_k) / n_k. The interval is Wilson's around the estimate at the
  effective sample size p (1 - p) / var (Kish), both taken at each stratum's
  Agresti-Coull point (h + z^2/2) / (n + z^2): with one stratum it is exactly Wilson's, and
  a class with 0 of 15 hits still counts as uncertain (plain p (1 - p) / n would call it
  exact: on a skewed 3-class design that covers 0.63 of the time, this 0.99; the study's
  mean of 10 x 100: 0.955; checked by simulation in tests and bench/bench_validation.py).
- `ratio`: hit rate / error rate, two proportions of disjoint marks (the hits, the
  errors): the log-scale delta-method (Katz) interval of a relative risk, from
  scipy.stats.contingency.relative_risk.
- `threshold_stability`: how often each threshold is the best one across bootstrap
  resamples of the marks, each class resampled within itself (the sampling design).
- `ppi_mean`: prediction-powered inference with power tuning (PPI++, Angelopoulos,
  Duchi and Zrnic 2023) for a class's accuracy from its marks plus the calibrated
  probability of every image of the class.
- `needed`: how many marks a class likely still needs for a target width (the
  sequential review, `curate sample --target-width`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal

import numpy as np

DEFAULT_LEVEL = 0.95
RESAMPLES = 2000   # bootstrap resamples for the best threshold's stability
METHODS = ("wilson", "exact")   # exact = Clopper-Pearson


@dataclass(frozen=True)
class Estimate:
    """A share (or ratio) with its interval and the number of marks it rests on.

    `value` is None when the marks say nothing (no marks: 0/0)."""

    value: float | None
    low: float | None
    high: float | None
    n: int = 0

    @property
    def width(self) -> float | None:
        return None if self.low is None or self.high is None else self.high - self.low

    def scaled(self, factor: float) -> Estimate:
        """The same estimate times a known number (e.g. a class's images in the collection)."""
        def s(x: float | None) -> float | None:
            return None if x is None else x * factor
        return Estimate(s(self.value), s(self.low), s(self.high), self.n)


NONE = Estimate(None, None, None, 0)


# -- text forms -------------------------------------------------------------------------------

def fmt4(x: float | None) -> str:
    """4 decimals, truncated toward zero as in the study; '' for undefined."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    if math.isinf(x):
        return "inf"
    # 12 significant digits first: a mean of 0.46 computed as 0.45999999999999996 must
    # print as 0.4600, not 0.4599 (no rate here needs more digits to truncate right)
    return str(Decimal(f"{float(x):.12g}").quantize(Decimal("0.0001"), rounding=ROUND_DOWN))


def pct(x: float | None) -> str:
    if x is None:
        return ""
    v = 100 * x
    return f"{v:.0f}%" if abs(v - round(v)) < 1e-9 else f"{v:.1f}%"


def pct_ci(e: Estimate) -> str:
    """'96% (90-99%)': the estimate as `pct` prints it, the interval in whole percents
    (outward: the low end rounded down, the high end up, so the printed interval holds
    the computed one)."""
    if e.value is None:
        return ""
    if e.low is None or e.high is None:
        return pct(e.value)
    return f"{pct(e.value)} ({math.floor(100 * e.low + 1e-9):.0f}-{math.ceil(100 * e.high - 1e-9):.0f}%)"


def num_ci(e: Estimate, digits: int = 2) -> str:
    """'1.3373 (1.18-1.52)': the estimate with 4 decimals (truncated, as the study), the
    interval with `digits` (outward); an end the marks do not bound is '?'."""
    if e.value is None:
        return ""
    q = 10 ** digits

    def end(x: float | None, f) -> str:
        return "?" if x is None else f"{f(x * q - 1e-9 if f is math.ceil else x * q + 1e-9) / q:.{digits}f}"
    return f"{fmt4(e.value)} ({end(e.low, math.floor)}-{end(e.high, math.ceil)})"


def count_ci(e: Estimate) -> str:
    """'7,114 (6,670-7,337)': a count of images with its interval (whole images)."""
    if e.value is None:
        return ""
    lo = "?" if e.low is None else f"{math.floor(e.low + 1e-9):,}"
    hi = "?" if e.high is None else f"{math.ceil(e.high - 1e-9):,}"
    return f"{round(e.value):,} ({lo}-{hi})"


def z_of(level: float) -> float:
    from scipy.stats import norm

    if not 0 < level < 1:
        raise ValueError(f"the level of an interval lies between 0 and 1, not {level}")
    return float(norm.ppf((1 + level) / 2))


def proportion(hits: int, n: int, level: float = DEFAULT_LEVEL, method: str = "wilson") -> Estimate:
    """hits / n with its interval (Wilson's score or Clopper-Pearson's `exact`)."""
    from scipy.stats import binomtest

    if method not in METHODS:
        raise ValueError(f"unknown interval method {method!r}: use one of {', '.join(METHODS)}")
    if n <= 0:
        return NONE
    ci = binomtest(int(hits), int(n)).proportion_ci(confidence_level=level, method=method)
    return Estimate(hits / n, float(ci.low), float(ci.high), int(n))


def wilson(p: float, n_eff: float, level: float = DEFAULT_LEVEL) -> tuple[float, float]:
    """Wilson's score interval around a share p at a (possibly fractional) sample size."""
    if n_eff <= 0:
        return 0.0, 1.0
    z2 = z_of(level) ** 2
    d = 1 + z2 / n_eff
    centre = (p + z2 / (2 * n_eff)) / d
    half = math.sqrt(z2) * math.sqrt(max(p * (1 - p), 0.0) / n_eff + z2 / (4 * n_eff * n_eff)) / d
    return max(0.0, centre - half), min(1.0, centre + half)


def stratified(hits: Sequence[int], n: Sequence[int], weights: Sequence[float],
               level: float = DEFAULT_LEVEL) -> Estimate:
    """sum_k w_k hits_k / n_k (weights normalised to 1) with its interval; strata without
    marks must be left out by the caller (their share is unknown)."""
    h = np.asarray(hits, np.float64)
    m = np.asarray(n, np.float64)
    w = np.asarray(weights, np.float64)
    if len(h) == 0 or np.any(m <= 0) or w.sum() <= 0:
        return NONE
    w = w / w.sum()
    est = float(np.sum(w * h / m))
    z2 = z_of(level) ** 2
    pt = (h + z2 / 2) / (m + z2)
    var = float(np.sum(w * w * pt * (1 - pt) / m))
    ptt = float(np.sum(w * pt))
    n_eff = ptt * (1 - ptt) / var
    lo, hi = wilson(est, n_eff, level)
    # a share of 0 or 1 in every stratum is an end of the interval, not beside it
    return Estimate(est, min(lo, est), max(hi, est), int(m.sum()))


def ratio(a: int, n1: int, c: int, n2: int, level: float = DEFAULT_LEVEL) -> Estimate:
    """(a / n1) / (c / n2) with the log-scale delta-method (Katz) interval.

    None where it is undefined (no error kept: c = 0); an interval end that the marks
    do not bound (a = 0) is None too."""
    from scipy.stats.contingency import relative_risk

    if n1 <= 0 or n2 <= 0 or c <= 0:
        return NONE
    rr = relative_risk(int(a), int(n1), int(c), int(n2))
    ci = rr.confidence_interval(confidence_level=level)

    def ok(x: float) -> float | None:
        return None if x is None or not math.isfinite(x) else float(x)
    return Estimate(float(rr.relative_risk), ok(ci.low) if a > 0 else 0.0, ok(ci.high), int(n1 + n2))


# -- the best threshold's stability ---------------------------------------------------------

def threshold_table_counts(prob: np.ndarray, hit: np.ndarray, thresholds: Sequence[float]
                           ) -> tuple[np.ndarray, np.ndarray]:
    """[K, n] indicator matrices: mark i is kept at threshold k and is a hit / a miss (the
    same rule as report_thresholds.sql: prob >= t, with t = k / 10 as a double)."""
    kept = prob[None, :] >= np.asarray(thresholds, np.float64)[:, None]
    return kept & hit[None, :], kept & ~hit[None, :]


def best_of_counts(hits_kept: np.ndarray, errors_kept: np.ndarray, thresholds: Sequence[float],
                   min_hit_rate: float) -> np.ndarray:
    """The best threshold index of each row of counts [B, K] by report.best_threshold's rule
    (the largest ratio among thresholds keeping >= min_hit_rate of the hits; ties: the lower
    threshold), -1 where none qualifies. Column 0 is t = 0, which keeps everything."""
    all_h = hits_kept[:, :1].astype(np.float64)
    all_e = errors_kept[:, :1].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        hr = hits_kept / all_h
        er = errors_kept / all_e
        r = hr / er
    ok = np.isfinite(r) & (hr >= min_hit_rate) & (all_h > 0) & (all_e > 0)
    score = np.where(ok, r, -np.inf)
    # argmax takes the first of equal maxima: the lowest threshold, as best_threshold does
    best = np.argmax(score, axis=1)
    return np.where(np.isfinite(score[np.arange(len(best)), best]), best, -1)


def threshold_stability(labels: Sequence[str], prob: Sequence[float], hit: Sequence[bool],
                        thresholds: Sequence[float], min_hit_rate: float, resamples: int = RESAMPLES,
                        seed: int = 0) -> dict[float | None, float]:
    """Share of bootstrap resamples in which each threshold is the best (None: none qualifies).

    Each class's judged marks are resampled with replacement within the class, as the set
    was drawn; the seed is fixed so that a report is the same twice."""
    lab = np.asarray(labels, dtype=object)
    p = np.asarray(prob, np.float64)
    h = np.asarray(hit, bool)
    if len(p) == 0:
        return {}
    hk, ek = threshold_table_counts(p, h, thresholds)
    rng = np.random.default_rng(seed)
    counts = np.zeros((resamples, len(p)), np.int64)
    for c in dict.fromkeys(lab.tolist()):
        idx = np.flatnonzero(lab == c)
        counts[:, idx] = rng.multinomial(len(idx), np.full(len(idx), 1 / len(idx)), size=resamples)
    best = best_of_counts(counts @ hk.T.astype(np.int64), counts @ ek.T.astype(np.int64), thresholds,
                          min_hit_rate)
    out: dict[float | None, float] = {}
    for k, n in zip(*np.unique(best, return_counts=True), strict=True):
        out[None if k < 0 else float(thresholds[int(k)])] = float(n / resamples)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


# -- prediction-powered inference ---------------------------------------------------------

def ppi_mean(y: Sequence[float], f_marked: Sequence[float], f_all: Sequence[float],
             level: float = DEFAULT_LEVEL) -> tuple[Estimate, float, float]:
    """A class's accuracy from its marks y (1 hit, 0 miss) and a prediction f of each
    image's chance of being a hit (the calibrated probability): on the marked images
    (f_marked, aligned with y) and on every image of the class (f_all). Returns the
    estimate, the power-tuning weight lambda and the effective sample size (the n whose
    binomial variance is the estimate's: the marks' n times the variance reduction).

    PPI++ (Angelopoulos, Duchi, Zrnic 2023): theta = mean(y) + lambda (mean(f_all) -
    mean(f_marked)), unbiased for any f and any fixed lambda (lambda = 0 is the classical
    mean); lambda = cov(y, f) / ((1 + n / N) var(f)), clipped to [0, 1], minimises the
    variance var(y - lambda f) / n + lambda^2 var(f_all) / N. The interval is Wilson's at
    the effective sample size n var(y) / (n * that variance), so that a class whose marks
    are all hits (or all misses) gets Wilson's interval, never a zero-width one: it is never
    wider than the classical Wilson interval on the same marks when lambda shrinks the variance.
    """
    yy = np.asarray(y, np.float64)
    f = np.asarray(f_marked, np.float64)
    fa = np.asarray(f_all, np.float64)
    n, N = len(yy), len(fa)
    if n == 0:
        return NONE, 0.0, 0.0
    classical = proportion(int(yy.sum()), n, level)
    if n < 2 or N < 2 or np.ptp(f) <= 0 or np.ptp(yy) <= 0:   # a constant says nothing
        return classical, 0.0, float(n)
    cov = float(np.cov(yy, f, ddof=1)[0, 1])
    lam = float(np.clip(cov / ((1 + n / N) * np.var(f, ddof=1)), 0.0, 1.0))
    theta = float(yy.mean() + lam * (fa.mean() - f.mean()))
    var = float(np.var(yy - lam * f, ddof=1) / n + lam ** 2 * np.var(fa, ddof=1) / N)
    var_y = float(np.var(yy, ddof=1) / n)
    n_eff = n * var_y / var if var > 0 else n
    theta = min(max(theta, 0.0), 1.0)
    lo, hi = wilson(theta, n_eff, level)
    return Estimate(theta, min(lo, theta), max(hi, theta), n), lam, float(n_eff)


# -- the sequential review -----------------------------------------------------------------

# A class of a sequential review stops once its Wilson interval is at most the target wide,
# after at least this many marks (Chow and Robbins' fixed-width design), the width taken at
# the Agresti-Coull share (h + z^2/2) / (n + z^2): a stop on the plain width comes early when
# the share has drifted away from 1/2 by chance, and covered the 24% class 0.937 of the time
# (20,000 simulated reviews), this 0.945 for 65% of the study's marks (bench_validation.py).
SEQUENTIAL_MIN = 20


def sequential_width(hits: int, n: int, level: float = DEFAULT_LEVEL) -> float:
    """The width the sequential rule looks at: Wilson's at the Agresti-Coull share (at least
    the plain Wilson width, which the page shows)."""
    if n <= 0:
        return 1.0
    z2 = z_of(level) ** 2
    lo, hi = wilson((hits + z2 / 2) / (n + z2), n, level)
    return max(hi - lo, proportion(hits, n, level).width or 0.0)


def sequential_done(hits: int, n: int, target_width: float, level: float = DEFAULT_LEVEL) -> bool:
    """Whether a class of a sequential review has enough marks: its interval is narrow enough."""
    return n >= SEQUENTIAL_MIN and sequential_width(hits, n, level) <= target_width + 1e-12


def needed(hits: int, n: int, target_width: float, level: float = DEFAULT_LEVEL, cap: int = 100_000) -> int:
    """How many more marks a class likely needs before its Wilson interval is at most
    `target_width` wide, if the share of hits stays where the marks put it now (one half
    before any mark), and at least SEQUENTIAL_MIN in all."""
    if sequential_done(hits, n, target_width, level):
        return 0
    p = hits / n if n > 0 else 0.5
    lo, hi = max(n, 1), cap
    while lo < hi:   # the width falls as n grows (for a fixed share): bisect on it
        mid = (lo + hi) // 2
        if sequential_width(round(p * mid), mid, level) <= target_width:
            hi = mid
        else:
            lo = mid + 1
    return max(lo - n, SEQUENTIAL_MIN - n, 1)
