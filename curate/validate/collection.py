"""Collection-wide estimates from a random review set (queries/report_collection.sql).

A review set's images of a class are a random sample of the collection's images
predicted as that class (in its --where scope): the order of hash(id, seed), marked in
that order. So the marks of a class that fall inside any part of the class (those at or
above a threshold, those a `curate filter` kept) are a random sample of that part, and
the precision of a union of such parts is a stratified estimate: each class weighted by
its images in the part, known exactly from the workspace (intervals.stratified).

Only marks of a set's own images count (a mark on any other image, made outside a
random review set, was not drawn at random and never enters an estimate), and only a set
drawn from the same kind of prediction, classification and scope as what is estimated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import duckdb

from ..classify import registry
from ..core import sql
from . import intervals, sampling
from .intervals import NONE, Estimate, pct_ci


@dataclass(frozen=True)
class ThresholdPrecision:
    """What threshold t keeps of the reviewed classes in the collection, and how precise it is."""

    threshold: float
    images: int            # images of the reviewed classes with top probability >= t
    covered: int           # of those, the images of classes with marks at >= t (what the estimate is about)
    estimate: Estimate     # precision of the covered images
    uncovered: tuple[str, ...] = ()   # classes keeping images at t without a mark there


def _scoped(con: duckdb.DuckDBPyConnection, rs: sampling.ReviewSet) -> str:
    """The relation the set was drawn from: its kind's predictions, in its --where scope."""
    view = sampling.SOURCES[rs.source]
    if not rs.scope:
        return view
    from ..select.filter import where_clause

    clause, args = where_clause(con, rs.scope)
    con.execute(f"CREATE OR REPLACE TEMP TABLE set_scope AS SELECT p.* FROM {view} p JOIN items i ON i.id = p.id "
                f"WHERE {clause}", args)
    return "set_scope"


def threshold_precision(con: duckdb.DuckDBPyConnection, rs: sampling.ReviewSet,
                        level: float = intervals.DEFAULT_LEVEL) -> list[ThresholdPrecision]:
    """For t = 0.0 .. 1.0, the estimated precision of what t keeps of the set's classes in
    the whole collection (the set's kind of prediction and scope)."""
    sql.run(con, "report_collection")
    rows = con.execute("SELECT * FROM report_collection(?, ?)", [_scoped(con, rs), rs.name]).fetchall()
    by_t: dict[float, list[tuple[str, int, int, int]]] = {}
    for label, t, images, marks, hits in rows:
        by_t.setdefault(float(t), []).append((label, int(images), int(marks), int(hits)))
    out = []
    for t, classes in sorted(by_t.items()):
        covered = [c for c in classes if c[1] > 0 and c[2] > 0]
        est = intervals.stratified([c[3] for c in covered], [c[2] for c in covered],
                                   [float(c[1]) for c in covered], level) if covered else NONE
        out.append(ThresholdPrecision(t, sum(c[1] for c in classes), sum(c[1] for c in covered), est,
                                      tuple(c[0] for c in classes if c[1] > 0 and c[2] == 0)))
    return out


# -- the precision of a subset `curate filter` wrote ---------------------------------------

@dataclass
class SubsetPrecision:
    """The estimated precision of the subset's images of the labels a random review set covers."""

    estimate: Estimate = NONE
    images: int = 0                    # the subset's images the estimate is about
    kept: int = 0                      # all the subset's images
    marks: int = 0                     # judged marks it rests on
    sets: list[str] = field(default_factory=list)          # the review sets they come from
    uncovered: list[tuple[str, int]] = field(default_factory=list)   # (label, images) without marks
    level: float = intervals.DEFAULT_LEVEL
    why_none: str | None = None        # no estimate at all: why
    reviewed: bool = False             # a random review set of this kind exists (else nothing is said)

    def lines(self) -> list[str]:
        """What `curate filter` prints: nothing in a workspace without a review set of the
        subset's kind (no validation under way), else the estimate and the labels it misses."""
        if self.why_none is not None:
            return [self.why_none] if self.reviewed else []
        if not self.reviewed:
            return []
        out = []
        if self.estimate.value is not None:
            part = "" if self.images == self.kept else f" (its {self.images:,} images of the labels with marks)"
            out.append(f"estimated precision {pct_ci(self.estimate)}{part}: {self.level:.0%} interval from "
                       f"{self.marks:,} random marks of review set {', '.join(self.sets)}")
        if self.estimate.value is None and len(self.uncovered) > 3:
            return [f"no precision estimate: no marks of a random review set cover its {len(self.uncovered):,} "
                    "labels (`curate sample` and `curate review` give one)"]
        shown = self.uncovered[:8]
        for label, images in shown:
            out.append(f"no marks cover label {label} ({images:,} images of the subset)")
        if len(self.uncovered) > len(shown):
            rest = self.uncovered[len(shown):]
            out.append(f"no marks cover {len(rest)} more labels ({sum(n for _, n in rest):,} images)")
        return out


