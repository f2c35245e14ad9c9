"""`curate app` over real HTTP (uvicorn on 127.0.0.1): what the grid shows is what `filter`
keeps, the export writes the CLI's file, browse marks stay out of the review sets, thumbnails
live in one file, hostile files and requests are answered in one line, and the server keeps
no connection to the workspace between requests."""

from __future__ import annotations

import csv
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from app_support import (
    DELETED,
    HOSTILE_CAPTION,
    ODD_NAMES,
    STRIP,
    app_built,
    get_json,
    grid_tiles,
    item_id,
    post,
    req,
    server,
    sql,
    ws,
)
from conftest import run_cli

from curate.app.server import AppServer
from curate.app.thumbnails import Thumbnails
from curate.core.workspace import Workspace
from curate.validate import sampling
from curate.validate.review import marks as review_marks

__all__ = ["app_built", "server", "ws"]   # fixtures of app_support: the shared workspace, the module's copy and its server


def test_overview_names_the_model_and_its_random_weights(server):
    status, o = get_json(server.url, "/api/overview")
    assert status == 200
    assert o["model"] == {"model": "curate-tiny", "pretrained": "none", "random_weights": True}
    assert o["classification"] == "sharp"
    assert [c["name"] for c in o["classifications"]] == ["natural", "sharp"]
    assert o["modes"] == ["image", "caption", "ensemble"]
    assert o["status"]["rejected"] == 2 and o["status"]["embedded"] == 19


@pytest.mark.parametrize("selection", [
    {"min_prob": 0.0},
    {"min_prob": 0.6, "mode": "ensemble"},
    {"min_prob": 0.05, "classification": "natural", "mode": "caption"},
])
def test_grid_pages_are_what_filter_keeps_most_probable_first(server, ws, selection, monkeypatch):
    from curate.app import data

    monkeypatch.setattr(data, "PAGE", 4)    # several pages over 19 items: the cursor is exercised
    tiles = grid_tiles(server.url, selection)
    monkeypatch.undo()
    probs = [(-t["prob"], t["id"]) for t in tiles]
    assert probs == sorted(probs)                                  # by prob, then id; no tile twice
    sel_args = ["--mode", selection.get("mode", "image"), "--min-prob", str(selection["min_prob"])]
    if "classification" in selection:
        sel_args += ["--classification", selection["classification"]]
    out = ws.parent / "f.csv"
    run_cli("filter", "-w", ws, *sel_args, "--out", out)
    with open(out, newline="", encoding="utf-8") as f:
        rows = {int(r["id"]): (r["label"], float(r["prob"])) for r in csv.DictReader(f)}
    assert {t["id"]: t["label"] for t in tiles} == {i: label for i, (label, _) in rows.items()}
    assert {t["id"]: t["prob"] for t in tiles} == pytest.approx({i: p for i, (_, p) in rows.items()})
    status, counts = post(server.url, "/api/counts", {"selection": selection})
    assert counts["count"] == len(rows)
    assert sum(x["kept"] for x in counts["labels"]) == len(rows)


def test_label_counts_move_with_the_threshold(server, ws):
    for t in (0.0, 0.5, 0.7):
        _, got = post(server.url, "/api/counts", {"selection": {"min_prob": t}})
        want = dict(sql(ws, 'SELECT label, count(*) FROM "cls_sharp".predictions WHERE prob >= ? GROUP BY label',
                         [t]))
        assert {x["label"]: x["kept"] for x in got["labels"] if x["kept"]} == want


def test_where_filters_and_labels_narrow_the_grid(server, ws):
    tiles = grid_tiles(server.url, {"labels": [], "where": [["source_id", ODD_NAMES[0]]]})
    assert [t["name"] for t in tiles] == [ODD_NAMES[0]]
    label = tiles[0]["label"]
    some = grid_tiles(server.url, {"labels": [label]})
    assert some and all(t["label"] == label for t in some)
    status, got = post(server.url, "/api/grid", {"selection": {"where": [["no_such_column", "x"]]}})
    assert status == 400 and "no column 'no_such_column'" in got["error"]


def test_rejected_items_come_with_their_reasons(server):
    tiles = grid_tiles(server.url, {"status": "rejected"})
    by_name = {t["name"]: t["reason"] for t in tiles}
    assert set(by_name) == {STRIP, "not_an_image.jpg"}
    assert "pixels" in by_name[STRIP]
    assert by_name["not_an_image.jpg"]


