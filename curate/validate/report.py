"""The validation report: the study's tables computed from the human marks.

From one review set (or any CSV sheet with label, prob, mark):

- Table 2, class accuracy: frequency in the collection, accuracy in the sample.
- the mean top probability of hits against misses.
- the threshold table (t = 0.0 .. 1.0): kept, hits, hit rate, errors, error rate, ratio,
  and the threshold that maximises the ratio (see `best_threshold`).
- Table 3: the same for the ensemble's predictions beside the image-only ones, when
  an ensemble review set exists.
- Table 1, coverage: the share of the collection classified at each threshold.
- calibration (curate.validate.calibration): temperature and per-class thresholds.
- plots (rates and coverage against threshold, class accuracy) and image grids per
  class, hits and misses apart.

The tables are SQL table macros (`queries/report_*.sql`) over a TEMP table `report_marks`;
this module stores the marks there and runs the macros into a `Report`; report_render.py writes
it as text, CSV and HTML, report_figures.py draws its pictures. Rates are printed
with 4 decimals, truncated as the study printed them (270/460 = 0.58695... -> 0.5869);
the counts beside them are exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

from ..classify.calibrated import Calibration
from ..classify.state import require_complete
from ..core import check, sql
from ..core.workspace import ModelIdentity, Workspace
from ..errors import InputError
from . import intervals, sampling
from .intervals import NONE, Estimate, count_ci, fmt4, num_ci, pct, pct_ci  # noqa: F401 (the report's text forms)

if TYPE_CHECKING:
    from .collection import ThresholdPrecision
    from .ppi import PPIReport

# The report's queries (queries/<name>.sql): table macros over a relation of marks.
REPORT_QUERIES = ("report_thresholds", "report_class_accuracy", "report_summary")

# The study's choice (1.3373 at 0.6) is the largest ratio among thresholds that still keep
# at least half of the images the sample found correct; 0.9 has a larger ratio (1.5141)
# but keeps 19% of the hits, which is not a useful clean subset.
DEFAULT_MIN_HIT_RATE = 0.5


@dataclass(frozen=True)
class ReportOptions:
    """How `curate report` computes and draws: the threshold table's `min_hit_rate`, the
    calibration's `target_precision` and `min_support`, the image grids' `grid_size` (0: none),
    `plots` (False: the tables and page without the PNG plots), every interval at `level` by
    `interval` ("wilson" or "exact", intervals.METHODS). Checked when made."""
    min_hit_rate: float = DEFAULT_MIN_HIT_RATE
    target_precision: float = 0.9
    min_support: int = 10
    grid_size: int = 24
    plots: bool = True
    level: float = 0.95
    interval: str = "wilson"

    def __post_init__(self) -> None:
        check.fields(self, min_hit_rate=check.probability(), target_precision=check.number(0, 1, lo_open=True),
                     min_support=check.integer(1), grid_size=check.integer(0), plots=check.flag(),
                     level=check.number(0, 1, lo_open=True, hi_open=True), interval=check.text())
        if self.interval not in intervals.METHODS:
            raise InputError(f"--interval must be one of {', '.join(intervals.METHODS)}, not {self.interval!r}")


@dataclass(frozen=True)
class Marked:
    """One item of a sample: its predicted label, top probability and mark (None = not yet)."""

    label: str
    prob: float
    mark: str | None
    path: str | None = None
    id: int | None = None


@dataclass(frozen=True)
class ThresholdRow:
    threshold: float
    kept: int
    hits: int
    hit_rate: float | None
    errors: int
    error_rate: float | None
    ratio: float | None
    precision: float | None
    # intervals (intervals.py), filled by `analyse` at the report's level
    hit_rate_ci: Estimate = NONE
    error_rate_ci: Estimate = NONE
    ratio_ci: Estimate = NONE
    precision_ci: Estimate = NONE


@dataclass(frozen=True)
class ClassRow:
    label: str
    frequency: int | None
    sampled: int
    hits: int
    misses: int
    skipped: int
    unmarked: int
    accuracy: float | None
    mean_prob_hits: float | None
    mean_prob_misses: float | None
    accuracy_ci: Estimate = NONE
    # images of the collection predicted as this class that are correct: frequency x accuracy
    correct_ci: Estimate = NONE


@dataclass(frozen=True)
class Summary:
    sampled: int
    hits: int
    misses: int
    skipped: int
    unmarked: int
    accuracy: float | None
    mean_prob_hits: float | None
    mean_prob_misses: float | None
    accuracy_ci: Estimate = NONE


@dataclass(frozen=True)
class Best:
    threshold: float | None
    ratio: float | None
    rule: str
    unconstrained_threshold: float | None
    unconstrained_ratio: float | None


@dataclass
class SourceReport:
    """Everything computed from the marks of one set (one kind of prediction)."""

    name: str            # the review set, or the sheet's file name
    source: str          # image | caption | ensemble | sheet
    marks: list[Marked]
    summary: Summary
    classes: list[ClassRow]
    thresholds: list[ThresholdRow]
    best: Best
    level: float = intervals.DEFAULT_LEVEL
    # the study's mean over classes, and the precision of the reviewed classes in the
    # collection (each class weighted by its frequency), with their intervals
    mean_ci: Estimate = NONE
    weighted_ci: Estimate = NONE
    # correct images among the reviewed classes' images of the collection
    correct_ci: Estimate = NONE
    # threshold -> share of bootstrap resamples in which it is the best (None: none qualifies)
    stability: dict[float | None, float] = field(default_factory=dict)
    # per threshold: the images of the reviewed classes it keeps in the collection and their
    # estimated precision (collection.py); workspace reports only
    collection: list[ThresholdPrecision] = field(default_factory=list)

    @property
    def mean_class_accuracy(self) -> float | None:
        acc = [c.accuracy for c in self.classes if c.accuracy is not None]
        return sum(acc) / len(acc) if acc else None


@dataclass
class Report:
    main: SourceReport
    others: list[SourceReport] = field(default_factory=list)   # e.g. the ensemble set (Table 3)
    coverage: dict[str, list[tuple[float, int, float]]] = field(default_factory=dict)
    calibration: Calibration | None = None
    problems: list[str] = field(default_factory=list)
    # prediction-powered estimates beside the classical ones (ppi.py), when a calibration exists
    ppi: PPIReport | None = None
    # the model the workspace was embedded with (None: a sheet's marks, no workspace): the page
    # says it, and says so loudly when its weights are random
    model: ModelIdentity | None = None


# -- formatting -----------------------------------------------------------------------

def fmt_t(t: float) -> str:
    return f"{t:.1f}"


# -- marks in --------------------------------------------------------------------------

def marks_from_set(con: duckdb.DuckDBPyConnection, set_name: str) -> list[Marked]:
    rows = con.execute(
        "SELECT label, prob, mark, path, id FROM review_sheet WHERE set_name = ? ORDER BY position",
        [set_name],
    ).fetchall()
    return [Marked(label, float(p), m, path, int(i)) for label, p, m, path, i in rows]


def _store(con: duckdb.DuckDBPyConnection, marks: Sequence[Marked], frequency: dict[str, int]) -> None:
    """Store these marks as the TEMP table `report_marks` that the report_*.sql macros read
    (TEMP: the workspace may be open read-only, or be no workspace at all)."""
    rank: dict[str, int] = {}
    for m in marks:  # classes in the order they first appear: the set's order, or the sheet's
        rank.setdefault(m.label, len(rank) + 1)
    con.execute("CREATE OR REPLACE TEMP TABLE report_marks"
                " (label VARCHAR, prob DOUBLE, mark VARCHAR, frequency BIGINT, rank BIGINT)")
    if not marks:
        return
    con.execute("INSERT INTO report_marks SELECT unnest($label), unnest($prob), unnest($mark),"
                " unnest($frequency), unnest($rank)", {
                    "label": [m.label for m in marks], "prob": [float(m.prob) for m in marks],
                    "mark": [m.mark for m in marks], "frequency": [frequency.get(m.label) for m in marks],
                    "rank": [rank[m.label] for m in marks]})


def _opt(x) -> float | None:
    return None if x is None else float(x)


def analyse(con: duckdb.DuckDBPyConnection, name: str, source: str, marks: Sequence[Marked],
            frequency: dict[str, int] | None = None,
            min_hit_rate: float = DEFAULT_MIN_HIT_RATE, level: float = intervals.DEFAULT_LEVEL,
            method: str = "wilson") -> SourceReport:
    """Tables of one sample with the interval of every estimate at `level` (`method`:
    wilson or exact, for the proportions); `con` may be any connection (even read-only or
    in-memory)."""
    _store(con, marks, frequency or {})
    try:
        for query in REPORT_QUERIES:
            sql.run(con, query)
        t_rows = con.execute("SELECT * FROM report_thresholds('report_marks')").fetchall()
        c_rows = con.execute("SELECT * FROM report_class_accuracy('report_marks')").fetchall()
        s_row = con.execute("SELECT * FROM report_summary('report_marks')").fetchall()[0]
    finally:
        con.execute("DROP TABLE IF EXISTS temp.report_marks")
    thresholds = [ThresholdRow(float(t), int(k), int(h), _opt(hr), int(e), _opt(er), _opt(r), _opt(p))
                  for t, k, h, hr, e, er, r, p in t_rows]
    classes = [ClassRow(c, None if f is None else int(f), int(n), int(h), int(m), int(s), int(u),
                        _opt(a), _opt(mh), _opt(mm)) for c, f, n, h, m, s, u, a, mh, mm in c_rows]
    n, h, m, s, u, a, mh, mm = s_row
    summary = Summary(int(n), int(h), int(m), int(s), int(u), _opt(a), _opt(mh), _opt(mm))
    sr = SourceReport(name, source, list(marks), summary, classes, thresholds,
                      best_threshold(thresholds, min_hit_rate))
    return with_intervals(sr, min_hit_rate, level, method)


def with_intervals(sr: SourceReport, min_hit_rate: float = DEFAULT_MIN_HIT_RATE,
                   level: float = intervals.DEFAULT_LEVEL, method: str = "wilson") -> SourceReport:
    """The report's estimates with their intervals (curate/validate/intervals.py)."""
    from dataclasses import replace

    def prop(k: int, n: int) -> Estimate:
        return intervals.proportion(k, n, level, method)

    classes = []
    for c in sr.classes:
        ci = prop(c.hits, c.hits + c.misses)
        classes.append(replace(c, accuracy_ci=ci, correct_ci=ci.scaled(c.frequency) if c.frequency else NONE))
    s = sr.summary
    summary = replace(s, accuracy_ci=prop(s.hits, s.hits + s.misses))
    all_h, all_e = s.hits, s.misses
    # t = 0 keeps every mark by definition: its rates are 1 exactly, not estimates
    thresholds = [replace(r, hit_rate_ci=prop(r.hits, all_h) if r.threshold > 0 else _exact(r.hit_rate, all_h),
                          error_rate_ci=prop(r.errors, all_e) if r.threshold > 0 else _exact(r.error_rate, all_e),
                          ratio_ci=intervals.ratio(r.hits, all_h, r.errors, all_e, level),
                          precision_ci=prop(r.hits, r.kept)) for r in sr.thresholds]
    judged = [c for c in classes if c.hits + c.misses > 0]
    hits, n = [c.hits for c in judged], [c.hits + c.misses for c in judged]
    mean_ci = intervals.stratified(hits, n, [1.0] * len(judged), level)
    weighted_ci = correct_ci = NONE
    if judged and all(c.frequency for c in judged):
        freq = [float(c.frequency) for c in judged]
        weighted_ci = intervals.stratified(hits, n, freq, level)
        correct_ci = weighted_ci.scaled(sum(freq))
    j = [m for m in sr.marks if m.mark in ("hit", "miss")]
    stability = intervals.threshold_stability([m.label for m in j], [m.prob for m in j],
                                              [m.mark == "hit" for m in j], [r.threshold for r in thresholds],
                                              min_hit_rate)
    return replace(sr, summary=summary, classes=classes, thresholds=thresholds, level=level, mean_ci=mean_ci,
                   weighted_ci=weighted_ci, correct_ci=correct_ci, stability=stability)


