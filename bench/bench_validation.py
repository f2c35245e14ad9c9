"""The report's intervals on a simulation with planted truth: coverage, marks needed, PPI width.

    python bench/bench_validation.py [--reviews 1000] [--seed 0] [--target-width 0.2]

A collection like the study's (Table 2): ten classes of its frequencies (7,410 .. 1,763
images) and accuracies (96, 43, 53, 24, 0, 6, 63, 45, 36, 94 %). Each image has a top
probability s ~ U(0.2, 1.0) and is a hit with probability sigmoid(a_k + 6 (s - 0.6)),
a_k set so that the class's accuracy is the study's (0% and 100% classes: never / always).
Each simulated review draws a new collection (new hits) and a new random review set, and
the truth is that collection's own shares. Designs:

- fixed: the study's 100 marks a class (sampled without replacement); every interval of
  the report at 95%: class accuracy (Wilson and Clopper-Pearson), the mean over classes,
  the precision weighted by frequency, each threshold row's hit rate, error rate, ratio
  and precision in the sample, and the collection's precision of what each threshold keeps.
- sequential: `curate sample --target-width W`: each class marked in its random order
  until its Wilson interval is at most W wide (intervals.sequential_done: at least 20
  marks, at most 400, the width at the Agresti-Coull share), the fixed-width design of
  Chow and Robbins (1965); marks needed and coverage at the stop.
- PPI++: each class's accuracy from its 100 marks plus every image's prediction f:
  the true hit probability (an informative calibration) and the raw s (monotone, not
  calibrated); width against the classical Wilson interval on the same marks, coverage.

JSON lines to bench/results/validation.jsonl; a coverage table on stdout.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.optimize import brentq
from scipy.special import expit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record as common_record  # noqa: E402

from curate.validate import intervals  # noqa: E402

ACC = np.array([96, 43, 53, 24, 0, 6, 63, 45, 36, 94]) / 100
FREQ = np.array([7410, 4681, 4329, 3879, 3806, 2729, 2599, 2155, 2003, 1763])
SLOPE = 6.0
THRESHOLDS = [k / 10 for k in range(11)]
OUT = "validation.jsonl"
SUFFIX = ""  # another simulated collection (--slope): its figures are named as such


def record(file: str, name: str, *rest, **kw) -> dict:
    return common_record(file, name + SUFFIX, *rest, **kw)


def intercepts(rng: np.random.Generator, slope: float = SLOPE) -> list[float | None]:
    """a_k so that E[sigmoid(a_k + slope (s - 0.6))] over s ~ U(0.2, 1) is the class's accuracy."""
    s = rng.uniform(0.2, 1.0, 200_000)
    out: list[float | None] = []
    for acc in ACC:
        if acc <= 0 or acc >= 1:
            out.append(None)
        else:
            out.append(brentq(lambda a, acc=acc: expit(a + slope * (s - 0.6)).mean() - acc, -30, 30))
    return out


