"""The browse grid's duplicates control and review set filter over real HTTP (and in a real
headless Chromium), on a real workspace that the real `curate dedup` grouped: "representatives
only" is what `curate filter --dedup` writes (same rows, same counts, and the command shown
writes the same file as the export button); "only items in groups" is every selected item of
an image group, group by group, and says that no `curate filter` command writes it; before
dedup the control says which command finds the groups. A review set shows its images and
names `curate review --out` instead of a filter command. The references are computed here in
Python from the stored predictions, groups and review items."""

from __future__ import annotations

import csv
import shlex
import tempfile
from pathlib import Path

import duckdb
import numpy as np
import pytest
from app_support import app_built, copy_of, get_json, grid_tiles, post, server, sql, ws
from browser_support import launch, needs_chromium
from conftest import run_cli

from curate.app import data
from curate.app.selection import Selection
from curate.app.server import AppServer

__all__ = ["app_built", "server", "ws"]   # fixtures of app_support: the shared workspace, the module's copy and its server



def _threshold(ws: Path) -> float:
    """A cosine at which the stored image vectors fall into several groups (one of three or more)
    and some items into none: the tiny random model puts every image near every other (cosines
    0.9-1), so the threshold is read from the vectors, between two of their pairs' cosines."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    from curate.core import store
    from curate.core.workspace import Workspace

    with Workspace(ws).reading() as con:
        _, vecs = store.load_all(Workspace(ws), con, "image")
    cos = vecs @ vecs.T
    pairs = np.sort(cos[np.triu_indices(len(vecs), 1)])[::-1]
    for hi, lo in zip(pairs[:-1], pairs[1:], strict=True):
        t = float(hi + lo) / 2
        if hi - lo < 1e-4:
            continue
        _, comp = connected_components(csr_matrix(cos >= t))
        sizes = np.bincount(comp)
        if (sizes > 1).sum() >= 2 and sizes.max() >= 3 and (sizes == 1).sum() >= 2:
            return t
    raise AssertionError("no cosine splits the tiny model's images into several groups")


@pytest.fixture(scope="module")
def deduped(server, ws):
    """The same server after `curate dedup` ran beside it (the app sees the new groups)."""
    run_cli("dedup", "-w", ws, "--threshold", f"{_threshold(ws):.6f}")
    return server


def _rows(ws: Path, selection: dict) -> list[tuple[int, str, float]]:
    """The selection's (id, label, prob), before any duplicates rule: the classification's own view."""
    view = {"image": "predictions", "ensemble": "ensemble"}[selection.get("mode", "image")]
    rows = sql(ws, f'SELECT id, label, prob FROM "cls_{selection.get("classification", "sharp")}".{view} '
                   "WHERE prob >= ?", [selection.get("min_prob", 0.0)])
    wanted = set(selection.get("labels", []))
    return [r for r in rows if not wanted or r[1] in wanted]


def _groups(ws: Path) -> dict[int, tuple[int, int]]:
    """item id -> (its image group, the group's representative)."""
    return {i: (g, rep) for i, g, rep in sql(ws, "SELECT id, group_id, representative FROM duplicates "
                                                 "WHERE kind = 'image'")}


def _representatives(rows, groups) -> set[int]:
    """filter --dedup's rule, written out: of each group the selection meets, its representative
    if selected, else its selected member of highest prob, then smallest id; every other row."""
    best: dict[int, tuple] = {}
    keep = set()
    for i, _label, p in rows:
        if i not in groups:
            keep.add(i)
            continue
        g, rep = groups[i]
        key = (i != rep, -p, i)
        if g not in best or key < best[g]:
            best[g] = key
    return keep | {key[2] for key in best.values()}


def test_before_dedup_the_control_says_which_command_finds_the_groups(server, ws):
    status, o = get_json(server.url, "/api/overview")
    assert status == 200
    d = o["duplicates"]
    assert d["found"] is False and "curate dedup" in d["why"] and d["command"] == f"curate dedup -w {shlex.quote(str(ws))}"
    for dup in ("representatives", "groups"):
        status, got = post(server.url, "/api/grid", {"selection": {"duplicates": dup}})
        assert status == 400 and "curate dedup" in got["error"]
    status, got = post(server.url, "/api/grid", {"selection": {"duplicates": "some"}})
    assert status == 400 and "duplicates must be one of" in got["error"]
    status, got = post(server.url, "/api/grid", {"selection": {"duplicates": "groups", "status": "rejected"}})
    assert status == 400 and "embedded" in got["error"]


@pytest.mark.parametrize("selection", [
    {"min_prob": 0.0},
    {"min_prob": 0.3, "mode": "ensemble"},
    {"min_prob": 0.0, "classification": "natural"},
])
def test_representatives_only_is_what_filter_dedup_writes(deduped, ws, selection, tmp_path):
    groups = _groups(ws)
    assert len(set(groups.values())) >= 2, "the workspace should hold several image groups"
    sel = selection | {"duplicates": "representatives"}
    tiles = grid_tiles(deduped.url, sel)
    order = [(-t["prob"], t["id"]) for t in tiles]
    assert order == sorted(order)                                 # the grid's order; no tile twice
    rows = _rows(ws, selection)
    want = _representatives(rows, groups)
    assert {t["id"] for t in tiles} == want
    assert len(want) < len(rows)                                  # it did leave duplicates out
    for t in tiles:
        assert (t["group"] is None) == (t["id"] not in groups)
        if t["group"] is not None:
            assert t["group"]["id"] == groups[t["id"]][0]
            assert t["group"]["representative"] == (t["id"] == groups[t["id"]][1])

    # the command shown is `curate filter ... --dedup`, and it writes these rows
    status, shown = post(deduped.url, "/api/command", {"selection": sel, "out": "r.csv"})
    assert status == 200 and shown["count"] == len(want)
    words = shlex.split(shown["command"])
    assert words[:2] == ["curate", "filter"] and "--dedup" in words and words[-2:] == ["--out", "r.csv"]
    run_cli(*words[1:-1], str(tmp_path / "r.csv"))
    with open(tmp_path / "r.csv", newline="", encoding="utf-8") as f:
        assert {int(r["id"]) for r in csv.DictReader(f)} == want

    # the sidebar: each label as selecting it alone shows it; the selection's own count
    status, counts = post(deduped.url, "/api/counts", {"selection": sel})
    assert status == 200 and counts["count"] == len(want)
    for x in counts["labels"]:
        alone = _representatives([r for r in rows if r[1] == x["label"]], groups)
        assert x["kept"] == len(alone), x["label"]
    for x in counts["labels"][:3]:
        if x["kept"]:
            got = grid_tiles(deduped.url, sel | {"labels": [x["label"]]})
            assert len(got) == x["kept"]


def test_the_export_button_writes_what_the_dedup_command_writes(deduped, ws, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sel = {"min_prob": 0.1, "duplicates": "representatives", "where": [["source_id", "img_001.jpg"],
                                                                       ["source_id", "img_002.jpg"],
                                                                       ["source_id", "img_003.jpg"],
                                                                       ["source_id", "img_004.jpg"]]}
    status, shown = post(deduped.url, "/api/command", {"selection": sel, "out": "d.csv"})
    assert status == 200 and "--dedup" in shlex.split(shown["command"])
    status, got = post(deduped.url, "/api/export", {"selection": sel, "out": str(tmp_path / "app" / "d.csv")})
    assert status == 200, got
    assert got["kept"] == shown["count"] == len(grid_tiles(deduped.url, sel))
    run_cli(*shlex.split(shown["command"])[1:])
    assert (tmp_path / "app" / "d.csv").read_bytes() == (tmp_path / "d.csv").read_bytes()
    # a parquet subset records the command that makes it: with its --dedup (it used to be left out)
    status, got = post(deduped.url, "/api/export", {"selection": sel, "out": str(tmp_path / "d.parquet")})
    assert status == 200, got
    kv = dict(duckdb.sql(f"SELECT decode(key), decode(value) FROM parquet_kv_metadata('{tmp_path / 'd.parquet'}')")
              .fetchall())
    assert "--dedup" in shlex.split(kv["curate.command"])


def test_only_items_in_groups_comes_group_by_group_and_names_no_command(deduped, ws, monkeypatch):
    groups = _groups(ws)
    for selection in ({"min_prob": 0.0}, {"min_prob": 0.4, "mode": "ensemble"}):
        sel = selection | {"duplicates": "groups"}
        monkeypatch.setattr(data, "PAGE", 3)        # several pages: the cursor is exercised
        tiles = grid_tiles(deduped.url, sel)
        monkeypatch.undo()
        rows = {i: p for i, _label, p in _rows(ws, selection)}
        assert sorted(t["id"] for t in tiles) == sorted(i for i in rows if i in groups)
        # a group's tiles together, its representative first (when selected), then by prob
        seen: list[int] = []
        for t in tiles:
            g = t["group"]["id"]
            assert g == groups[t["id"]][0]
            if not seen or seen[-1] != g:
                assert g not in seen, "a group's tiles are not together"
                seen.append(g)
        for g in seen:
            members = [t for t in tiles if t["group"]["id"] == g]
            keys = [(not t["group"]["representative"], -t["prob"], t["id"]) for t in members]
            assert keys == sorted(keys)
        best = [max(t["prob"] for t in tiles if t["group"]["id"] == g) for g in seen]
        assert best == sorted(best, reverse=True)                 # the groups by their most probable item
        status, counts = post(deduped.url, "/api/counts", {"selection": sel})
        assert counts["count"] == len(tiles)
        # no `curate filter` writes whole groups: the command box says so, and export refuses
        status, shown = post(deduped.url, "/api/command", {"selection": sel, "out": "g.csv"})
        assert status == 200 and shown["command"] is None and "whole duplicate groups" in shown["why"]
        status, got = post(deduped.url, "/api/export", {"selection": sel, "out": "g.csv"})
        assert status == 400 and "whole duplicate groups" in got["error"]


def test_the_overview_counts_the_groups_and_the_kept_reads_are_the_sql(deduped, ws):
    status, o = get_json(deduped.url, "/api/overview")
    d = o["duplicates"]
    n_groups, n_items = sql(ws, "SELECT count(DISTINCT group_id), count(*) FROM duplicates WHERE kind = 'image'")[0]
    assert d["found"] is True and d["why"] is None and (d["groups"], d["items"]) == (n_groups, n_items)
    # "all items" is the grid as it always was (the kept reads), a page at a time like the others
    every = data.page(deduped.ws, Selection.parse({"duplicates": "all"}), None, 100)["tiles"]
    assert len(every) == len(_rows(ws, {}))
    assert all("group" not in t for t in every)


@pytest.mark.slow
@needs_chromium
def test_the_control_in_chromium_before_and_after_dedup(app_built, tmp_path_factory, tmp_path, monkeypatch):
    """The page: the control disabled with the command that finds the groups, then (after dedup
    and a reload) representatives only with its `--dedup` command and export, whole groups with
    their tiles together and no command, and disabled again for rejected items."""
    sync_api = pytest.importorskip("playwright.sync_api")
    ws = copy_of(app_built, tmp_path_factory)
    monkeypatch.chdir(tmp_path)     # where the app writes a relative export path, and the CLI too
    srv = AppServer(ws, 0, load_model=False).start()
    try:
        with sync_api.sync_playwright() as p:
            browser = launch(p, tempfile.mkdtemp(dir=tmp_path), height=900)
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(srv.url)
            page.wait_for_selector("body[data-state=ready][data-dedup=none]")
            assert page.locator("#dedup").is_disabled()
            assert f"curate dedup -w {ws}" in page.inner_text("#dedup-note")
            assert page.locator("#review-set").is_disabled()
            assert f"curate sample -w {ws}" in page.inner_text("#review-set-note")

            run_cli("dedup", "-w", ws, "--threshold", f"{_threshold(ws):.6f}")
            run_cli("sample", "-w", ws, "--top-classes", "3", "--per-class", "2", "--seed", "5")
            page.reload()
            page.wait_for_selector("body[data-state=ready][data-dedup=found]")
            assert page.locator("#dedup").is_enabled()
            groups = _groups(ws)
            assert f"{len(set(g for g, _ in groups.values()))} image groups" in page.inner_text("#dedup-note")

            # representatives only: what filter --dedup keeps, its command shown, the button writes it
            page.select_option("#dedup", "representatives")
            want = _representatives(_rows(ws, {}), groups)
            page.wait_for_function(f"() => document.body.dataset.count === '{len(want)}' && "
                                   "document.body.dataset.state === 'ready'")
            assert {int(x) for x in page.eval_on_selector_all(".tile", "ts => ts.map(t => t.dataset.id)")} == want
            assert "one per duplicate group" in page.inner_text("#summary")
            assert page.locator(".tile .grp").count() == len([i for i in want if i in groups])
            page.fill("#out", "reps.csv")
            page.dispatch_event("#out", "change")
            page.wait_for_function("() => document.getElementById('command').textContent.endsWith('--out reps.csv')")
            words = shlex.split(page.inner_text("#command"))
            assert words[:2] == ["curate", "filter"] and "--dedup" in words
            page.locator("#export").click()
            page.wait_for_selector("body[data-export=done]")
            by_app = (tmp_path / "reps.csv").read_bytes()
            (tmp_path / "reps.csv").unlink()
            run_cli(*words[1:])
            assert (tmp_path / "reps.csv").read_bytes() == by_app

            # only items in groups: each group's tiles together and shaded alike; no command
            page.select_option("#dedup", "groups")
            page.wait_for_function(f"() => document.body.dataset.count === '{len(groups)}' && "
                                   "document.body.dataset.state === 'ready'")
            page.wait_for_selector("#command[data-exportable=no]")
            assert "whole duplicate groups" in page.inner_text("#command")
            assert page.locator("#export").is_disabled()
            tiles = page.eval_on_selector_all(
                ".tile", "ts => ts.map(t => [t.dataset.group, t.dataset.groupParity])")
            assert len(tiles) == len(groups)
            order = [g for k, (g, _) in enumerate(tiles) if k == 0 or tiles[k - 1][0] != g]
            assert len(order) == len(set(order))                      # a group's tiles are together
            shades = [s for k, (g, s) in enumerate(tiles) if k == 0 or tiles[k - 1][0] != g]
            assert all(a != b for a, b in zip(shades[:-1], shades[1:], strict=True))   # the next group: the other shade

            # a review set: its images only, and `curate review --out` named instead of a filter command
            (name,) = sql(ws, "SELECT name FROM review_sets")[0]
            in_set = {i for (i,) in sql(ws, "SELECT id FROM review_items")}
            page.select_option("#dedup", "all")
            page.select_option("#review-set", name)
            page.wait_for_function(f"() => document.body.dataset.count === '{len(in_set)}' && "
                                   "document.body.dataset.state === 'ready'")
            assert {int(x) for x in page.eval_on_selector_all(".tile", "ts => ts.map(t => t.dataset.id)")} == in_set
            assert f"review set {name}" in page.inner_text("#summary")
            page.wait_for_selector("#command[data-exportable=no]")
            assert f"curate review --set {name} --out FILE" in page.inner_text("#command")
            page.select_option("#review-set", "")

            # rejected items are in no group: the control goes back to all items, disabled
            page.select_option("#status", "rejected")
            page.wait_for_function("() => document.body.dataset.count === '2' && document.body.dataset.state === 'ready'")
            assert page.locator("#dedup").is_disabled() and page.input_value("#dedup") == "all"
            browser.close()
            assert errors == []
    finally:
        srv.stop()


def _draw_look(ws: Path) -> None:
    """The review set 'look' (drawn from 'natural'), drawn beside the running app as `curate sample` would."""
    from curate.core.workspace import Workspace
    from curate.validate import sampling

    if sql(ws, "SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() "
               "AND table_name = 'review_sets'")[0][0] and \
            sql(ws, "SELECT count(*) FROM review_sets WHERE name = 'look'")[0][0]:
        return
    con = Workspace(ws).connect()
    try:
        sampling.draw(con, top_classes=3, per_class=2, seed=5, name="look", classification="natural")
    finally:
        con.close()


def test_a_review_set_shows_its_images_and_says_which_command_writes_it(deduped, ws):
    status, o = get_json(deduped.url, "/api/overview")
    assert o["sample_command"] == f"curate sample -w {shlex.quote(str(ws))}"
    assert o["review_sets"] == []
    _draw_look(ws)
    status, o = get_json(deduped.url, "/api/overview")
    assert [(s["name"], s["classification"]) for s in o["review_sets"]] == [("look", "natural")]
    in_set = {i for (i,) in sql(ws, "SELECT id FROM review_items WHERE set_name = 'look'")}
    assert 0 < len(in_set) < len(_rows(ws, {}))
    groups = _groups(ws)
    for selection in ({"min_prob": 0.0}, {"min_prob": 0.4, "mode": "ensemble"},
                      {"min_prob": 0.0, "duplicates": "representatives"}):
        sel = selection | {"review_set": "look"}
        tiles = grid_tiles(deduped.url, sel)
        rows = [r for r in _rows(ws, selection) if r[0] in in_set]
        want = _representatives(rows, groups) if "duplicates" in selection else {r[0] for r in rows}
        assert {t["id"] for t in tiles} == want and len(tiles) == len(want)
        status, counts = post(deduped.url, "/api/counts", {"selection": sel})
        assert counts["count"] == len(want)
        # a review set has no `curate filter` option: the command box names `curate review --out`
        status, shown = post(deduped.url, "/api/command", {"selection": sel, "out": "s.csv"})
        assert status == 200 and shown["command"] is None and "curate review --set look --out FILE" in shown["why"]
        assert shown["count"] == len(want)
        status, got = post(deduped.url, "/api/export", {"selection": sel, "out": "s.csv"})
        assert status == 400 and "review set" in got["error"]
    status, got = post(deduped.url, "/api/grid", {"selection": {"review_set": "no such set"}})
    assert status == 400 and "no review set named 'no such set'" in got["error"]
    status, got = post(deduped.url, "/api/grid", {"selection": {"review_set": 7}})
    assert status == 400 and "review_set" in got["error"]


def test_more_like_this_within_the_duplicates_control_and_a_review_set(deduped, ws):
    """A search's hits pass the same filters as the grid: the hits that are in what the grid shows."""
    _draw_look(ws)
    groups = _groups(ws)
    some = min(groups)                              # an item in a group: its duplicates are its nearest
    status, everything = post(deduped.url, "/api/grid", {"selection": {}, "search": {"like": some}})
    assert status == 200, everything
    ranked = [t["id"] for t in everything["tiles"]]
    reps = _representatives(_rows(ws, {}), groups)
    in_groups = set(groups)
    in_set = {i for (i,) in sql(ws, "SELECT id FROM review_items WHERE set_name = 'look'")}
    for extra, keep in (({"duplicates": "representatives"}, reps), ({"duplicates": "groups"}, in_groups),
                        ({"review_set": "look"}, in_set)):
        status, got = post(deduped.url, "/api/grid", {"selection": extra, "search": {"like": some}})
        assert status == 200, got
        assert [t["id"] for t in got["tiles"]] == [i for i in ranked if i in keep]    # by rank, filtered
        assert got["count"] == len([i for i in ranked if i in keep])


def test_a_search_hit_says_its_group_as_the_grid_tile_does(deduped, ws):
    """Under the duplicates control a hit carries its duplicate group (id, representative or not,
    cosine, size), the same as the grid's tile of that item; with the control off, none."""
    groups = _groups(ws)
    some = min(groups)
    for extra in ({"duplicates": "representatives"}, {"duplicates": "groups"}):
        grid = {t["id"]: t["group"] for t in grid_tiles(deduped.url, extra)}
        status, got = post(deduped.url, "/api/grid", {"selection": extra, "search": {"like": some}})
        assert status == 200 and got["tiles"], got
        for t in got["tiles"]:
            assert t["group"] == grid[t["id"]], (extra, t)
            if t["id"] in groups:
                assert (t["group"]["id"], t["group"]["representative"]) == \
                    (groups[t["id"]][0], t["id"] == groups[t["id"]][1]), t
            else:
                assert t["group"] is None, t
    status, got = post(deduped.url, "/api/grid", {"selection": {}, "search": {"like": some}})
    assert status == 200 and all("group" not in t for t in got["tiles"]), got


DEDUP_SELECTIONS = [
    {"min_prob": 0.0, "duplicates": "representatives"},
    {"min_prob": 0.3, "mode": "ensemble", "duplicates": "representatives"},
    {"min_prob": 0.0, "duplicates": "groups"},
    {"min_prob": 0.2, "classification": "natural", "duplicates": "groups"},
]


def _answers(ws: Path, raw: dict) -> dict:
    """Every page (3 tiles each, by the cursor), the sidebar, the count and search hits."""
    from curate.core.workspace import Workspace

    w, sel = Workspace(ws), Selection.parse(raw)

    def walk(s: Selection) -> list[dict]:
        tiles, after = [], None
        while True:
            got = data.page(w, s, after, n=3)
            tiles += got["tiles"]
            if got["next"] is None:
                return tiles
            after = (got["next"][0] or 0.0, got["next"][1])

    tiles = walk(sel)
    labels = sorted({t["label"] for t in tiles})
    narrowed = Selection.parse({**raw, "labels": labels[:2]})
    ids = np.array([t["id"] for t in tiles][::-1] + [10 ** 9] + [r[0] for r in _rows(ws, {})], dtype=np.int64)
    scores = np.linspace(0.9, 0.1, len(ids))
    return {"tiles": tiles, "counts": data.label_counts(w, sel), "count": data.count(w, sel),
            "narrowed": walk(narrowed), "narrowed_counts": data.label_counts(w, narrowed),
            "hits": [data.hits_page(w, sel, ids, scores, offset, n=4) for offset in (0, 4)]}


@pytest.mark.parametrize("raw", DEDUP_SELECTIONS)
def test_the_groups_kept_in_memory_answer_what_the_sql_answers(deduped, ws, raw, monkeypatch):
    """The duplicates control from the arrays kept in memory (Ranked, Groups) and from SQL
    alone (queries/app_dedup.sql): the same pages, counts and hits."""
    from curate.app import snapshot
    from curate.core.workspace import Workspace

    snapshot.forget(Workspace(ws))
    kept = _answers(ws, raw)
    assert any(k[0] == "groups" for k in snapshot._LIVE[str(Workspace(ws).root)].values), "nothing was kept"
    assert kept["tiles"] and kept["count"] == len(kept["tiles"])
    monkeypatch.setattr(data, "RANKED_ROW_BYTES", 10 ** 12)       # predictions too many to keep: all SQL
    snapshot.forget(Workspace(ws))
    assert _answers(ws, raw) == kept
