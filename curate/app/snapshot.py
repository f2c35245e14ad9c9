"""What the app has read from the workspace, kept while the database is unchanged.

The app never keeps the DuckDB file open (a writer needs it between two requests: data.py),
and opening it is not cheap: ~50 ms on a 2-core machine even for an empty database (DuckDB
makes a new instance each time), then the checks every reader makes (the classification
selected, its scores complete and fresh, the calibration that applies) and the TEMP macros.
So what a request reads is kept here, keyed by the database's *generation*, and a request
whose generation is unchanged opens nothing.

The generation is what identifies the file's contents without opening it: its inode, size
and mtime, a digest of its first 12 KiB (DuckDB's main header and its two database headers:
every checkpoint writes a new database header, with its iteration count) and the same of the
write-ahead log beside it (a commit not checkpointed yet). A writer that changed nothing
leaves all of that as it was; any commit changes one of them. The generation is read again
while the connection that builds an entry is open: a read-only connection holds DuckDB's
shared lock, so no writer can change the file meanwhile and the entry is stored under the
generation it was read from, never under an older one.

Usage (one entry per key and generation; `build` gets a read-only connection):

    settings = snapshot.cached(ws, ("overview", name), lambda con: overview_of(con, name))

An entry weighs `value.nbytes` when it has one: the entries of one workspace are kept
within MEMO_BYTES, least recently used dropped first; a new generation drops them all.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import TypeVar

import duckdb

from ..core.workspace import Workspace

T = TypeVar("T")
HEADER_BYTES = 3 * 4096
MEMO_BYTES = 384 * 2**20
# How long a request waits while another process holds the file for writing (then the page
# says who holds it); a writer's moment is short, a whole `classify` is not worth waiting for.
WAIT = 3.0


def generation(ws: Workspace) -> tuple:
    """The identity of the database's contents as they are now (see the module's note)."""
    db = Path(ws.db_path)
    with open(db, "rb") as f:
        st = os.fstat(f.fileno())
        head = f.read(HEADER_BYTES)
    return (st.st_ino, st.st_size, st.st_mtime_ns, hashlib.blake2b(head, digest_size=16).digest(),
            _wal(db.with_name(db.name + ".wal")))


def _wal(path: Path) -> tuple | None:
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            head = f.read(HEADER_BYTES)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns, hashlib.blake2b(head, digest_size=16).digest()


class Snapshot:
    """The entries read from one generation of one workspace's database."""

    def __init__(self, gen: tuple):
        self.gen = gen
        self.values: OrderedDict[Hashable, tuple[object, int]] = OrderedDict()
        self.weight = 0
        self.lock = threading.Lock()
        self.building: dict[Hashable, threading.Lock] = {}

    def get(self, key: Hashable):
        with self.lock:
            got = self.values.get(key)
            if got is None:
                return _MISSING
            self.values.move_to_end(key)
            return got[0]

    def put(self, key: Hashable, value: object) -> None:
        w = int(getattr(value, "nbytes", 0) or 0)
        if w > MEMO_BYTES:
            return          # too big to keep: the caller decides beforehand what it asks to keep
        with self.lock:
            old = self.values.pop(key, None)
            if old is not None:
                self.weight -= old[1]
            self.values[key] = (value, w)
            self.weight += w
            while self.weight > MEMO_BYTES and len(self.values) > 1:
                _, (_, dropped) = self.values.popitem(last=False)
                self.weight -= dropped


_MISSING = object()
_LIVE: dict[str, Snapshot] = {}      # workspace root -> its newest snapshot
_LIVE_LOCK = threading.Lock()


def _snapshot(ws: Workspace, gen: tuple) -> Snapshot:
    """The snapshot of `gen`; a newer generation than the one kept replaces it (and drops its entries)."""
    root = str(ws.root)
    with _LIVE_LOCK:
        snap = _LIVE.get(root)
        if snap is None or snap.gen != gen:
            snap = _LIVE[root] = Snapshot(gen)
        return snap


def cached(ws: Workspace, key: Hashable, build: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
    """`build(con)` on a read-only connection, once per generation of the database: later calls
    with the same key get the same value without opening the file while it is unchanged.
    An exception from `build` is not kept (the next call tries again)."""
    snap = _snapshot(ws, generation(ws))
    got = snap.get(key)
    if got is not _MISSING:
        return got
    with snap.lock:
        gate = snap.building.setdefault(key, threading.Lock())
    with gate:                      # one build per key at a time; the others wait for its value
        got = snap.get(key)
        if got is not _MISSING:
            return got
        with ws.reading(wait=WAIT) as con:
            gen = generation(ws)    # under the shared lock: what this connection reads
            value = build(con)
        _snapshot(ws, gen).put(key, value)
        with snap.lock:
            snap.building.pop(key, None)
        return value


def peek(ws: Workspace, gen: tuple, key: Hashable):
    """The entry kept for `key` if the kept generation is `gen` (read under a connection's
    shared lock: then the entry is what that connection would read); None otherwise."""
    with _LIVE_LOCK:
        snap = _LIVE.get(str(ws.root))
    if snap is None or snap.gen != gen:
        return None
    got = snap.get(key)
    return None if got is _MISSING else got


def forget(ws: Workspace) -> None:
    """Drop what is kept of a workspace (a test, or the app stopping)."""
    with _LIVE_LOCK:
        _LIVE.pop(str(ws.root), None)
