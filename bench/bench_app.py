"""`curate app` at scale: the server's answers on an N-item workspace, and the browser's own timings.

    .venv/bin/python bench/bench_app.py [--n 1000000] [--dim 512] [--model ViT-B-32] [--no-browser]

Makes (once, kept under bench/work/app-N/ between runs) a workspace of N items from random
unit image vectors (no model run), with a `city` column, classified by `classify` against
places205 (label vectors from a stand-in text encoder, storage topk), and its image index as
build-index builds it (recipe chosen by size, search parameter tuned to recall 0.95). The
items' JPEGs are written on demand, only for the tiles of the pages viewed (untimed), as a
real collection's files would already be there.

Then starts the app as `curate app` does, in a child process (its memory is its own), with
the real model architecture (`--model`, random weights: the same cost as trained ones) for
the text tower, and times over real HTTP on 127.0.0.1, as the page asks:
  grid.cold_ms      the first page of 100 tiles: the grid's JSON and its 100 thumbnails
                    (6 at a time, as a browser fetches), thumbnails not made yet
  grid.cached_ms    the same page again (thumbnails in ws/app/thumbnails.sqlite)
  grid.deep_ms      page 6 through the cursor (JSON only)
  counts_ms         the sidebar's label counts at a threshold not asked before (median of 5)
  search.text_ms    a text search with the model warm (median of 5 new texts)
  search.like_ms    "more like this" on an item (median of 5 new items)
  memory            the app's RSS and peak, beside the image index file it loads
With Chromium: the page opened until its first grid shows, a slider move until the grid has
redrawn, a text search until its grid shows (performance.now() in the page).
Figures go to bench/results/app.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import WORK, record, synthetic_picture  # noqa: E402

SHARD_ROWS = 100_000
CITIES = ["newyork", "paris", "london", "tokyo", "sydney", "rome", "berlin", "chicago"]
RESULTS = "app.jsonl"


class StandInTextEncoder:
    """Label vectors for classify without a model run: fixed random unit vectors."""

    def __init__(self, identity, dim: int):
        self.identity = identity
        self.logit_scale = 100.0
        self._rng = np.random.default_rng(205)
        self._dim = dim

    def encode_text(self, texts: list[str]) -> np.ndarray:
        v = self._rng.standard_normal((len(texts), self._dim))
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def make_workspace(root: Path, n: int, dim: int, model: str) -> Path:
    from curate.classify.label_vectors import label_queries
    from curate.classify.labels import load_label_set
    from curate.classify.prompts import resolve
    from curate.classify.run import classify
    from curate.core import store
    from curate.core.workspace import ModelIdentity, Workspace
    from curate.ingest import faiss_index

    ws_dir = root / "ws"
    marker = root / f".done-{n}-{dim}-{model}"
    if marker.exists():
        return ws_dir
    shutil.rmtree(root, ignore_errors=True)
    t = time.perf_counter()
    ws = Workspace(ws_dir)
    con = ws.connect()
    ident = ModelIdentity(model, "none", dim, True)
    Workspace.bind_model(con, ident)
    photos = root / "photos"
    con.execute("ALTER TABLE items ADD COLUMN city VARCHAR")
    con.execute("INSERT INTO items (id, source_id, path, caption, status, city) "
                "SELECT range, range || '.jpg', ? || '/' || range || '.jpg', 'photo number ' || range, 'embedded', "
                "(?::VARCHAR[])[range % ? + 1] FROM range(?)", [str(photos), CITIES, len(CITIES), n])
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((max(16, n // 500), dim), dtype=np.float32)
    for part, s in enumerate(range(0, n, SHARD_ROWS)):
        m = min(SHARD_ROWS, n - s)
        v = centres[rng.integers(0, len(centres), m)] + rng.standard_normal((m, dim), dtype=np.float32) * 0.05
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        name = store.write_shard(ws, "image", part, np.arange(s, s + m, dtype=np.int64), v)
        store.record_shard(con, "image", part, name, m, 0)
    label_queries(con, ident, load_label_set("places205"), resolve("natural"), lambda: StandInTextEncoder(ident, dim))
    faiss_index.build_index(ws, con, "image", "auto")
    con.close()
    classify(ws_dir, "places205", "natural", storage="topk", top_k=10)
    marker.touch()
    print(f"workspace of {n:,} items made in {time.perf_counter() - t:.0f} s", flush=True)
    return ws_dir


def write_photos(ws_dir: Path, ids: list[int]) -> None:
    from PIL import Image

    photos = ws_dir.parent / "photos"
    photos.mkdir(exist_ok=True)
    for i in ids:
        p = photos / f"{i}.jpg"
        if not p.exists():
            Image.fromarray(synthetic_picture((640, 480), int(i) % 997)).save(p, "JPEG", quality=85)


# --------------------------------------------------------------------------- the app, as a client sees it

CHILD = """
import sys
from curate.app.server import AppServer
s = AppServer(sys.argv[1], 0, device="cpu")
print(s.url, flush=True)
s.serve_forever()
"""


def _post(url: str, body: dict) -> dict:
    r = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(r, timeout=120) as f:
        return json.loads(f.read())


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=120) as f:
        return f.read()


def _ms(fn) -> tuple[float, object]:
    t = time.perf_counter()
    got = fn()
    return (time.perf_counter() - t) * 1000, got


def _status(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = int(line.split()[1]) / 1024
    return out


def run(ws_dir: Path, n: int, browser: bool) -> None:
    base = f"n={n:,}"
    shutil.rmtree(ws_dir / "app", ignore_errors=True)   # no thumbnails or marks of an earlier run
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(ws_dir)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        url = child.stdout.readline().strip()
        t0 = time.perf_counter()
        while json.loads(_get(url + "api/status"))["model"] == "loading":
            time.sleep(0.2)
        print(f"app at {url}; model ready after {time.perf_counter() - t0:.1f} s", flush=True)
        sel = {"min_prob": 0.0}
        first = _post(url + "api/grid", {"selection": sel})
        write_photos(ws_dir, [t["id"] for t in first["tiles"]])

        def page_with_thumbs():
            got = _post(url + "api/grid", {"selection": sel})
            with ThreadPoolExecutor(6) as pool:
                sizes = list(pool.map(lambda t: len(_get(url + f"api/thumb/{t['id']}")), got["tiles"]))
            assert len(sizes) == 100 and all(sizes)
            return got

        json_ms, _ = _ms(lambda: _post(url + "api/grid", {"selection": sel}))
        cold, _ = _ms(page_with_thumbs)
        cached = statistics.median(_ms(page_with_thumbs)[0] for _ in range(3))
        record(RESULTS, "app.grid.json_ms", json_ms, "ms", baseline=f"first page's JSON (100 tiles), {base}")
        record(RESULTS, "app.grid.cold_ms", cold, "ms", baseline=f"JSON + 100 thumbnails made now, {base}")
        record(RESULTS, "app.grid.cached_ms", cached, "ms", baseline=f"JSON + 100 cached thumbnails, median of 3, {base}")
        after = None
        for _ in range(5):
            after = _post(url + "api/grid", {"selection": sel, "after": after})["next"]
        deep, _ = _ms(lambda: _post(url + "api/grid", {"selection": sel, "after": after}))
        record(RESULTS, "app.grid.deep_ms", deep, "ms", baseline=f"page 6 by the cursor, JSON, {base}")
        where, _ = _ms(lambda: _post(url + "api/grid", {"selection": {"min_prob": 0.2, "where": [["city", "paris"]]}}))
        record(RESULTS, "app.grid.where_ms", where, "ms", baseline=f"first page, city = paris, prob >= 0.2, {base}")
        counts = [_ms(lambda t=t: _post(url + "api/counts", {"selection": {"min_prob": t}}))[0]
                  for t in (0.13, 0.27, 0.41, 0.56, 0.73)]
        record(RESULTS, "app.counts_ms", statistics.median(counts), "ms",
               baseline=f"label counts at a new threshold, median of 5 (max {max(counts):.0f}), {base}")
        texts = ["a tall building", "a dog on a beach", "night market", "snowy mountain road", "kitchen interior"]
        text = [_ms(lambda q=q: _post(url + "api/grid", {"selection": sel, "search": {"text": q}}))[0] for q in texts]
        record(RESULTS, "app.search.text_ms", statistics.median(text), "ms",
               baseline=f"text search, model warm, first page, median of 5 (max {max(text):.0f}), {base}")
        like = [_ms(lambda i=i: _post(url + "api/grid", {"selection": sel, "search": {"like": i}}))[0]
                for i in (7, n // 3, n // 2, n - 11, 12345 % n)]
        record(RESULTS, "app.search.like_ms", statistics.median(like), "ms",
               baseline=f"more like this, first page, median of 5 (max {max(like):.0f}), {base}")
        mem = _status(child.pid)
        index_mb = (ws_dir / "indexes" / "images.faiss").stat().st_size / 2**20
        record(RESULTS, "app.memory.rss_mb", mem["VmRSS"], "MiB", baseline=f"app RSS at the end, {base}")
        record(RESULTS, "app.memory.peak_mb", mem["VmHWM"], "MiB",
               ratio=(mem["VmHWM"] - index_mb) / 1024, baseline=f"peak RSS; ratio = GiB above the index file "
                                                               f"({index_mb:.0f} MiB), {base}")
        if browser:
            browser_timings(url, base)
    finally:
        child.terminate()
        child.wait(timeout=30)


def browser_timings(url: str, base: str) -> None:
    chromium = "/usr/bin/chromium"
    if not os.path.exists(chromium):
        print(f"(no {chromium}: browser timings skipped)")
        return
    from playwright.sync_api import sync_playwright

    ready = "() => document.body.dataset.state === 'ready'"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox", "--disable-gpu"])
        page = b.new_page(viewport={"width": 1400, "height": 900})
        page.goto(url)
        page.wait_for_function(ready)
        page.wait_for_function("() => [...document.querySelectorAll('.tile img')].slice(0, 24)"
                               ".every(i => i.complete && i.naturalWidth > 0)")
        record(RESULTS, "app.browser.first_grid_ms", page.evaluate("performance.now()"), "ms",
               baseline=f"page opened until its first 24 thumbnails show (Chromium), {base}")
        t = page.evaluate("performance.now()")
        page.locator("#minprob").fill("0.35")
        page.wait_for_function("() => document.getElementById('summary').textContent.includes('0.35')")
        page.wait_for_function(ready)
        record(RESULTS, "app.browser.slider_ms", page.evaluate("performance.now()") - t, "ms",
               baseline=f"slider moved until the grid and counts redrew, incl. 150 ms debounce (Chromium), {base}")
        t = page.evaluate("performance.now()")
        page.fill("#q", "a red bus")
        page.press("#q", "Enter")
        page.wait_for_function("() => document.getElementById('summary').textContent.includes('nearest')")
        page.wait_for_function(ready)
        record(RESULTS, "app.browser.search_ms", page.evaluate("performance.now()") - t, "ms",
               baseline=f"text search typed until its grid shows (Chromium), {base}")
        b.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--model", default="ViT-B-32", help="the architecture whose text tower the search runs")
    ap.add_argument("--no-browser", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the workspace under bench/work/ (default: remove it)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(f"load average before: {os.getloadavg()}", flush=True)
    root = WORK / f"app-{args.n}"
    ws_dir = make_workspace(root, args.n, args.dim, args.model)
    try:
        run(ws_dir, args.n, not args.no_browser)
    finally:
        print(f"load average after: {os.getloadavg()}", flush=True)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