def _usable_sets(con: duckdb.DuckDBPyConnection, mode: str, classification: str | None,
                 where: tuple[tuple[str, str], ...]) -> list[sampling.ReviewSet]:
    """Sets whose marks are a random sample of what the filter cut from: the same kind of
    prediction and classification, drawn over the whole collection or the same --where."""
    if not all(sql.has_relation(con, t) for t in ("review_sets", "review_classes", "review_items", "judgments")):
        return []
    want = tuple((c.lower(), v) for c, v in sorted((c.lower(), v) for c, v in where))
    out = []
    for rs in sampling.list_sets(con):
        if rs.source != mode or rs.classification != classification:
            continue
        if rs.scope and tuple(sorted(rs.scope)) != want:
            continue
        out.append(rs)
    return out[::-1]   # the latest first


def subset_precision(con: duckdb.DuckDBPyConnection, kept: str, mode: str, classification: str | None,
                     where: Sequence[tuple[str, str]] = (), level: float = intervals.DEFAULT_LEVEL
                     ) -> SubsetPrecision:
    """The precision of the rows of the relation `kept` (id, label: what `curate filter`
    wrote), from the marks of random review sets of `mode`'s predictions (image, caption,
    ensemble; None: no set can cover it, e.g. an ensemble with other weights) under
    `classification`: per label, the latest such set with marks among the label's rows."""
    total_by_label = dict(con.execute(f"SELECT label, count(*) FROM {kept} GROUP BY label").fetchall())
    res = SubsetPrecision(kept=sum(total_by_label.values()), level=level)
    sets = _usable_sets(con, mode, classification, tuple(where)) if mode is not None else []
    res.reviewed = bool(sets)
    if not total_by_label:
        res.why_none = "no precision estimate: the subset is empty"
        return res
    if sets:   # (the macros name the review tables: a workspace never sampled has none)
        sql.run(con, "report_collection")
    found: dict[str, tuple[int, int, int, str]] = {}   # label -> (images, marks, hits, set)
    for rs in sets:
        for label, images, marks, hits in con.execute("SELECT * FROM subset_marks(?, ?)", [kept, rs.name]).fetchall():
            if label not in found and int(images) > 0 and int(marks) > 0:
                found[label] = (int(images), int(marks), int(hits), rs.name)
    covered = [found[label] for label in sorted(found)]
    res.uncovered = sorted(((label, int(n)) for label, n in total_by_label.items() if label not in found),
                           key=lambda x: (-x[1], x[0]))
    if covered:
        res.estimate = intervals.stratified([c[2] for c in covered], [c[1] for c in covered],
                                            [float(c[0]) for c in covered], level)
        res.images = sum(c[0] for c in covered)
        res.marks = sum(c[1] for c in covered)
        res.sets = sorted({c[3] for c in covered})
    return res


def for_filter(con: duckdb.DuckDBPyConnection, spec, level: float = intervals.DEFAULT_LEVEL) -> SubsetPrecision:
    """`curate filter`'s estimate, on its connection while the TEMP table `kept` exists."""
    from ..classify import state

    if spec.unmatched:
        return SubsetPrecision(why_none="no precision estimate for --unmatched (images no label claims)")
        # (said only where a review set exists: SubsetPrecision.lines)
    mode = spec.mode if spec.sql_mode(state.settings(con)) != "ensemble_with" else None
    name = spec.classification or registry.active(con)
    return subset_precision(con, "kept", mode, name, spec.where, level)
