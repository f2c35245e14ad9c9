"""The app's reads: each request reads the workspace read-only and keeps no connection open.

A DuckDB file has one writer or any number of readers. The app runs for hours beside
`classify`, `dedup`, `report` and the duckdb shell, so it never keeps the file open: a
connection lives for one read and a writer gets the file between two requests.

Opening the file costs ~50 ms and the checks every reader makes as much again, so what the
grid, the sidebar and the search read is kept in memory while the database is unchanged
(snapshot.py: keyed by its generation, read without opening it): the classification's
verdict (`Shown`), each mode's predictions in the grid's order (`Ranked`, a few arrays) and
every item's path and caption (`Texts`). A request whose generation is unchanged opens
nothing; the first one after a write reads them again. What they cannot answer (where
filters, a review set, the duplicates control, rejected items, one item's detail, a workspace
too large to keep) is SQL on a
connection of its own, as before: queries/app_browse.sql (TEMP macros made on each
connection); the rule a grid shows is subset_predictions's (subsets.sql), so the export
writes what the grid shows, and tests/app/test_app_cache.py holds both ways to the same answers.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import duckdb
import numpy as np

from ..classify import calibrated, registry, state
from ..core import sql
from ..core.workspace import ModelIdentity, Workspace
from ..errors import CurateError
from ..select import dedup
from ..select.filter import item_columns, where_clause
from ..validate import sampling
from . import snapshot
from .selection import RELATIONS, BadSelection, Selection
from .snapshot import WAIT

__all__ = ["WAIT"]
PAGE = 100          # tiles a page, at most
# Bytes a prediction takes in memory (Ranked: id, grid order, label, probability twice, by-id
# lookup), and a workspace's text per item at most (Texts): beyond what snapshot.MEMO_BYTES
# holds, pages are read with SQL each time.
RANKED_ROW_BYTES = 44
TEXT_ITEM_BYTES = 32        # ...and an item's text besides its characters (offsets, id)


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
    with ws.reading(wait=WAIT) as con:
        sh = snapshot.peek(ws, snapshot.generation(ws), ("shown", classification))
        if sh is None:
            yield _prepare(con, ws, classification, calibration)
        else:   # this generation's verdict is known: only what the connection itself needs
            registry.select(con, classification)
            sql.run(con, "app_browse")
            source = sh.calibration_source if calibration else None
            if source is not None:
                sql.run(con, "app_calibrated")
            yield Reader(con, sh.classification, sh.settings, source)


def _prepare(con: duckdb.DuckDBPyConnection, ws: Workspace, classification: str | None,
             calibration: bool = True) -> Reader:
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
    return Reader(con, name, st, source)


@dataclass(frozen=True)
class Shown:
    """What every read of a classification checks first, as of one generation of the database."""
    classification: str | None
    settings: dict
    calibration_source: str | None
    items: int                          # items in the workspace (what Ranked and Texts would hold)


def shown(ws: Workspace, classification: str | None = None) -> Shown:
    """The classification selected (None: the active one), complete and fresh, and the mode the
    calibration that applies to it was fitted on; NotReady (one line) when it cannot be shown."""
    def build(con) -> Shown:
        r = _prepare(con, ws, classification)
        n = int(con.execute("SELECT count(*) FROM items").fetchall()[0][0])
        return Shown(r.classification, r.settings, r.calibration_source, n)
    return snapshot.cached(ws, ("shown", classification), build)


def calibration_source(ws: Workspace, classification: str | None = None) -> str | None:
    """The mode the calibration that applies to a classification was fitted on (None: none applies)."""
    return shown(ws, classification).calibration_source


@dataclass(eq=False)
class Ranked:
    """One mode's predictions in memory, in the grid's order (prob descending, then id): app_view
    and app_label_counts answered by binary searches, as of one generation of the database."""
    labels: list[str]                   # label_idx order; `code` is a position in it
    ids: np.ndarray                     # grid order
    neg: np.ndarray                     # -prob, grid order (ascending: searchsorted finds a threshold)
    code: np.ndarray                    # the label's position, grid order
    by_label: np.ndarray                # each label's probabilities, ascending, label after label
    starts: np.ndarray                  # where each label's run starts in by_label (len(labels) + 1)
    sorted_ids: np.ndarray              # ids ascending ...
    at: np.ndarray                      # ... and each one's position in the grid order
    index: dict = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.ids, self.neg, self.code, self.by_label, self.starts,
                                      self.sorted_ids, self.at))

    @classmethod
    def read(cls, con: duckdb.DuckDBPyConnection, relation: str) -> Ranked | None:
        """From app_ranked (queries/app_browse.sql); None when a row has no label of `labels`
        or no probability, or a NaN one: what only the SQL answers exactly."""
        labels = [x[0] for x in con.execute("SELECT label FROM labels ORDER BY label_idx").fetchall()]
        got = con.execute("SELECT * FROM app_ranked(?)", [relation]).fetchnumpy()
        ids, code, prob = got["id"], got["label"], got["prob"]
        if any(np.ma.is_masked(a) for a in (ids, code, prob)):
            return None
        ids = np.asarray(ids, dtype=np.int64)
        code = np.asarray(code, dtype=np.int32)
        prob = np.asarray(prob, dtype=np.float64)
        neg = -prob
        if np.isnan(prob).any() or (len(neg) > 1 and (np.diff(neg) < 0).any()):
            return None
        order = np.lexsort((prob, code))
        by_label = prob[order]
        starts = np.searchsorted(code[order], np.arange(len(labels) + 1)).astype(np.int64)
        sorted_order = np.argsort(ids, kind="stable")
        return cls(labels, ids, neg, code, by_label, starts, ids[sorted_order], sorted_order.astype(np.int64),
                   {label: i for i, label in enumerate(labels)})

    def codes(self, wanted: tuple[str, ...]) -> np.ndarray | None:
        """The positions of the wanted labels (None: any label)."""
        if not wanted:
            return None
        return np.array([self.index[x] for x in wanted if x in self.index], dtype=np.int32)

    def end(self, floor: float) -> int:
        """How many rows have prob >= floor (a prefix of the grid order)."""
        return int(np.searchsorted(self.neg, -floor, side="right"))

    def page(self, floor: float, wanted: np.ndarray | None, after: tuple[float, int] | None, n: int) -> np.ndarray:
        """The grid positions of one page: prob >= floor, label wanted, after the keyset (prob, id)."""
        end, start = self.end(floor), 0
        if after is not None:
            p, last = float(after[0]), int(after[1])
            lo = int(np.searchsorted(self.neg, -p, side="left"))
            hi = int(np.searchsorted(self.neg, -p, side="right"))
            start = lo + int(np.searchsorted(self.ids[lo:hi], last, side="right"))
        if wanted is None:
            return np.arange(start, max(start, min(end, start + n)))
        out, a, step = [], start, 4096
        while a < end and sum(len(x) for x in out) < n:
            b = min(end, a + step)
            out.append(a + np.flatnonzero(np.isin(self.code[a:b], wanted)))
            a, step = b, step * 4
        return np.concatenate(out)[:n] if out else np.zeros(0, np.int64)

    def label_counts(self, floor: float) -> list[tuple[str, int, int]]:
        """app_label_counts: (label, kept at floor, items), kept descending, then items, then label_idx."""
        total = np.diff(self.starts)
        kept = np.array([hi - (lo + int(np.searchsorted(self.by_label[lo:hi], floor, side="left")))
                         for lo, hi in zip(self.starts[:-1], self.starts[1:], strict=True)], dtype=np.int64)
        order = np.lexsort((np.arange(len(self.labels)), -total, -kept))
        return [(self.labels[i], int(kept[i]), int(total[i])) for i in order]

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """The grid positions of these ids (-1: not in this relation)."""
        ids = np.asarray(ids, dtype=np.int64)
        pos = np.searchsorted(self.sorted_ids, ids)
        pos = np.minimum(pos, max(len(self.sorted_ids) - 1, 0))
        found = (self.sorted_ids[pos] == ids) if len(self.sorted_ids) else np.zeros(len(ids), bool)
        return np.where(found, self.at[pos] if len(self.at) else -1, -1)


@dataclass(eq=False)
class Texts:
    """Every item's path and caption, by id, as two long strings and their offsets."""
    ids: np.ndarray
    path_at: np.ndarray             # offsets into paths (len(ids) + 1)
    path_null: np.ndarray
    caption_at: np.ndarray
    prefix: str                     # what every path starts with (the collection's folder), kept once
    paths: str                      # the paths, each less the prefix
    captions: str

    @property
    def nbytes(self) -> int:
        import sys

        return (self.ids.nbytes + self.path_at.nbytes + self.path_null.nbytes + self.caption_at.nbytes
                + sys.getsizeof(self.paths) + sys.getsizeof(self.captions))

    @classmethod
    def read(cls, con: duckdb.DuckDBPyConnection, prefix: str) -> Texts:
        got = con.execute("SELECT * FROM app_text_lengths(?)", [len(prefix)]).fetchnumpy()
        paths, captions = con.execute("SELECT * FROM app_texts(?)", [len(prefix)]).fetchall()[0]
        plen = np.asarray(got["path_len"], dtype=np.int64)
        clen = np.asarray(got["caption_len"], dtype=np.int64)
        return cls(np.asarray(got["id"], dtype=np.int64), _offsets(plen), plen < 0, _offsets(clen), prefix,
                   paths, captions)

    def of(self, ids: np.ndarray) -> list[tuple[str | None, str]]:
        """(path, caption) of each id (KeyError: an id the workspace does not have)."""
        pos = np.searchsorted(self.ids, ids)
        out = []
        for i, at in zip(ids, pos, strict=True):
            if at >= len(self.ids) or self.ids[at] != i:
                raise KeyError(f"no item {int(i)} in this workspace")
            path = None if self.path_null[at] else self.prefix + self.paths[self.path_at[at]:self.path_at[at + 1]]
            out.append((path, self.captions[self.caption_at[at]:self.caption_at[at + 1]]))
        return out


