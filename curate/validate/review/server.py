"""The review page's local HTTP server (stdlib only; 127.0.0.1 only).

    GET  /                 the page (static/index.html; it draws everything with textContent)
    GET  /static/<file>    its script and style, from the package (works offline, no CDN)
    GET  /api/items        the set: items in page order with their marks, and the progress
    GET  /image/<id>       the image of one item *of this set* (no other file is reachable)
    POST /api/mark         {"id": 12, "mark": "hit"} -> durable before the reply

The server does not keep the DuckDB file open: a DuckDB file has one writer or any
number of readers, and a review lasts 20-35 minutes, during which `curate sql`, `report`,
`filter` or a `duckdb -readonly` shell must be able to read the workspace and `classify`
to write it. It reads the set and its marks once, keeps them in memory, appends each mark
to the workspace's journal (fsynced before the reply, curate/validate/review/journal.py), and folds the
journal into `judgments` from a background thread whenever it can take the write lock
for a moment, and once more when it stops. Readers merge the journal in the meantime.

A page on another site cannot reach this server through the user's browser: requests
must carry our own Host (no DNS rebinding), marks must be JSON (a cross-site form cannot
send that without a preflight we never grant) and a POST with an Origin must come from us.
A malformed request (bad JSON, a missing, non-numeric, negative, oversized or untrue
Content-Length) gets a JSON error and the server goes on; nothing reaches its stderr.
"""

from __future__ import annotations

import contextlib
import io
import json
import mimetypes
import os
import re
import socket
import sys
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path

from ...core.workspace import Workspace
from ...errors import WorkspaceBusy
from .. import sampling
from . import journal, marks

HOST = "127.0.0.1"
STATIC_FILES = {"index.html": "text/html; charset=utf-8",
                "review.js": "text/javascript; charset=utf-8",
                "review.css": "text/css; charset=utf-8"}
# Served as they are; anything else (TIFF, CMYK JPEG the browser may not show...) is
# re-encoded by Pillow.
BROWSER_IMAGES = {"image/jpeg", "image/png", "image/gif", "image/webp"}
MAX_BODY = 4096
# A client that promises more body than it sends must not hold a thread forever.
READ_TIMEOUT_S = 30
# The journal is folded this long after a mark (the marks made meanwhile go with it), and
# tried again every FOLD_RETRY_S while another process holds the file.
FOLD_EVERY_S = 30.0
FOLD_RETRY_S = 2.0


