"""The app's reads: each request opens the workspace read-only, reads, and closes it.

A DuckDB file has one writer or any number of readers. The app runs for hours beside
`classify`, `dedup`, `report` and the duckdb shell, so it never keeps the file open: a
connection lives for one request (~20 ms to open) and a writer gets the file between two.
The SQL is queries/app_browse.sql (TEMP macros made on each connection); the rule a grid
shows is subset_predictions's (subsets.sql), so the export writes what the grid shows.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import duckdb
import numpy as np

from ..classify import calibrated, registry, state
from ..core import sql
from ..core.workspace import ModelIdentity, Workspace
from ..errors import CurateError
from ..select.filter import item_columns, where_clause
from .selection import RELATIONS, BadSelection, Selection

PAGE = 100          # tiles a page, at most
# How long a request waits while another process holds the file for writing (then the page
# says who holds it); a writer's moment is short, a whole `classify` is not worth waiting for.
WAIT = 3.0


@dataclass
class Reader:
    con: duckdb.DuckDBPyConnection
    classification: str | None           # the one selected (None: a workspace from before names)
    settings: dict
    calibration_source: str | None       # the mode the calibration that applies was fitted on


@contextmanager
def reading(ws: Workspace, classification: str | None = None, calibration: bool = True) -> Iterator[Reader]:
    """A read-only connection pointed at a complete classification (None: the active one), the
    app's macros made on it; closed after the block. `calibration`: look for a calibration that
    applies (the calibrated view; a few catalog reads, skipped by the reads that need none)."""
    con = ws.connect(read_only=True, wait=WAIT)
    try:
        name = registry.select(con, classification)
        st = state.require_complete(con, f"the workspace {ws.root}")
        sql.run(con, "app_browse")
        source = None
        cal = calibrated.load(con) if calibration else None
        if cal is not None:
            try:
                calibrated.check_applies(con, cal, name, registry.schema(name) if name else None)
            except CurateError:
                cal = None
        if cal is not None and sql.has_relation(con, "calibrated_predictions"):
            sql.run(con, "app_calibrated")
            source = cal.source
        yield Reader(con, name, st, source)
    finally:
        con.close()


def _check_mode(r: Reader, sel: Selection) -> None:
    if sel.mode == "calibrated" and r.calibration_source is None:
        raise BadSelection("no calibration applies to this classification: mark a review set drawn from it "
                           "and run `curate report` to fit one")


def _where(r: Reader, sel: Selection) -> tuple[str, list]:
    """' AND p.id IN (<items passing the where filters>)' and its parameters ('' without filters).

    A semi-join on ids: the grid's top-N runs over ids and probabilities alone, and only the
    page's rows are joined to items for their path and caption."""
    if not sel.where:
        return "", []
    clause, params = where_clause(r.con, sel.where)
    return f" AND p.id IN (SELECT i.id FROM items i WHERE {clause})", params


def overview(ws: Workspace, classification: str | None = None) -> dict:
    """What the page draws first: the model (random weights or not), the classifications, the
    modes this one has, its labels, the items by status, the columns a filter can name."""
    with reading(ws, classification) as r:
        con = r.con
        ident = Workspace.model_identity(con)
        names = [c for c in registry.list_classifications(con) if c.complete]
        counts = dict(con.execute("SELECT status, count(*) FROM items GROUP BY status").fetchall())
        modes = ["image"]
        if r.settings.get("captions"):
            modes += ["caption", "ensemble"]
        if r.calibration_source is not None:
            modes.append("calibrated")
        labels = [x[0] for x in con.execute("SELECT label FROM labels ORDER BY label_idx").fetchall()]
        columns = [c for c in item_columns(con) if c != "id"]
        return {
            "workspace": str(ws.root),
            "model": _model(ident),
            "classification": r.classification,
            "classifications": [{"name": c.name, "label_set": c.label_set, "prompts": c.prompts,
                                 "active": c.active} for c in names],
            "modes": modes,
            "calibration_source": r.calibration_source,
            "labels": labels,
            "status": {k: int(v) for k, v in counts.items()},
            "columns": columns,
        }


def _model(ident: ModelIdentity | None) -> dict:
    if ident is None:
        return {"model": None, "pretrained": None, "random_weights": False}
    return {"model": ident.model, "pretrained": ident.pretrained, "random_weights": bool(ident.random_weights)}


