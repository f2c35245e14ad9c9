"""Review sets: the study's stratified sample, drawn in SQL and kept in the workspace.

The study validated CLIP without ground truth by taking the 10 most frequent predicted
classes (top-1, no threshold) and 100 random images of each, marked by hand as hit or
miss. `draw` does that for image, caption or ensemble predictions; the statements are
the table macros of `queries/sample_classes.sql` and `queries/sample_items.sql`, which
run as they are in the DuckDB shell.

Several named sets coexist (`review_sets`); the page, the sheet and the report work on
one set, the latest by default.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

import duckdb

from ..classify import registry
from ..classify.state import PREDICTION_VIEWS, require_complete
from ..core import check, sql
from ..core.sql import has_relation
from ..errors import CurateError
from ..select.filter import parse_where, where_clause

# Which view holds each kind of prediction (classify/state.py): a user picks the key.
SOURCES: dict[str, str] = PREDICTION_VIEWS


class SampleError(CurateError, RuntimeError):
    """A review set cannot be drawn or found; the message says what to do."""


@dataclass(frozen=True)
class ReviewSet:
    name: str
    source: str
    top_classes: int
    per_class: int
    seed: int
    items: int
    created_at: datetime | None
    classification: str | None = None   # the named classification it was drawn from
    scope: tuple[tuple[str, str], ...] = ()   # the --where it was drawn under (a random sample of that)
    target_width: float | None = None   # the sequential review's target width (None: a fixed set)


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(sql.text("sample_schema"))


def default_name(source: str, top_classes: int, per_class: int, seed: int,
                 where: tuple[tuple[str, str], ...] = ()) -> str:
    return f"{source}-top{top_classes}x{per_class}-seed{seed}" + "".join(f"-{c}={v}" for c, v in where)


@dataclass(frozen=True)
class SampleSpec:
    """How `curate sample` draws a review set: the `top_classes` most predicted classes of
    `mode`'s predictions (image, caption, ensemble) under `classification` (None: the active
    one), `per_class` images each at random from `seed`, within `where` ("COLUMN=VALUE" strings
    or (column, value) pairs); `target_width`: a sequential review (the page moves on from a
    class once its interval is at most this wide; `per_class` is then the most a class may
    take). Checked when made."""
    top_classes: int = 10
    per_class: int = 100
    seed: int = 0
    mode: str = "image"
    where: tuple[tuple[str, str], ...] = ()
    classification: str | None = None
    target_width: float | None = None

    def __post_init__(self) -> None:
        check.fields(self, top_classes=check.integer(1), per_class=check.integer(1), seed=check.integer(),
                     mode=check.text(), where=check.conditions(), classification=check.text(none=True),
                     target_width=check.number(0, 1, lo_open=True, none=True))
        object.__setattr__(self, "where", tuple(p for w in self.where
                                                for p in (parse_where((w,)) if isinstance(w, str) else (w,))))


def draw(con: duckdb.DuckDBPyConnection, spec: SampleSpec | None = None, *, name: str | None = None,
         replace: bool = False, **fields: object) -> ReviewSet:
    """Draw and store a review set as `spec` says (SampleSpec); the same spec always draws the
    same images. Instead of a spec, its fields as keywords, `source` naming its `mode`:
    `draw(con, source="ensemble", top_classes=2, per_class=3)`.

    Drawing a set that exists with the same parameters is a no-op (so a script can run
    `curate sample` twice). A different set under an existing `name` is refused unless
    `replace`: its marks stay in `judgments` either way, since they judge (image, label)
    pairs, not sets. The spec's `where` draws among the items with those values in those
    columns only (`curate sample --where city=newyork`); its default name says so. Its
    `classification`: the named classification to draw from (default: the active one); the
    set records it. Its `target_width`: a sequential review (the page moves on from a class
    once its interval is this narrow); `per_class` is then the most it may ask per class.
    """
    if spec is None:
        if "source" in fields:
            fields["mode"] = fields.pop("source")
        spec = SampleSpec(**fields)  # type: ignore[arg-type]
    elif fields:
        raise TypeError(f"give a SampleSpec or its fields, not both ({', '.join(fields)})")
    if spec.mode not in SOURCES:
        raise SampleError(f"unknown source {spec.mode!r}: use one of {', '.join(SOURCES)}")
    if spec.target_width is not None and not 0 < spec.target_width < 1:
        raise SampleError(f"--target-width is the width of an interval on a share: between 0 and 1, not "
                          f"{spec.target_width}")
    # the tables and macros live in main: made before the search path points elsewhere
    ensure_schema(con)
    sql.run(con, "sample_classes")
    sql.run(con, "sample_items")
    with registry.selected(con, spec.classification) as chosen:
        if spec.classification is not None and name is None:
            name = _default_name(spec) + f"-{spec.classification}"
        return _draw(con, spec, name, replace, chosen)


def _default_name(spec: SampleSpec) -> str:
    return default_name(spec.mode, spec.top_classes, spec.per_class, spec.seed, spec.where)


def _draw(con: duckdb.DuckDBPyConnection, spec: SampleSpec, name: str | None, replace: bool,
          chosen: str | None) -> ReviewSet:
    source, top_classes, per_class, seed, where, target_width = (spec.mode, spec.top_classes, spec.per_class,
                                                                 spec.seed, spec.where, spec.target_width)
    view = SOURCES[source]
    require_complete(con, needed=False)   # never a review set drawn from half a classification
    if not has_relation(con, view):
        raise SampleError(
            f"the workspace has no `{view}` view yet ({source} predictions): run `curate classify` first"
        )
    name = name or _default_name(spec) + (f"-width{target_width:g}" if target_width is not None else "")
    params = {"set_name": name}
    existing = get_set(con, name) if _exists(con, name) else None
    if existing is not None:
        same = (existing.source, existing.top_classes, existing.per_class, existing.seed,
                existing.classification, existing.target_width) == (source, top_classes, per_class, seed, chosen,
                                                                     target_width)
        if same and not replace:
            return existing
        if not replace:
            raise SampleError(
                f"a review set named {name!r} exists with other parameters "
                f"({existing.source}, top {existing.top_classes} x {existing.per_class}, seed {existing.seed}"
                + (f", classification {existing.classification}" if existing.classification != chosen else "")
                + "); "
                "pick another --name or pass --replace"
            )
    with sql.transaction(con):
        for table in ("review_items", "review_classes"):
            con.execute(f"DELETE FROM main.{table} WHERE set_name = $set_name", params)
        con.execute("DELETE FROM main.review_sets WHERE name = $set_name", params)
        if where:  # the predictions of the items in scope, as a table the macros read by name
            clause, args = where_clause(con, where)
            con.execute(f"CREATE OR REPLACE TEMP TABLE sample_scope AS SELECT p.* FROM {view} p "
                        f"JOIN items i ON i.id = p.id WHERE {clause}", args)
            view = "sample_scope"
        con.execute("INSERT INTO main.review_classes SELECT $set_name, label, rank, frequency"
                    " FROM sample_classes($view, $top_classes)",
                    {**params, "view": view, "top_classes": top_classes})
        con.execute("INSERT INTO main.review_items SELECT * FROM sample_items($view, $set_name, $per_class, $seed)",
                    {**params, "view": view, "per_class": per_class, "seed": seed})
        n = con.execute("SELECT count(*) FROM review_items WHERE set_name = $set_name", params).fetchall()[0][0]
        con.execute(
            "INSERT INTO main.review_sets (name, source, top_classes, per_class, seed, items, classification,"
            " scope, target_width) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [name, source, top_classes, per_class, seed, n, chosen, scope_text(where), target_width],
        )
    if n == 0:
        scope = "".join(f", {c} = {v}" for c, v in where)
        raise SampleError(f"`{SOURCES[source]}`{scope} is empty: nothing to sample")
    return get_set(con, name)


def _exists(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    if not has_relation(con, "review_sets"):
        return False
    return con.execute("SELECT count(*) FROM review_sets WHERE name = ?", [name]).fetchall()[0][0] > 0


def list_sets(con: duckdb.DuckDBPyConnection) -> list[ReviewSet]:
    if not has_relation(con, "review_sets"):
        return []
    rows = con.execute(
        "SELECT name, source, top_classes, per_class, seed, items, created_at, classification, scope, target_width"
        " FROM review_sets ORDER BY created_at, name"
    ).fetchall() if _has_target_width(con) else [
        (*r, None, None) for r in con.execute(   # a workspace not opened for writing since sets had them
            "SELECT name, source, top_classes, per_class, seed, items, created_at, classification FROM review_sets"
            " ORDER BY created_at, name").fetchall()]
    return [ReviewSet(*r[:8], scope_of(r[8]), r[9]) for r in rows]


def _has_target_width(con: duckdb.DuckDBPyConnection) -> bool:
    return bool(con.execute("SELECT count(*) FROM duckdb_columns() WHERE database_name = current_database() AND schema_name = 'main'"
                            " AND table_name = 'review_sets' AND column_name = 'target_width'").fetchall()[0][0])


def scope_text(where: tuple[tuple[str, str], ...]) -> str:
    """A --where as stored in review_sets.scope: JSON [[column, value], ...], sorted."""
    return json.dumps(sorted([c.lower(), v] for c, v in where))


def scope_of(text: str | None) -> tuple[tuple[str, str], ...]:
    return tuple((c, v) for c, v in json.loads(text)) if text else ()


def get_set(con: duckdb.DuckDBPyConnection, name: str | None = None,
            classification: str | None = None) -> ReviewSet:
    """The named set, or the most recently drawn one when `name` is None; with
    `classification`, one drawn from that named classification."""
    sets = list_sets(con)
    if not sets:
        raise SampleError("this workspace has no review set yet: run `curate sample` first")
    if name is None:
        if classification is None:
            return sets[-1]
        mine = [s for s in sets if s.classification == classification]
        if not mine:
            raise SampleError(f"no review set was drawn from the classification {classification!r}: "
                              f"run `curate sample --classification {classification}` first")
        return mine[-1]
    for s in sets:
        if s.name == name:
            if classification is not None and s.classification != classification:
                raise SampleError(f"the review set {name!r} was drawn from the classification "
                                  f"{s.classification or 'of an older curate'!s}, not {classification!r}")
            return s
    raise SampleError(f"no review set named {name!r}; there are: {', '.join(s.name for s in sets)}")


def latest_for_source(con: duckdb.DuckDBPyConnection, source: str) -> ReviewSet | None:
    found = [s for s in list_sets(con) if s.source == source]
    return found[-1] if found else None


def classes(con: duckdb.DuckDBPyConnection, set_name: str) -> list[tuple[str, int, int]]:
    """(label, rank, frequency in the collection) of a set's classes, most frequent first."""
    return [
        (label, int(rank), int(freq))
        for label, rank, freq in con.execute(
            "SELECT label, rank, frequency FROM review_classes WHERE set_name = ? ORDER BY rank",
            [set_name],
        ).fetchall()
    ]
