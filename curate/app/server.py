"""The app's HTTP side: Starlette routes served by uvicorn on 127.0.0.1 only.

    GET  /                      the page (static/index.html; it draws everything with textContent)
    GET  /static/<file>         its module script and style, from the package (works offline)
    GET  /api/overview          model, classifications, modes, labels, items by status
    GET  /api/status            the model and index loading in the background
    POST /api/grid              one page of tiles: a selection, or a search within it
    POST /api/counts            the sidebar: each label's items at the threshold
    GET  /api/item/<id>         one item in detail
    GET  /api/thumb/<id>        its thumbnail (made on first view; a placeholder says why none)
    GET  /api/image/<id>        its file, as the browser can show it
    POST /api/mark              {"id", "mark", "selection"}: durable before the reply
    POST /api/command           the `curate filter` command that writes the selection (or why none does)
    POST /api/export            ...and that command run (api.filter, the same code)

A page on another site cannot use this server through the user's browser (the rules of the
standalone review page it replaced, and one more): a request must carry our own
Host (no DNS rebinding); a browser's cross-site request (Sec-Fetch-Site) is refused; a POST
must be JSON (a cross-site form cannot send that without a preflight, and no CORS header is
ever sent) with a Content-Length within MAX_BODY, and its Origin, if any, ours. The workspace
is never held open between requests (a writer may take it then): what the reads need is kept
while the database is unchanged (snapshot.py), anything else is read on a read-only connection
opened for the request and closed after it (data.py).
"""

from __future__ import annotations

import json
import mimetypes
import socket
import sys
import threading
from importlib import resources
from pathlib import Path
from types import SimpleNamespace

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..core.workspace import Workspace
from ..errors import CurateError, WorkspaceBusy
from ..validate import sampling
from . import data, snapshot
from . import review as review_view
from .marks import BrowseMarks
from .protocol import SECURITY_HEADERS, JsonErrorsProtocol
from .selection import BadSelection, Selection
from .thumbnails import JPEG, Thumbnails
from .warm import Warm

HOST = "127.0.0.1"
MAX_BODY = 64 * 1024
STATIC_FILES = {"index.html": "text/html; charset=utf-8",
                "app.js": "text/javascript; charset=utf-8",
                "review.js": "text/javascript; charset=utf-8",
                "app.css": "text/css; charset=utf-8"}
# Served as they are; anything else (TIFF, BMP, CMYK JPEG...) is re-encoded by Pillow.
BROWSER_IMAGES = {"image/jpeg", "image/png", "image/gif", "image/webp"}
# The page's views besides browse (/): each path serves index.html, which draws that view.
VIEWS = ("compare", "duplicates", "review")
# What a browser says of a request it makes for a page of ours; anything else is another site's.
SAME_SITE = {"same-origin", "none"}


class AppState:
    """What the routes share: the workspace, its thumbnails, the browse marks, the warm model."""

    def __init__(self, ws: Workspace, warm: Warm, base: Path, review=None):
        self.ws = ws
        self.review = review    # review.Reviewing: the review view's set and journal folding
        self.thumbs = Thumbnails(ws.root / "app")
        self.marks = BrowseMarks(ws.root / "app")
        self.warm = warm
        self.base = base        # where a relative export path is written (the directory `curate app` ran in)
        self.files: dict[int, tuple[str, str | None]] = {}   # id -> (path, reason) of tiles sent lately
        self.files_lock = threading.Lock()

    def remember(self, tiles: list[dict]) -> None:
        """The files of the tiles just sent, so that their thumbnails need no database read each."""
        with self.files_lock:
            if len(self.files) > 200_000:
                self.files.clear()
            for t in tiles:
                self.files[t["id"]] = (t["path"], (t["reason"] or "rejected by build-index")
                                       if t["status"] == "rejected" else None)

    def remembered(self, item_id: int) -> tuple[str | None, str | None]:
        """(path, reason) of a tile sent lately; (None, None) if none was."""
        with self.files_lock:
            return self.files.get(item_id, (None, None))

    def file(self, item_id: int) -> tuple[str | None, str | None]:
        with self.files_lock:
            got = self.files.get(item_id)
        if got is not None:
            return got
        path, status, reason = data.file_of(self.ws, item_id)
        if status == "rejected" and reason is None:
            reason = "rejected by build-index"
        return path, reason if status == "rejected" else None


# --------------------------------------------------------------------------- the guard

