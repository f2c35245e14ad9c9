"""The review view of the app (`curate review`) over real HTTP: routes, safety checks, concurrency,
and a hard kill."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest
from review_support import copy_workspace, fake_workspace

from curate.app.server import ReviewServer
from curate.core.workspace import Workspace
from curate.validate import sampling
from curate.validate.review import marks

CAPTION = '<img src=x onerror="alert(1)"> & friends'


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """Made once for the module, never written: each test gets its own copy (ws)."""
    preds = [(i, ["bridge", "skyscraper"][i % 2], 0.2 + i / 100) for i in range(40)]
    ws = fake_workspace(tmp_path_factory.mktemp("review") / "ws", preds, captions={i: CAPTION for i in range(40)})
    con = ws.connect()
    sampling.draw(con, top_classes=2, per_class=10, seed=3, name="s")
    con.close()
    return ws.root


@pytest.fixture()
def ws(template, tmp_path):
    return copy_workspace(template, tmp_path / "ws")


@pytest.fixture()
def server(ws):
    srv = ReviewServer(ws, "s", port=0).start()
    yield srv
    srv.stop()


def _read(ws, sql):
    """What any other process sees: a fresh read-only connection."""
    con = Workspace(ws.root).connect(read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _req(url, data=None, headers=None, method=None):
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def _post(url, body, ctype="application/json", headers=None):
    return _req(url + "api/review/mark", json.dumps(body).encode(), {"Content-Type": ctype, **(headers or {})})


def _listening(port: int) -> set[str]:
    """Local addresses the kernel has a listening TCP socket on for `port` (IPv4 and IPv6)."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.split(":")
            if int(p, 16) == port and state == "0A":  # 0A: LISTEN
                out.add(addr)
    return out


def test_binds_loopback_only(server):
    """Asked of the kernel, not of the server: the one listening socket is 127.0.0.1, and the
    machine's other addresses refuse the connection."""
    import socket

    port = int(server.base.rsplit(":", 1)[1].strip("/"))
    assert _listening(port) == {"0100007F"}                 # 127.0.0.1, little-endian hex
    others = [a for a in subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
              if ":" not in a and not a.startswith("127.")]
    for addr in others:
        with pytest.raises(OSError), socket.create_connection((addr, port), timeout=2):
            pass


def test_page_items_and_images(server, ws):
    status, headers, body = _req(server.url)
    assert server.url.endswith("/review")   # the app, opened at its review view
    assert status == 200 and b"/static/app.js" in body and b"https://" not in body  # no CDN
    for name in ("app.js", "review.js", "app.css"):
        status, _h, body = _req(server.base + "static/" + name)
        assert status == 200 and b"http://" not in body and b"https://" not in body  # works offline
    status, _h, body = _req(server.base + "api/review/items")
    state = json.loads(body)
    assert state["set"] == "s" and state["progress"] == {"total": 20, "done": 0, "left": 20, "hits": 0,
                                                         "misses": 0, "skips": 0}
    first = state["items"][0]
    assert set(first) == {"position", "id", "label", "prob", "caption", "mark"}
    status, headers, body = _req(server.base + f"api/image/{first['id']}")
    assert status == 200 and headers["Content-Type"] == "image/jpeg" and body[:2] == b"\xff\xd8"


def test_a_mark_is_in_the_workspace_before_the_reply(server, ws):
    # (was: in DuckDB, through the server's own connection; the server no longer holds one)
    items = json.loads(_req(server.base + "api/review/items")[2])["items"]
    it = items[0]
    status, _h, body = _post(server.base, {"id": it["id"], "mark": "hit"})
    assert status == 200 and json.loads(body)["progress"]["done"] == 1
    assert _read(ws, "SELECT id, label, mark FROM judgments") == [(it["id"], it["label"], "hit")]
    _post(server.base, {"id": it["id"], "mark": "miss"})  # changing one's mind replaces the mark
    assert _read(ws, "SELECT mark FROM judgments") == [("miss",)]