@dataclass(eq=False)
class Groups:
    """The image duplicate groups `curate dedup` stored, as of one generation (app_groups,
    queries/app_dedup.sql): what the duplicates control needs besides a mode's Ranked."""
    ids: np.ndarray                 # ascending
    group: np.ndarray
    rep: np.ndarray                 # the group's representative
    sim: np.ndarray                 # cosine to the representative (NaN: none)
    size: np.ndarray                # the group's size

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.ids, self.group, self.rep, self.sim, self.size))

    @classmethod
    def read(cls, con: duckdb.DuckDBPyConnection) -> Groups:
        got = con.execute("SELECT * FROM app_groups()").fetchnumpy()
        return cls(np.asarray(got["id"], dtype=np.int64), np.asarray(got["group_id"], dtype=np.int64),
                   np.asarray(got["representative"], dtype=bool), np.asarray(got["similarity"], dtype=np.float64),
                   np.asarray(got["size"], dtype=np.int64))

    def of(self, item_id: int) -> tuple:
        """(group, representative, cosine, size) of an item, as the SQL rows give them (Nones: in no group)."""
        at = int(np.searchsorted(self.ids, item_id))
        if at >= len(self.ids) or self.ids[at] != item_id:
            return None, None, None, None
        sim = float(self.sim[at])
        return int(self.group[at]), bool(self.rep[at]), None if np.isnan(sim) else sim, int(self.size[at])

    def selected(self, ranked: Ranked, floor: float, wanted: np.ndarray | None) -> tuple[np.ndarray, ...]:
        """The selection's rows in a group: (grid positions, groups, representative flags)."""
        pos = ranked.lookup(self.ids)
        ok = (pos >= 0) & (pos < ranked.end(floor))
        if wanted is not None:
            ok[ok] &= np.isin(ranked.code[pos[ok]], wanted)
        k = np.flatnonzero(ok)
        return pos[k], self.group[k], self.rep[k]

    def dropped(self, ranked: Ranked, floor: float, wanted: np.ndarray | None) -> np.ndarray:
        """The grid positions `filter --dedup` leaves out of the selection (sorted): of each group
        all rows but its representative, or (not selected) its first row in the grid's order (the
        most probable, then the smallest id): dedup_dropped's rule (queries/dedup_keep.sql)."""
        pos, grp, rep = self.selected(ranked, floor, wanted)
        order = np.lexsort((np.where(rep, -1, pos), grp))
        return np.sort(pos[order][~_group_starts(grp[order])])

    def in_order(self, ranked: Ranked, floor: float, wanted: np.ndarray | None) -> np.ndarray:
        """The selection's rows in a group as 'groups' shows them (app_in_groups): the groups by
        their most probable row, then group id; in a group its representative first, then the grid's order."""
        pos, grp, rep = self.selected(ranked, floor, wanted)
        if len(pos) == 0:
            return pos
        o = np.lexsort((pos, grp))
        first = _group_starts(grp[o])
        best = np.empty(len(pos), dtype=np.int64)
        best[o] = pos[o][first][np.cumsum(first) - 1]       # each row's group's smallest position
        return pos[np.lexsort((pos, ~rep, grp, ranked.neg[best]))]

    def label_counts(self, ranked: Ranked, floor: float, how: str) -> list[tuple[str, int, int]]:
        """app_dedup_label_counts: per label, at floor and at 0, the items selecting that label alone shows."""
        n = len(ranked.labels)
        base = {label: (k, t) for label, k, t in ranked.label_counts(floor)}
        cols = []
        for f in (floor, 0.0):
            pos, grp, _ = self.selected(ranked, f, None)
            code = ranked.code[pos]
            rows = np.bincount(code, minlength=n)
            if how == "groups":
                cols.append(rows)
                continue
            width = int(grp.max()) + 1 if len(grp) else 1     # (label, group) pairs as one integer each
            unique = np.bincount(np.unique(code.astype(np.int64) * width + grp) // width, minlength=n)
            whole = np.array([base[label][0 if f == floor else 1] for label in ranked.labels], dtype=np.int64)
            cols.append(whole - rows + unique)
        kept, items = cols
        order = np.lexsort((np.arange(n), -items, -kept))
        return [(ranked.labels[i], int(kept[i]), int(items[i])) for i in order]


def _group_starts(g: np.ndarray) -> np.ndarray:
    """True at each row that opens a run of equal group ids (`g` sorted by group)."""
    first = np.ones(len(g), dtype=bool)
    first[1:] = g[1:] != g[:-1]
    return first


def _dedup_macros(con: duckdb.DuckDBPyConnection) -> str | None:
    """The duplicates control's macros on this connection (queries/dedup_keep.sql,
    app_dedup.sql); or, making none, why there are none: dedup never stored image groups."""
    why = dedup.not_found(con)
    if why is None:
        sql.run(con, "dedup_keep")
        sql.run(con, "app_dedup")
    return why


def _groups(ws: Workspace) -> Groups:
    """The image groups kept for this generation; BadSelection when dedup never stored any."""
    def build(con) -> Groups | str:
        why = _dedup_macros(con)
        return why if why is not None else Groups.read(con)
    got = snapshot.cached(ws, ("groups",), build)
    if isinstance(got, str):
        raise BadSelection(f"duplicates: {got}")
    return got


def _skipping(ranked: Ranked, floor: float, wanted: np.ndarray | None, after: tuple[float, int] | None, n: int,
              drop: np.ndarray) -> np.ndarray:
    """Ranked.page less the positions in `drop` (sorted): up to n positions after the cursor."""
    out: list[np.ndarray] = []
    got_n = 0
    while got_n < n:
        at = ranked.page(floor, wanted, after, n)
        keep = at[~np.isin(at, drop)]
        out.append(keep)
        got_n += len(keep)
        if len(at) < n:
            break
        last = int(at[-1])
        after = (-float(ranked.neg[last]), int(ranked.ids[last]))
    return np.concatenate(out)[:n] if out else np.zeros(0, np.int64)


def _offsets(lengths: np.ndarray) -> np.ndarray:
    out = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(np.maximum(lengths, 0), out=out[1:])
    return out


def _kept(ws: Workspace, sel: Selection) -> tuple[Ranked, Shown] | None:
    """The selection's predictions kept in memory (and the verdict they were read under); None:
    this selection is read with SQL (where filters, rejected items, a workspace too large to
    keep, an odd row)."""
    if sel.where or sel.status != "embedded" or sel.review_set is not None:
        return None
    sh = shown(ws, sel.classification)
    _check_mode(sh, sel)
    if sh.items * RANKED_ROW_BYTES > snapshot.MEMO_BYTES // 2:
        return None

    # keyed by the classification shown, not as asked: the page names the active one that the
    # app's first reads asked for as None, and both are one set of predictions (1M: 2.6 s to read again)
    def build(con):
        _prepare(con, ws, sh.classification, calibration=sel.mode == "calibrated")
        return Ranked.read(con, sel.relation)
    ranked = snapshot.cached(ws, ("ranked", sh.classification, sel.relation), build)
    if ranked is None:
        return None
    return ranked, sh


def texts(ws: Workspace, sh: Shown) -> Texts | None:
    """Every item's path and caption (None: too many to keep: pages read theirs with SQL)."""
    def build(con) -> Texts | None:
        sql.run(con, "app_browse")
        first, last, chars, n = con.execute("SELECT min(path), max(path), coalesce(sum(length(path)), 0) + "
                                            "coalesce(sum(length(caption)), 0), count(path) FROM items").fetchall()[0]
        # the common prefix of the least and the greatest path is every path's
        prefix = os.path.commonprefix([first, last]) if first is not None else ""
        if int(chars) - n * len(prefix) + sh.items * TEXT_ITEM_BYTES > snapshot.MEMO_BYTES // 4:
            return None
        return Texts.read(con, prefix)
    return snapshot.cached(ws, ("texts",), build)


def _tiles(ws: Workspace, rows: list[tuple], kept_texts: Texts | None) -> list[tuple]:
    """(id, label, prob) rows with their path and caption: (id, label, prob, path, caption)."""
    if not rows:
        return []
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    if kept_texts is not None:
        got = kept_texts.of(ids)
    else:
        with ws.reading(wait=WAIT) as con:
            by_id = {int(i): (p, c) for i, p, c in con.execute(
                "SELECT id, path, caption FROM items WHERE id IN (SELECT unnest(?::BIGINT[]))",
                [ids.tolist()]).fetchall()}
        got = [by_id[int(i)] for i in ids]
    return [(*r, p, c) for r, (p, c) in zip(rows, got, strict=True)]


def _check_mode(r: Reader | Shown, sel: Selection) -> None:
    if sel.mode == "calibrated" and r.calibration_source is None:
        raise BadSelection("no calibration applies to this classification: mark a review set drawn from it "
                           "and run `curate report` to fit one")


def _where(r: Reader, sel: Selection) -> tuple[str, list]:
    """' AND p.id IN (<items passing the where filters>)' (and ' AND p.id IN (<the review set's
    items>)') and their parameters ('' without filters).

    A semi-join on ids: the grid's top-N runs over ids and probabilities alone, and only the
    page's rows are joined to items for their path and caption."""
    extra, params = "", []
    if sel.where:
        clause, params = where_clause(r.con, sel.where)
        extra = f" AND p.id IN (SELECT i.id FROM items i WHERE {clause})"
    if sel.review_set is not None:
        if sel.review_set not in {s.name for s in sampling.list_sets(r.con)}:
            raise BadSelection(f"no review set named {sel.review_set[:80]!r} in this workspace "
                               "(`curate sample --list` shows them)")
        sql.run(r.con, "app_review_set")
        extra += " AND p.id IN (SELECT id FROM app_review_set(?))"
        params = [*params, sel.review_set]
    return extra, params


def _deduped(r: Reader, sel: Selection, floor: float, labels: tuple[str, ...]) -> None:
    """The duplicates control: its macros (queries/dedup_keep.sql, app_dedup.sql) and the TEMP
    table app_kept, the rows app_view keeps at `floor` of `labels` that pass the where filters:
    what `curate filter`'s table kept holds before --dedup. BadSelection when dedup never ran."""
    why = _dedup_macros(r.con)
    if why is not None:
        raise BadSelection(f"duplicates: {why}")
    extra, params = _where(r, sel)
    r.con.execute("CREATE OR REPLACE TEMP TABLE app_kept AS SELECT p.id, p.label, p.prob "
                  f"FROM app_view(?, ?, ?) p WHERE true{extra}", [sel.relation, floor, list(labels), *params])


def _grouped(row: tuple) -> dict:
    """A tile's duplicate group under the duplicates control (None: in no group)."""
    gid, rep, sim, size = row
    if gid is None:
        return {"group": None}
    return {"group": {"id": int(gid), "representative": bool(rep), "similarity": None if sim is None else float(sim),
                      "size": int(size)}}


def overview(ws: Workspace, classification: str | None = None) -> dict:
    """What the page draws first: the model (random weights or not), the classifications, the
    modes this one has, its labels, the items by status, the columns a filter can name."""
    return dict(snapshot.cached(ws, ("overview", classification),
                                lambda con: _overview(_prepare(con, ws, classification), ws)))


def _overview(r: Reader, ws: Workspace) -> dict:
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
    sets = [{"name": s.name, "items": int(s.items or 0), "source": s.source, "classification": s.classification}
            for s in sampling.list_sets(con)]
    why = dedup.not_found(con)
    groups, grouped = (0, 0) if why is not None else con.execute(
        "SELECT count(DISTINCT group_id), count(*) FROM duplicates WHERE kind = 'image'").fetchall()[0]
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
        "review_sets": sets,      # the browse grid's review set filter (and the command that draws one)
        "sample_command": f"curate sample -w {shlex.quote(str(ws.root))}",
        # the browse grid's duplicates control: image groups `curate dedup` stored, or why none
        "duplicates": {"found": why is None, "why": why, "groups": int(groups), "items": int(grouped),
                       "command": f"curate dedup -w {shlex.quote(str(ws.root))}"},
    }


