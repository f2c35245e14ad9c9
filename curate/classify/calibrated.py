"""The calibration as stored in a workspace: what `curate report` fitted on the review marks
(curate/validate/calibration.py writes it), read back here for `curate filter --calibrated`.

The meta key `calibration` holds the fit (temperature, source, ...), the table
`calibration_thresholds` each class's threshold on the calibrated probability, and the
view `calibrated_predictions` applies both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np

from ..core import sql

META_KEY = "calibration"


@dataclass
class ClassThreshold:
    label: str
    threshold: float | None
    precision: float | None   # among the marked images it keeps
    support: int              # marked images it keeps
    marked: int               # hits + misses of the class in the sample
    kept: int | None          # images of the whole collection it keeps


@dataclass
class Calibration:
    temperature: float
    source: str
    set_name: str
    n_labels: int
    target_precision: float
    min_support: int
    nll_before: float
    nll_after: float
    marks: int
    exact: bool
    classes: list[ClassThreshold] = field(default_factory=list)
    scores_column: str | None = None   # label_scores column used, None: top two + even tail
    # marked items, for the reliability plot: raw top probability, calibrated one, hit
    raw: np.ndarray | None = None
    calibrated: np.ndarray | None = None
    hits: np.ndarray | None = None

    @property
    def thresholds(self) -> dict[str, float]:
        """label -> calibrated-probability threshold (classes reaching the target only)."""
        return {c.label: c.threshold for c in self.classes if c.threshold is not None}


def _meta(con: duckdb.DuckDBPyConnection, key: str) -> str | None:
    rows = con.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchall()
    return rows[0][0] if rows else None


def load(con: duckdb.DuckDBPyConnection) -> Calibration | None:
    """The calibration `curate report` saved in this workspace, or None (not fitted yet).

    For `curate filter --calibrated`: `cal.temperature`, `cal.thresholds` (label ->
    threshold on the calibrated probability, for classes that reach the target), and the
    view `calibrated_predictions` (calibrated_prob, class_threshold, keep per image).
    """
    if not sql.has_relation(con, "calibration_thresholds"):
        return None
    raw = _meta(con, META_KEY)
    if raw is None:
        return None
    d = json.loads(raw)
    cal = Calibration(float(d["temperature"]), d["source"], d["review_set"], int(d["labels"]),
                      float(d["target_precision"]), int(d["min_support"]), float(d["nll_before"]),
                      float(d["nll_after"]), int(d["marks"]), bool(d["exact"]))
    cal.scores_column = d.get("scores_column")
    for label, t, prec, support, marked, kept in con.execute(
            "SELECT label, threshold, precision, support, marked, kept FROM calibration_thresholds ORDER BY label"
    ).fetchall():
        cal.classes.append(ClassThreshold(label, t, prec, int(support), int(marked), kept))
    return cal


def for_workspace(ws_path: str | Path) -> Calibration | None:
    """`load` on a workspace folder, on a connection of its own (read-only, closed after).

    For callers without an open connection: `curate filter --calibrated` reads the fit on
    its own connection (`load`) and calls this only to explain a subset that kept nothing
    (which classes no threshold reaches). None when `curate report` has not fitted a
    calibration there yet.
    """
    from ..core.workspace import Workspace

    con = Workspace(ws_path).connect(read_only=True)
    try:
        return load(con)
    finally:
        con.close()