def test_detail_has_top_labels_of_each_view_and_the_caption_as_data(server, ws):
    i = item_id(ws, "img_002.jpg")
    status, d = get_json(server.url, f"/api/item/{i}")
    assert status == 200
    assert d["caption"] == HOSTILE_CAPTION                       # JSON data; the page sets textContent
    assert [len(d["top"][v]) for v in ("image", "caption", "ensemble")] == [5, 5, 5]
    best = sql(ws, 'SELECT label, prob FROM "cls_sharp".predictions WHERE id = ?', [i])[0]
    assert (d["top"]["image"][0]["label"], d["top"]["image"][0]["prob"]) == (best[0], pytest.approx(best[1]))
    assert get_json(server.url, "/api/item/999999")[0] == 404
    assert get_json(server.url, "/api/item/abc")[0] == 400


def test_thumbnails_placeholders_and_one_store_file(server, ws):
    i = item_id(ws, "img_001.jpg")
    status, hdrs, body = req(server.url + f"api/thumb/{i}")
    assert status == 200 and hdrs["Content-Type"] == "image/jpeg" and body[:2] == b"\xff\xd8"
    for name in ODD_NAMES:
        assert req(server.url + f"api/thumb/{item_id(ws, name)}")[1]["Content-Type"] == "image/jpeg"
    # a file deleted since build-index, and the rejected ones: a placeholder saying why
    status, hdrs, body = req(server.url + f"api/thumb/{item_id(ws, DELETED)}")
    assert status == 200 and hdrs["Content-Type"] == "image/svg+xml" and b"file not found" in body
    status, hdrs, body = req(server.url + f"api/thumb/{item_id(ws, 'not_an_image.jpg')}")
    assert hdrs["Content-Type"] == "image/svg+xml" and b"<script" not in body
    # every thumbnail in one SQLite file (with its WAL), none beside the photos
    made = sorted(p.name for p in (ws / "app").iterdir())
    assert set(made) <= {"thumbnails.sqlite", "thumbnails.sqlite-wal", "thumbnails.sqlite-shm", "marks.jsonl"}
    assert Thumbnails(ws / "app").count() == 1 + len(ODD_NAMES)


def test_a_thumbnail_follows_its_file_and_a_strip_image_gets_one(tmp_path):
    from conftest import write_jpeg
    from PIL import Image

    store = Thumbnails(tmp_path / "app")
    photo = write_jpeg(tmp_path / "a.jpg", size=(640, 480), seed=1)
    first, ctype = store.get(7, str(photo))
    assert ctype == "image/jpeg"
    with Image.open(__import__("io").BytesIO(first)) as im:
        assert im.size == (256, 192)
    assert store.get(7, str(photo))[0] == first                     # cached
    write_jpeg(photo, size=(300, 600), seed=2)                        # the file replaced: made again
    with Image.open(__import__("io").BytesIO(store.get(7, str(photo))[0])) as im:
        assert im.size == (128, 256)
    strip = tmp_path / "strip.png"
    Image.new("RGB", (200_000, 1), (9, 9, 9)).save(strip)
    data, ctype = store.get(8, str(strip))
    with Image.open(__import__("io").BytesIO(data)) as im:
        assert ctype == "image/jpeg" and im.size == (256, 1)
    assert sorted(p.name for p in (tmp_path / "app").iterdir() if not p.name.endswith(("-wal", "-shm"))) == \
        ["thumbnails.sqlite"]


def test_the_server_holds_no_connection_between_requests(server, ws):
    """Another process can take the write lock right after a request (DuckDB: one writer or
    readers, never both), and the app goes on reading after it let go."""
    assert post(server.url, "/api/grid", {"selection": {}})[0] == 200
    code = f"import duckdb; duckdb.connect({str(ws / 'curate.duckdb')!r}).close(); print('wrote')"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "wrote" in p.stdout, p.stderr
    assert post(server.url, "/api/grid", {"selection": {}})[0] == 200