class ReviewApp:
    """The state behind the server: one set and its marks, in memory, under one lock."""

    def __init__(self, ws: Workspace, set_name: str | None):
        self.ws = ws
        self.lock = threading.Lock()
        self.marked = threading.Event()  # wakes the server's folding thread
        self._last = datetime.min
        con = ws.connect(read_only=True)
        try:
            self.set = sampling.get_set(con, set_name)
            self._load(con)
        finally:
            con.close()

    def _load(self, con) -> None:
        # The set itself is frozen; only its marks change.
        self.rows = marks.rows(con, self.set.name)
        self.items = {r.id: r for r in self.rows}
        self.marks = {r.id: r.mark for r in self.rows if r.mark is not None}

    def progress(self) -> marks.Progress:
        got = list(self.marks.values())
        return marks.Progress(len(self.rows), got.count("hit"), got.count("miss"), got.count("skip"))

    def classes(self) -> list[dict]:
        """Each class's running estimate (hits / judged) with its interval; in a sequential
        review (the set's target_width) whether it has enough marks and about how many more
        it needs (curate/validate/intervals.py). Called under the lock."""
        from .. import intervals

        width = self.set.target_width
        out: dict[str, dict] = {}
        for r in self.rows:
            c = out.setdefault(r.label, {"label": r.label, "items": 0, "hits": 0, "misses": 0, "skips": 0})
            c["items"] += 1
            m = self.marks.get(r.id)
            if m is not None:
                c[{"hit": "hits", "miss": "misses", "skip": "skips"}[m]] += 1
        for c in out.values():
            n = c["hits"] + c["misses"]
            e = intervals.proportion(c["hits"], n)
            c.update(estimate=e.value, low=e.low, high=e.high, text=intervals.pct_ci(e), n=n)
            if width is not None:
                marked = n + c["skips"]
                c["done"] = intervals.sequential_done(c["hits"], n, width) or marked >= c["items"]
                c["needed"] = 0 if c["done"] else min(intervals.needed(c["hits"], n, width), c["items"] - marked)
        return list(out.values())

    def state(self) -> dict:
        with self.lock:
            return {
                "set": self.set.name,
                "source": self.set.source,
                "target_width": self.set.target_width,
                "z": _z(), "min_marks": _min_marks(),
                "items": [{"position": r.position, "id": r.id, "label": r.label, "prob": r.prob,
                           "caption": r.caption or "", "mark": self.marks.get(r.id)} for r in self.rows],
                "progress": self.progress().as_dict(),
                "classes": self.classes(),
            }

    def mark(self, item_id: int, mark: str) -> dict:
        if mark not in marks.MARKS:
            raise ValueError(f"unknown mark {mark!r}: use one of {', '.join(marks.MARKS)}")
        row = self.items.get(item_id)
        if row is None:
            raise KeyError(f"id {item_id} is not in review set {self.set.name!r}")
        with self.lock:
            # strictly increasing times: the later of two marks on one image always wins
            at = max(datetime.now(), self._last + timedelta(microseconds=1))
            # The label comes from the set, never from the client: a mark judges what was shown.
            journal.append(self.ws.root, [(item_id, row.label, mark, at)])
            self._last = at
            self.marks[item_id] = mark
            prog = self.progress()
            classes = self.classes()
        self.marked.set()
        return {"ok": True, "id": item_id, "mark": mark, "progress": prog.as_dict(), "classes": classes}

    def fold(self, wait: float | None = 0.0) -> bool:
        """Save the journal into the database if the write lock can be had within `wait` s
        (None: the default wait)."""
        with self.lock:
            try:
                con = self.ws.connect(wait=wait)  # a read-write connect folds the journal
            except WorkspaceBusy:
                return False
            try:
                self._load(con)  # marks imported meanwhile by `curate review --import` show too
            finally:
                con.close()
        return True

    def image(self, item_id: int) -> tuple[bytes, str]:
        row = self.items.get(item_id)
        if row is None or not row.path:
            raise KeyError(f"id {item_id} is not in review set {self.set.name!r}")
        path = Path(row.path)
        ctype = mimetypes.guess_type(path.name)[0] or ""
        data = path.read_bytes()
        if ctype in BROWSER_IMAGES:
            return data, ctype
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            out = io.BytesIO()
            im.convert("RGB").save(out, "JPEG", quality=90)
        return out.getvalue(), "image/jpeg"


def _z() -> float:
    from .. import intervals

    return intervals.z_of(intervals.DEFAULT_LEVEL)


def _min_marks() -> int:
    from .. import intervals

    return intervals.SEQUENTIAL_MIN