def _model(ident: ModelIdentity | None) -> dict:
    if ident is None:
        return {"model": None, "pretrained": None, "random_weights": False}
    return {"model": ident.model, "pretrained": ident.pretrained, "random_weights": bool(ident.random_weights)}


def page(ws: Workspace, sel: Selection, after: tuple[float, int] | None = None, n: int = PAGE) -> dict:
    """One page of the grid, the most probable first (then by id): `after` is the last tile's
    (prob, id) of the page before. Rejected items come by id with their reason."""
    n = max(1, min(int(n), PAGE))
    kept = _kept(ws, sel)
    if kept is not None:
        ranked, kept_texts = kept[0], texts(ws, kept[1])
        wanted = ranked.codes(sel.labels)
        groups = None if sel.duplicates == "all" else _groups(ws)
        start = 0
        if groups is None:
            at = ranked.page(sel.floor, wanted, after, n)
        elif sel.duplicates == "groups":
            start = 0 if after is None else max(0, int(after[1]))
            at = groups.in_order(ranked, sel.floor, wanted)[start:start + n]
        else:
            at = _skipping(ranked, sel.floor, wanted, after, n, groups.dropped(ranked, sel.floor, wanted))
        rows = [(int(ranked.ids[i]), ranked.labels[ranked.code[i]], -float(ranked.neg[i])) for i in at]
        tiles = [_tile(i, label, prob, path, caption, None)
                 for i, label, prob, path, caption in _tiles(ws, rows, kept_texts)]
        if groups is not None:
            tiles = [t | _grouped(groups.of(t["id"])) for t in tiles]
        nxt = None
        if len(rows) == n:
            nxt = [None, start + n] if sel.duplicates == "groups" else [rows[-1][2], rows[-1][0]]
        return {"tiles": tiles, "next": nxt}
    if sel.duplicates != "all":
        return _dedup_page(ws, sel, after, n)
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


