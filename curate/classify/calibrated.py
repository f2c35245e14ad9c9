"""The calibration as stored in a workspace: what `curate report` fitted on the review marks
(curate/validate/calibration.py writes it), read back here for `curate filter --calibrated`.

The meta key `calibration` holds the fit (temperature, source, the classification it was
fitted on and that classification's settings fingerprint), the table
`calibration_thresholds` each class's threshold on the calibrated probability, and the
view `calibrated_predictions` applies both. A calibration belongs to the classification
whose marks and scores it was fitted on: `check_applies` refuses it for any other, and
for the same name classified again with other settings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np

from ..core import sql
from ..core.workspace import Workspace
from .state import NotReady

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
    classification: str | None = None  # the named classification it was fitted on (None: a curate before names)
    fingerprint: str | None = None     # that classification's settings when it was fitted (resume.fingerprint)
    # marked items, for the reliability plot: raw top probability, calibrated one, hit
    raw: np.ndarray | None = None
    calibrated: np.ndarray | None = None
    hits: np.ndarray | None = None

    @property
    def thresholds(self) -> dict[str, float]:
        """label -> calibrated-probability threshold (classes reaching the target only)."""
        return {c.label: c.threshold for c in self.classes if c.threshold is not None}


def load(con: duckdb.DuckDBPyConnection) -> Calibration | None:
    """The calibration `curate report` saved in this workspace, or None (not fitted yet).

    For `curate filter --calibrated`: `cal.temperature`, `cal.thresholds` (label ->
    threshold on the calibrated probability, for classes that reach the target), and the
    view `calibrated_predictions` (calibrated_prob, class_threshold, keep per image).
    """
    if not sql.has_relation(con, "calibration_thresholds"):
        return None
    raw = Workspace.get_meta(con, META_KEY)
    if raw is None:
        return None
    d = json.loads(raw)
    cal = Calibration(float(d["temperature"]), d["source"], d["review_set"], int(d["labels"]),
                      float(d["target_precision"]), int(d["min_support"]), float(d["nll_before"]),
                      float(d["nll_after"]), int(d["marks"]), bool(d["exact"]))
    cal.scores_column = d.get("scores_column")
    cal.classification, cal.fingerprint = d.get("classification"), d.get("fingerprint")
    for label, t, prec, support, marked, kept in con.execute(
            "SELECT label, threshold, precision, support, marked, kept FROM calibration_thresholds ORDER BY label"
    ).fetchall():
        cal.classes.append(ClassThreshold(label, t, prec, int(support), int(marked), kept))
    return cal


def fingerprint_of(con: duckdb.DuckDBPyConnection, schema: str) -> str | None:
    """The settings fingerprint of a classification's published scores (its score_progress)."""
    try:
        rows = con.execute(f"SELECT fingerprint FROM {schema}.score_progress").fetchall()
    except duckdb.CatalogException:
        return None
    return rows[0][0] if len(rows) == 1 else None


def check_applies(con: duckdb.DuckDBPyConnection, cal: Calibration, name: str | None, schema: str | None) -> None:
    """Refuse the calibration for scores it was not fitted on: another classification
    (`name`, in `schema`), or the same name classified again with other settings.
    (A calibration saved by a curate before names carries neither: it is taken as it is.)"""
    if cal.classification is None or name is None or schema is None:
        return
    if name != cal.classification:
        raise NotReady(f"the calibration was fitted on the classification {cal.classification!r} (review set "
                       f"{cal.set_name!r}), not {name!r}: to fit one for {name}, draw and mark a review set from it "
                       f"(`curate sample --classification {name}`, `curate review`), then run `curate report`; "
                       f"or filter --classification {cal.classification}")
    if cal.fingerprint is not None and fingerprint_of(con, schema) != cal.fingerprint:
        raise NotReady(f"the classification {name!r} was classified again with other settings after the "
                       "calibration was fitted on it: mark a review set drawn from the new scores and run "
                       "`curate report` to fit it again")


def install_view(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """The view calibrated_predictions inside the schema of the classification `name` the
    calibration belongs to (a DuckDB view binds its names in its own schema, so it reads
    that classification's predictions whatever is active), and main's calibrated_predictions
    showing it; the view leaves every other classification's schema
    (queries/calibration_owner.sql)."""
    for (other,) in con.execute(
            "SELECT schema_name[length(?) + 1:] FROM duckdb_views() WHERE view_name = 'calibrated_predictions' "
            "AND starts_with(schema_name, ?) AND NOT temporary AND database_name = current_database()",
            [sql.CLASSIFICATION_PREFIX, sql.CLASSIFICATION_PREFIX]).fetchall():
        con.execute(sql.named_for("calibration_owner", "leave", other))
    with sql.search_path(con, f"{sql.classification_schema(name)},main"):   # made in the classification's schema
        con.execute(sql.named("calibration", "calibrated_predictions"))
    con.execute(sql.named_for("calibration_owner", "main", name))


def forget(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    """The calibration goes with the classification it was fitted on (a dropped one):
    returns whether there was one."""
    cal = load(con)
    if cal is None or cal.classification != name:
        return False
    Workspace.delete_meta(con, META_KEY)
    con.execute("DELETE FROM calibration_thresholds")
    con.execute(sql.named("calibration_owner", "forget"))
    return True


def stamp(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """A calibration saved before names (no classification recorded) belongs to the
    classification the upgrade made of that workspace's scores."""
    raw = Workspace.get_meta(con, META_KEY) if sql.has_relation(con, "meta", schema="main") else None
    if raw is None:
        return
    d = json.loads(raw)
    if d.get("classification") is not None:
        return
    d["classification"], d["fingerprint"] = name, fingerprint_of(con, sql.classification_schema(name))
    Workspace.set_meta(con, META_KEY, json.dumps(d))   # (the row is there: read above)
    install_view(con, name)


def for_workspace(ws_path: str | Path) -> Calibration | None:
    """`load` on a workspace folder, in its `reading()` scope (the command's connection where
    one is open, else one of its own, closed after).

    For callers without an open connection: `curate filter --calibrated` reads the fit on
    its own connection (`load`) and calls this only to explain a subset that kept nothing
    (which classes no threshold reaches). None when `curate report` has not fitted a
    calibration there yet.
    """
    from ..core.workspace import Workspace

    with Workspace(ws_path).reading() as con:
        return load(con)