class _BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = READ_TIMEOUT_S

    # -- plumbing ---------------------------------------------------------------
    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        pass  # one line per image would drown the terminal; errors reach the page instead

    def _send(self, status: int, body: bytes, ctype: str, cache: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "max-age=3600" if cache else "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy",
                         "default-src 'self'; img-src 'self'; script-src 'self'; style-src 'self'")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: dict) -> None:
        self._send(status, json.dumps(obj).encode("utf-8"), "application/json")

    def _error(self, status: int, message: str, close: bool = False) -> None:
        # A body we did not read would be taken for the next request: drop the connection.
        if close:
            self.close_connection = True
        self._json(status, {"ok": False, "error": message})

    def _host_ok(self) -> bool:
        port = self.server.server_address[1]
        return self.headers.get("Host", "") in {f"{HOST}:{port}", f"localhost:{port}"}

    def _body(self) -> bytes:
        """The request body, read exactly as its Content-Length says (at most MAX_BODY bytes)."""
        if self.headers.get("Transfer-Encoding"):
            raise _BadRequest(HTTPStatus.LENGTH_REQUIRED, "send the body with a Content-Length, not chunked")
        values = self.headers.get_all("Content-Length") or []
        if not values:
            raise _BadRequest(HTTPStatus.LENGTH_REQUIRED, "a Content-Length header is required")
        if len(set(v.strip() for v in values)) != 1 or not re.fullmatch(r"[0-9]{1,12}", values[0].strip()):
            raise _BadRequest(HTTPStatus.BAD_REQUEST, f"bad Content-Length: {values[0][:40]!r}")
        length = int(values[0])
        if length > MAX_BODY:
            raise _BadRequest(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body too large (at most {MAX_BODY} bytes)")
        try:
            data = self.rfile.read(length)
        except OSError:  # the timeout: the client stopped sending
            data = b""
        if len(data) != length:
            raise _BadRequest(HTTPStatus.BAD_REQUEST,
                              f"the body is shorter than its Content-Length ({len(data)} of {length} bytes)")
        return data

    # -- routes -----------------------------------------------------------------
    def do_GET(self) -> None:
        try:
            self._get()
        except ConnectionError:
            self.close_connection = True
        except Exception as e:  # noqa: BLE001 - one bad request must not stop the review
            self._internal(e)

    do_HEAD = do_GET

    def do_POST(self) -> None:
        try:
            self._post()
        except ConnectionError:
            self.close_connection = True
        except Exception as e:  # noqa: BLE001
            self._internal(e)

    def _internal(self, e: Exception) -> None:
        print(f"curate review: {self.command} {self.path[:80]}: {type(e).__name__}: {e}", file=sys.stderr)
        try:
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(e).__name__}: {e}", close=True)
        except OSError:
            self.close_connection = True

    def _get(self) -> None:
        if not self._host_ok():
            return self._error(HTTPStatus.FORBIDDEN, "wrong Host header")
        app = self.server.app
        path = self.path.split("?", 1)[0]
        try:
            if path in ("/", "/index.html"):
                return self._static("index.html")
            if path.startswith("/static/"):
                return self._static(path[len("/static/"):])
            if path == "/api/items":
                return self._json(HTTPStatus.OK, app.state())
            if path.startswith("/image/"):
                data, ctype = app.image(int(path[len("/image/"):]))
                return self._send(HTTPStatus.OK, data, ctype, cache=True)
        except (KeyError, ValueError, OSError) as e:
            return self._error(HTTPStatus.NOT_FOUND, str(e))
        return self._error(HTTPStatus.NOT_FOUND, f"no such page: {path}")

    def _post(self) -> None:
        if not self._host_ok():
            return self._error(HTTPStatus.FORBIDDEN, "wrong Host header", close=True)
        origin = self.headers.get("Origin")
        if origin is not None and origin != f"http://{self.headers.get('Host')}":
            return self._error(HTTPStatus.FORBIDDEN, "cross-origin request refused", close=True)
        if self.path != "/api/mark":
            return self._error(HTTPStatus.NOT_FOUND, f"no such endpoint: {self.path}", close=True)
        if not self.headers.get("Content-Type", "").startswith("application/json"):
            return self._error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send JSON", close=True)
        try:
            raw = self._body()
        except _BadRequest as e:
            return self._error(e.status, str(e), close=True)
        try:
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise ValueError("send a JSON object: {\"id\": ..., \"mark\": ...}")
            result = self.server.app.mark(int(body["id"]), str(body["mark"]))
        except KeyError as e:
            return self._error(HTTPStatus.BAD_REQUEST, f"missing or unknown: {e}")
        except (ValueError, TypeError, OverflowError, RecursionError) as e:  # JSONDecodeError is a ValueError
            return self._error(HTTPStatus.BAD_REQUEST, f"bad request: {e}")
        except OSError as e:  # the journal could not be written: the page keeps the mark queued and retries
            return self._error(HTTPStatus.SERVICE_UNAVAILABLE, f"not saved: {e}")
        self._json(HTTPStatus.OK, result)

    def _static(self, name: str) -> None:
        if name not in STATIC_FILES:  # a fixed list: no path from the URL touches the disk
            return self._error(HTTPStatus.NOT_FOUND, f"no such file: {name}")
        data = resources.files("curate.validate.review").joinpath("static", name).read_bytes()
        self._send(HTTPStatus.OK, data, STATIC_FILES[name])


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, app: ReviewApp, port: int):
        self.app = app
        super().__init__((HOST, port), _Handler)

    def handle_error(self, request, client_address) -> None:
        # Whatever escapes a handler (a client gone mid-reply): one line, never a traceback.
        exc = sys.exc_info()[1]
        if not isinstance(exc, ConnectionError | TimeoutError):
            print(f"curate review: request from {client_address[0]} failed: {type(exc).__name__}: {exc}",
                  file=sys.stderr)


