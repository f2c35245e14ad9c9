"""What `curate app` keeps in memory between requests (curate/app/snapshot.py, data.py's
Shown, Ranked and Texts): the same answers as the SQL, and never one the database has moved
past: a write by another process between two requests, a re-classify, a commit while that
process still holds the file; and no open of the file while it is unchanged, so the page
keeps working while a writer holds it without changing it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pytest
from app_support import app_built, copy_of, post
from conftest import write_jpeg

from curate.app import data, snapshot
from curate.app.selection import Selection
from curate.app.server import AppServer
from curate.app.thumbnails import Thumbnails
from curate.core.workspace import Workspace

__all__ = ["app_built"]

SELECTIONS = [
    {},
    {"min_prob": 0.5},                                  # the tied value below: ties at the threshold
    {"min_prob": 0.31, "classification": "natural"},
    {"mode": "caption", "min_prob": 0.05},
    {"mode": "ensemble", "min_prob": 0.5},
    {"labels": ["__no_such_label__"]},
]


@pytest.fixture(scope="module")
def tied(app_built, tmp_path_factory) -> Path:
    """A copy whose active classification has ties: a third of its images at exactly 0.5, the
    keyset cursor's and the threshold's hardest case."""
    ws = copy_of(app_built, tmp_path_factory)
    con = duckdb.connect(str(ws / "curate.duckdb"))
    con.execute('UPDATE "cls_sharp".item_scores SET image_prob = 0.5, ensemble_prob = 0.5 WHERE id % 3 = 0')
    con.close()
    return ws


def _walk(ws: Path, sel: Selection) -> list[dict]:
    tiles, after = [], None
    while True:
        got = data.page(Workspace(ws), sel, after, n=4)
        tiles += got["tiles"]
        if got["next"] is None:
            return tiles
        after = (got["next"][0], got["next"][1])


def _answers(ws: Path, raw: dict) -> dict:
    w = Workspace(ws)
    sel = Selection.parse(raw)
    tiles = _walk(ws, sel)
    labels = sorted({t["label"] for t in tiles})
    ids = np.array([t["id"] for t in tiles][::-1] + [10 ** 9, -5], dtype=np.int64)
    scores = np.linspace(0.9, 0.1, len(ids))
    narrowed = Selection.parse({**raw, "labels": labels[:1]})
    return {"tiles": tiles, "counts": data.label_counts(w, sel), "count": data.count(w, sel),
            "narrowed": _walk(ws, narrowed), "narrowed_counts": data.label_counts(w, narrowed),
            "hits": [data.hits_page(w, sel, ids, scores, offset, n=3) for offset in (0, 3)],
            "hits_narrowed": data.hits_page(w, narrowed, ids, scores, 0)}


@pytest.mark.parametrize("raw", SELECTIONS)
def test_kept_reads_answer_what_the_sql_answers(tied, raw, monkeypatch):
    """The same pages (every one, by the cursor), label counts, count and search hits from the
    arrays kept in memory, from them with each page's texts read by SQL, and from SQL alone."""
    snapshot.forget(Workspace(tied))
    kept = _answers(tied, raw)
    assert snapshot._LIVE[str(Workspace(tied).root)].values, "nothing was kept"
    monkeypatch.setattr(data, "TEXT_ITEM_BYTES", 10 ** 12)        # texts too many to keep: SQL per page
    snapshot.forget(Workspace(tied))
    assert _answers(tied, raw) == kept
    monkeypatch.setattr(data, "RANKED_ROW_BYTES", 10 ** 12)       # predictions too many: all SQL
    snapshot.forget(Workspace(tied))
    assert _answers(tied, raw) == kept
    if raw == {"min_prob": 0.5}:
        assert sum(t["prob"] == 0.5 for t in kept["tiles"]) >= 3    # the ties were there to page through


@pytest.fixture()
def served(app_built, tmp_path_factory):
    ws = copy_of(app_built, tmp_path_factory)
    srv = AppServer(ws, 0, load_model=False).start()
    yield ws, srv
    srv.stop()


