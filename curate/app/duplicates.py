"""The app's duplicates view: the groups `curate dedup` stored, largest first.

    GET  /api/duplicates?kind=image&after=N   a page of groups: each its representative first,
                                              then its members with their cosine to it

A workspace where dedup never ran says which command makes the groups. The SQL is
queries/app_duplicates.sql over the tables of queries/duplicates.sql.
"""

from __future__ import annotations

import shlex

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..core import sql
from ..core.workspace import Workspace
from . import data
from .selection import BadSelection

KINDS = ("image", "caption-text")
GROUPS = 24          # groups a page
MEMBERS = 12         # members shown a group (the page says how many more)


def groups(ws: Workspace, kind: str = "image", offset: int = 0, n: int = GROUPS) -> dict:
    with ws.reading(wait=data.WAIT) as con:
        model = data._model(Workspace.model_identity(con))
        if not sql.has_relation(con, "duplicates"):
            return {"ran": False, "kind": kind, "model": model,
                    "command": f"curate dedup -w {shlex.quote(str(ws.root))}"
                               + ("" if kind == "image" else f" --kind {kind}")}
        sql.run(con, "app_duplicates")
        totals = dict((k, (int(g), int(i))) for k, g, i in con.execute(
            "SELECT kind, count(DISTINCT group_id), count(*) FROM duplicates GROUP BY kind").fetchall())
        page = con.execute("SELECT * FROM app_duplicate_groups(?) LIMIT ? OFFSET ?", [kind, n, offset]).fetchall()
        members: dict[int, list] = {}
        if page:
            for gid, item_id, rep, sim, path, caption in con.execute(
                    "SELECT * FROM app_group_members(?, ?)", [kind, [int(r[0]) for r in page]]).fetchall():
                members.setdefault(int(gid), []).append((item_id, rep, sim, path, caption))
    out = []
    for gid, rep, size, min_sim in page:
        tiles = []
        for item_id, is_rep, sim, path, caption in members.get(int(gid), [])[:MEMBERS]:
            t = data._tile(item_id, None, None, path, caption, None)
            t |= {"representative": bool(is_rep), "similarity": None if sim is None else float(sim)}
            tiles.append(t)
        out.append({"group_id": int(gid), "representative": int(rep), "size": int(size),
                    "min_similarity": None if min_sim is None else float(min_sim), "members": tiles})
    groups_n, items_n = totals.get(kind, (0, 0))
    end = offset + len(page)
    return {"ran": True, "kind": kind, "model": model, "groups": out, "total_groups": groups_n,
            "items": items_n, "removed": items_n - groups_n, "kinds": {k: v[0] for k, v in totals.items()},
            "next": end if end < groups_n else None,
            "command": f"curate dedup -w {shlex.quote(str(ws.root))}" + ("" if kind == "image" else f" --kind {kind}")}


def routes(state, helpers) -> list[Route]:
    _route, _ok, _int = helpers.route, helpers.ok, helpers.int

    @_route
    async def duplicates(request: Request) -> Response:
        q = request.query_params
        kind = q.get("kind", "image")
        if kind not in KINDS:
            raise BadSelection(f"kind must be one of {', '.join(KINDS)}, not {kind[:40]!r}")
        offset = max(0, _int(q.get("after", "0") or "0", "after"))
        got = await run_in_threadpool(groups, state.ws, kind, offset)
        for g in got.get("groups", []):
            state.remember(g["members"])
        return _ok(got)

    return [Route("/api/duplicates", duplicates, methods=["GET"])]