# ws/<RECORD>: the review page serving this workspace (pid, host, url, set), written when it
# starts and removed when it stops, so that a second `curate review` points to it instead of
# opening another page on another port (one killed leaves it behind: its pid is gone then).
RECORD = "review-server.json"


@dataclass(frozen=True)
class Running:
    """A review page of a workspace served by another live process."""
    pid: int
    url: str
    set_name: str


def running_review(ws: Workspace | str | Path) -> Running | None:
    """The review page another process on this machine serves for this workspace, or None
    (no record, or one left by a process that is gone or no longer answers)."""
    root = ws.root if isinstance(ws, Workspace) else Path(ws)
    try:
        rec = json.loads((root / RECORD).read_text(encoding="utf-8"))
        pid, url, host = int(rec["pid"]), str(rec["url"]), str(rec["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if host != socket.gethostname() or pid == os.getpid() or not _alive(pid):
        return None
    try:  # the pid may have been reused since: the page itself must answer
        port = int(url.rstrip("/").rsplit(":", 1)[1])
        with socket.create_connection((HOST, port), timeout=2):
            pass
    except (OSError, ValueError, IndexError):
        return None
    return Running(pid, url, str(rec.get("set", "")))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    except OSError:
        return False
    return True


class ReviewServer:
    """Serve one review set on http://127.0.0.1:<port>/ (port 0 = any free port)."""

    def __init__(self, ws: Workspace | str | Path, set_name: str | None = None, port: int = 0,
                 fold_every: float | None = None):
        self.app = ReviewApp(ws if isinstance(ws, Workspace) else Workspace(ws), set_name)
        self._httpd = _Server(self.app, port)
        self._record = self.app.ws.root / RECORD
        with contextlib.suppress(OSError):  # only a hint for a second `curate review`: never a reason to fail
            self._record.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "url": self.url,
                                                "set": self.app.set.name}), encoding="utf-8")
        self._thread: threading.Thread | None = None
        self.fold_every = FOLD_EVERY_S if fold_every is None else fold_every
        self._stop = threading.Event()
        self._folder = threading.Thread(target=self._fold_loop, name="curate-review-fold", daemon=True)
        self._folder.start()

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/"

    def _fold_loop(self) -> None:
        """Fold the journal `fold_every` s after a mark, retrying while the file is held.

        Not after every mark: each fold holds the write lock for a moment, and a `duckdb`
        shell opened in that moment fails (curate's own commands wait and retry)."""
        while not self._stop.is_set():
            self.app.marked.wait()
            if self._stop.wait(self.fold_every):
                return
            self.app.marked.clear()  # marks from here on ask for another fold
            while journal.pending(self.app.ws.root):
                try:
                    if self.app.fold():
                        break
                except Exception as e:  # noqa: BLE001 - the journal keeps the marks; say it, go on
                    print(f"curate review: could not save marks into the database yet: {e}", file=sys.stderr)
                if self._stop.wait(FOLD_RETRY_S):
                    return

    def serve_forever(self) -> None:
        self._httpd.serve_forever(poll_interval=0.2)

    def start(self) -> ReviewServer:
        """Serve from a background thread (tests, notebooks)."""
        self._thread = threading.Thread(target=self.serve_forever, name="curate-review", daemon=True)
        self._thread.start()
        return self

    def stop(self, wait: float | None = None) -> int:
        """Stop serving and fold the journal (waiting up to `wait` s for the write lock);
        returns how many marks are still only in the journal (0 when all are in `judgments`)."""
        if self._thread is not None:  # shutdown() waits for serve_forever, so only if it runs
            self._httpd.shutdown()
        self._httpd.server_close()
        with contextlib.suppress(OSError, ValueError):
            if json.loads(self._record.read_text(encoding="utf-8")).get("url") == self.url:
                self._record.unlink()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._stop.set()
        self.app.marked.set()
        self._folder.join(timeout=5)
        if journal.pending(self.app.ws.root):
            self.app.fold(wait=wait)
        return journal.pending(self.app.ws.root)
