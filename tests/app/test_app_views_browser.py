"""The app's compare, duplicates and review views in a real headless Chromium (Debian's
/usr/bin/chromium through playwright), against the real server on 127.0.0.1 and a real
workspace: the curves drawn from the compare JSON, the disagreements as tiles that open the
detail, dedup's groups (or the command that makes them), and a review set marked by click and
by key, its marks in the review journal and never in the browse marks."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from app_support import app_built, copy_of, get_json, server, sql
from browser_support import launch, needs_chromium
from conftest import run_cli

from curate.core.workspace import Workspace
from curate.validate import sampling

__all__ = ["app_built", "server"]   # fixtures of app_support: the shared workspace, the module's server

pytestmark = [pytest.mark.slow, needs_chromium]


@pytest.fixture(scope="module")
def ws(app_built, tmp_path_factory, tiny_encoder) -> Path:
    """The app's workspace, a third classification 'raw' that disagrees with 'natural' on
    some images, and a review set drawn from 'natural'."""
    from curate.classify.run import classify

    ws = copy_of(app_built, tmp_path_factory)
    classify(ws, prompts="raw", encoder=tiny_encoder, logit_scale=30.0, name="raw")
    con = Workspace(ws).connect()
    sampling.draw(con, top_classes=3, per_class=2, seed=5, name="look", classification="natural")
    con.close()
    return ws


@pytest.fixture()
def browser(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        ctx = launch(p, tempfile.mkdtemp(dir=tmp_path), height=900, has_touch=True)
        errors: list[str] = []
        ctx.on("page", lambda pg: pg.on("pageerror", lambda e: errors.append(str(e))))
        yield ctx
        ctx.close()
        assert errors == []


def test_compare_view_curves_agreement_and_disagreements(browser, server, ws):
    page = browser.new_page()
    page.goto(server.url + "compare")
    page.wait_for_selector("body[data-view=compare][data-state=ready]")
    assert "random weights" in page.inner_text("#model .random")
    assert page.locator("#nav a[aria-current=page]").inner_text() == "compare"
    assert page.evaluate("document.body.dataset.compare") == "raw|natural|image"   # the active one is A
    page.select_option("#cmp-a", "natural")       # what B shows: the two swap
    page.wait_for_function("() => document.body.dataset.compare === 'natural|raw|image' && "
                           "document.body.dataset.state === 'ready'")
    page.select_option("#cmp-b", "sharp")
    page.wait_for_function("() => document.body.dataset.compare === 'natural|sharp|image' && "
                           "document.body.dataset.state === 'ready'")
    assert page.evaluate("document.body.dataset.disagree") == "0"   # a logit scale changes no top label
    page.select_option("#cmp-b", "raw")
    page.wait_for_function("() => document.body.dataset.compare === 'natural|raw|image' && "
                           "document.body.dataset.state === 'ready'")
    _, want = get_json(server.url, "/api/compare?a=natural&b=raw&kind=image&min_prob=0.5")
    # the curves: one polyline per classification, a point per threshold, at the JSON's shares
    lines = page.locator("#cmp-svg polyline")
    assert lines.count() == 2
    assert [lines.nth(k).get_attribute("data-name") for k in range(2)] == ["natural", "raw"]
    for k, name in enumerate(("natural", "raw")):
        pts = [tuple(map(float, p.split(","))) for p in lines.nth(k).get_attribute("points").split()]
        assert len(pts) == 11
        ys = [y for _x, y in pts]
        shares = [r["share"] for r in want["coverage"][name]]
        # higher share, higher on the picture (smaller y): the same order as the numbers
        assert all((ys[i] <= ys[j]) == (shares[i] >= shares[j]) for i in range(11) for j in range(11))
    assert page.evaluate("document.body.dataset.shareSame") == f"{want['agreement']['share_same']:.4f}"
    rows = page.locator("#cmp-labels tbody tr")
    assert rows.count() == len(want["per_label"])
    # the grid: every image the two label differently, each tile both labels
    disagree = dict((i, (a, b)) for i, a, b in sql(
        ws, 'SELECT x.id, x.label, y.label FROM "cls_natural".predictions x JOIN "cls_raw".predictions y '
            "USING (id) WHERE x.label <> y.label"))
    page.wait_for_function(f"() => document.body.dataset.disagree === '{len(disagree)}'")
    tiles = page.locator("#cmp-grid .tile")
    assert tiles.count() == len(disagree)
    for k in range(tiles.count()):
        t = tiles.nth(k)
        a, b = disagree[int(t.get_attribute("data-id"))]
        assert t.locator(".lab").all_inner_texts() == [a, b]
    # a label of A narrows the grid to it
    label = next(iter(disagree.values()))[0]
    page.locator(f'#cmp-labels tbody tr[data-label="{label}"]').click()
    n = sum(1 for a, _b in disagree.values() if a == label)
    page.wait_for_function(f"() => document.body.dataset.disagree === '{n}' && "
                           f"document.querySelectorAll('#cmp-grid .tile').length === {n}")
    # a tile opens the detail (the same dialog as browse's), its caption as text
    first = int(tiles.first.get_attribute("data-id"))
    tiles.first.locator("img").click()
    page.wait_for_selector(f"body[data-detail='{first}']")
    page.wait_for_function("() => document.getElementById('d-image').naturalWidth > 0")
    assert page.locator("#d-top table").count() == 3
    assert page.locator("#d-caption img, #d-caption script").count() == 0
    assert page.evaluate("window.__pwned") is None
    page.keyboard.press("Escape")
    # another view of the two: the ensemble's labels, the numbers the server gives for it
    if "ensemble" in want["kinds"]:
        page.select_option("#cmp-kind", "ensemble")
        page.wait_for_function("() => document.body.dataset.compare === 'natural|raw|ensemble' && "
                               "document.body.dataset.state === 'ready'")
        _, ens = get_json(server.url, "/api/compare?a=natural&b=raw&kind=ensemble&min_prob=0.5")
        assert page.evaluate("document.body.dataset.shareSame") == f"{ens['agreement']['share_same']:.4f}"


def test_duplicates_view_says_the_command_then_shows_the_groups(browser, server, ws):
    page = browser.new_page()
    page.goto(server.url + "duplicates")
    page.wait_for_selector("body[data-view=duplicates][data-state=ready][data-dups=none]")
    assert page.inner_text("#dups-command") == f"curate dedup -w {ws}"
    run_cli("dedup", "-w", ws, "--threshold", "0.5")
    page.reload()
    page.wait_for_selector("body[data-view=duplicates][data-state=ready]")
    groups = sql(ws, "SELECT group_id, representative, size FROM duplicate_groups WHERE kind = 'image' "
                      "ORDER BY size DESC, group_id")
    page.wait_for_function(f"() => document.body.dataset.dups === '{len(groups)}'")
    shown = page.locator("#dups-groups .group")
    assert shown.count() == len(groups) > 0
    for k, (gid, rep, size) in enumerate(groups):
        g = shown.nth(k)
        assert g.get_attribute("data-group") == str(gid)
        members = g.locator(".tile")
        assert members.count() == min(size, 12)
        assert members.first.get_attribute("data-id") == str(rep)         # the representative first
        assert members.first.locator(".rep").inner_text() == "representative"
        for j in range(1, members.count()):
            assert members.nth(j).locator(".score").inner_text().startswith("cos ")
        assert g.locator(".marks").count() == 0     # nothing to judge here: a member has no label shown
    # a member opens the detail, with its duplicate group
    member = shown.first.locator(".tile").nth(1)
    mid = member.get_attribute("data-id")
    member.click()
    page.wait_for_selector(f"body[data-detail='{mid}']")
    assert page.locator("#d-dups img").count() == groups[0][2]
    # "more like this" from here: the browse grid, searching by that image
    page.locator("#d-like").click()
    page.wait_for_selector("body[data-view=browse][data-state=ready]")
    assert page.inner_text("#search-what") == f"more like item {mid}"
    assert page.locator(".tile").first.get_attribute("data-id") == mid


def test_review_view_marks_by_click_and_by_key(browser, server, ws):
    """`curate app` opened at /review shows the most recent review set; a click and a key each
    mark it; the marks are in the review journal (judgments, what the report reads) as soon as
    the page says saved, and never in the browse marks; the caption is text."""
    _, got = get_json(server.url, "/api/review/items")
    items = got["items"]
    assert len(items) == 6
    page = browser.new_page()
    page.goto(server.url + "review")
    page.wait_for_selector("body[data-view=review][data-state=reviewing]")
    assert "random weights" in page.inner_text("#model .random")
    assert page.inner_text("#title").startswith("review · look")
    page.wait_for_function("() => document.getElementById('image').naturalWidth > 0")

    def saved(done: int) -> None:
        page.wait_for_function("(d) => document.body.dataset.done === String(d)"
                               " && document.getElementById('save').className === 'saved'", arg=done)

    page.locator("#review-buttons .rv.hit").click()          # by click
    saved(1)
    page.locator("#review-buttons .rv.miss").tap()           # by tap
    saved(2)
    page.keyboard.press("s")                                 # by key
    saved(3)
    page.keyboard.press("Space")                             # the focused button must not mark twice
    saved(4)
    page.locator("#review-back").click()                     # back, and change the mark by click
    page.wait_for_function("() => document.body.dataset.position === '3'")
    page.locator("#review-buttons .rv.hit").click()
    saved(4)
    got = dict(sql(ws, "SELECT r.position, j.mark FROM review_items r JOIN judgments j USING (id, label) "
                        "WHERE r.set_name = 'look'"))
    assert got == {0: "hit", 1: "miss", 2: "skip", 3: "hit"}
    assert not (ws / "app" / "marks.jsonl").exists()       # nothing went to the browse marks
    assert page.evaluate("window.__pwned") is None
