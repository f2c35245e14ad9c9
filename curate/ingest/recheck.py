"""Files that changed since they were embedded or rejected: found by a rerun and embedded again.

Each item records the file as the decoding worker saw it in `item_files` (size, mtime_ns,
and a content hash under `--recheck hash`). A rerun of build-index compares that record with the file
as it is now:

- rejected items (a file missing, half-copied or corrupt when first seen) are retried
  when their file changed, or all of them with `--retry-rejected`;
- embedded items whose file changed are embedded again under the same id, after their
  old vectors are taken out of the shards (`store.drop_items`), so nothing is there twice
  and the indexes are rebuilt from what remains;
- a file that disappeared after it was embedded keeps its vectors (nothing new to embed);
- the first `--recheck hash` of items embedded without a hash records one only where the
  file's size and mtime are still what was embedded (else it is embedded again), and says
  that those files are trusted as they are now: a change made before that kept both is
  beyond what can be seen.

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
    adopted: int = 0        # items with no record yet (older workspace): recorded as they are now, not re-embedded
    first_hashes: int = 0   # --recheck hash, no hash recorded yet, size and mtime as embedded: hash recorded now
    changed_unhashed: int = 0   # of `changed`: no hash recorded yet, and size or mtime not as embedded
    unhashable: int = 0     # no hash recorded yet, size and mtime as embedded, but the file could not be read

    def describe(self) -> str:
        out = [f"{self.checked} files checked", f"{self.changed} changed (embedded again)",
               f"{self.retried} rejected retried"]
        if self.missing:
            out.append(f"{self.missing} embedded files gone (vectors kept)")
        if self.adopted:
            out.append(f"{self.adopted} recorded for the first time (no record of them as embedded: "
                       "trusted as they are now)")
        if self.first_hashes:
            out.append(f"{self.first_hashes} hashes recorded for the first time: those files are trusted as they "
                       "are now (size and mtime as embedded; a change made before this run that kept both cannot "
                       "be seen)")
        if self.changed_unhashed:
            out.append(f"{self.changed_unhashed} of the changed had no hash yet and could not be trusted (size or "
                       "mtime not as embedded): embedded again, hashed as they are read")
        if self.unhashable:
            out.append(f"{self.unhashable} could not be hashed (the file cannot be read): compared by size and "
                       "mtime only, hashed at the next --recheck hash")
        return ", ".join(out)


def recheck(ws, con: duckdb.DuckDBPyConnection, source: str, mode: str = "stat",
            retry_rejected: bool = False) -> Rechecked:
    """Compare this source's items with their files; mark the changed ones pending again."""
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
            first_hash = mode == "hash" and digest is None
            if n_size is None:
                out.missing += 1
            elif size is None:  # nothing recorded when it was embedded: nothing to compare with
                adopt.append((i, n_size, n_mtime, n_hash))
                out.adopted += 1
            elif (size, mtime) != (n_size, n_mtime):
                redo.append(i)
                out.changed_unhashed += first_hash
            elif first_hash:
                # A first hash is taken only of a file whose stat is what was embedded: the best
                # evidence there is that it is the file that was embedded. Said so in describe().
                if n_hash is None:
                    out.unhashable += 1
                else:
                    adopt.append((i, n_size, n_mtime, n_hash))
                    out.first_hashes += 1
            elif mode == "hash" and digest != n_hash:
                redo.append(i)
    if adopt:
        a = list(zip(*adopt, strict=True))
        con.register("adopt", {"id": np.array(a[0], np.int64), "size": np.array(a[1], np.int64),
                               "mtime": np.array(a[2], np.int64), "hash": np.array(a[3], dtype=object)})
        con.execute("INSERT OR REPLACE INTO item_files SELECT a.id, a.size, a.mtime, "
                    "coalesce(a.hash::VARCHAR, (SELECT f.hash FROM item_files f WHERE f.item_id = a.id)) FROM adopt a")
        con.unregister("adopt")
    if redo or retry:
        store.drop_items(ws, con, np.array(sorted(redo + retry), np.int64))
    out.changed, out.retried = len(redo), len(retry)
    return out