class Guard:
    """ASGI middleware: the checks every request passes before any route sees it."""

    def __init__(self, app, port_box: list[int]):
        self.app = app
        self.port_box = port_box

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            return await self.app(scope, receive, send)
        if scope["type"] != "http":
            return  # websockets: not served
        headers = {}
        for k, v in scope["headers"]:
            headers.setdefault(k.decode("latin-1").lower(), []).append(v.decode("latin-1"))
        refusal = self._refuse(scope, headers)
        if refusal is not None:
            status, message = refusal
            resp = JSONResponse({"ok": False, "error": message}, status_code=status,
                                headers={"Connection": "close", "Cache-Control": "no-store"})
            return await _secured(resp)(scope, receive, send)

        async def send_secured(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_secured)

    def _refuse(self, scope, headers: dict[str, list[str]]) -> tuple[int, str] | None:
        port = self.port_box[0]
        hosts = headers.get("host", [])
        if len(hosts) != 1 or hosts[0] not in {f"{HOST}:{port}", f"localhost:{port}"}:
            return 403, "wrong Host header"
        site = headers.get("sec-fetch-site", ["none"])[0]
        if site not in SAME_SITE:
            return 403, "cross-site request refused"
        method = scope["method"]
        if method in ("GET", "HEAD"):
            return None
        if method != "POST":
            return 405, f"method {method[:10]} not allowed"
        origin = headers.get("origin")
        if origin is not None and origin != [f"http://{hosts[0]}"]:
            return 403, "cross-origin request refused"
        ctype = headers.get("content-type", [""])[0].split(";")[0].strip().lower()
        if ctype != "application/json":
            return 415, "send JSON (Content-Type: application/json)"
        if "transfer-encoding" in headers:
            return 411, "send the body with a Content-Length, not chunked"
        lengths = headers.get("content-length", [])
        if len(lengths) != 1 or not lengths[0].strip().isdigit() or len(lengths[0].strip()) > 12:
            return 411, "a single numeric Content-Length header is required"
        if int(lengths[0]) > MAX_BODY:
            return 413, f"body too large (at most {MAX_BODY} bytes)"
        return None


def _secured(resp: Response) -> Response:
    for k, v in SECURITY_HEADERS:
        resp.headers[k.decode()] = v.decode()
    return resp


# --------------------------------------------------------------------------- helpers

def _ok(obj: dict) -> JSONResponse:
    return JSONResponse(obj, headers={"Cache-Control": "no-store"})


def _err(status: int, message: str) -> JSONResponse:
    return JSONResponse({"ok": False, "error": message}, status_code=status, headers={"Cache-Control": "no-store"})


async def _body(request: Request) -> dict:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise BadSelection(f"body too large (at most {MAX_BODY} bytes)")
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, RecursionError) as e:
        raise BadSelection(f"bad JSON: {e}") from None
    if not isinstance(body, dict):
        raise BadSelection("send a JSON object")
    return body


def _int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise BadSelection(f"{what} must be an integer")
    try:
        v = int(value)
    except ValueError:
        raise BadSelection(f"{what} must be an integer, not {str(value)[:40]!r}") from None
    if not -(2 ** 63) <= v < 2 ** 63:
        raise BadSelection(f"{what} is out of range")
    return v


def _route(fn):
    """An endpoint whose blocking work runs in the thread pool, its errors said as JSON."""
    async def endpoint(request: Request) -> Response:
        try:
            return await fn(request)
        except ClientDisconnect:   # the client went before its body came (protocol.py answered it)
            return _err(400, "the client disconnected")
        except BadSelection as e:
            return _err(400, str(e))
        except KeyError as e:
            return _err(404, str(e.args[0]) if e.args else "not found")
        except WorkspaceBusy as e:
            return _err(503, str(e))
        except CurateError as e:
            return _err(400, str(e))
        except Exception as e:  # noqa: BLE001 - one bad request must not stop the app
            print(f"curate app: {request.method} {request.url.path[:80]}: {type(e).__name__}: {e}", file=sys.stderr)
            return _err(500, f"{type(e).__name__}: {e}")
    return endpoint


# --------------------------------------------------------------------------- routes