def _dedup_page(ws: Workspace, sel: Selection, after: tuple[float, int] | None, n: int) -> dict:
    """A page under the duplicates control: 'representatives' in the grid's order (keyset on
    (prob, id)), 'groups' group by group (keyset on the row's position, app_in_groups)."""
    with reading(ws, sel.classification, calibration=sel.mode == "calibrated") as r:
        _check_mode(r, sel)
        _deduped(r, sel, sel.floor, sel.labels)
        cols = "p.id, p.label, p.prob, i.path, i.caption, p.group_id, p.representative, p.similarity, p.group_size"
        if sel.duplicates == "groups":
            rows = r.con.execute(
                f"SELECT {cols}, p.pos FROM app_in_groups('app_kept') p JOIN items i ON i.id = p.id "
                "WHERE p.pos > ? ORDER BY p.pos LIMIT ?", [0 if after is None else int(after[1]), n]).fetchall()
        else:
            keyset = "" if after is None else " AND (p.prob < ? OR (p.prob = ? AND p.id > ?))"
            kp = [] if after is None else [float(after[0]), float(after[0]), int(after[1])]
            rows = r.con.execute(
                f"SELECT {cols} FROM app_deduped('app_kept', 'representatives') p JOIN items i ON i.id = p.id "
                f"WHERE true{keyset} ORDER BY p.prob DESC, p.id LIMIT ?", [*kp, n]).fetchall()
    tiles = [_tile(*row[:5], None) | _grouped(row[5:9]) for row in rows]
    nxt = None
    if len(rows) == n:
        nxt = [None, rows[-1][9]] if sel.duplicates == "groups" else [rows[-1][2], rows[-1][0]]
    return {"tiles": tiles, "next": nxt}


