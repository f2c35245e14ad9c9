"""The sequential review (`curate sample --target-width`) in a real headless Chromium.

A class stops at the target: once its interval is narrow enough the page moves on to the
next class, passing over the rest of the class's images, and shows every class's running
estimate and the marks it likely still needs.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from conftest import run_cli
from review_support import fake_workspace
from test_review_browser import CHROMIUM, launch

from curate.app.review import ReviewSet
from curate.app.server import ReviewServer
from curate.core.workspace import Workspace
from curate.validate import intervals, sampling

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"{CHROMIUM} not installed (apt-get install chromium; CI installs it)")


@pytest.fixture()
def ws(tmp_path):
    preds = [(i, ["skyscraper", "bridge"][i % 2], 0.5) for i in range(80)]
    ws = fake_workspace(tmp_path / "ws", preds)
    return ws


def test_rule_and_needed():
    # 20 hits of 20: 0.26 wide at the Agresti-Coull share: done at a target of 0.3, never
    # before 20 marks (19 of 19 would be narrow enough)
    assert intervals.sequential_width(20, 20) < 0.3 and intervals.sequential_width(19, 19) < 0.3
    assert intervals.sequential_done(20, 20, 0.3) and not intervals.sequential_done(19, 19, 0.3)
    assert not intervals.sequential_done(20, 20, 0.2)
    # the rule's width is never below the plain Wilson width the page shows
    for h, n in ((0, 30), (7, 30), (15, 30), (30, 30)):
        assert intervals.sequential_width(h, n) >= intervals.proportion(h, n).width
    # at 50%, +/-10 points takes about 96 marks in all
    n = intervals.needed(5, 10, 0.2)
    assert 80 <= 10 + n <= 110
    e = intervals.proportion(48, 10 + n)
    assert e.width <= 0.2 + 0.01


def test_cli_draws_a_sequential_set(ws):
    r = run_cli("sample", "-w", ws.root, "--top-classes", "2", "--target-width", "0.3", "--seed", "1")
    assert "sequential review" in r.output and "image-top2x400-seed1-width0.3" in r.output
    con = Workspace(ws.root).connect(read_only=True)
    rs = sampling.get_set(con)
    assert rs.target_width == 0.3 and rs.per_class == 400 and rs.items == 80
    con.close()


@pytest.mark.slow
def test_the_page_stops_a_class_at_the_target(ws, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    con = ws.connect()
    sampling.draw(con, top_classes=2, per_class=40, seed=1, name="seq", target_width=0.3)
    con.close()
    server = ReviewServer(ws, "seq", port=0).start()
    try:
        with sync_api.sync_playwright() as p:
            browser = launch(p, Path(tempfile.mkdtemp(dir=tmp_path)))
            page = browser.new_page()
            page.goto(server.url)
            page.wait_for_selector("body[data-state=reviewing]")
            first = page.inner_text("#label")
            assert "target ±15.0 points" in page.inner_text("#class-estimate")
            for k in range(19):   # 19 hits: not yet (at least 20 marks)
                page.keyboard.press("h")
                page.wait_for_function("(d) => document.body.dataset.done === String(d)", arg=k + 1)
            assert page.inner_text("#label") == first
            assert "19 marks · target ±15.0 points: about 1 more" in page.inner_text("#class-estimate")
            page.keyboard.press("h")   # the 20th: 0.26 wide at the Agresti-Coull share: the class is done
            page.wait_for_function("() => document.body.dataset.position === '40'"
                                   " && document.getElementById('save').className === 'saved'")
            assert page.inner_text("#label") != first
            assert page.evaluate("document.body.dataset.classesDone") == "1"
            done = page.locator(f"#classes li[data-label='{first[:-1]}']")
            assert done.get_attribute("data-done") == "true"
            assert f"{intervals.pct_ci(intervals.proportion(20, 20))} from 20 marks · enough" in done.inner_text()
            # the next class: misses and hits alternating need many more marks; its estimate shows
            for k in range(4):
                page.keyboard.press("m" if k % 2 else "h")
            page.wait_for_function("() => document.body.dataset.done === '24'"
                                   " && document.getElementById('save').className === 'saved'")
            assert "50% (" in page.inner_text("#class-estimate") and "more" in page.inner_text("#class-estimate")
            # reopened, it resumes in the open class, never in the one that has enough
            page.close()
            page = browser.new_page()
            page.goto(server.url)
            page.wait_for_selector("body[data-state=reviewing]")
            assert page.evaluate("document.body.dataset.position") == "44"
            browser.close()
    finally:
        server.stop()
    # the marks are the first 20 of the first class's random order, then the second's first four
    ro = Workspace(ws.root).connect(read_only=True)
    got = dict(ro.execute("SELECT r.position, j.mark FROM review_items r JOIN judgments j USING (id, label)"
                          " WHERE r.set_name = 'seq'").fetchall())
    ro.close()
    assert sorted(got) == list(range(20)) + [40, 41, 42, 43]
    # the server says the same as the page
    state = ReviewSet(Workspace(ws.root), "seq").state()
    cls = {c["label"]: c for c in state["classes"]}
    assert cls[first[:-1]]["done"] and cls[first[:-1]]["n"] == 20
    other = next(c for c in cls.values() if c["label"] != first[:-1])
    assert not other["done"] and other["needed"] == intervals.needed(2, 4, 0.3)