def build(state: AppState, port_box: list[int]) -> Guard:
    async def index(request: Request) -> Response:
        return _static_file("index.html")

    async def static(request: Request) -> Response:
        return _static_file(request.path_params["name"])

    @_route
    async def overview(request: Request) -> Response:
        name = request.query_params.get("classification") or None
        sel = Selection.parse({"classification": name})
        got = await run_in_threadpool(data.overview, state.ws, sel.classification)
        got["warm"] = state.warm.status()
        got["browse_marks"] = state.marks.counts()
        return _ok(got)

    @_route
    async def status(request: Request) -> Response:
        return _ok(state.warm.status())

    @_route
    async def grid(request: Request) -> Response:
        body = await _body(request)
        sel = Selection.parse(body.get("selection", {}))
        after = body.get("after")
        search = body.get("search")
        if search is not None:
            if sel.status != "embedded":
                raise BadSelection("search finds embedded images: choose status embedded")
            ids, scores = await run_in_threadpool(_search, state, search)
            offset = 0 if not after else _int(after[1], "after")
            got = await run_in_threadpool(data.hits_page, state.ws, sel, ids, scores, offset)
        else:
            cursor = None
            if after is not None:
                if not isinstance(after, list) or len(after) != 2:
                    raise BadSelection("after must be [prob, id]")
                prob = after[0]
                if prob is not None and (isinstance(prob, bool) or not isinstance(prob, int | float)):
                    raise BadSelection("after must be [prob, id]")
                cursor = (float(prob or 0.0), _int(after[1], "after"))
            got = await run_in_threadpool(data.page, state.ws, sel, cursor)
        for t in got["tiles"]:
            t["mark"] = state.marks.of(t["id"], t["label"])
        state.remember(got["tiles"])
        # the browser asks for these thumbnails next: read them in one query now
        await run_in_threadpool(state.thumbs.prefetch, [t["id"] for t in got["tiles"]])
        return _ok(got)

    @_route
    async def counts(request: Request) -> Response:
        body = await _body(request)
        sel = Selection.parse(body.get("selection", {}))
        if sel.status == "rejected":
            n = await run_in_threadpool(data.count, state.ws, sel)
            return _ok({"labels": [], "count": n})
        return _ok(await run_in_threadpool(data.label_counts, state.ws, sel))

    @_route
    async def item(request: Request) -> Response:
        item_id = _int(request.path_params["id"], "id")
        name = request.query_params.get("classification") or None
        sel = Selection.parse({"classification": name})
        got = await run_in_threadpool(data.item, state.ws, item_id, sel.classification)
        got["browse_marks"] = state.marks.of_item(item_id)
        return _ok(got)

    @_route
    async def thumb(request: Request) -> Response:
        item_id = _int(request.path_params["id"], "id")
        path, reason = state.remembered(item_id)
        # a tile of the page just sent: its thumbnail was read ahead (one stat here, no thread)
        body = state.thumbs.ahead(item_id, path) if reason is None else None
        if body is not None:
            return Response(body, media_type=JPEG, headers={"Cache-Control": "private, max-age=60"})

        def work():
            path, reason = state.file(item_id)
            return state.thumbs.get(item_id, path, reason)
        body, ctype = await run_in_threadpool(work)
        # an image changes when its file does; the page asks again after a reload
        return Response(body, media_type=ctype, headers={"Cache-Control": "private, max-age=60"})

    @_route
    async def image(request: Request) -> Response:
        item_id = _int(request.path_params["id"], "id")
        got = await run_in_threadpool(_image, state, item_id)
        return Response(got[0], media_type=got[1], headers={"Cache-Control": "private, max-age=60"})

    @_route
    async def mark(request: Request) -> Response:
        body = await _body(request)
        item_id = _int(body.get("id"), "id")
        what = body.get("mark")
        if what not in ("hit", "miss", "skip"):
            raise BadSelection("mark must be hit, miss or skip")
        sel = Selection.parse(body.get("selection", {}))
        # the label comes from the workspace, never from the client: a mark judges what the tile showed
        label = await run_in_threadpool(data.label_of, state.ws, sel, item_id)
        try:
            got = await run_in_threadpool(state.marks.add, item_id, label, what)
        except OSError as e:  # the journal could not be written: the page keeps the mark and says so
            return _err(503, f"not saved: {e}")
        return _ok(got | {"counts": state.marks.counts()})

    @_route
    async def command(request: Request) -> Response:
        body = await _body(request)
        sel = Selection.parse(body.get("selection", {}))
        out = _out(body.get("out"))
        got = await run_in_threadpool(_command, state, sel, out)
        return _ok(got)

    @_route
    async def export(request: Request) -> Response:
        body = await _body(request)
        sel = Selection.parse(body.get("selection", {}))
        out = _out(body.get("out"))
        got = await run_in_threadpool(_export, state, sel, out)
        return _ok(got)

    routes = [
        Route("/", index, methods=["GET", "HEAD"]),
        Route("/index.html", index, methods=["GET", "HEAD"]),
        Route("/static/{name}", static, methods=["GET", "HEAD"]),
        Route("/api/overview", overview, methods=["GET"]),
        Route("/api/status", status, methods=["GET"]),
        Route("/api/grid", grid, methods=["POST"]),
        Route("/api/counts", counts, methods=["POST"]),
        Route("/api/item/{id}", item, methods=["GET"]),
        Route("/api/thumb/{id}", thumb, methods=["GET", "HEAD"]),
        Route("/api/image/{id}", image, methods=["GET", "HEAD"]),
        Route("/api/mark", mark, methods=["POST"]),
        Route("/api/command", command, methods=["POST"]),
        Route("/api/export", export, methods=["POST"]),
        # the other views: the same page, which draws the view its path names
        *(Route(f"/{name}", index, methods=["GET", "HEAD"]) for name in VIEWS),
    ]
    from . import compare, duplicates, review
    helpers = SimpleNamespace(route=_route, ok=_ok, err=_err, body=_body, int=_int)
    for module in (compare, duplicates, review):
        routes += module.routes(state, helpers)

    async def not_found(request: Request, exc) -> Response:
        status = getattr(exc, "status_code", 404)
        return _err(status, "no such page" if status == 404 else str(getattr(exc, "detail", "refused")))

    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found}, max_body_size=MAX_BODY)
    return Guard(app, port_box)


