"""Regenerate docs/review.png and docs/report.png, and time the review page.

    .venv/bin/python docs/screenshots.py          # needs /usr/bin/chromium and playwright

The review screenshot shows the five CC0 photos of samples/ with *demo* predictions
written by this script (a real run gets them from `curate classify`). The report is the
study's own marks rebuilt from its counts (tests/review_support.py), each row given one
of the sample photos so the page shows its image grids. The timing drives the page with
key presses as fast as it accepts them and prints the latencies docs/validation.md quotes.
"""

from __future__ import annotations

import csv
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from playwright.sync_api import sync_playwright  # noqa: E402
from review_support import study_marks  # noqa: E402

from curate.app.server import ReviewServer  # noqa: E402
from curate.core.workspace import Workspace  # noqa: E402
from curate.validate import report, report_render, sampling  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PHOTOS = ROOT / "samples" / "images"
# photo, caption (from samples/labels.csv), demo label, demo probability
DEMO = [("city.jpg", "high angle view of cityscape against cloudy sky 🏙️ #nyc", "skyscraper", 0.7134),
        ("paris.jpg", "picture of eiffel tower", "tower", 0.6412),
        ("bakery.jpg", "bacon rosemart", "bakery/shop", 0.5821),
        ("ruins.jpg", "odeon of herodes atticus", "amphitheater", 0.4733),
        ("aquarium.jpg", "black and gray fish", "aquarium", 0.8310)]


def demo_workspace(root: Path, copies: int) -> Workspace:
    ws = Workspace(root)
    con = ws.connect()
    con.execute("CREATE TABLE predictions (id BIGINT, label VARCHAR, prob DOUBLE, label2 VARCHAR, prob2 DOUBLE,"
                " margin DOUBLE)")
    for k in range(copies):
        for j, (photo, caption, label, prob) in enumerate(DEMO):
            i = k * len(DEMO) + j
            con.execute("INSERT INTO items (id, source_id, path, caption, status) VALUES (?, ?, ?, ?, 'embedded')",
                        [i, f"{photo}#{k}", str(PHOTOS / photo), caption])
            con.execute("INSERT INTO predictions VALUES (?, ?, ?, 'other', ?, ?)",
                        [i, label, prob, (1 - prob) / 3, prob - (1 - prob) / 3])
    con.close()
    return ws


def launch(p, tmp: Path):
    return p.chromium.launch_persistent_context(tempfile.mkdtemp(dir=tmp), executable_path=CHROMIUM, headless=True,
                                                args=FLAGS, viewport={"width": 1280, "height": 760})


def review_screenshot(p, tmp: Path) -> None:
    ws = demo_workspace(tmp / "ws-shot", 4)
    con = ws.connect()
    sampling.draw(con, top_classes=5, per_class=4, seed=7, name="demo")
    con.close()  # the page never keeps the database open (curate/validate/review/journal.py)
    server = ReviewServer(ws, "demo").start()
    try:
        browser = launch(p, tmp)
        page = browser.new_page()
        page.goto(server.url)
        page.wait_for_selector("body[data-state=reviewing]")
        for key in ("h", "h", "m", "h", "s", "h", "h"):
            done = int(page.evaluate("document.body.dataset.done"))
            page.keyboard.press(key)
            page.wait_for_function(f"() => document.body.dataset.done === '{done + 1}'")
        page.wait_for_function("() => document.getElementById('save').className === 'saved' && "
                               "document.getElementById('image').complete")
        page.screenshot(path=str(ROOT / "docs" / "review.png"))
        browser.close()
    finally:
        server.stop()


def review_timing(p, tmp: Path, n: int = 300) -> None:
    ws = demo_workspace(tmp / "ws-time", n // len(DEMO) + 1)
    con = ws.connect()
    sampling.draw(con, top_classes=5, per_class=n // 5, seed=1, name="timing")
    con.close()
    server = ReviewServer(ws, "timing").start()
    try:
        browser = launch(p, tmp)
        page = browser.new_page()
        page.goto(server.url)
        page.wait_for_selector("body[data-state=reviewing]")
        shown, saved = [], []
        start = time.perf_counter()
        for k in range(n):
            t0 = time.perf_counter()
            page.keyboard.press("h" if k % 3 else "m")
            # the next image is on screen (or the end), then the mark is acknowledged
            page.wait_for_function(f"() => (document.body.dataset.done === '{k + 1}') && (document.body.dataset.state "
                                   "=== 'finished' || document.getElementById('image').complete)")
            shown.append(time.perf_counter() - t0)
            page.wait_for_function("() => document.getElementById('save').className === 'saved'")
            saved.append(time.perf_counter() - t0)
        total = time.perf_counter() - start
        browser.close()
    finally:
        server.stop()
    med = statistics.median
    print(f"{n} marks in {total:.1f} s with key -> next image -> saved in turn: {60 * n / total:.0f} marks/min")
    print(f"key -> next image shown: median {1000 * med(shown):.1f} ms, p95 "
          f"{1000 * sorted(shown)[int(.95 * n)]:.1f} ms")
    print(f"key -> mark saved in DuckDB: median {1000 * med(saved):.1f} ms, p95 {1000 * sorted(saved)[int(.95 * n)]:.1f} ms")


def report_screenshot(p, tmp: Path) -> None:
    sheet = tmp / "study.csv"
    photos = [str(PHOTOS / d[0]) for d in DEMO]
    with open(sheet, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["label", "prob", "mark", "path"])
        for k, (label, prob, mark) in enumerate(study_marks()):
            w.writerow([label, repr(prob), mark, photos[k % len(photos)]])
    out = tmp / "report"
    report_render.write(report.from_sheet(sheet), out, grid_size=12)
    browser = launch(p, tmp)
    page = browser.new_page()
    page.set_viewport_size({"width": 1200, "height": 2300})
    page.goto((out / "index.html").as_uri())
    page.wait_for_load_state("load")
    page.screenshot(path=str(ROOT / "docs" / "report.png"))
    browser.close()


def main() -> None:
    with tempfile.TemporaryDirectory() as d, sync_playwright() as p:
        tmp = Path(d)
        review_screenshot(p, tmp)
        report_screenshot(p, tmp)
        review_timing(p, tmp)
    print("wrote docs/review.png and docs/report.png")


if __name__ == "__main__":
    main()
