"""Files that changed since they were embedded or rejected: found by a rerun and embedded again.

Each item records the file as the decoding worker saw it in `item_files` (size, mtime_ns,
and a content hash under `--recheck hash`). A rerun of build-index compares that record with the file
as it is now:

- rejected items (a file missing, half-copied or corrupt when first seen) are retried
  when their file changed, or all of them with `--retry-rejected`;
- embedded items whose file changed are embedded again under the same id, after their
  old vectors are taken out of the shards (`store.drop_items`), so nothing is there twice
  and the indexes are rebuilt from what remains;
- a file that disappeared after it was embedded keeps its vectors (nothing new to embed).

Cost: one stat per item, run in a thread pool (stat is a syscall that releases the GIL,
and on network file systems many in flight hide the latency). `--recheck rejected`
stats only the rejected items, for collections where even that is too much; `--recheck
hash` reads every file again (a full read of the collection) and catches changes that
keep size and mtime.
"""

from __future__ import annotations

import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import duckdb
import numpy as np

from ..core import store
from ..core.store import file_sum
from ..errors import InputError

MODES = ("stat", "hash", "rejected", "none")
CHUNK = 50_000
THREADS = 32


def file_state(path: str, with_hash: bool = False) -> tuple[int | None, int | None, str | None]:
    """(size, mtime_ns, content hash or None) of a file, or all None when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None, None, None
    digest = None
    if with_hash and stat.S_ISREG(st.st_mode):  # never read a FIFO or a device: it may never end
        try:
            digest = file_sum(path)
        except OSError:
            digest = None
    return st.st_size, st.st_mtime_ns, digest


def states(paths: list[str], with_hash: bool = False, threads: int = THREADS, block: int = 2048) -> list[tuple]:
    """file_state of many paths, in order; blocks of paths are spread over a thread pool
    (one task per block: a task per file costs more than a warm local stat)."""
    paths = list(paths)
    if threads <= 1 or len(paths) <= block:
        return [file_state(p, with_hash) for p in paths]
    blocks = [paths[i : i + block] for i in range(0, len(paths), block)]
    with ThreadPoolExecutor(threads) as pool:
        done = pool.map(lambda b: [file_state(p, with_hash) for p in b], blocks)
        return [s for b in done for s in b]


@dataclass
class Rechecked:
    checked: int = 0
    changed: int = 0        # embedded items whose file changed: embedded again
    retried: int = 0        # rejected items tried again
    missing: int = 0        # embedded items whose file is gone: vectors kept
    adopted: int = 0        # items with no record yet (older workspace): recorded now, not re-embedded

    def describe(self) -> str:
        out = [f"{self.checked} files checked", f"{self.changed} changed (embedded again)",
               f"{self.retried} rejected retried"]
        if self.missing:
            out.append(f"{self.missing} embedded files gone (vectors kept)")
        if self.adopted:
            out.append(f"{self.adopted} recorded for the first time")
        return ", ".join(out)


def recheck(ws, con: duckdb.DuckDBPyConnection, source: str, mode: str = "stat",
            retry_rejected: bool = False) -> Rechecked:
    """Compare this source's items with their files; mark the changed ones pending again."""
    if mode not in MODES:
        raise InputError(f"--recheck {mode}: expected one of {', '.join(MODES)}")
    out = Rechecked()
    if mode == "none" and not retry_rejected:
        return out
    statuses = ["rejected"] if mode in ("rejected", "none") else ["rejected", "embedded"]
    # This source's items (table `sources`, by the source's description); items rejected at
    # import have no file of their own to look at.
    base = """
        SELECT i.id, i.path, i.status, f.size, f.mtime_ns, f.hash FROM items i
        LEFT JOIN item_files f ON f.item_id = i.id
        WHERE i.source_no = (SELECT source_no FROM sources WHERE description = ?)
          AND list_contains(?, i.status) AND i.id > ?
          AND NOT EXISTS (SELECT 1 FROM rejected x WHERE x.item_id = i.id AND x.stage = 'import')
        ORDER BY i.id LIMIT ?"""
    last = -1
    redo: list[int] = []      # embedded, changed
    retry: list[int] = []     # rejected, to try again
    adopt: list[tuple] = []
    while True:
        rows = con.execute(base, [source, statuses, last, CHUNK]).fetchall()
        if not rows:
            break
        last = rows[-1][0]
        if mode == "none":  # --retry-rejected alone: no need to look at the files
            retry.extend(r[0] for r in rows)
            continue
        now = states([r[1] for r in rows], with_hash=mode == "hash")
        out.checked += len(rows)
        for (i, _path, status, size, mtime, digest), (n_size, n_mtime, n_hash) in zip(rows, now, strict=True):
            if status == "rejected":
                if retry_rejected or (size, mtime) != (n_size, n_mtime) or (mode == "hash" and digest != n_hash):
                    retry.append(i)
                continue
            if n_size is None:
                out.missing += 1
            elif size is None or (mode == "hash" and digest is None and (size, mtime) == (n_size, n_mtime)):
                adopt.append((i, n_size, n_mtime, n_hash))
            elif (size, mtime) != (n_size, n_mtime) or (mode == "hash" and digest != n_hash):
                redo.append(i)
    if adopt:
        a = list(zip(*adopt, strict=True))
        con.register("adopt", {"id": np.array(a[0], np.int64), "size": np.array(a[1], np.int64),
                               "mtime": np.array(a[2], np.int64), "hash": np.array(a[3], dtype=object)})
        con.execute("INSERT OR REPLACE INTO item_files SELECT a.id, a.size, a.mtime, "
                    "coalesce(a.hash::VARCHAR, (SELECT f.hash FROM item_files f WHERE f.item_id = a.id)) FROM adopt a")
        con.unregister("adopt")
        out.adopted = len(adopt)
    if redo or retry:
        store.drop_items(ws, con, np.array(sorted(redo + retry), np.int64))
    out.changed, out.retried = len(redo), len(retry)
    return out