def _other_process(ws: Path, statements: list[str]) -> None:
    code = ("import duckdb, sys\ncon = duckdb.connect(sys.argv[1])\n"
            "for s in sys.argv[2:]:\n    con.execute(s)\ncon.close()\n")
    p = subprocess.run([sys.executable, "-c", code, str(ws / "curate.duckdb"), *statements],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr


def test_a_write_by_another_process_between_requests_is_seen(served):
    ws, srv = served
    first = post(srv.url, "/api/grid", {"selection": {}})[1]["tiles"][0]
    before = post(srv.url, "/api/counts", {"selection": {"min_prob": 0.2}})[1]
    _other_process(ws, [f"UPDATE items SET caption = 'written by another process' WHERE id = {first['id']}",
                        f'UPDATE "cls_sharp".item_scores SET image_prob = 0.1 WHERE id = {first["id"]}'])
    tiles = post(srv.url, "/api/grid", {"selection": {}})[1]["tiles"]
    moved = next(t for t in tiles if t["id"] == first["id"])
    assert moved["caption"] == "written by another process" and moved["prob"] == pytest.approx(0.1)
    after = post(srv.url, "/api/counts", {"selection": {"min_prob": 0.2}})[1]
    assert after["count"] == before["count"] - 1


def test_a_reclassify_is_seen_by_the_next_request(served, tiny_encoder):
    from curate.classify.run import classify

    ws, srv = served
    before = {t["id"]: t["prob"] for t in post(srv.url, "/api/grid", {"selection": {}})[1]["tiles"]}
    counts = post(srv.url, "/api/counts", {"selection": {"min_prob": 0.5}})[1]
    classify(ws, encoder=tiny_encoder, logit_scale=5.0, name="sharp")     # much flatter probabilities
    after = {t["id"]: t["prob"] for t in post(srv.url, "/api/grid", {"selection": {}})[1]["tiles"]}
    con = Workspace(ws).connect(read_only=True)
    try:
        want = dict(con.execute('SELECT id, prob FROM "cls_sharp".predictions').fetchall())
    finally:
        con.close()
    assert after == pytest.approx(want) and after != pytest.approx(before)
    assert post(srv.url, "/api/counts", {"selection": {"min_prob": 0.5}})[1] != counts


HOLD = """
import duckdb, sys
con = duckdb.connect(sys.argv[1])
print("holding", flush=True)
sys.stdin.readline()
con.execute("UPDATE items SET caption = 'committed while held' WHERE id = " + sys.argv[2])
print("committed", flush=True)
sys.stdin.readline()
con.close()
"""


def test_a_held_but_unchanged_workspace_is_shown_and_a_changed_one_never_stale(served, monkeypatch):
    """A writer that holds the file without changing it does not stop the page (nothing is
    opened while the database is unchanged); once it commits, the page waits for it (503,
    naming who holds it) rather than show what it replaced; once it lets go, the change shows."""
    ws, srv = served
    monkeypatch.setattr(snapshot, "WAIT", 0.3)
    grid = post(srv.url, "/api/grid", {"selection": {}})[1]
    first = grid["tiles"][0]
    post(srv.url, "/api/counts", {"selection": {"min_prob": 0.3}})
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(ws / "curate.duckdb"), str(first["id"])],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "holding"
        status, again = post(srv.url, "/api/grid", {"selection": {}})
        assert status == 200 and again["tiles"] == grid["tiles"]
        status, counts = post(srv.url, "/api/counts", {"selection": {"min_prob": 0.77}})   # a new threshold
        assert status == 200 and counts["labels"]
        p.stdin.write("\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "committed"
        status, got = post(srv.url, "/api/grid", {"selection": {}})
        assert status == 503 and "curate.duckdb" in got["error"]
        p.stdin.write("\n")
        p.stdin.flush()
        assert p.wait(timeout=60) == 0
    finally:
        p.kill()
    tiles = post(srv.url, "/api/grid", {"selection": {}})[1]["tiles"]
    assert next(t for t in tiles if t["id"] == first["id"])["caption"] == "committed while held"


def test_a_prefetched_thumbnail_still_follows_its_file(tmp_path):
    thumbs = Thumbnails(tmp_path / "app")
    photo = write_jpeg(tmp_path / "a.jpg", size=(640, 480), seed=1)
    made, _ = thumbs.get(1, str(photo))
    assert thumbs.prefetch([1, 2]) == 1
    assert thumbs.ahead(1, str(photo)) == made                            # from the page's one query
    assert thumbs.get(1, str(photo))[0] == made
    time.sleep(0.01)
    write_jpeg(photo, size=(300, 600), seed=2)                            # the file replaced since
    assert thumbs.prefetch([1]) == 1
    assert thumbs.ahead(1, str(photo)) is None                            # read ahead, but of the old file
    remade, ctype = thumbs.get(1, str(photo))
    assert ctype == "image/jpeg" and remade != made
    assert thumbs.ahead(1, str(photo)) is None and thumbs.get(1, str(photo))[0] == remade
    thumbs.close()


def test_answers_go_out_without_waiting_for_the_clients_ack(served):
    """A browser keeps its connections open; the server writes a response's head and body
    apart, so with Nagle on each answer waited for the client's delayed ACK (~40 ms). Every
    connection the app accepts has TCP_NODELAY set."""
    import http.client
    import socket

    _, srv = served
    c = http.client.HTTPConnection(f"127.0.0.1:{srv.port}")
    try:
        for _ in range(2):                                  # the same connection, kept alive
            c.request("GET", "/api/status")
            assert c.getresponse().read()
        conns = list(srv.server.server_state.connections)
        assert conns
        for proto in conns:
            sock = proto.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        c.close()


def test_the_active_classification_named_or_not_is_kept_once(tied):
    """The page names the active classification that the app's first reads asked for as None:
    one set of predictions, kept once (at 1M, reading it again cost the first page 2.6 s)."""
    w = Workspace(tied)
    snapshot.forget(w)
    unnamed = data.page(w, Selection.parse({}))
    named = data.page(w, Selection.parse({"classification": "sharp"}))
    assert named == unnamed
    kept = [k for k in snapshot._LIVE[str(w.root)].values if k[0] == "ranked"]
    assert kept == [("ranked", "sharp", "predictions")]