def _exact(x: float | None, n: int) -> Estimate:
    return NONE if x is None else Estimate(x, x, x, n)


def best_threshold(rows: Sequence[ThresholdRow], min_hit_rate: float = DEFAULT_MIN_HIT_RATE) -> Best:
    """The threshold with the largest ratio hit rate / error rate among those keeping at
    least `min_hit_rate` of the hits (ties: the lower threshold, which keeps more).

    Without that floor the ratio favours thresholds that keep almost nothing: in the study
    0.9 (1.5141) keeps 19% of the good images, while 0.6 (1.3373, the study's choice) keeps
    59%. The unconstrained maximum is reported beside it.
    """
    def pick(ok) -> ThresholdRow | None:
        cands = [r for r in rows if r.ratio is not None and not math.isinf(r.ratio) and ok(r)]
        return max(cands, key=lambda r: (r.ratio, -r.threshold)) if cands else None

    best = pick(lambda r: r.hit_rate is not None and r.hit_rate >= min_hit_rate)
    free = pick(lambda r: True)
    rule = f"largest ratio among thresholds keeping at least {min_hit_rate:g} of the hits"
    return Best(best.threshold if best else None, best.ratio if best else None, rule,
                free.threshold if free else None, free.ratio if free else None)


def coverage(con: duckdb.DuckDBPyConnection) -> dict[str, list[tuple[float, int, float]]]:
    """Table 1 for each kind of prediction the workspace has: (t, items classified, share),
    from the one definition of it, `coverage_for` (queries/coverage.sql)."""
    if not sql.has_relation(con, "predictions"):
        return {}
    require_complete(con, needed=False)   # coverage of half a classification would be wrong: refuse
    images = con.execute("SELECT count(*) FROM predictions").fetchall()[0][0]
    if not images:
        return {}
    # coverage_for(mode): the same table, in a workspace last classified before coverage_of
    macro = "coverage_of" if sql.has_macro(con, "coverage_of") else "coverage_for"
    out = {}
    for source, view in sampling.SOURCES.items():
        if sql.has_relation(con, view):
            rows = con.execute(f"SELECT threshold, classified, share FROM {macro}(?)",
                               [view if macro == "coverage_of" else source]).fetchall()
            out[source] = [(float(t), int(n), float(s or 0.0)) for t, n, s in rows]
    return out