def collection(rng: np.random.Generator, a: list[float | None],
               slope: float = SLOPE) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per class: scores s, hit probabilities f (the ideal calibration), hits y."""
    out = []
    for k, n in enumerate(FREQ):
        s = rng.uniform(0.2, 1.0, n)
        f = np.full(n, ACC[k]) if a[k] is None else expit(a[k] + slope * (s - 0.6))
        out.append((s, f, rng.random(n) < f))
    return out


def covers(e: intervals.Estimate, truth: float) -> bool:
    lo = -np.inf if e.low is None else e.low
    hi = np.inf if e.high is None else e.high
    return bool(lo - 1e-12 <= truth <= hi + 1e-12)


def sequential_stop(y: np.ndarray, width: float, level: float, n_min: int = intervals.SEQUENTIAL_MIN) -> int:
    """The first n >= n_min at which intervals.sequential_done holds for y[:n] (vectorised:
    Wilson's width at the Agresti-Coull share, at least the plain one)."""
    h = np.cumsum(y)
    n = np.arange(1, len(y) + 1)
    z2 = intervals.z_of(level) ** 2

    def w(p: np.ndarray) -> np.ndarray:
        return 2 * np.sqrt(z2) * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    rule = np.maximum(w((h + z2 / 2) / (n + z2)), w(h / n))
    ok = np.flatnonzero((rule <= width + 1e-12) & (n >= n_min))
    return int(ok[0] + 1) if len(ok) else len(y)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reviews", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--target-width", type=float, default=0.2)
    ap.add_argument("--cap", type=int, default=400)
    ap.add_argument("--level", type=float, default=0.95)
    ap.add_argument("--slope", type=float, default=SLOPE,
                    help="how sharply the hit probability rises with the score within a class (how informative "
                         "a calibration can be); the study-like default is 6")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    a = intercepts(rng, args.slope)
    global SUFFIX
    SUFFIX = "" if args.slope == SLOPE else f" (slope {args.slope:g})"
    K, R, m, L = len(ACC), args.reviews, args.per_class, args.level
    cov: dict[str, list[bool]] = {}
    widths: dict[str, list[float]] = {"wilson": [], "ppi_calibrated": [], "ppi_raw": []}
    seq_marks, seq_cover, seq_width = [], [], []

    def hit(name: str, ok: bool) -> None:
        cov.setdefault(name, []).append(ok)

    for _r in range(R):
        coll = collection(rng, a, args.slope)
        truth = np.array([y.mean() for _s, _f, y in coll])
        hits, ss, ys, labels = [], [], [], []
        for k, (s, f, y) in enumerate(coll):
            idx = rng.choice(len(s), max(m, args.cap), replace=False)   # the set's random order
            first = idx[:m]
            yk, sk = y[first], s[first]
            hits.append(int(yk.sum()))
            ss.append(sk)
            ys.append(yk)
            labels += [k] * m
            hit("class accuracy (Wilson)", covers(intervals.proportion(int(yk.sum()), m, L), truth[k]))
            hit("class accuracy (Clopper-Pearson)", covers(intervals.proportion(int(yk.sum()), m, L, "exact"),
                                                           truth[k]))
            classical = intervals.proportion(int(yk.sum()), m, L)
            widths["wilson"].append(classical.width)
            for name, pred in (("ppi_calibrated", f), ("ppi_raw", s)):
                est, _lam, _n = intervals.ppi_mean(yk.astype(float), pred[first], pred, L)
                hit(f"class accuracy (PPI++, {name[4:]})", covers(est, truth[k]))
                widths[name].append(est.width)
            # sequential: marks in the same random order until the interval is narrow enough
            seq = y[idx[:args.cap]]
            n = sequential_stop(seq, args.target_width, L)
            e = intervals.proportion(int(seq[:n].sum()), n, L)
            seq_marks.append(n)
            seq_cover.append(covers(e, truth[k]))
            seq_width.append(e.width)
        hit("mean over classes", covers(intervals.stratified(hits, [m] * K, [1] * K, L), truth.mean()))
        hit("precision weighted by frequency",
            covers(intervals.stratified(hits, [m] * K, FREQ, L), (FREQ * truth).sum() / FREQ.sum()))
        # the threshold table, against the design's truth: each class counts by its share
        s_all, y_all = np.concatenate(ss), np.concatenate(ys)
        all_h, all_e = int(y_all.sum()), int((~y_all).sum())
        th_hits = np.array([[(y & (s >= t)).mean() for s, _f, y in coll] for t in THRESHOLDS])   # [T, K]
        th_err = np.array([[(~y & (s >= t)).mean() for s, _f, y in coll] for t in THRESHOLDS])
        th_kept = np.array([[(s >= t).mean() for s, _f, y in coll] for t in THRESHOLDS])
        for j, t in enumerate(THRESHOLDS[1:-1], start=1):
            keep = s_all >= t
            hk, ek = int((y_all & keep).sum()), int((~y_all & keep).sum())
            hr_t, er_t = th_hits[j].sum() / th_hits[0].sum(), th_err[j].sum() / th_err[0].sum()
            hit("threshold hit rate", covers(intervals.proportion(hk, all_h, L), hr_t))
            hit("threshold error rate", covers(intervals.proportion(ek, all_e, L), er_t))
            if ek > 0:
                hit("threshold ratio", covers(intervals.ratio(hk, all_h, ek, all_e, L), hr_t / er_t))
            hit("threshold precision (sample)", covers(intervals.proportion(hk, hk + ek, L),
                                                       th_hits[j].sum() / th_kept[j].sum()))
            # the collection: each class weighted by the images t keeps
            nk = np.array([(s >= t).sum() for s, _f, _y in coll])
            mk = np.array([(sk >= t).sum() for sk in ss])
            hk_k = np.array([(yk & (sk >= t)).sum() for sk, yk in zip(ss, ys, strict=True)])
            use = (nk > 0) & (mk > 0)
            if use.any():
                truth_t = sum((y & (s >= t)).sum() for (s, _f, y), u in zip(coll, use, strict=True) if u) / nk[use].sum()
                hit("collection precision at threshold",
                    covers(intervals.stratified(hk_k[use], mk[use], nk[use], L), truth_t))

    print(f"\n{R} simulated reviews, {L:.0%} intervals (seed {args.seed})")
    print(f"{'interval':<42} {'coverage':>8} {'n':>7}")
    for name, oks in cov.items():
        c = float(np.mean(oks))
        worst = ""
        if name.startswith("class accuracy"):   # also the class it covers least (they alternate in order)
            by_class = np.array(oks).reshape(R, K).mean(axis=0)
            worst = f"   least: {by_class.min():.3f} ({100 * ACC[int(by_class.argmin())]:.0f}% class)"
            record(OUT, f"coverage {name}, least class", float(by_class.min()), "share")
        print(f"{name:<42} {c:>8.3f} {len(oks):>7}{worst}")
        record(OUT, f"coverage {name}", c, "share")
    seq_total = float(np.sum(seq_marks)) / R
    fixed_total = K * m
    per_class = np.array(seq_marks).reshape(R, K).mean(axis=0)
    print(f"\nsequential to width {args.target_width:g} (+/-{50 * args.target_width:g} points): "
          f"{seq_total:.0f} marks a review on average vs the study's {fixed_total} "
          f"({seq_total / fixed_total:.2f}); coverage {np.mean(seq_cover):.3f}; widths <= target in "
          f"{np.mean(np.array(seq_width) <= args.target_width + 1e-12):.3f} of classes")
    print("  marks per class: " + ", ".join(f"{100 * acc:.0f}%: {n:.0f}" for acc, n in zip(ACC, per_class, strict=True)))
    fixed_ok = np.mean(np.array(widths["wilson"]) <= args.target_width + 1e-12)
    print(f"  the fixed 100 a class reach that width in {fixed_ok:.3f} of classes")
    record(OUT, f"sequential marks for width {args.target_width:g}", seq_total, "marks", seq_total / fixed_total,
           f"fixed {fixed_total}")
    record(OUT, "coverage sequential class accuracy (Wilson at the stop)", float(np.mean(seq_cover)), "share")
    seq_by_class = np.array(seq_cover).reshape(R, K).mean(axis=0)
    print("  coverage at the stop by class: " + ", ".join(
        f"{100 * acc:.0f}%: {c:.3f}" for acc, c in zip(ACC, seq_by_class, strict=True)))
    record(OUT, "coverage sequential class accuracy, least class", float(seq_by_class.min()), "share")
    w = np.array(widths["wilson"])
    for name in ("ppi_calibrated", "ppi_raw"):
        ratio = float(np.mean(np.array(widths[name])) / np.mean(w))
        worst = float(np.max(np.array(widths[name]).reshape(R, K).mean(axis=0) / w.reshape(R, K).mean(axis=0)))
        print(f"PPI++ {name[4:]:<10} mean width / Wilson's {ratio:.3f} (worst class {worst:.3f})")
        record(OUT, f"PPI++ {name[4:]} width / Wilson width", ratio, "ratio")
        record(OUT, f"PPI++ {name[4:]} worst class width / Wilson width", worst, "ratio")


if __name__ == "__main__":
    main()