def page(ws: Workspace, sel: Selection, after: tuple[float, int] | None = None, n: int = PAGE) -> dict:
    """One page of the grid, the most probable first (then by id): `after` is the last tile's
    (prob, id) of the page before. Rejected items come by id with their reason."""
    n = max(1, min(int(n), PAGE))
    with reading(ws, sel.classification, calibration=sel.mode == "calibrated") as r:
        extra, params = _where(r, sel)
        if sel.status == "rejected":
            last = -1 if after is None else int(after[1])
            rows = r.con.execute(
                "SELECT p.id, NULL, NULL, i.path, i.caption, p.reason FROM app_rejected() p JOIN items i ON i.id = p.id "
                f"WHERE p.id > ?{extra} ORDER BY p.id LIMIT ?", [last, *params, n]).fetchall()
        else:
            _check_mode(r, sel)
            keyset = "" if after is None else " AND (p.prob < ? OR (p.prob = ? AND p.id > ?))"
            kp = [] if after is None else [float(after[0]), float(after[0]), int(after[1])]
            rows = r.con.execute(
                "SELECT p.id, p.label, p.prob, i.path, i.caption, NULL FROM ("
                f"  SELECT p.id, p.label, p.prob FROM app_view(?, ?, ?) p WHERE true{keyset}{extra}"
                "   ORDER BY p.prob DESC, p.id LIMIT ?) p "
                "JOIN items i ON i.id = p.id ORDER BY p.prob DESC, p.id",
                [sel.relation, sel.floor, list(sel.labels), *kp, *params, n]).fetchall()
        tiles = [_tile(*row, status=sel.status) for row in rows]
        nxt = None
        if len(rows) == n:
            nxt = [rows[-1][2], rows[-1][0]] if sel.status != "rejected" else [None, rows[-1][0]]
        return {"tiles": tiles, "next": nxt}


def _tile(item_id, label, prob, path, caption, reason, status: str = "embedded") -> dict:
    return {"id": int(item_id), "label": label, "prob": None if prob is None else float(prob),
            "path": path, "name": None if path is None else path.rsplit("/", 1)[-1], "caption": caption or "",
            "status": status, "reason": reason}


def count(ws: Workspace, sel: Selection) -> int:
    """How many items the selection holds (what the export writes)."""
    with reading(ws, sel.classification, calibration=sel.mode == "calibrated") as r:
        extra, params = _where(r, sel)
        if sel.status == "rejected":
            q = f"SELECT count(*) FROM app_rejected() p WHERE true{extra}"
            return int(r.con.execute(q, params).fetchall()[0][0])
        _check_mode(r, sel)
        q = f"SELECT count(*) FROM app_view(?, ?, ?) p WHERE true{extra}"
        return int(r.con.execute(q, [sel.relation, sel.floor, list(sel.labels), *params]).fetchall()[0][0])


def label_counts(ws: Workspace, sel: Selection) -> dict:
    """The sidebar: each label's items at the selection's threshold (and its where filters), of all
    its items; and the selection's own count."""
    with reading(ws, sel.classification, calibration=sel.mode == "calibrated") as r:
        _check_mode(r, sel)
        extra, params = _where(r, sel)
        if extra:
            rows = r.con.execute(
                "SELECT l.label, count(p.id) FILTER (p.prob >= ?), count(p.id) FROM labels l "
                "LEFT JOIN (SELECT p.* FROM query_table(?) p WHERE true"
                f"{extra}) p ON p.label = l.label GROUP BY l.label, l.label_idx "
                "ORDER BY 2 DESC, 3 DESC, l.label_idx", [sel.floor, sel.relation, *params]).fetchall()
        else:
            rows = r.con.execute("SELECT * FROM app_label_counts(?, ?)", [sel.relation, sel.floor]).fetchall()
        wanted = set(sel.labels)
        total = sum(k for label, k, _ in rows if not wanted or label in wanted)
        return {"labels": [{"label": label, "kept": int(k), "items": int(n)} for label, k, n in rows],
                "count": int(total)}


def hits_page(ws: Workspace, sel: Selection, ids: np.ndarray, scores: np.ndarray, offset: int = 0,
              n: int = PAGE) -> dict:
    """Search hits (ids by rank, their cosine) that pass the selection's filters, from `offset`."""
    n = max(1, min(int(n), PAGE))
    with reading(ws, sel.classification, calibration=sel.mode == "calibrated") as r:
        _check_mode(r, sel)
        extra, params = _where(r, sel)
        r.con.register("app_hits", {"id": np.asarray(ids, dtype=np.int64),
                                    "score": np.asarray(scores, dtype=np.float64),
                                    "rank": np.arange(1, len(ids) + 1, dtype=np.int64)})
        try:
            rows = r.con.execute(
                "SELECT p.id, p.label, p.prob, i.path, i.caption, h.score, h.rank FROM app_hits h "
                "JOIN app_view(?, ?, ?) p ON p.id = h.id JOIN items i ON i.id = h.id "
                f"WHERE true{extra} ORDER BY h.rank LIMIT ? OFFSET ?",
                [sel.relation, sel.floor, list(sel.labels), *params, n, max(0, int(offset))]).fetchall()
            passing = r.con.execute(
                "SELECT count(*) FROM app_hits h JOIN app_view(?, ?, ?) p ON p.id = h.id "
                f"WHERE true{extra}", [sel.relation, sel.floor, list(sel.labels), *params]).fetchall()[0][0]
        finally:
            r.con.unregister("app_hits")
        tiles = []
        for item_id, label, prob, path, caption, score, rank in rows:
            t = _tile(item_id, label, prob, path, caption, None)
            t |= {"score": float(score), "rank": int(rank)}
            tiles.append(t)
        end = offset + len(rows)
        return {"tiles": tiles, "next": [None, end] if end < passing else None, "count": int(passing),
                "searched": len(ids)}


