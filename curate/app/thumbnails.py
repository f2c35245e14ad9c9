"""Thumbnails made on first view and kept in one SQLite file: ws/app/thumbnails.sqlite.

Not one small file per image (100M files is a file system's worst case), and not in the
DuckDB file (the app only reads it, and a writer may hold it). SQLite in WAL mode is one
file that many threads and several app processes read and write at once, each write a
short transaction; a blob of ~5-10 KB reads in microseconds by its primary key.

A thumbnail is keyed by the item id and remembers the file it was made from (path, size,
mtime): a file changed or replaced since is made again, a file gone gets a placeholder with
the reason, and so does a file that cannot be decoded (the reason said by
curate/ingest/images.py, as build-index says it).
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import threading
from collections import OrderedDict
from pathlib import Path
from xml.sax.saxutils import escape

from ..ingest.images import BadImage, ResizeRule, open_rgb, os_reason

SIZE = 256                  # the long side, in pixels
QUALITY = 80
FILE = "thumbnails.sqlite"
# a thumbnail is a few KB; refuse to decode more than this many pixels for one (PIL's own bomb limit)
MAX_PIXELS = 89_478_485
# thumbnails read ahead for the tiles a page just sent (prefetch): a few pages' worth
READ_AHEAD = 1000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS thumbs (
    id INTEGER PRIMARY KEY,     -- the item id
    path TEXT NOT NULL,         -- the file it was made from, as it was then
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    data BLOB NOT NULL          -- JPEG
)
"""


class Thumbnails:
    """The thumbnail store of one workspace (its folder `app/`)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / FILE
        self._local = threading.local()
        self._ahead: OrderedDict[int, tuple] = OrderedDict()    # id -> (path, size, mtime_ns, data)
        self._ahead_lock = threading.Lock()

    def _db(self) -> sqlite3.Connection:
        # one connection per thread: sqlite3 objects are not shared across threads
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=True)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")   # a lost thumbnail is made again
            db.execute(_SCHEMA)
            self._local.db = db
        return db

    def get(self, item_id: int, path: str | None, reason: str | None = None) -> tuple[bytes, str]:
        """The thumbnail of an item as (bytes, content type): the cached JPEG while its file is
        unchanged, else made now; an SVG placeholder saying why there is none."""
        if reason is not None:
            return placeholder(reason), SVG
        if not path:
            return placeholder("no file recorded for this item"), SVG
        try:
            st = os.stat(path)
        except OSError as e:
            return placeholder(os_reason(e, path)), SVG
        with self._ahead_lock:
            row = self._ahead.get(item_id)
        db = self._db()
        if row is None:
            row = db.execute("SELECT path, size, mtime_ns, data FROM thumbs WHERE id = ?", [item_id]).fetchone()
        if row is not None and tuple(row[:3]) == (path, st.st_size, st.st_mtime_ns):
            return row[3], JPEG
        try:
            data = make(path)
        except BadImage as e:
            return placeholder(str(e)), SVG
        db.execute("INSERT OR REPLACE INTO thumbs (id, path, size, mtime_ns, data) VALUES (?, ?, ?, ?, ?)",
                   [item_id, path, st.st_size, st.st_mtime_ns, data])
        with self._ahead_lock:
            self._ahead.pop(item_id, None)      # read ahead from the file as it was
        return data, JPEG

    def prefetch(self, ids: list[int]) -> int:
        """Read the stored thumbnails of a page's tiles in one query, ahead of the browser asking
        for each (`get` still checks each against its file); how many were found."""
        if not ids:
            return 0
        rows = self._db().execute("SELECT id, path, size, mtime_ns, data FROM thumbs "
                                  "WHERE id IN (SELECT value FROM json_each(?))",
                                  [json.dumps([int(i) for i in ids])]).fetchall()
        with self._ahead_lock:
            for item_id, *row in rows:
                self._ahead[item_id] = tuple(row)
                self._ahead.move_to_end(item_id)
            while len(self._ahead) > READ_AHEAD:
                self._ahead.popitem(last=False)
        return len(rows)

    def ahead(self, item_id: int, path: str | None) -> bytes | None:
        """The read-ahead thumbnail of an item if its file is still the one it was made from
        (one stat, no database: the server answers it without a worker thread); None otherwise."""
        with self._ahead_lock:
            row = self._ahead.get(item_id)
        if row is None or not path:
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None
        if tuple(row[:3]) != (path, st.st_size, st.st_mtime_ns):
            return None
        return row[3]

    def count(self) -> int:
        return int(self._db().execute("SELECT count(*) FROM thumbs").fetchone()[0])

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


JPEG = "image/jpeg"
SVG = "image/svg+xml"


def make(path: str) -> bytes:
    """A JPEG at most SIZE pixels on its long side, upright, from the image file (BadImage: why not)."""
    # draft: a JPEG at least twice the thumbnail's size is decoded at 1/2..1/8 scale straight away
    # (the thumbnail needs no more). The rule is the thumbnail's own fit, the long side to SIZE: a
    # square (SIZE, SIZE) would leave a 640x480 photo, whose short side is under 2 * SIZE, decoded
    # whole and resampled from four times the pixels (21 ms a thumbnail against 9, bench/bench_app.py).
    im = open_rgb(path, max_pixels=MAX_PIXELS, resize=ResizeRule("keep-ratio", (SIZE, SIZE), longest=1.0), draft=True)
    im.thumbnail((SIZE, SIZE))
    out = io.BytesIO()
    im.save(out, "JPEG", quality=QUALITY)
    return out.getvalue()


def placeholder(reason: str) -> bytes:
    """A grey tile with the reason written on it, as text (escaped: a reason may quote a file name)."""
    words, lines, line = str(reason).split(), [], ""
    for w in words:
        if len(line) + len(w) + 1 > 28 and line:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    lines.append(line)
    text = "".join(f'<tspan x="128" dy="{0 if i == 0 else 18}">{escape(x[:60])}</tspan>'
                   for i, x in enumerate(lines[:6]))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{SIZE}" height="{SIZE}" viewBox="0 0 256 256">'
            f'<rect width="256" height="256" fill="#ddd"/>'
            f'<text x="128" y="{128 - 9 * min(len(lines), 6)}" font-family="sans-serif" font-size="14" '
            f'text-anchor="middle" fill="#333">{text}</text></svg>').encode()