def test_export_writes_the_file_the_shown_command_writes(server, ws, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for selection, name in [({"labels": [], "min_prob": 0.5, "mode": "ensemble"}, "e.csv"),
                            ({"min_prob": 0.02, "classification": "natural",
                              "where": [["source_id", ODD_NAMES[1]], ["source_id", "img_003.jpg"]]}, "w.parquet")]:
        status, shown = post(server.url, "/api/command", {"selection": selection, "out": name})
        assert status == 200
        words = shlex.split(shown["command"])
        assert words[:2] == ["curate", "filter"] and words[-2:] == ["--out", name]
        app_file = tmp_path / "by-app" / name
        status, got = post(server.url, "/api/export", {"selection": selection, "out": str(app_file)})
        assert status == 200, got
        assert got["kept"] == shown["count"]
        run_cli(*words[1:])                          # the CLI, as the user pastes the command
        cli_file = tmp_path / name
        if name.endswith(".csv"):
            assert app_file.read_bytes() == cli_file.read_bytes()
        else:
            read = "SELECT * FROM read_parquet(?) ORDER BY id"
            assert duckdb.sql(read.replace("?", repr(str(app_file)))).fetchall() == \
                duckdb.sql(read.replace("?", repr(str(cli_file)))).fetchall()
        assert got["kept"] == len(duckdb.sql(f"SELECT * FROM '{cli_file}'").fetchall()) > 0


def test_browse_marks_are_durable_and_never_count_in_a_review_set(ws, tmp_path):
    """A tile marked while browsing is on disk when the page hears "saved", in the app's own
    journal; the review set holding the same (image, label) pair stays unmarked, before and
    after a writer folds the review journal, so the report never counts it."""
    copy = tmp_path / "ws"
    shutil.copytree(ws, copy)
    con = Workspace(copy).connect()
    sampling.draw(con, top_classes=2, per_class=3, seed=1, name="random")
    row = con.execute("SELECT id, label FROM review_items WHERE set_name = 'random' ORDER BY position LIMIT 1"
                      ).fetchall()[0]
    con.close()
    srv = AppServer(copy, 0, load_model=False).start()
    try:
        status, got = post(srv.url, "/api/mark", {"id": row[0], "mark": "miss", "selection": {}})
        assert status == 200 and got["label"] == row[1]            # the label the tile shows: the set's pair
        lines = [json.loads(x) for x in (copy / "app" / "marks.jsonl").read_text().splitlines()]
        assert [(x["id"], x["label"], x["mark"]) for x in lines] == [(row[0], row[1], "miss")]
        # a label sent by the client is not what is recorded: the workspace says what the tile shows
        status, got = post(srv.url, "/api/mark", {"id": row[0], "mark": "hit", "label": "bogus", "selection": {}})
        assert got["label"] == row[1]
        status, d = get_json(srv.url, f"/api/item/{row[0]}")
        assert d["browse_marks"] == [{"label": row[1], "mark": "hit", "at": d["browse_marks"][0]["at"]}]
        assert d["review_marks"] == []
    finally:
        srv.stop()
    assert not (copy / "marks.jsonl").exists()                      # the review journal: untouched
    con = Workspace(copy).connect()                                 # a writer folds the review journal
    try:
        assert review_marks.progress(con, "random").done == 0
        assert con.execute("SELECT count(*) FROM judgments").fetchall()[0][0] == 0
        assert con.execute("SELECT count(mark) FROM review_marks WHERE set_name = 'random'").fetchall()[0][0] == 0
    finally:
        con.close()


def test_a_mark_needs_a_prediction_and_a_known_mark(server, ws):
    assert post(server.url, "/api/mark", {"id": item_id(ws, STRIP), "mark": "hit", "selection": {}})[0] == 404
    assert post(server.url, "/api/mark", {"id": item_id(ws, "img_001.jpg"), "mark": "maybe",
                                          "selection": {}})[0] == 400


# --------------------------------------------------------------------------- security

def _listening(port: int) -> set[str]:
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.split(":")
            if int(p, 16) == port and state == "0A":
                out.add(addr)
    return out


def test_binds_loopback_only(server):
    assert _listening(server.port) == {"0100007F"}


def test_refuses_other_sites_and_what_is_not_json(server, ws):
    port, base = server.port, server.url
    i = item_id(ws, "img_001.jpg")
    mark = json.dumps({"id": i, "mark": "hit", "selection": {}}).encode()
    js = {"Content-Type": "application/json"}
    # DNS rebinding: a foreign Host, on pages, reads and writes
    assert req(base, headers={"Host": f"evil.example:{port}"})[0] == 403
    assert req(base + "api/overview", headers={"Host": f"evil.example:{port}"})[0] == 403
    assert req(base + "api/mark", mark, {**js, "Host": "evil.example"})[0] == 403
    # another site's page in the user's browser
    assert req(base + "api/mark", mark, {**js, "Origin": "http://evil.example"})[0] == 403
    assert req(base + f"api/thumb/{i}", headers={"Sec-Fetch-Site": "cross-site"})[0] == 403
    # what a cross-site form can send without a preflight
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        assert req(base + "api/mark", mark, {"Content-Type": ctype})[0] == 415
    assert req(base + "api/mark", b"x" * 70_000, js)[0] == 413
    assert req(base + "api/mark", b"{not json", js)[0] == 400
    assert req(base + "api/mark", b"[1, 2]", js)[0] == 400
    for method in ("PUT", "DELETE", "OPTIONS", "PATCH"):
        assert req(base + "api/mark", mark, js, method=method)[0] == 405
    # no mark got through any of these
    assert not (ws / "app" / "marks.jsonl").exists()
    # no CORS, and the page's own rules on every answer
    status, hdrs, _ = req(base)
    assert status == 200 and "Access-Control-Allow-Origin" not in hdrs
    assert "script-src 'self'" in hdrs["Content-Security-Policy"] and hdrs["X-Content-Type-Options"] == "nosniff"
    status, hdrs, _ = req(base + "static/app.js", headers={"Origin": "http://evil.example"})
    assert status == 200 and "Access-Control-Allow-Origin" not in hdrs
    assert req(base + "static/../server.py")[0] == 404
    assert req(base + "static/server.py")[0] == 404


def test_bad_selections_are_one_line_errors(server):
    for sel, words in [({"mode": "x"}, "mode must be"), ({"min_prob": 2}, "min_prob"), ({"min_prob": "0.5"}, "min_prob"),
                       ({"labels": "sky"}, "labels"), ({"status": "gone"}, "status"),
                       ({"classification": "../../x"}, "classification"), ({"classification": "nope"}, "nope"),
                       ({"mode": "calibrated"}, "no calibration")]:
        status, got = post(server.url, "/api/grid", {"selection": sel})
        assert status in (400, 404) and words in got["error"] and "\n" not in got["error"], (sel, got)
    status, got = post(server.url, "/api/grid", {"selection": {}, "search": {"text": "x"}})
    assert status == 400 and "model" in got["error"]            # started without the model: said, not a crash


@pytest.mark.slow   # a process killed mid-run (the marker's own category)
def test_curate_app_killed_loses_no_acknowledged_mark(ws, tmp_path):
    """`curate app` as a user starts it, killed with SIGKILL: every mark it acknowledged is on disk."""
    import os
    import re
    import signal

    from curate.validate.review import journal

    copy = tmp_path / "ws"
    shutil.copytree(ws, copy)
    shutil.rmtree(copy / "app", ignore_errors=True)
    proc = subprocess.Popen([sys.executable, "-u", "-m", "curate.cli", "app", "-w", str(copy), "--port", "0",
                             "--no-browser"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        url = None
        for line in proc.stdout:
            m = re.search(r"curate app on (http://127\.0\.0\.1:\d+/)", line)
            if m:
                url = m.group(1)
                break
        assert url, "the app did not print its address"
        _, page = post(url, "/api/grid", {"selection": {}})
        for t in page["tiles"][:5]:
            assert post(url, "/api/mark", {"id": t["id"], "mark": "skip", "selection": {}})[0] == 200
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert sorted((i, label) for i, label, mark, _ in journal.read(copy / "app")) == \
        sorted((t["id"], t["label"]) for t in page["tiles"][:5])


def test_the_calibrated_view_is_what_filter_calibrated_keeps(ws, tmp_path, monkeypatch):
    """With a calibration fitted by `curate report`, the mode `calibrated` shows what
    `filter --calibrated` keeps, and its command says --calibrated (no min-prob)."""
    copy = tmp_path / "ws"
    shutil.copytree(ws, copy)
    run_cli("sample", "-w", copy, "--top-classes", "3", "--per-class", "4", "--seed", "7")
    con = duckdb.connect(str(copy / "curate.duckdb"))
    con.execute("INSERT INTO judgments (id, label, mark) SELECT id, label,"
                " CASE WHEN position % 2 = 0 THEN 'hit' ELSE 'miss' END FROM review_items")
    con.close()
    run_cli("report", "-w", copy, "--out", tmp_path / "report", "--target-precision", "0.5", "--min-support", "1",
            "--no-plots")
    srv = AppServer(copy, 0, load_model=False).start()
    try:
        _, o = get_json(srv.url, "/api/overview")
        assert o["modes"][-1] == "calibrated" and o["calibration_source"] == "image"
        tiles = grid_tiles(srv.url, {"mode": "calibrated", "min_prob": 0.9})   # min-prob: not this view's rule
        monkeypatch.chdir(tmp_path)
        _, shown = post(srv.url, "/api/command", {"selection": {"mode": "calibrated"}, "out": "c.csv"})
    finally:
        srv.stop()
    words = shlex.split(shown["command"])
    assert "--calibrated" in words and "--min-prob" not in words and words[words.index("--mode") + 1] == "image"
    run_cli(*words[1:])
    with open(tmp_path / "c.csv", newline="", encoding="utf-8") as f:
        rows = {int(r["id"]): float(r["prob"]) for r in csv.DictReader(f)}
    assert rows and {t["id"]: t["prob"] for t in tiles} == pytest.approx(rows)
    assert shown["count"] == len(rows)
