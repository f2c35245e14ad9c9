"""`curate app` in a real headless Chromium (Debian's /usr/bin/chromium, through playwright),
against the real server on 127.0.0.1 and a real workspace: browse with the slider, open a
detail, mark by click, tap and key, switch classification, search by text and by example,
export, and hostile captions and files shown as what they are."""

from __future__ import annotations

import json
import shlex
import tempfile
from pathlib import Path

import pytest
from app_support import (
    DELETED,
    HOSTILE_CAPTION,
    ODD_NAMES,
    STRIP,
    app_built,
    copy_of,
    item_id,
    post,
    sql,
)
from browser_support import launch, needs_chromium
from conftest import run_cli

from curate.app.server import AppServer

__all__ = ["app_built"]   # the shared workspace fixture (app_support)

pytestmark = [pytest.mark.slow, needs_chromium]


@pytest.fixture(scope="module")
def ws(app_built, tmp_path_factory) -> Path:
    return copy_of(app_built, tmp_path_factory)


@pytest.fixture(scope="module")
def server(ws):
    srv = AppServer(ws, 0, device="cpu").start()
    yield srv
    srv.stop()


@pytest.fixture()
def page(server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = launch(p, tempfile.mkdtemp(dir=tmp_path), height=900, has_touch=True)
        pg = browser.new_page()
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.goto(server.url)
        pg.wait_for_selector("body[data-state=ready]")
        yield pg
        browser.close()
        assert errors == []


def _ready(page) -> None:
    page.wait_for_selector("body[data-state=ready]")


def _browse_marks(ws: Path) -> dict[tuple[int, str], str]:
    path = ws / "app" / "marks.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    return {(x["id"], x["label"]): x["mark"] for x in lines}


def test_browse_slider_detail_marks_and_classifications(page, ws):
    assert "random weights" in page.inner_text("#model .random")
    n_all = sql(ws, 'SELECT count(*) FROM "cls_sharp".predictions')[0][0]
    assert page.evaluate("document.body.dataset.count") == str(n_all)
    assert page.locator(".tile").count() == n_all

    # the slider: the grid and the sidebar's counts follow the threshold
    page.locator("#minprob").fill("0.6")
    want = sql(ws, 'SELECT count(*) FROM "cls_sharp".predictions WHERE prob >= 0.6')[0][0]
    page.wait_for_function(f"() => document.body.dataset.count === '{want}' && document.body.dataset.state === 'ready'")
    assert page.locator(".tile").count() == want
    per_label = dict(sql(ws, 'SELECT label, count(*) FROM "cls_sharp".predictions WHERE prob >= 0.6 GROUP BY label'))
    shown = {b.get_attribute("data-label"): int(b.locator(".n").inner_text())
             for b in page.locator("#labels .label").all()}
    assert {k: v for k, v in shown.items() if v} == per_label
    probs = [float(x) for x in page.locator(".tile .p").all_inner_texts()]
    assert probs == sorted(probs, reverse=True) and min(probs) >= 0.6

    # a label in the sidebar narrows the grid to it
    top = max(per_label, key=per_label.get)
    page.locator(f'#labels .label[data-label="{top}"]').click()
    page.wait_for_function(f"() => document.body.dataset.count === '{per_label[top]}'")
    _ready(page)
    assert set(page.locator(".tile .lab").all_inner_texts()) == {top}
    page.locator("#labels-clear").click()
    page.locator("#minprob").fill("0")
    page.wait_for_function(f"() => document.body.dataset.count === '{n_all}' && document.body.dataset.state === 'ready'")

    # a detail: the full image, the caption as text, the top labels of each view
    hostile = item_id(ws, "img_002.jpg")
    page.locator(f'.tile[data-id="{hostile}"] img').click()
    page.wait_for_selector(f"body[data-detail='{hostile}']")
    assert page.inner_text("#d-caption") == HOSTILE_CAPTION
    assert page.locator("#d-caption img, #d-caption script, #d-caption b").count() == 0
    assert page.evaluate("window.__pwned") is None
    assert page.locator("#d-top table").count() == 3
    page.wait_for_function("() => document.getElementById('d-image').naturalWidth > 0")

    # mark by click in the detail, then by key on a tile, then by tap on another
    label = sql(ws, 'SELECT label FROM "cls_sharp".predictions WHERE id = ?', [hostile])[0][0]
    page.locator("#d-marking .mk[data-mark=miss]").click()
    page.wait_for_selector(f'.tile[data-id="{hostile}"][data-mark="miss"]')
    assert _browse_marks(ws)[(hostile, label)] == "miss"        # on disk when the page shows it
    page.keyboard.press("Escape")
    page.wait_for_selector("#detail", state="hidden")
    first = page.locator(".tile").nth(0)
    first_id = int(first.get_attribute("data-id"))
    first.focus()
    page.keyboard.press("h")
    page.wait_for_selector(f'.tile[data-id="{first_id}"][data-mark="hit"]')
    page.keyboard.press("ArrowRight")
    second_id = int(page.evaluate("document.activeElement.dataset.id"))
    page.keyboard.press("s")
    page.wait_for_selector(f'.tile[data-id="{second_id}"][data-mark="skip"]')
    third = page.locator(".tile").nth(2)
    third_id = int(third.get_attribute("data-id"))
    third.locator(".mk.miss").tap()
    page.wait_for_selector(f'.tile[data-id="{third_id}"][data-mark="miss"]')
    marks = _browse_marks(ws)
    assert {i for i, _ in marks} >= {hostile, first_id, second_id, third_id}
    assert "1 hit" in page.inner_text("#browse-marks")
    # a reload shows the marks again (read from the journal)
    page.reload()
    _ready(page)
    assert page.locator(f'.tile[data-id="{first_id}"]').get_attribute("data-mark") == "hit"

    # switch classification: the grid shows the other one's predictions
    page.select_option("#classification", "natural")
    page.wait_for_selector("body[data-classification=natural][data-state=ready]")
    best = sql(ws, 'SELECT id, prob FROM "cls_natural".predictions ORDER BY prob DESC, id LIMIT 1')[0]
    page.wait_for_function(f"() => document.querySelector('.tile') && document.querySelector('.tile').dataset.id === '{best[0]}'")
    assert float(page.locator(".tile .p").first.inner_text()) == pytest.approx(best[1], abs=1e-3)

    # rejected items: their reasons, as text, with a placeholder picture
    page.select_option("#status", "rejected")
    page.wait_for_function("() => document.body.dataset.count === '2' && document.body.dataset.state === 'ready'")
    strip = item_id(ws, STRIP)
    assert "pixels" in page.inner_text(f'.tile[data-id="{strip}"] .reason')
    page.wait_for_function(f"() => document.querySelector('.tile[data-id=\"{strip}\"] img').naturalWidth > 0")


def test_search_by_text_and_by_example_within_the_filters(page, server, ws):
    page.wait_for_selector("body[data-model=ready]", timeout=120_000)
    assert page.inner_text("#warm") == "model ready"
    page.fill("#q", "a tall building")
    page.press("#q", "Enter")
    page.wait_for_function("() => document.getElementById('summary').textContent.includes('nearest')")
    _ready(page)
    _, want = post(server.url, "/api/grid", {"selection": {}, "search": {"text": "a tall building"}})
    assert [int(x) for x in page.eval_on_selector_all(".tile", "ts => ts.map(t => t.dataset.id)")] == \
        [t["id"] for t in want["tiles"]]
    assert page.locator(".tile .score").count() == len(want["tiles"])

    # more like this: the item itself first, at cosine 1
    some = item_id(ws, "img_007.jpg")
    page.locator(f'.tile[data-id="{some}"] .like').click()
    page.wait_for_function(f"() => document.getElementById('search-what').textContent.includes('{some}')")
    _ready(page)
    assert page.locator(".tile").first.get_attribute("data-id") == str(some)
    assert page.locator(".tile .score").first.inner_text() == "cos 1.000"

    # combined with the threshold: only hits that pass it
    page.locator("#minprob").fill("0.6")
    page.wait_for_function("() => document.getElementById('minprob-value').textContent === '0.60'")
    page.wait_for_function("() => document.body.dataset.state === 'ready' && "
                           "[...document.querySelectorAll('.tile .p')].every(p => Number(p.textContent) >= 0.6)")
    _, want = post(server.url, "/api/grid", {"selection": {"min_prob": 0.6}, "search": {"like": some}})
    assert page.locator(".tile").count() == want["count"]


def test_the_export_button_writes_what_the_shown_command_writes(page, ws, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "sharp subset.csv"
    page.select_option("#mode", "ensemble")
    page.locator("#minprob").fill("0.5")
    page.wait_for_function("() => document.getElementById('command').textContent.includes('--min-prob 0.5')")
    page.fill("#out", str(out))
    page.dispatch_event("#out", "change")
    page.wait_for_function(f"() => document.getElementById('command').textContent.endsWith({json.dumps(shlex.quote(str(out)))})")
    command = page.inner_text("#command")
    page.locator("#export").click()
    page.wait_for_selector("body[data-export=done]")
    assert "kept" in page.inner_text("#export-result")
    by_app = out.read_bytes()
    out.unlink()
    words = shlex.split(command)
    assert words[:2] == ["curate", "filter"] and "--mode" in words and "ensemble" in words
    run_cli(*words[1:])
    assert out.read_bytes() == by_app


def test_odd_file_names_show_as_text_and_a_deleted_file_as_a_placeholder(page, ws):
    for name in ODD_NAMES:
        i = item_id(ws, name)
        page.wait_for_selector(f'.tile[data-id="{i}"]')
        assert page.inner_text(f'.tile[data-id="{i}"] .name') == name
        assert page.locator(f'.tile[data-id="{i}"] .name b').count() == 0
        page.wait_for_function(f"() => document.querySelector('.tile[data-id=\"{i}\"] img').naturalWidth > 1")
    gone = item_id(ws, DELETED)
    page.wait_for_selector(f'.tile[data-id="{gone}"]')
    page.wait_for_function(f"() => document.querySelector('.tile[data-id=\"{gone}\"] img').naturalWidth > 0")
    page.locator(f'.tile[data-id="{gone}"] img').click()
    page.wait_for_selector(f"body[data-detail='{gone}']")
    page.wait_for_function("() => document.getElementById('d-image').naturalWidth > 0")
    assert page.inner_text("#d-path").endswith(DELETED)
