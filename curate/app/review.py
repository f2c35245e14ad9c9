"""The app's review view: one random review set marked image by image (`curate review`).

    GET  /api/review/items      the set: items in page order with their marks, and the progress
    POST /api/review/mark       {"id": 12, "mark": "hit"} -> durable before the reply

`curate review -w WS` is `curate app` opened at /review: one server, one guard (server.py's
Host, Sec-Fetch-Site, Origin and JSON checks), one look. What the review view keeps from the
standalone page it replaces:

- The server never keeps the DuckDB file open: a review lasts 20-35 minutes, during which
  `curate sql`, `report`, `filter` or a `duckdb -readonly` shell must read the workspace and
  `classify` write it. The set and its marks are read once and kept in memory.
- A mark goes to the workspace's review journal (ws/marks.jsonl, fsynced before the reply:
  curate/validate/review/journal.py), so SIGKILL loses no acknowledged mark; a background
  thread folds the journal into `judgments` when it can take the write lock for a moment, and
  once more when the server stops. Readers merge the journal meanwhile. These marks feed the
  report; the marks made on browse tiles go to ws/app/marks.jsonl and never do (marks.py).
- The label a mark judges comes from the set, never from the client.
- ws/review-server.json names the page serving the workspace, so that a second
  `curate review` points to it instead of opening a second page that would split the marking.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..core.workspace import Workspace
from ..errors import CurateError, WorkspaceBusy
from ..validate import sampling
from ..validate.review import journal, marks
from .selection import BadSelection

# A mark is a few dozen bytes: a bigger body is refused before it is read whole.
MAX_BODY = 4096
# The journal is folded this long after a mark (the marks made meanwhile go with it), and
# tried again every FOLD_RETRY_S while another process holds the file.
FOLD_EVERY_S = 30.0
FOLD_RETRY_S = 2.0
# ws/<RECORD>: the review page serving this workspace (pid, host, url, set), written when it
# starts and removed when it stops (one killed leaves it behind: its pid is gone then).
RECORD = "review-server.json"


class ReviewSet:
    """One review set and its marks, in memory, under one lock."""

    def __init__(self, ws: Workspace, set_name: str | None):
        self.ws = ws
        self.lock = threading.Lock()
        self.marked = threading.Event()  # wakes the folding thread
        self._last = datetime.min
        with ws.reading() as con:
            self.set = sampling.get_set(con, set_name)
            ident = Workspace.model_identity(con)
            self.model = {"model": ident.model if ident else None, "pretrained": ident.pretrained if ident else None,
                          "random_weights": bool(ident.random_weights) if ident else False}
            self._load(con)

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
        from ..validate import intervals

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
        from ..validate import intervals

        with self.lock:
            return {
                "set": self.set.name,
                "source": self.set.source,
                "target_width": self.set.target_width,
                "z": intervals.z_of(intervals.DEFAULT_LEVEL), "min_marks": intervals.SEQUENTIAL_MIN,
                "model": self.model,
                "items": [{"position": r.position, "id": r.id, "label": r.label, "prob": r.prob,
                           "caption": r.caption or "", "mark": self.marks.get(r.id)} for r in self.rows],
                "progress": self.progress().as_dict(),
                "classes": self.classes(),
            }

    def mark(self, item_id: int, mark: str) -> dict:
        if mark not in marks.MARKS:
            raise BadSelection(f"unknown mark {mark[:20]!r}: use one of {', '.join(marks.MARKS)}")
        row = self.items.get(item_id)
        if row is None:
            raise BadSelection(f"id {item_id} is not in review set {self.set.name!r}")
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
                with self.ws.writing(wait=wait) as con:  # a read-write connect folds the journal
                    self._load(con)  # marks imported meanwhile by `curate review --import` show too
            except WorkspaceBusy:
                return False
        return True


class Reviewing:
    """The review view of one app: its set (made on first use when the app was not started
    for one), the thread that folds the journal, and the record naming the page."""

    def __init__(self, ws: Workspace, set_name: str | None, url: str, fold_every: float | None = None):
        self.ws = ws
        self.url = url
        self.fold_every = FOLD_EVERY_S if fold_every is None else fold_every
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._folder: threading.Thread | None = None
        self._record = ws.root / RECORD
        self.current: ReviewSet | None = None
        self.error: str | None = None          # why there is no set to review (no set drawn yet)
        if set_name is not None:   # `curate review`: the set is named, and must load now
            self._open(set_name)

    def get(self) -> ReviewSet | None:
        """The set under review; for `curate app`, the most recently drawn one, None while there is none."""
        with self._lock:
            if self.current is None:
                try:
                    self._open_locked(None)
                except CurateError as e:   # no set drawn yet: the page says which command draws one
                    self.error = str(e)
                    return None
            return self.current

    def _open(self, set_name: str | None) -> None:
        with self._lock:
            self._open_locked(set_name)

    def _open_locked(self, set_name: str | None) -> None:
        self.current = ReviewSet(self.ws, set_name)
        with contextlib.suppress(OSError):  # only a hint for a second `curate review`: never a reason to fail
            self._record.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "url": self.url,
                                                "set": self.current.set.name}), encoding="utf-8")
        self._folder = threading.Thread(target=self._fold_loop, args=(self.current,), name="curate-review-fold",
                                        daemon=True)
        self._folder.start()

    def _fold_loop(self, rs: ReviewSet) -> None:
        """Fold the journal `fold_every` s after a mark, retrying while the file is held.

        Not after every mark: each fold holds the write lock for a moment, and a `duckdb`
        shell opened in that moment fails (curate's own commands wait and retry)."""
        while not self._stop.is_set():
            rs.marked.wait()
            if self._stop.wait(self.fold_every):
                return
            rs.marked.clear()  # marks from here on ask for another fold
            while journal.pending(rs.ws.root):
                try:
                    if rs.fold():
                        break
                except Exception as e:  # noqa: BLE001 - the journal keeps the marks; say it, go on
                    print(f"curate review: could not save marks into the database yet: {e}", file=sys.stderr)
                if self._stop.wait(FOLD_RETRY_S):
                    return

    def stop(self, wait: float | None = None) -> int:
        """Stop folding, fold the journal once more (waiting up to `wait` s for the write lock),
        remove the record; returns how many marks are still only in the journal."""
        with contextlib.suppress(OSError, ValueError):
            if json.loads(self._record.read_text(encoding="utf-8")).get("url") == self.url:
                self._record.unlink()
        self._stop.set()
        rs = self.current
        if rs is None:
            return 0
        rs.marked.set()
        if self._folder is not None:
            self._folder.join(timeout=5)
        if journal.pending(self.ws.root):
            rs.fold(wait=wait)
        return journal.pending(self.ws.root)


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
        port = int(url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=2):
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


def routes(state, helpers) -> list[Route]:
    _route, _ok, _err, _int = helpers.route, helpers.ok, helpers.err, helpers.int

    @_route
    async def items(request: Request) -> Response:
        rs = await run_in_threadpool(state.review.get)
        if rs is None:
            return _ok({"set": None, "error": getattr(state.review, "error", None),
                        "command": "curate sample -w WS  (then reload this page)"})
        # the page asks for these images next: their files known, no database read each
        state.remember([{"id": r.id, "path": r.path, "status": "embedded", "reason": None} for r in rs.rows])
        return _ok(await run_in_threadpool(rs.state))

    @_route
    async def mark(request: Request) -> Response:
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > MAX_BODY:
            return _err(413, f"body too large (at most {MAX_BODY} bytes)")
        raw = await request.body()
        try:
            body = json.loads(raw or b"{}")
        except (ValueError, RecursionError) as e:   # bad JSON, not UTF-8
            raise BadSelection(f"bad request: {e}") from None
        if not isinstance(body, dict):
            raise BadSelection('send a JSON object: {"id": ..., "mark": ...}')
        if "id" not in body or "mark" not in body:
            raise BadSelection('missing id or mark: send {"id": ..., "mark": ...}')
        if isinstance(body["id"], float):
            raise BadSelection("id must be an integer")
        item_id = _int(body["id"], "id")
        what = body["mark"]
        if not isinstance(what, str):
            raise BadSelection("mark must be hit, miss or skip")
        rs = await run_in_threadpool(state.review.get)
        if rs is None:
            raise BadSelection("no review set to mark: draw one with `curate sample`")
        try:
            got = await run_in_threadpool(rs.mark, item_id, what)
        except OSError as e:  # the journal could not be written: the page keeps the mark queued and retries
            return _err(503, f"not saved: {e}")
        return _ok(got)

    return [Route("/api/review/items", items, methods=["GET"]),
            Route("/api/review/mark", mark, methods=["POST"])]
