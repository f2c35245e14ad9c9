"""Regenerate the screenshots of `curate app` in docs/: app-browse.png, app-detail.png,
app-search.png, app-rejected.png, app-compare.png, app-duplicates.png, app-browse-groups.png,
app-review.png.

    .venv/bin/python docs/app_screenshots.py      # needs /usr/bin/chromium and playwright

The workspace is made by the real build-index and classify from the five CC0 photos of
samples/ (each also mirrored, cropped and tinted, so the grid has some to show), their
captions from samples/labels.csv, and one file that is not an image. It is embedded with the
tiny random-weights test model (no download): the labels carry no meaning, and the page's
banner says so, as it does for any workspace made without trained weights.
"""

from __future__ import annotations

import csv
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from PIL import Image, ImageOps  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

from curate.app.server import AppServer  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
SAMPLES = ROOT / "samples"


def collection(folder: Path) -> Path:
    folder.mkdir(parents=True)
    with open(SAMPLES / "labels.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        src = SAMPLES / r["filename"]
        stem = src.stem
        with Image.open(src) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
            w, h = im.size
            variants = {"": im, "-mirror": ImageOps.mirror(im),
                        "-crop": im.crop((w // 6, h // 6, w - w // 6, h - h // 6)),
                        "-warm": Image.blend(im, Image.new("RGB", im.size, (255, 150, 60)), 0.25),
                        "-grey": ImageOps.grayscale(im).convert("RGB"),
                        "-small": im.resize((w // 3, h // 3))}
            for suffix, v in variants.items():
                v.save(folder / f"{stem}{suffix}.jpg", "JPEG", quality=88)
                (folder / f"{stem}{suffix}.txt").write_text(r["caption"], encoding="utf-8")
    (folder / "notes.jpg").write_bytes(b"a text file saved under a .jpg name")
    return folder


def main() -> None:
    from conftest import run_cli

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        photos = collection(tmp / "photos")
        ws = tmp / "ws"
        run_cli("build-index", photos, "-w", ws, "--model", "curate-tiny", "--pretrained", "none", "--workers", "0")
        run_cli("classify", "-w", ws, "--prompts", "raw")
        run_cli("classify", "-w", ws)
        server = AppServer(ws, 0).start()
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch_persistent_context(
                    tempfile.mkdtemp(dir=tmp), executable_path=CHROMIUM, headless=True, args=FLAGS,
                    viewport={"width": 1360, "height": 860})
                page = browser.new_page()
                page.goto(server.url)
                page.wait_for_selector("body[data-state=ready]")
                page.wait_for_selector("body[data-model=ready]", timeout=120_000)
                page.locator("#minprob").fill("0.02")
                page.wait_for_function("() => document.getElementById('minprob-value').textContent === '0.02'")
                page.wait_for_function("() => document.body.dataset.state === 'ready'")
                tiles = page.locator(".tile")
                tiles.nth(0).locator(".mk.hit").click()
                tiles.nth(2).locator(".mk.miss").click()
                page.wait_for_selector(".tile[data-mark=miss]")
                _images_loaded(page)
                page.screenshot(path=str(ROOT / "docs" / "app-browse.png"))
                tiles.nth(1).locator("img").click()
                page.wait_for_selector("body[data-detail]")
                page.wait_for_function("() => document.getElementById('d-image').complete")
                page.screenshot(path=str(ROOT / "docs" / "app-detail.png"))
                page.keyboard.press("Escape")
                page.fill("#q", "a tall building at night")
                page.press("#q", "Enter")
                page.wait_for_function("() => document.getElementById('summary').textContent.includes('nearest')")
                page.wait_for_function("() => document.body.dataset.state === 'ready'")
                _images_loaded(page)
                page.screenshot(path=str(ROOT / "docs" / "app-search.png"))
                page.locator("#search-clear").click()
                page.select_option("#status", "rejected")
                page.wait_for_function("() => document.body.dataset.state === 'ready' && "
                                       "document.querySelector('.tile[data-status=rejected]')")
                _images_loaded(page)
                page.screenshot(path=str(ROOT / "docs" / "app-rejected.png"))
                other_views(page, server, ws)
                browser.close()
        finally:
            server.stop()
    print("wrote docs/app-browse.png, app-detail.png, app-search.png, app-rejected.png, app-compare.png, "
          "app-duplicates.png, app-browse-groups.png, app-review.png")


def other_views(page, server, ws: Path) -> None:
    """compare (the two classifications main() made), duplicates (after `curate dedup`), the
    browse grid's duplicates control (only items in groups), review (a set drawn now, two images
    marked by click)."""
    from conftest import run_cli

    page.goto(server.url + "compare")
    page.wait_for_selector("body[data-view=compare][data-state=ready]")
    page.wait_for_function("() => document.body.dataset.disagree !== undefined")
    _images_loaded(page)
    page.screenshot(path=str(ROOT / "docs" / "app-compare.png"))
    # the tiny random model puts a photo's variants (mirrored, cropped, tinted...) at cosine 0.96-0.99
    run_cli("dedup", "-w", ws, "--threshold", "0.975")
    page.goto(server.url + "duplicates")
    page.wait_for_selector("body[data-view=duplicates][data-state=ready]")
    _images_loaded(page)
    page.screenshot(path=str(ROOT / "docs" / "app-duplicates.png"))
    page.goto(server.url)
    page.wait_for_selector("body[data-state=ready][data-dedup=found]")
    page.select_option("#dedup", "groups")
    page.wait_for_function("() => document.body.dataset.state === 'ready' && document.querySelector('.tile[data-group]')")
    _images_loaded(page)
    page.screenshot(path=str(ROOT / "docs" / "app-browse-groups.png"))
    run_cli("sample", "-w", ws, "--top-classes", "3", "--per-class", "3", "--seed", "1")
    page.goto(server.url + "review")
    page.wait_for_selector("body[data-view=review][data-state=reviewing]")
    for k, mark in enumerate(("hit", "miss")):
        page.locator(f"#review-buttons .rv.{mark}").click()
        page.wait_for_function("(d) => document.body.dataset.done === String(d) && "
                               "document.getElementById('save').className === 'saved'", arg=k + 1)
    page.wait_for_function("() => document.getElementById('image').complete")
    page.screenshot(path=str(ROOT / "docs" / "app-review.png"))


def _images_loaded(page) -> None:
    page.wait_for_function("() => [...document.querySelectorAll('.tile img')].every(i => i.complete)")


if __name__ == "__main__":
    main()
