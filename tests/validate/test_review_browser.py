"""The app's review view (`curate review`) in a real headless Chromium, driven by real key
presses and clicks.

Debian's `chromium` (CI installs it) through playwright's Python API, against the real
server on 127.0.0.1; the marks are then read from the DuckDB file itself.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from review_support import fake_workspace

from curate.app.server import ReviewServer
from curate.core.workspace import Workspace
from curate.validate import sampling

CHROMIUM = "/usr/bin/chromium"
CAPTION = "<b>not bold</b> & fine 🌉"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"{CHROMIUM} not installed (apt-get install chromium; CI installs it)")]


def launch(p, profile: Path):
    """A fresh browser profile each time: nothing cached from an earlier run."""
    return p.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM, headless=True,
                                                args=FLAGS, viewport={"width": 1280, "height": 800})


@pytest.fixture()
def ws(tmp_path):
    preds = [(i, ["skyscraper", "bridge"][i % 2], round(0.3 + (i % 7) / 10, 2)) for i in range(40)]
    ws = fake_workspace(tmp_path / "ws", preds, captions={i: CAPTION for i in range(40)})
    con = ws.connect()
    sampling.draw(con, top_classes=2, per_class=5, seed=1, name="s")
    con.close()
    return ws


def _marks(con):
    return dict(con.execute(
        "SELECT r.position, j.mark FROM review_items r JOIN judgments j ON j.id = r.id AND j.label = r.label"
        " WHERE r.set_name = 's'").fetchall())


def test_keys_mark_save_go_back_and_resume(ws, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    server = ReviewServer(ws, "s", port=0).start()
    try:
        with sync_api.sync_playwright() as p:
            browser = launch(p, Path(tempfile.mkdtemp(dir=tmp_path)))
            page = browser.new_page()
            page.goto(server.url)
            page.wait_for_selector("body[data-state=reviewing]")
            assert page.inner_text("#progress").startswith("done 0 · left 10")

            def press(key: str, done: int, position: int) -> None:
                page.keyboard.press(key)
                page.wait_for_function(
                    "([d, p]) => document.body.dataset.done === String(d) && document.body.dataset.position === String(p)"
                    " && document.getElementById('save').className === 'saved'", arg=[done, position])

            press("h", 1, 1)           # hit
            press("m", 2, 2)           # miss
            press("Space", 3, 3)       # skip
            press("y", 4, 4)           # hit (other key)
            page.keyboard.press("b")   # back to position 3...
            page.wait_for_function("() => document.body.dataset.position === '3'")
            assert page.inner_text("#current-mark") == "marked: hit"
            press("n", 4, 4)           # ...change the hit to a miss, and on to the first unmarked
            ro = Workspace(ws.root).connect(read_only=True)
            assert _marks(ro) == {0: "hit", 1: "miss", 2: "skip", 3: "miss"}
            ro.close()
            assert page.inner_text("#progress").startswith("done 4 · left 6")

            # U jumps to the first unmarked image: where the reviewer is already
            page.keyboard.press("u")
            page.wait_for_function("() => document.body.dataset.position === '4'")

            # close the tab mid-way, open the page again: it resumes at the first unmarked
            page.close()
            page = browser.new_page()
            page.goto(server.url)
            page.wait_for_selector("body[data-state=reviewing]")
            assert page.evaluate("document.body.dataset.position") == "4"
            assert page.inner_text("#progress").startswith("done 4 · left 6")
            for k in range(6):
                press("1" if k % 2 else "2", 5 + k, 5 + k)
            page.wait_for_selector("body[data-state=finished]")
            assert "10 images: 4 hits, 5 misses, 1 skipped." in page.inner_text("#finished-summary")
            browser.close()
    finally:
        server.stop()
    # the file itself, opened afresh, has every mark
    ro = Workspace(ws.root).connect(read_only=True)
    assert _marks(ro) == {0: "hit", 1: "miss", 2: "skip", 3: "miss", 4: "miss", 5: "hit", 6: "miss", 7: "hit",
                          8: "miss", 9: "hit"}


def test_page_shows_image_label_probability_and_caption(ws, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    server = ReviewServer(ws, "s", port=0).start()
    try:
        with sync_api.sync_playwright() as p:
            browser = launch(p, Path(tempfile.mkdtemp(dir=tmp_path)))
            page = browser.new_page()
            page.goto(server.url)
            page.wait_for_selector("body[data-state=reviewing]")
            first = server.app.state()["items"][0]
            page.wait_for_function("() => document.getElementById('image').naturalWidth > 0")
            assert page.inner_text("#label") == first["label"] + "?"
            assert page.inner_text("#prob") == f"p = {first['prob']:.3f}"
            # the caption is shown as text, its markup inert
            assert page.inner_text("#caption") == first["caption"] == CAPTION
            assert page.locator("#caption b").count() == 0
            assert page.inner_text("#position") == "1 / 5 of this class"
            browser.close()
    finally:
        server.stop()