def test_refuses_what_it_must(server, ws):
    items = json.loads(_req(server.base + "api/review/items")[2])["items"]
    port = server.base.rsplit(":", 1)[1].strip("/")
    # DNS rebinding: a foreign Host
    assert _req(server.base + "api/review/items", headers={"Host": f"evil.example:{port}"})[0] == 403
    # a cross-site page posting a mark
    assert _post(server.base, {"id": items[0]["id"], "mark": "hit"}, headers={"Origin": "http://evil.example"})[0] == 403
    # a form post (no JSON) never reaches the database
    assert _post(server.base, {"id": items[0]["id"], "mark": "hit"}, ctype="text/plain")[0] == 415
    assert _post(server.base, {"id": items[0]["id"], "mark": "maybe"})[0] == 400
    assert _post(server.base, {"id": 10_000, "mark": "hit"})[0] == 400
    # an item the workspace has, never a path from the URL
    assert _req(server.base + "api/image/10000")[0] == 404
    assert _req(server.base + "static/../../curate.duckdb")[0] == 404
    assert _req(server.base + "static/%2e%2e/server.py")[0] == 404
    assert _read(ws, "SELECT count(*) FROM judgments") == [(0,)]


def test_captions_reach_the_page_as_data_only(server):
    """The page inserts text with textContent; the JSON carries the caption verbatim, and
    nothing server-side pastes it into HTML."""
    items = json.loads(_req(server.base + "api/review/items")[2])["items"]
    assert {it["caption"] for it in items} == {CAPTION}
    for name in ("review.js", "app.js"):
        js = _req(server.base + "static/" + name)[2].decode()
        assert "innerHTML" not in js and "textContent" in js
    assert b"<img src=x" not in _req(server.url)[2]


def test_concurrent_marks_are_all_saved(server, ws):
    items = json.loads(_req(server.base + "api/review/items")[2])["items"]
    errors = []

    def mark(it):
        status = _post(server.base, {"id": it["id"], "mark": "hit" if it["id"] % 2 else "miss"})[0]
        if status != 200:
            errors.append(status)

    threads = [threading.Thread(target=mark, args=(it,)) for it in items]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    con = Workspace(ws.root).connect(read_only=True)
    p = marks.progress(con, "s")
    con.close()
    assert (p.done, p.hits, p.misses) == (20, sum(it["id"] % 2 for it in items), sum(1 - it["id"] % 2 for it in items))


@pytest.mark.slow
def test_a_killed_server_loses_no_acknowledged_mark(ws):
    """`curate review` killed with SIGKILL: every mark it acknowledged is in the file."""
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "curate.cli", "review", "-w", str(ws.root), "--port", "0", "--no-browser"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        url = None
        for line in proc.stdout:
            m = re.search(r"open (http://127\.0\.0\.1:\d+/)", line)
            if m:
                url = m.group(1)
                break
        assert url, "the server did not print its address"
        items = json.loads(_req(url + "api/review/items")[2])["items"]
        for it in items[:7]:
            assert _post(url, {"id": it["id"], "mark": "hit"})[0] == 200
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    con = Workspace(ws.root).connect(read_only=True)
    got = con.execute("SELECT id FROM judgments WHERE mark = 'hit' ORDER BY id").fetchall()
    assert [g[0] for g in got] == sorted(it["id"] for it in items[:7])


def test_a_busy_port_falls_back_and_says_so(ws):
    """`curate review --port P` with P taken: it serves on a free port and says which."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy = taken.getsockname()[1]
        proc = subprocess.Popen(
            [sys.executable, "-u", "-m", "curate.cli", "review", "-w", str(ws.root), "--port", str(busy), "--no-browser"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            seen = []
            for line in proc.stdout:
                seen.append(line)
                if re.search(r"open http://127\.0\.0\.1:\d+/review", line):
                    break
            url = re.search(r"open (http://127\.0\.0\.1:(\d+)/)", seen[-1])
            assert url, "".join(seen)
            assert f"port {busy} is not free" in "".join(seen) and \
                f"serving on port {url.group(2)} instead" in "".join(seen)
            assert int(url.group(2)) != busy and _req(url.group(1) + "api/review/items")[0] == 200
        finally:
            proc.send_signal(signal.SIGINT)
            out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, out


def test_the_app_without_a_review_set_says_how_to_draw_one(tmp_path):
    """`curate app` on a workspace where no set was drawn: its review view says which command
    draws one (and draws nothing), and stopping it folds nothing."""
    from curate.app.review import Reviewing

    ws = fake_workspace(tmp_path / "ws", [(i, "bridge", 0.5) for i in range(4)])
    r = Reviewing(Workspace(ws.root), None, "http://127.0.0.1:1/review")
    assert r.get() is None and "sample" in (r.error or "")
    assert r.stop() == 0
