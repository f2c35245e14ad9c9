"""The review page's local HTTP server (stdlib only; 127.0.0.1 only).

    GET  /                 the page (static/index.html; it draws everything with textContent)
    GET  /static/<file>    its script and style, from the package (works offline, no CDN)
    GET  /api/items        the set: items in page order with their marks, and the progress
    GET  /image/<id>       the image of one item *of this set* (no other file is reachable)
    POST /api/mark         {"id": 12, "mark": "hit"} -> saved in DuckDB before the reply

One DuckDB connection serves every request under a lock: the DuckDB file has a single
writer, and a connection must not run two statements at once. Other programs (curate
report) can open the workspace once the server is stopped.

A page on another site cannot reach this server through the user's browser: requests
must carry our own Host (no DNS rebinding), marks must be JSON (a cross-site form cannot
send that without a preflight we never grant) and a POST with an Origin must come from us.
"""

from __future__ import annotations

import io
import json
import mimetypes
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path

import duckdb

from .. import sampling
from . import marks

HOST = "127.0.0.1"
STATIC_FILES = {"index.html": "text/html; charset=utf-8",
                "review.js": "text/javascript; charset=utf-8",
                "review.css": "text/css; charset=utf-8"}
# Served as they are; anything else (TIFF, CMYK JPEG the browser may not show...) is
# re-encoded by Pillow.
BROWSER_IMAGES = {"image/jpeg", "image/png", "image/gif", "image/webp"}
MAX_BODY = 4096


class ReviewApp:
    """The state behind the server: one set, one connection, one lock."""

    def __init__(self, con: duckdb.DuckDBPyConnection, set_name: str):
        self.con = con
        self.lock = threading.Lock()
        with self.lock:
            self.set = sampling.get_set(con, set_name)
            # The set itself is frozen; only marks change, and they are read fresh.
            self.items = {r.id: r for r in marks.rows(con, set_name)}

    def state(self) -> dict:
        with self.lock:
            rows = marks.rows(self.con, self.set.name)
            prog = marks.progress(self.con, self.set.name)
        return {
            "set": self.set.name,
            "source": self.set.source,
            "items": [{"position": r.position, "id": r.id, "label": r.label, "prob": r.prob,
                       "caption": r.caption or "", "mark": r.mark} for r in rows],
            "progress": prog.as_dict(),
        }

    def mark(self, item_id: int, mark: str) -> dict:
        row = self.items.get(item_id)
        if row is None:
            raise KeyError(f"id {item_id} is not in review set {self.set.name!r}")
        with self.lock:
            # The label comes from the set, never from the client: a mark judges what was shown.
            marks.set_mark(self.con, item_id, row.label, mark)
            prog = marks.progress(self.con, self.set.name)
        return {"ok": True, "id": item_id, "mark": mark, "progress": prog.as_dict()}

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


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

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
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: dict) -> None:
        self._send(status, json.dumps(obj).encode("utf-8"), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"ok": False, "error": message})

    def _host_ok(self) -> bool:
        port = self.server.server_address[1]
        return self.headers.get("Host", "") in {f"{HOST}:{port}", f"localhost:{port}"}

    # -- routes -----------------------------------------------------------------
    def do_GET(self) -> None:
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

    do_HEAD = do_GET

    def do_POST(self) -> None:
        if not self._host_ok():
            return self._error(HTTPStatus.FORBIDDEN, "wrong Host header")
        origin = self.headers.get("Origin")
        if origin is not None and origin != f"http://{self.headers.get('Host')}":
            return self._error(HTTPStatus.FORBIDDEN, "cross-origin request refused")
        if self.path != "/api/mark":
            return self._error(HTTPStatus.NOT_FOUND, f"no such endpoint: {self.path}")
        if not self.headers.get("Content-Type", "").startswith("application/json"):
            return self._error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send JSON")
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            return self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body too large")
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
            result = self.server.app.mark(int(body["id"]), str(body["mark"]))
        except (KeyError, ValueError, TypeError, json.JSONDecodeError) as e:
            return self._error(HTTPStatus.BAD_REQUEST, str(e))
        except duckdb.Error as e:  # the page keeps the mark queued and retries
            return self._error(HTTPStatus.SERVICE_UNAVAILABLE, f"not saved: {e}")
        self._json(HTTPStatus.OK, result)

    def _static(self, name: str) -> None:
        if name not in STATIC_FILES:  # a fixed list: no path from the URL touches the disk
            return self._error(HTTPStatus.NOT_FOUND, f"no such file: {name}")
        data = resources.files("curate.review").joinpath("static", name).read_bytes()
        self._send(HTTPStatus.OK, data, STATIC_FILES[name])


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, app: ReviewApp, port: int):
        self.app = app
        super().__init__((HOST, port), _Handler)


class ReviewServer:
    """Serve one review set on http://127.0.0.1:<port>/ (port 0 = any free port)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, set_name: str, port: int = 0):
        self.app = ReviewApp(con, set_name)
        self._httpd = _Server(self.app, port)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/"

    def serve_forever(self) -> None:
        self._httpd.serve_forever(poll_interval=0.2)

    def start(self) -> ReviewServer:
        """Serve from a background thread (tests, notebooks)."""
        self._thread = threading.Thread(target=self.serve_forever, name="curate-review", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:  # shutdown() waits for serve_forever, so only if it runs
            self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
