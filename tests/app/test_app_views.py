"""The app's compare and duplicates views over real HTTP: the compare view's numbers are
`curate compare`'s (the same queries/compare.sql), its grid is every image the two
classifications label differently and no other; the duplicates view shows `curate dedup`'s
groups, the representative first, and names the command when dedup never ran."""

from __future__ import annotations

from pathlib import Path

import pytest
from app_support import app_built, copy_of, every_tile, get_json, post, server, sql
from conftest import run_cli

from curate import api
from curate.app.server import AppServer
from curate.core.workspace import Workspace

__all__ = ["app_built", "server"]   # fixtures of app_support: the shared workspace, the module's server


@pytest.fixture(scope="module")
def ws(app_built, tmp_path_factory, tiny_encoder) -> Path:
    """The app's workspace and a third classification, 'raw' (the label names as prompts),
    whose top labels differ from 'natural''s on some images (natural and sharp differ only
    in logit scale: the same top labels)."""
    from curate.classify.run import classify

    ws = copy_of(app_built, tmp_path_factory)
    classify(ws, prompts="raw", encoder=tiny_encoder, logit_scale=30.0, name="raw")
    return ws


def test_compare_numbers_are_curate_compares(server, ws):
    status, got = get_json(server.url, "/api/compare?a=natural&b=sharp&kind=image&min_prob=0.2")
    assert status == 200, got
    cli = api.compare(ws, ["natural", "sharp"], out=None, min_prob=0.2).comparison
    agree = next(a for a in cli.agreement if a.kind == "image")
    g = got["agreement"]
    assert (g["images"], g["same_top"], g["both_classified"], g["same_top_classified"]) == \
        (agree.images, agree.same_top, agree.both_classified, agree.same_top_classified)
    for name in ("natural", "sharp"):
        assert [(r["threshold"], r["classified"], r["images"]) for r in got["coverage"][name]] == \
            [(r.threshold, r.classified, r.images) for r in cli.coverage["image"][name]]
    # per label of A: the images A gives it, and how many of them B gives the same
    truth = dict(((la, (n, s)) for la, n, s in sql(
        ws, 'SELECT x.label, count(*), count(*) FILTER (x.label = y.label) FROM "cls_natural".predictions x '
            'JOIN "cls_sharp".predictions y USING (id) GROUP BY 1')))
    assert got["agreement"]["share_same"] == 1.0     # a logit scale never changes a top label
    assert {r["label"]: (r["images"], r["same"]) for r in got["per_label"]} == truth
    assert got["model"]["random_weights"] is True


def test_the_grid_is_every_disagreement_and_only_those(server, ws):
    want = {i: (a, b) for i, a, b in sql(
        ws, 'SELECT x.id, x.label, y.label FROM "cls_natural".predictions x JOIN "cls_raw".predictions y '
            "USING (id) WHERE x.label <> y.label")}
    assert 0 < len(want) < 20
    tiles = every_tile(server.url, "/api/compare/grid", {"a": "natural", "b": "raw", "kind": "image"})
    assert {t["id"]: (t["label"], t["other"]["label"]) for t in tiles} == want
    assert len(tiles) == len(want)        # each once, across pages
    label = next(iter(want.values()))[0]
    only = every_tile(server.url, "/api/compare/grid", {"a": "natural", "b": "raw", "kind": "image", "label": label})
    assert {t["id"] for t in only} == {i for i, (a, _b) in want.items() if a == label}
    assert get_json(server.url, "/api/compare?a=natural&b=raw")[1]["agreement"]["images"] - \
        get_json(server.url, "/api/compare?a=natural&b=raw")[1]["agreement"]["same_top"] == len(want)
    # pages of one: the cursor walks them all, each once
    from curate.app import compare
    got, offset = [], 0
    while offset is not None:
        page = compare.disagreements(Workspace(ws), "natural", "raw", "image", None, offset, n=1)
        got += [t["id"] for t in page["tiles"]]
        offset = page["next"][1] if page["next"] else None
    assert sorted(got) == sorted(want) and len(got) == len(set(got))


def test_compare_refuses_what_it_cannot_show(server):
    for q, says in (("a=natural&b=natural", "two different"), ("a=natural&b=nope", "nope"),
                    ("a=natural&b=sharp&kind=pixels", "kind must be"), ("a=x%27%3B--&b=sharp", "not a classification"),
                    ("a=natural&b=sharp&min_prob=2", "min_prob")):
        status, got = get_json(server.url, f"/api/compare?{q}")
        assert status in (400, 404) and says in got["error"], (q, got)
    status, got = post(server.url, "/api/compare/grid", {"a": "natural", "b": "sharp", "after": "x"})
    assert status == 400


def test_duplicates_view_before_and_after_dedup(tmp_path_factory, app_built):
    ws = copy_of(app_built, tmp_path_factory)
    srv = AppServer(ws, 0, load_model=False).start()
    try:
        status, got = get_json(srv.url, "/api/duplicates")
        assert status == 200 and got["ran"] is False and got["command"].startswith("curate dedup -w ")
        run_cli("dedup", "-w", ws, "--threshold", "0.5")
        status, got = get_json(srv.url, "/api/duplicates?kind=image")
        assert status == 200 and got["ran"] is True
        groups = {(g, rep, n) for g, rep, n in sql(
            ws, "SELECT group_id, representative, size FROM duplicate_groups WHERE kind = 'image'")}
        assert got["total_groups"] == len(groups) > 0
        seen = []
        after = 0
        while after is not None:
            status, page = get_json(srv.url, f"/api/duplicates?kind=image&after={after}")
            seen += page["groups"]
            after = page["next"]
        assert {(g["group_id"], g["representative"], g["size"]) for g in seen} == groups
        sizes = [g["size"] for g in seen]
        assert sizes == sorted(sizes, reverse=True)             # the largest first
        members = dict(((i, (gid, s)) for i, gid, s in sql(
            ws, "SELECT id, group_id, similarity FROM duplicates WHERE kind = 'image'")))
        for g in seen:
            first = g["members"][0]
            assert first["id"] == g["representative"] and first["representative"] is True
            for t in g["members"]:
                assert members[t["id"]][0] == g["group_id"]
                assert t["similarity"] == pytest.approx(members[t["id"]][1])
            sims = [t["similarity"] for t in g["members"][1:]]
            assert sims == sorted(sims, reverse=True)
        status, got = get_json(srv.url, "/api/duplicates?kind=bogus")
        assert status == 400
    finally:
        srv.stop()
