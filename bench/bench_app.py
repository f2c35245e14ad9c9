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
                    (6 kept-alive connections, as a browser fetches), thumbnails not made yet
  grid.cached_ms    the same page again (thumbnails in ws/app/thumbnails.sqlite)
  grid.deep_ms      page 6 through the cursor (JSON only)
  counts_ms         the sidebar's label counts at a threshold not asked before (median of 5)
  search.text_ms    a text search with the model warm (median of 5 new texts)
  search.like_ms    "more like this" on an item (median of 5 new items)
  memory            the app's RSS (and less its mapped files) and peak, beside the image index file
With Chromium: the page opened until its first grid shows, a slider move until the grid has
redrawn, a text search until its grid shows (performance.now() in the page).
Then the text tower alone, outside the app (the floor of a text search). With --before DIR,
an older curate's app is measured first in the same run, each figure's ratio then this one's
over it. Figures go to bench/results/app.jsonl.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import WORK, record, synthetic_picture, work_folder  # noqa: E402

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
print(sys.modules["curate"].__file__, file=sys.stderr)
s.serve_forever()
"""


def _post(url: str, body: dict) -> dict:
    r = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(r, timeout=120) as f:
        return json.loads(f.read())


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=120) as f:
        return f.read()


_LOCAL = threading.local()


def _kept_alive(url: str, path: str) -> bytes:
    """GET over this thread's own kept-alive connection, as a browser fetches a page's images
    (6 connections, each reused)."""
    host = url.split("//", 1)[1].rstrip("/")
    c = getattr(_LOCAL, "connections", {}).get(host)
    if c is None:
        c = http.client.HTTPConnection(host, timeout=120)
        _LOCAL.connections = {**getattr(_LOCAL, "connections", {}), host: c}
    c.request("GET", path)
    r = c.getresponse()
    body = r.read()
    assert r.status == 200, (path, r.status)
    return body


def _ms(fn) -> tuple[float, object]:
    t = time.perf_counter()
    got = fn()
    return (time.perf_counter() - t) * 1000, got


def _status(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:", "RssAnon:")):
            out[line.split(":")[0]] = int(line.split()[1]) / 1024
    return out


def run(ws_dir: Path, n: int, browser: bool, code: str | None = None) -> dict[str, tuple[float, str, str]]:
    """The figures of one app run: name -> (value, unit, what). `code`: a folder holding another
    `curate` package (an older commit's) for the app to run instead of this one."""
    base = f"n={n:,}"
    out: dict[str, tuple[float, str, str]] = {}

    def put(name: str, value: float, unit: str, what: str) -> None:
        out[name] = (value, unit, f"{what}, {base}")
        print(f"  {name:<32} {value:>10.1f} {unit}", flush=True)

    shutil.rmtree(ws_dir / "app", ignore_errors=True)   # no thumbnails or marks of an earlier run
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if code:
        env["PYTHONPATH"] = code
    t0 = time.perf_counter()
    # run from the workspace's folder: `python -c` puts its working directory first on sys.path
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(ws_dir)], stdout=subprocess.PIPE, text=True, env=env,
                             cwd=ws_dir.parent)
    try:
        url = child.stdout.readline().strip()
        while json.loads(_get(url + "api/status"))["model"] == "loading":
            time.sleep(0.2)
        print(f"app ({code or 'this tree'}) at {url}; model ready after {time.perf_counter() - t0:.1f} s", flush=True)
        sel = {"min_prob": 0.0}
        first_ms, first = _ms(lambda: _post(url + "api/grid", {"selection": sel}))
        put("app.grid.first_ms", first_ms, "ms", "the first grid request the app answers (JSON), once its model is ready")
        write_photos(ws_dir, [t["id"] for t in first["tiles"]])

        def page_with_thumbs():
            got = _post(url + "api/grid", {"selection": sel})
            with ThreadPoolExecutor(6) as pool:
                sizes = list(pool.map(lambda t: len(_kept_alive(url, f"/api/thumb/{t['id']}")), got["tiles"]))
            assert len(sizes) == 100 and all(sizes)
            return got

        json_ms = statistics.median(_ms(lambda: _post(url + "api/grid", {"selection": sel}))[0] for _ in range(3))
        cold, _ = _ms(page_with_thumbs)
        cached = statistics.median(_ms(page_with_thumbs)[0] for _ in range(3))
        put("app.grid.json_ms", json_ms, "ms", "first page's JSON (100 tiles), median of 3")
        put("app.grid.cold_ms", cold, "ms", "JSON + 100 thumbnails made now")
        put("app.grid.cached_ms", cached, "ms", "JSON + 100 cached thumbnails, median of 3")
        after = None
        for _ in range(5):
            after = _post(url + "api/grid", {"selection": sel, "after": after})["next"]
        deep, _ = _ms(lambda: _post(url + "api/grid", {"selection": sel, "after": after}))
        put("app.grid.deep_ms", deep, "ms", "page 6 by the cursor, JSON")
        labelled, _ = _ms(lambda: _post(url + "api/grid", {"selection": {"min_prob": 0.1, "labels": ["beach"]}}))
        put("app.grid.label_ms", labelled, "ms", "first page of one label (beach), prob >= 0.1, JSON")
        where, _ = _ms(lambda: _post(url + "api/grid", {"selection": {"min_prob": 0.2, "where": [["city", "paris"]]}}))
        put("app.grid.where_ms", where, "ms", "first page, city = paris, prob >= 0.2 (SQL each time)")
        counts = [_ms(lambda t=t: _post(url + "api/counts", {"selection": {"min_prob": t}}))[0]
                  for t in (0.13, 0.27, 0.41, 0.56, 0.73)]
        put("app.counts_ms", statistics.median(counts), "ms",
            f"label counts at a new threshold, median of 5 (max {max(counts):.0f})")
        texts = ["a tall building", "a dog on a beach", "night market", "snowy mountain road", "kitchen interior"]
        text = [_ms(lambda q=q: _post(url + "api/grid", {"selection": sel, "search": {"text": q}}))[0] for q in texts]
        put("app.search.text_ms", statistics.median(text), "ms",
            f"text search, model warm, first page, median of 5 (max {max(text):.0f})")
        like = [_ms(lambda i=i: _post(url + "api/grid", {"selection": sel, "search": {"like": i}}))[0]
                for i in (7, n // 3, n // 2, n - 11, 12345 % n)]
        put("app.search.like_ms", statistics.median(like), "ms",
            f"more like this, first page, median of 5 (max {max(like):.0f})")
        mem = _status(child.pid)
        index_mb = (ws_dir / "indexes" / "images.faiss").stat().st_size / 2**20
        put("app.memory.rss_mb", mem["VmRSS"], "MiB", f"app RSS at the end (image index file {index_mb:.0f} MiB)")
        put("app.memory.anon_mb", mem["RssAnon"], "MiB",
            "app RSS less mapped files (shared libraries: this venv's torch maps CUDA's)")
        put("app.memory.peak_mb", mem["VmHWM"], "MiB", "peak RSS (the whole model is built, then its image tower dropped)")
        put("app.memory.over_index_gib", (mem["VmRSS"] - index_mb) / 1024, "GiB", "RSS at the end above the index file")
        if browser:
            for name, (value, what) in browser_timings(url).items():
                put(name, value, "ms", what)
    finally:
        child.terminate()
        child.wait(timeout=30)
    return out


def model_bound(model: str) -> dict[str, tuple[float, str, str]]:
    """The text tower alone, outside the app, on one thread as the app runs it: a search's floor."""
    import torch

    from curate.ingest.model import load_encoder

    torch.set_num_threads(1)
    out = {}
    for name in ("curate-tiny", model):
        enc = load_encoder(name, "none", "cpu", "fp32")
        enc.encode_text(["warm up"])
        ms = statistics.median(_ms(lambda q=q, e=enc: e.encode_text([q]))[0]
                               for q in ["a tall building", "a dog on a beach", "night market", "snowy mountain road",
                                         "kitchen interior"])
        out[f"app.model_only.{name}_ms"] = (ms, "ms", f"{name} text tower alone, one query, 1 thread, median of 5")
        print(f"  {'model only ' + name:<32} {ms:>10.1f} ms", flush=True)
        del enc
    return out


def browser_timings(url: str) -> dict[str, tuple[float, str]]:
    chromium = "/usr/bin/chromium"
    if not os.path.exists(chromium):
        print(f"(no {chromium}: browser timings skipped)")
        return {}
    from playwright.sync_api import sync_playwright

    out = {}
    ready = "() => document.body.dataset.state === 'ready'"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox", "--disable-gpu"])
        page = b.new_page(viewport={"width": 1400, "height": 900})
        page.goto(url)
        page.wait_for_function(ready)
        page.wait_for_function("() => [...document.querySelectorAll('.tile img')].slice(0, 24)"
                               ".every(i => i.complete && i.naturalWidth > 0)")
        out["app.browser.first_grid_ms"] = (page.evaluate("performance.now()"),
                                            "page opened until its first 24 thumbnails show (Chromium)")
        t = page.evaluate("performance.now()")
        page.locator("#minprob").fill("0.35")
        page.wait_for_function("() => document.getElementById('summary').textContent.includes('0.35')")
        page.wait_for_function(ready)
        out["app.browser.slider_ms"] = (page.evaluate("performance.now()") - t,
                                        "slider moved until the grid and counts redrew, incl. 150 ms debounce (Chromium)")
        t = page.evaluate("performance.now()")
        page.fill("#q", "a red bus")
        page.press("#q", "Enter")
        page.wait_for_function("() => document.getElementById('summary').textContent.includes('nearest')")
        page.wait_for_function(ready)
        out["app.browser.search_ms"] = (page.evaluate("performance.now()") - t,
                                        "text search typed until its grid shows (Chromium)")
        b.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--model", default="ViT-B-32", help="the architecture whose text tower the search runs")
    ap.add_argument("--no-browser", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the workspace under bench/work/ (default: remove it)")
    ap.add_argument("--before", metavar="DIR",
                    help="a folder holding an older `curate` package (e.g. `git archive` of a commit, queries/ and "
                         "indexes/ copied into the package): its app is measured first, in the same run, and each "
                         "figure's ratio is this tree's over it")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with work_folder(WORK / f"app-{args.n}", args.keep) as root:
        ws_dir = make_workspace(root, args.n, args.dim, args.model)
        old = run(ws_dir, args.n, not args.no_browser, args.before) if args.before else {}
        new = run(ws_dir, args.n, not args.no_browser)
        new |= model_bound(args.model)
        for name, (value, unit, what) in new.items():
            if name in old:
                record(RESULTS, name, value, unit, ratio=value / old[name][0] if old[name][0] else None,
                       baseline=f"{what}; ratio: over the app of {args.before} in the same run "
                                f"({old[name][0]:.1f} {unit})")
            else:
                record(RESULTS, name, value, unit, baseline=what)


if __name__ == "__main__":
    main()