def _tile(item_id, label, prob, path, caption, reason, status: str = "embedded") -> dict:
    return {"id": int(item_id), "label": label, "prob": None if prob is None else float(prob),
            "path": path, "name": None if path is None else path.rsplit("/", 1)[-1], "caption": caption or "",
            "status": status, "reason": reason}


def count(ws: Workspace, sel: Selection) -> int:
    """How many items the selection holds (what the export writes)."""
    kept = _kept(ws, sel)
    if kept is not None:
        ranked = kept[0]
        if sel.duplicates != "all":
            groups, codes = _groups(ws), ranked.codes(sel.labels)
            if sel.duplicates == "groups":
                return len(groups.selected(ranked, sel.floor, codes)[0])
            dropped = len(groups.dropped(ranked, sel.floor, codes))
        else:
            dropped = 0
        wanted = set(sel.labels)
        return sum(k for label, k, _ in ranked.label_counts(sel.floor) if not wanted or label in wanted) - dropped
    with reading(ws, sel.classification, calibration=sel.mode == "calibrated") as r:
        if sel.duplicates != "all":
            _check_mode(r, sel)
            _deduped(r, sel, sel.floor, sel.labels)
            return int(r.con.execute("SELECT count(*) FROM app_deduped('app_kept', ?)",
                                     [sel.duplicates]).fetchall()[0][0])
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
    kept = _kept(ws, sel)
    if kept is not None:
        if sel.duplicates == "all":
            return _counted(kept[0].label_counts(sel.floor), sel)
        rows = _groups(ws).label_counts(kept[0], sel.floor, sel.duplicates)
        return {**_counted(rows, sel), "count": count(ws, sel)}
    with reading(ws, sel.classification, calibration=sel.mode == "calibrated") as r:
        _check_mode(r, sel)
        if sel.duplicates != "all":   # each label as selecting it alone would show it
            _deduped(r, sel, 0.0, ())
            rows = r.con.execute("SELECT * FROM app_dedup_label_counts('app_kept', ?, ?)",
                                 [sel.floor, sel.duplicates]).fetchall()
            n = r.con.execute("SELECT n FROM app_dedup_count('app_kept', ?, ?, ?)",
                              [sel.floor, list(sel.labels), sel.duplicates]).fetchall()[0][0]
            return {**_counted(rows, sel), "count": int(n)}
        extra, params = _where(r, sel)
        if extra:
            rows = r.con.execute(
                "SELECT l.label, count(p.id) FILTER (p.prob >= ?), count(p.id) FROM labels l "
                "LEFT JOIN (SELECT p.* FROM query_table(?) p WHERE true"
                f"{extra}) p ON p.label = l.label GROUP BY l.label, l.label_idx "
                "ORDER BY 2 DESC, 3 DESC, l.label_idx", [sel.floor, sel.relation, *params]).fetchall()
        else:
            rows = r.con.execute("SELECT * FROM app_label_counts(?, ?)", [sel.relation, sel.floor]).fetchall()
        return _counted(rows, sel)


