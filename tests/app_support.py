"""Test helpers for `curate app` (tests/app/): a real workspace built from real JPEGs written
here, some of them hostile, by the real build-index and classify with the tiny model."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import make_folder, open_db, run_cli, write_jpeg
from PIL import Image

HOSTILE_CAPTION = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script> & <b>not bold</b>'
ODD_NAMES = ["odd name #1 ?&%.jpg", "quote'\"<b>x.jpg", "ünï 東京 ☕.jpg"]
DELETED = "img_005.jpg"
STRIP = "strip.png"          # 200000 x 1 pixels


def build(root: Path, tiny_encoder) -> Path:
    """photos/ (16 plain JPEGs with captions, three with odd names, one with a hostile caption,
    a 200000x1 PNG, a file that is not an image) -> ws, classified twice ('natural', the
    active 'sharp'), then one embedded file deleted."""
    from curate.classify.run import classify

    photos = make_folder(root / "photos", n=16)
    for i, name in enumerate(ODD_NAMES):
        write_jpeg(photos / name, seed=100 + i)
    (photos / "img_002.txt").write_text(HOSTILE_CAPTION, encoding="utf-8")
    Image.new("RGB", (200_000, 1), (200, 30, 30)).save(photos / STRIP)
    (photos / "not_an_image.jpg").write_bytes(b"this is text, not a JPEG")
    ws = root / "ws"
    run_cli("build-index", photos, "-w", ws, "--model", "curate-tiny", "--pretrained", "none", "--workers", "0")
    classify(ws, encoder=tiny_encoder, logit_scale=30.0, name="natural")
    classify(ws, encoder=tiny_encoder, logit_scale=60.0, name="sharp")
    (photos / DELETED).unlink()
    return ws


def req(url: str, data: bytes | None = None, headers: dict | None = None, method: str | None = None):
    r = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(r, timeout=30) as f:
            return f.status, f.headers, f.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def post(base: str, path: str, body, headers: dict | None = None):
    status, hdrs, raw = req(base.rstrip("/") + path, json.dumps(body).encode(),
                            {"Content-Type": "application/json", **(headers or {})})
    return status, json.loads(raw)


def get_json(base: str, path: str):
    status, _, raw = req(base.rstrip("/") + path)
    return status, json.loads(raw)


def every_tile(base: str, path: str, body: dict) -> list[dict]:
    """Every page of a grid (/api/grid, /api/compare/grid), following its cursor as the page's
    infinite scroll does; a grid that has not ended after 100 pages fails the test."""
    tiles, after = [], None
    for _ in range(100):
        status, got = post(base, path, body | {"after": after})
        assert status == 200, got
        tiles += got["tiles"]
        after = got["next"]
        if after is None:
            return tiles
    raise AssertionError(f"{path} never ended")


def grid_tiles(base: str, selection: dict, search: dict | None = None) -> list[dict]:
    """Every tile the browse grid shows for a selection (and a search)."""
    return every_tile(base, "/api/grid", {"selection": selection} | ({"search": search} if search else {}))


def sql(ws: Path, query: str, params=None) -> list[tuple]:
    """A query's rows, read from the workspace as any reader does (read-only, closed after)."""
    from curate.core.workspace import Workspace

    with Workspace(ws).reading() as con:
        return con.execute(query, params or []).fetchall()


def item_id(ws: Path, name: str) -> int:

    con = open_db(str(ws / "curate.duckdb"))
    try:
        return con.execute("SELECT id FROM items WHERE path LIKE '%/' || ?", [name]).fetchall()[0][0]
    finally:
        con.close()


@pytest.fixture(scope="session")
def app_built(tmp_path_factory, tiny_encoder) -> Path:
    """The built, classified workspace the app's test modules share (each copies it: the app
    writes ws/app/). Import it into a test module to use it."""
    return build(tmp_path_factory.mktemp("app-built"), tiny_encoder)


def copy_of(app_built: Path, tmp_path_factory) -> Path:
    copy = tmp_path_factory.mktemp("app") / "ws"
    shutil.copytree(app_built, copy)
    return copy


@pytest.fixture(scope="module")
def ws(app_built: Path, tmp_path_factory) -> Path:
    """A test module's own copy of the shared workspace. Import it with `server`, or define a
    `ws` of the module's own to serve another workspace."""
    return copy_of(app_built, tmp_path_factory)


@pytest.fixture(scope="module")
def server(ws: Path):
    """`curate app` on the module's `ws`, without the model (a text search says why not)."""
    from curate.app.server import AppServer

    srv = AppServer(ws, 0, load_model=False).start()
    yield srv
    srv.stop()
