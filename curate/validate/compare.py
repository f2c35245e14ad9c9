"""Classifications side by side: the study's comparisons (raw label names against natural
prompts, image alone against image + caption) computed from the stored scores.

Everything is SQL over each classification's own views (queries/compare.sql and
coverage.sql), so a comparison of 1M images reads each view once per table.
Rendering (CSV, PNG, HTML, terminal) is compare_render's.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import duckdb

from ..classify import registry
from ..classify.state import require_fresh
from ..core import sql
from ..core.workspace import ModelIdentity, Workspace
from ..errors import InputError

# (kind, the view of a classification that predicts it)
KINDS = (("image", "predictions"), ("caption", "caption_predictions"), ("ensemble", "ensemble"))
VIEW = dict(KINDS)
MIN_PROB = 0.5          # the study's working threshold
TOP_CHANGES = 5         # label changes listed per pair


@dataclass(frozen=True)
class Compared:
    """One classification as compared: its settings."""

    name: str
    label_set: str
    prompts: str
    model: str
    logit_scale: float
    images: int
    captions: int


@dataclass(frozen=True)
class CoverageRow:
    threshold: float
    classified: int
    images: int
    share: float | None


@dataclass(frozen=True)
class Agreement:
    kind: str
    a: str
    b: str
    images: int
    same_top: int
    share_same: float | None
    both_classified: int
    same_top_classified: int
    share_same_classified: float | None
    changes: list[tuple[str, str, int]]     # (label under a, label under b, images), most first


@dataclass(frozen=True)
class MarkRate:
    name: str
    kind: str
    marked: int
    hits: int
    misses: int
    hit_rate: float | None


@dataclass
class Comparison:
    classifications: list[Compared]
    kinds: list[str]
    min_prob: float
    coverage: dict[str, dict[str, list[CoverageRow]]] = field(default_factory=dict)  # kind -> name -> rows
    agreement: list[Agreement] = field(default_factory=list)
    classes: list[tuple[str, list[int | None]]] = field(default_factory=list)  # label, images per name
    marks: list[MarkRate] = field(default_factory=list)
    model: ModelIdentity | None = None      # what the workspace was embedded with (the page says it)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classifications]


def relation(name: str, view: str) -> str:
    """The qualified name of a classification's view, for query_table and FROM."""
    return f"{registry.schema(name)}.{view}"


def _compared(con: duckdb.DuckDBPyConnection, name: str) -> Compared:
    registry.require(con, name, complete=True)
    require_fresh(con, name)     # never compare scores older than their vectors
    rows = con.execute(f"SELECT label_set, prompts, model, logit_scale, images, captions "
                       f"FROM {relation(name, 'score_settings')}").fetchall()
    return Compared(name, *rows[0])


def compare(con: duckdb.DuckDBPyConnection, names: list[str], min_prob: float = MIN_PROB,
            top_changes: int = TOP_CHANGES) -> Comparison:
    """Compare two or more complete classifications of this workspace."""
    if len(names) < 2:
        raise InputError("compare needs at least two classifications")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"classification {dupes[0]!r} is named twice")
    sql.run(con, "compare")
    cls = [_compared(con, n) for n in names]
    # caption and ensemble only where every one of them scored captions
    kinds = ["image"] + (["caption", "ensemble"] if all(c.captions > 0 for c in cls) else [])
    cmp = Comparison(cls, kinds, min_prob, model=Workspace.model_identity(con))
    for kind in kinds:
        cmp.coverage[kind] = {
            c.name: [CoverageRow(float(t), int(k), int(n), s) for t, k, n, s in con.execute(
                "SELECT threshold, classified, images, share FROM coverage_of(?)",
                [relation(c.name, VIEW[kind])]).fetchall()]
            for c in cls}
        for a, b in itertools.combinations(names, 2):
            row = con.execute("SELECT * FROM agreement_of(?, ?, ?, min_prob := ?)",
                              [a, b, VIEW[kind], min_prob]).fetchall()[0]
            changes = con.execute("SELECT * FROM label_changes_of(?, ?, ?) LIMIT ?",
                                  [a, b, VIEW[kind], top_changes]).fetchall()
            cmp.agreement.append(Agreement(kind, a, b, *row, changes=[(f, t, int(n)) for f, t, n in changes]))
    per_label: dict[str, list[int | None]] = {}
    for i, c in enumerate(cls):
        for _idx, label, n in con.execute("SELECT * FROM classified_per_label_of(?, 'predictions', min_prob := ?)",
                                          [c.name, min_prob]).fetchall():
            per_label.setdefault(label, [None] * len(cls))[i] = int(n)
    cmp.classes = sorted(per_label.items(), key=lambda kv: (-max(x or 0 for x in kv[1]), kv[0]))
    if sql.has_relation(con, "judgments") and con.execute(
            "SELECT count(*) FROM judgments WHERE mark IN ('hit', 'miss')").fetchall()[0][0]:
        for kind in kinds:
            for c in cls:
                marked, hits, misses, rate = con.execute("SELECT * FROM marked_hits_of(?, ?)",
                                                         [c.name, VIEW[kind]]).fetchall()[0]
                cmp.marks.append(MarkRate(c.name, kind, int(marked), int(hits), int(misses), rate))
    return cmp