def _counted(rows: list[tuple], sel: Selection) -> dict:
    wanted = set(sel.labels)
    total = sum(k for label, k, _ in rows if not wanted or label in wanted)
    return {"labels": [{"label": label, "kept": int(k), "items": int(n)} for label, k, n in rows],
            "count": int(total)}


def hits_page(ws: Workspace, sel: Selection, ids: np.ndarray, scores: np.ndarray, offset: int = 0,
              n: int = PAGE) -> dict:
    """Search hits (ids by rank, their cosine) that pass the selection's filters, from `offset`."""
    n = max(1, min(int(n), PAGE))
    offset = max(0, int(offset))
    kept = _kept(ws, sel)
    if kept is not None:
        ranked, kept_texts = kept[0], texts(ws, kept[1])
        ids = np.asarray(ids, dtype=np.int64)
        at = ranked.lookup(ids)
        ok = at >= 0
        wanted = ranked.codes(sel.labels)
        groups = None if sel.duplicates == "all" else _groups(ws)
        ok[ok] &= -ranked.neg[at[ok]] >= sel.floor
        if wanted is not None:
            ok[ok] &= np.isin(ranked.code[at[ok]], wanted)
        if sel.duplicates == "representatives":
            ok[ok] &= ~np.isin(at[ok], groups.dropped(ranked, sel.floor, wanted))
        elif sel.duplicates == "groups":
            ok[ok] &= np.isin(ids[ok], groups.ids)
        ranks = np.flatnonzero(ok)
        rows = [(int(ids[k]), ranked.labels[ranked.code[at[k]]], -float(ranked.neg[at[k]]))
                for k in ranks[offset:offset + n]]
        tiles = []
        for k, (item_id, label, prob, path, caption) in zip(ranks[offset:offset + n], _tiles(ws, rows, kept_texts),
                                                            strict=True):
            tiles.append(_tile(item_id, label, prob, path, caption, None)
                         | {"score": float(scores[k]), "rank": int(k) + 1})
        if groups is not None:   # a hit says its group as the grid's tile does
            tiles = [t | _grouped(groups.of(t["id"])) for t in tiles]
        end = offset + len(rows)
        return {"tiles": tiles, "next": [None, end] if end < len(ranks) else None, "count": len(ranks),
                "searched": len(ids)}
    with reading(ws, sel.classification, calibration=sel.mode == "calibrated") as r:
        _check_mode(r, sel)
        grouped = sel.duplicates != "all"
        if grouped:   # the hits among what the grid shows: app_kept, less what the control hides
            _deduped(r, sel, sel.floor, sel.labels)
            source, sparams, extra, params = "app_deduped('app_kept', ?)", [sel.duplicates], "", []
        else:
            source, sparams = "app_view(?, ?, ?)", [sel.relation, sel.floor, list(sel.labels)]
            extra, params = _where(r, sel)
        group_cols = ", p.group_id, p.representative, p.similarity, p.group_size" if grouped else ""
        r.con.register("app_hits", {"id": np.asarray(ids, dtype=np.int64),
                                    "score": np.asarray(scores, dtype=np.float64),
                                    "rank": np.arange(1, len(ids) + 1, dtype=np.int64)})
        try:
            rows = r.con.execute(
                f"SELECT p.id, p.label, p.prob, i.path, i.caption, h.score, h.rank{group_cols} FROM app_hits h "
                f"JOIN {source} p ON p.id = h.id JOIN items i ON i.id = h.id "
                f"WHERE true{extra} ORDER BY h.rank LIMIT ? OFFSET ?",
                [*sparams, *params, n, offset]).fetchall()
            passing = r.con.execute(
                f"SELECT count(*) FROM app_hits h JOIN {source} p ON p.id = h.id "
                f"WHERE true{extra}", [*sparams, *params]).fetchall()[0][0]
        finally:
            r.con.unregister("app_hits")
        tiles = []
        for item_id, label, prob, path, caption, score, rank, *group in rows:
            t = _tile(item_id, label, prob, path, caption, None)
            t |= {"score": float(score), "rank": int(rank)}
            if grouped:
                t |= _grouped(tuple(group))
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
    with ws.reading(wait=WAIT) as con:
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