def _static_file(name: str) -> Response:
    if name not in STATIC_FILES:  # a fixed list: no path from the URL touches the disk
        return _err(404, "no such file")
    body = resources.files("curate.app").joinpath("static", name).read_bytes()
    return Response(body, media_type=STATIC_FILES[name].split(";")[0], headers={"Cache-Control": "no-cache"})


def _search(state: AppState, search) -> tuple:
    if not isinstance(search, dict):
        raise BadSelection('search must be {"text": ...} or {"like": id}')
    if "like" in search:
        return state.warm.like(_int(search["like"], "like"))
    text = search.get("text")
    if not isinstance(text, str) or not text.strip() or len(text) > 1000:
        raise BadSelection("the search text is empty (or over 1000 characters)")
    return state.warm.text(text.strip())


def _image(state: AppState, item_id: int) -> tuple[bytes, str]:
    import io

    from ..ingest.images import BadImage, open_rgb

    path, reason = state.file(item_id)
    if reason is not None or not path:
        from .thumbnails import SVG, placeholder
        return placeholder(reason or "no file recorded for this item"), SVG
    ctype = mimetypes.guess_type(Path(path).name)[0] or ""
    try:
        if ctype in BROWSER_IMAGES:
            return Path(path).read_bytes(), ctype
        im = open_rgb(path)
    except (OSError, BadImage) as e:
        from ..ingest.images import os_reason
        from .thumbnails import SVG, placeholder
        return placeholder(os_reason(e, path) if isinstance(e, OSError) else str(e)), SVG
    out = io.BytesIO()
    im.save(out, "JPEG", quality=90)
    return out.getvalue(), "image/jpeg"


def _out(value) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 1000 or "\x00" in value:
        raise BadSelection("give the file to write, e.g. subset.parquet")
    return value.strip()


def _source_mode(state: AppState, sel: Selection) -> str | None:
    if sel.mode != "calibrated":
        return None
    return data.calibration_source(state.ws, sel.classification)


def _command(state: AppState, sel: Selection, out: str) -> dict:
    """The command that writes the selection, or (command None) why no `curate filter` does."""
    if sel.exportable is not None:
        return {"command": None, "why": sel.exportable, "count": data.count(state.ws, sel)}
    source = _source_mode(state, sel)
    return {"command": sel.filter_command(state.ws.root, out, source), "why": None, "count": data.count(state.ws, sel)}


def _export(state: AppState, sel: Selection, out: str) -> dict:
    from .. import api

    source = _source_mode(state, sel)
    target = Path(out) if Path(out).is_absolute() else state.base / out
    res = api.filter(state.ws.root, sel.filter_spec(source), api.FilterOutput(out=target))
    return {"ok": True, "kept": res.kept, "total": res.total, "out": str(target), "summary": res.summary(),
            "command": sel.filter_command(state.ws.root, out, source)}


# --------------------------------------------------------------------------- serving

