"""The app's compare view: two named classifications side by side.

    GET  /api/compare?a=&b=&kind=&min_prob=   coverage curves, agreement (overall, per label),
                                               the most frequent label changes
    POST /api/compare/grid                     {"a", "b", "kind", "label", "after"}: a page of
                                               the images they disagree on (tiles)

The numbers are `curate compare`'s own (curate/validate/compare.py over queries/compare.sql),
so the page and `curate compare --out` never disagree; the per-label agreement and the
disagreements are two more macros of the same file. Each request opens the workspace
read-only and closes it (curate/app/data.py says why).
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..classify.registry import NAME_RE
from ..core import sql
from ..core.workspace import Workspace
from ..validate import compare as compare_mod
from . import data
from .selection import MAX_TEXT, BadSelection

PAGE = 100


def _name(value, what: str) -> str:
    if not isinstance(value, str) or NAME_RE.fullmatch(value) is None:
        raise BadSelection(f"{what}: {str(value)[:80]!r} is not a classification's name")
    return value


def _kind(value) -> str:
    if value not in compare_mod.VIEW:
        raise BadSelection(f"kind must be one of {', '.join(compare_mod.VIEW)}, not {str(value)[:40]!r}")
    return value


def summary(ws: Workspace, a: str, b: str, kind: str = "image", min_prob: float = compare_mod.MIN_PROB) -> dict:
    """What the compare view draws above its grid, for the pair (a, b) and one kind."""
    with ws.reading(wait=data.WAIT) as con:
        cmp = compare_mod.compare(con, [a, b], min_prob)
        if kind not in cmp.kinds:
            raise BadSelection(f"kind {kind!r}: not every one of {a}, {b} scored captions")
        agree = next(x for x in cmp.agreement if x.kind == kind)
        per_label = [{"label": label, "images": int(n), "same": int(same), "share": share}
                     for label, n, same, share in con.execute(
                         "SELECT * FROM agreement_per_label_of(?, ?, ?)", [a, b, compare_mod.VIEW[kind]]).fetchall()]
        model = data._model(Workspace.model_identity(con))
    return {
        "a": a, "b": b, "kind": kind, "kinds": cmp.kinds, "min_prob": min_prob, "model": model,
        "classifications": [{"name": c.name, "label_set": c.label_set, "prompts": c.prompts,
                             "logit_scale": c.logit_scale, "images": c.images} for c in cmp.classifications],
        "coverage": {name: [{"threshold": r.threshold, "classified": r.classified, "images": r.images,
                             "share": r.share} for r in rows] for name, rows in cmp.coverage[kind].items()},
        "agreement": {"images": agree.images, "same_top": agree.same_top, "share_same": agree.share_same,
                      "both_classified": agree.both_classified, "same_top_classified": agree.same_top_classified,
                      "share_same_classified": agree.share_same_classified,
                      "changes": [{"from": f, "to": t, "images": n} for f, t, n in agree.changes]},
        "per_label": per_label,
    }


def disagreements(ws: Workspace, a: str, b: str, kind: str, label: str | None, offset: int = 0,
                  n: int = PAGE) -> dict:
    """A page of the images a and b give different top labels (tiles, with both labels)."""
    with ws.reading(wait=data.WAIT) as con:
        for name in (a, b):
            compare_mod._compared(con, name)   # complete and fresh, or a one-line reason
        sql.run(con, "compare")
        rows = con.execute(
            "SELECT d.id, d.label_a, d.prob_a, d.label_b, d.prob_b, i.path, i.caption "
            "FROM (SELECT * FROM disagreements_of(?, ?, ?, from_label := ?) LIMIT ? OFFSET ?) d "
            "JOIN items i ON i.id = d.id ORDER BY least(d.prob_a, d.prob_b) DESC, d.id",
            [a, b, compare_mod.VIEW[kind], label, n, offset]).fetchall()
        total = con.execute("SELECT count(*) FROM disagreements_of(?, ?, ?, from_label := ?)",
                            [a, b, compare_mod.VIEW[kind], label]).fetchall()[0][0]
    tiles = []
    for item_id, la, pa, lb, pb, path, caption in rows:
        t = data._tile(item_id, la, pa, path, caption, None)
        t["other"] = {"name": b, "label": lb, "prob": float(pb)}
        tiles.append(t)
    end = offset + len(rows)
    return {"tiles": tiles, "next": [None, end] if end < total else None, "count": int(total)}


def routes(state, helpers) -> list[Route]:
    """The compare view's endpoints (server.build passes its shared state and helpers)."""
    _route, _ok, _body, _int = helpers.route, helpers.ok, helpers.body, helpers.int

    @_route
    async def compare_summary(request: Request) -> Response:
        q = request.query_params
        a, b = _name(q.get("a"), "a"), _name(q.get("b"), "b")
        if a == b:
            raise BadSelection("choose two different classifications")
        try:
            min_prob = float(q.get("min_prob", compare_mod.MIN_PROB))
        except ValueError:
            raise BadSelection("min_prob must be a number in [0, 1]") from None
        if not 0.0 <= min_prob <= 1.0:
            raise BadSelection("min_prob must be a number in [0, 1]")
        got = await run_in_threadpool(summary, state.ws, a, b, _kind(q.get("kind", "image")), min_prob)
        return _ok(got)

    @_route
    async def compare_grid(request: Request) -> Response:
        body = await _body(request)
        a, b = _name(body.get("a"), "a"), _name(body.get("b"), "b")
        kind = _kind(body.get("kind", "image"))
        label = body.get("label")
        if label is not None and (not isinstance(label, str) or not 0 < len(label) <= MAX_TEXT):
            raise BadSelection("label must be a label's name")
        after = body.get("after")
        offset = 0
        if after is not None:
            if not isinstance(after, list) or len(after) != 2:
                raise BadSelection("after must be [null, offset]")
            offset = max(0, _int(after[1], "after"))
        got = await run_in_threadpool(disagreements, state.ws, a, b, kind, label, offset)
        for t in got["tiles"]:
            t["mark"] = state.marks.of(t["id"], t["label"])
        state.remember(got["tiles"])
        return _ok(got)

    return [Route("/api/compare", compare_summary, methods=["GET"]),
            Route("/api/compare/grid", compare_grid, methods=["POST"])]