def vector_of(ws: Workspace, item_id: int) -> np.ndarray:
    """The stored image vector of one item (1, d), from its shard (memory-mapped)."""
    at = _vectors(ws).get(item_id)
    if at is None:
        raise KeyError(f"item {item_id} has no image vector (not embedded)")
    return at


@dataclass(eq=False)
class Vectors:
    """The image shards' ids (in memory) and vectors (memory-mapped), as recorded in one generation."""
    shards: list[tuple[np.ndarray, np.ndarray]]

    @property
    def nbytes(self) -> int:
        return sum(ids.nbytes for ids, _ in self.shards)

    def get(self, item_id: int) -> np.ndarray | None:
        for ids, vecs in self.shards:
            at = int(np.searchsorted(ids, item_id))
            if at < len(ids) and ids[at] == item_id:
                return np.ascontiguousarray(vecs[at][None, :], dtype=np.float32)
        return None


def _vectors(ws: Workspace) -> Vectors:
    from ..core import store

    def build(con) -> Vectors:
        shards = []
        for file, n in con.execute("SELECT file, rows FROM shards WHERE kind = 'image' ORDER BY part").fetchall():
            ids, vecs = store.open_shard(store.shard_file(ws, "image", file, int(n)))
            order = np.argsort(ids, kind="stable")
            sorted_ids = ids[order]
            # a shard's ids ascend as build-index writes them; one that does not is read through its order
            shards.append((sorted_ids, vecs if np.array_equal(order, np.arange(len(ids))) else vecs[order]))
        return Vectors(shards)
    return snapshot.cached(ws, ("image_vectors",), build)