class AppServer:
    """`curate app`: serve a workspace on http://127.0.0.1:<port>/ (port 0 = any free port)."""

    def __init__(self, ws: Workspace | str | Path, port: int = 0, *, load_model: bool = True,
                 device: str | None = "cpu", base: str | Path | None = None, review: str | None = None,
                 fold_every: float | None = None):
        """`review`: the review set `curate review` opens the app for (its view at /review);
        `fold_every`: seconds between a review mark and folding the journal into the database."""
        import uvicorn


        self.ws = ws if isinstance(ws, Workspace) else Workspace(ws)
        if not self.ws.exists():
            raise CurateError(f"no workspace at {self.ws.root}: run `curate build-index` first")
        if review is None:
            data.overview(self.ws)   # a workspace the app cannot show fails here, in one line
        self.sock, self.fallback = _bind(port)
        self.port = self.sock.getsockname()[1]
        self.warm = Warm(self.ws, device=device, load_model=load_model)
        try:
            reviewing = review_view.Reviewing(self.ws, review, self.url + "review", fold_every)
        except BaseException:
            self.sock.close()
            raise
        self.state = AppState(self.ws, self.warm, Path(base) if base is not None else Path.cwd(), reviewing)
        config = uvicorn.Config(build(self.state, [self.port]), host=HOST, port=self.port, log_level="warning",
                                access_log=False, lifespan="off", proxy_headers=False, server_header=False,
                                timeout_keep_alive=5, limit_concurrency=200, http=JsonErrorsProtocol)
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None
        self.fold_wait: float | None = None   # how long stop() waits for the write lock to fold the review marks
        self.left = 0
        if review is None:
            self.warm.start()
        else:   # a review needs no model, nor the index in memory until a "more like this" asks
            self.warm.state, self.warm.error = "failed", "`curate review` does not load the model: `curate app` does"
            self.warm.index_state = "read on first use"
            self.warm.reads_done.set()   # no loading thread: start() has nothing to wait for

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/"

    def serve_forever(self) -> None:
        self.server.run(sockets=[self.sock])

    def start(self) -> AppServer:
        """Serve from a background thread (tests, notebooks); returns once it listens and the
        loading thread's reads of the database are done (the model may still be loading), so
        that another process can take the file right after a request."""
        import time

        self._thread = threading.Thread(target=self.serve_forever, name="curate-app", daemon=True)
        self._thread.start()
        while not self.server.started and self._thread.is_alive():
            time.sleep(0.01)
        self.warm.reads_done.wait(120)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        # no request after this: the review journal's last fold (self.left: the marks still only in it)
        self.left = self.state.review.stop(self.fold_wait)
        self.sock.close()
        self.state.thumbs.close()
        self.warm.close()
        snapshot.forget(self.ws)


def _bind(port: int) -> tuple[socket.socket, str | None]:
    """A listening socket on 127.0.0.1; a busy port falls back to a free one (and the second
    value says so, for the command to print)."""
    # IPPROTO_TCP named, not 0: asyncio turns Nagle off (TCP_NODELAY) only on connections whose
    # socket says so, and uvicorn sends a response's head and body in two writes, so on a
    # kept-alive connection (every browser's) each answer waited ~40 ms for the client's
    # delayed ACK: 48 ms for /api/status instead of ~1.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    fallback = None
    try:
        sock.bind((HOST, port))
    except OSError as e:
        if port == 0:
            raise
        sock.bind((HOST, 0))
        fallback = (f"port {port} is not free ({e.strerror or e}): serving on port {sock.getsockname()[1]} "
                    "instead")
    sock.listen(128)
    sock.set_inheritable(True)
    return sock, fallback


class ReviewServer:
    """`curate review`: the app serving one review set, opened at its review view
    (http://127.0.0.1:<port>/review; port 0 = any free port)."""

    def __init__(self, ws: Workspace | str | Path, set_name: str | None = None, port: int = 0,
                 fold_every: float | None = None):
        ws = ws if isinstance(ws, Workspace) else Workspace(ws)
        if set_name is None:   # the set is fixed for the server's life: the most recent one now
            with ws.reading() as con:
                set_name = sampling.get_set(con, None).name
        self.server = AppServer(ws, port, load_model=False, review=set_name, fold_every=fold_every)
        self.app: review_view.ReviewSet = self.server.state.review.current

    @property
    def base(self) -> str:
        return self.server.url

    @property
    def url(self) -> str:
        return self.server.url + "review"

    @property
    def fallback(self) -> str | None:
        return self.server.fallback

    def serve_forever(self) -> None:
        self.server.serve_forever()

    def start(self) -> ReviewServer:
        """Serve from a background thread (tests, notebooks); returns once it listens."""
        self.server.start()
        return self

    def stop(self, wait: float | None = None) -> int:
        """Stop serving and fold the journal (waiting up to `wait` s for the write lock);
        returns how many marks are still only in the journal."""
        self.server.fold_wait = wait
        self.server.stop()
        return self.server.left