def from_workspace(con: duckdb.DuckDBPyConnection, set_name: str | None = None,
                   min_hit_rate: float = DEFAULT_MIN_HIT_RATE, level: float = intervals.DEFAULT_LEVEL,
                   method: str = "wilson") -> Report:
    """The report of a set (by default the latest image set, else the latest set), with
    the latest ensemble set beside it when there is one (or the latest image set when
    the main one is the ensemble), and coverage. Only the marks of each set's own images
    enter (review_sheet): a random sample of each class."""
    # By default the image-only set is the main one (the study's), the ensemble beside it.
    main_set = (sampling.get_set(con, set_name) if set_name is not None
                else sampling.latest_for_source(con, "image") or sampling.get_set(con))
    out = []
    partner = "ensemble" if main_set.source != "ensemble" else "image"
    for rs in (main_set, sampling.latest_for_source(con, partner)):
        if rs is None:
            continue
        freq = {label: f for label, _r, f in sampling.classes(con, rs.name)}
        sr = analyse(con, rs.name, rs.source, marks_from_set(con, rs.name), freq, min_hit_rate, level, method)
        if sql.has_relation(con, sampling.SOURCES[rs.source]):
            from .collection import threshold_precision

            sr.collection = threshold_precision(con, rs, level)
        out.append(sr)
    return Report(out[0], out[1:], coverage(con), model=Workspace.model_identity(con))


def from_sheet(path: str | Path, min_hit_rate: float = DEFAULT_MIN_HIT_RATE, level: float = intervals.DEFAULT_LEVEL,
               method: str = "wilson") -> Report:
    """The report of any CSV sheet with columns label, prob, mark (marks made elsewhere)."""
    from .review.sheet import read_marks

    rows, problems = read_marks(path)
    marks = [Marked(r.label, r.prob, r.mark, r.path) for r in rows]
    con = duckdb.connect()
    try:
        main = analyse(con, Path(path).name, "sheet", marks, None, min_hit_rate, level, method)
    finally:
        con.close()
    return Report(main, problems=problems)