def item(ws: Workspace, item_id: int, classification: str | None = None) -> dict:
    """One item in detail: its file and caption, status (and reason), the top 5 labels of each
    view, its duplicate group, and the review marks on it (the marks made while browsing are
    the caller's: curate/app/marks.py)."""
    with reading(ws, classification, calibration=False) as r:
        con = r.con
        rows = con.execute("SELECT id, path, caption, status FROM items WHERE id = ?", [item_id]).fetchall()
        if not rows:
            raise KeyError(f"no item {item_id} in this workspace")
        _, path, caption, status = rows[0]
        reason = None
        if status == "rejected":
            got = con.execute("SELECT reason FROM app_rejected() WHERE id = ?", [item_id]).fetchall()
            reason = got[0][0] if got else None
        top: dict[str, list] = {"image": [], "caption": [], "ensemble": []}
        for view, label, prob, _rank in con.execute(
                "SELECT * FROM app_top_labels(?, ?, ?)",
                [item_id, r.settings["ensemble_text_weight"], r.settings["ensemble_text_min"]]).fetchall():
            top[view].append({"label": label, "prob": float(prob)})
        group = []
        if sql.has_relation(con, "duplicates"):
            group = [{"id": int(i), "representative": bool(rep), "similarity": None if s is None else float(s),
                      "kind": kind}
                     for i, rep, s, kind in con.execute(
                         "SELECT d.id, d.id = d.representative, d.similarity, d.kind FROM duplicates d "
                         "WHERE (d.kind, d.group_id) IN (SELECT (kind, group_id) FROM duplicates WHERE id = ?) "
                         "ORDER BY d.kind, d.id", [item_id]).fetchall()]
        review = []
        if sql.has_relation(con, "judgments"):
            review = [{"label": label, "mark": mark, "at": str(at)} for label, mark, at in con.execute(
                "SELECT label, mark, marked_at FROM judgments WHERE id = ? ORDER BY marked_at", [item_id]).fetchall()]
        extras = {}
        cols = [c for c in item_columns(con) if c != "id"]
        if cols:
            got = con.execute("SELECT * EXCLUDE (id) FROM item_extras WHERE id = ?", [item_id]).fetchall()
            if got:
                extras = {c: (None if v is None else str(v)) for c, v in zip(cols, got[0], strict=True)}
        return {"id": int(item_id), "path": path, "caption": caption or "", "status": status, "reason": reason,
                "top": top, "duplicates": group, "review_marks": review, "columns": extras}


def label_of(ws: Workspace, sel: Selection, item_id: int) -> str:
    """The label the selection's view gives an item: what a mark on its tile judges."""
    with reading(ws, sel.classification, calibration=sel.mode == "calibrated") as r:
        _check_mode(r, sel)
        rel = RELATIONS[r.calibration_source or "image"] if sel.mode == "calibrated" else sel.relation
        rows = r.con.execute("SELECT label FROM app_view(?, 0.0, []) WHERE id = ?", [rel, item_id]).fetchall()
        if not rows:
            raise KeyError(f"item {item_id} has no {sel.mode} prediction in this classification")
        return rows[0][0]


def file_of(ws: Workspace, item_id: int) -> tuple[str, str, str | None]:
    """(path, status, rejection reason) of one item; KeyError if the workspace has no such item."""
    con = ws.connect(read_only=True, wait=WAIT)
    try:
        rows = con.execute("SELECT path, status FROM items WHERE id = ?", [item_id]).fetchall()
        if not rows:
            raise KeyError(f"no item {item_id} in this workspace")
        path, status = rows[0]
        reason = None
        if status == "rejected":
            got = con.execute("SELECT arg_max(reason, rejected_at) FROM rejected WHERE item_id = ?",
                              [item_id]).fetchall()
            reason = got[0][0] if got else None
        return path, status, reason
    finally:
        con.close()


def vector_of(ws: Workspace, item_id: int) -> np.ndarray:
    """The stored image vector of one item (1, d), read from its shard (memory-mapped)."""
    from ..core import store

    con = ws.connect(read_only=True, wait=WAIT)
    try:
        rows = con.execute("SELECT file, rows FROM shards WHERE kind = 'image' AND ? BETWEEN min_id AND max_id "
                           "ORDER BY part", [item_id]).fetchall()
        for file, n in rows:
            ids, vecs = store.open_shard(store.shard_file(ws, "image", file, int(n)))
            at = np.flatnonzero(ids == item_id)
            if len(at):
                return np.ascontiguousarray(vecs[int(at[0])][None, :], dtype=np.float32)
    finally:
        con.close()
    raise KeyError(f"item {item_id} has no image vector (not embedded)")
