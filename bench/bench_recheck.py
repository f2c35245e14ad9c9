"""Stat rate for the per-run recheck: N small files, serial os.stat vs recheck.states (thread pool).

    python bench/bench_recheck.py [N] [DIR]

Warm page cache only (dropping caches would disturb the machine); on a network file system
the thread pool matters more, since each stat then waits on a round trip.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from curate.ingest.recheck import file_state, states


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    root = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(tempfile.mkdtemp(prefix="bench_recheck_"))
    paths = []
    for i in range(n):
        d = root / f"{i // 1000:04d}"
        if i % 1000 == 0:
            d.mkdir(parents=True, exist_ok=True)
        p = d / f"{i:07d}.jpg"
        if not p.exists():
            p.write_bytes(b"x" * 100)
        paths.append(str(p))
    for label, fn in (("serial os.stat", lambda: [file_state(p) for p in paths]),
                      ("states, 32 threads", lambda: states(paths, threads=32)),
                      ("states, 4 threads", lambda: states(paths, threads=4))):
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        print(f"{label:20s} {n:>9,} files {dt:6.2f} s  {n / dt:>10,.0f} files/s  (100M: {1e8 / (n / dt) / 60:.0f} min)")
    print(f"cpus {os.cpu_count()}; files under {root}")
    whole_recheck(n, root)



def whole_recheck(n: int, root: Path) -> None:
    """recheck() end to end on a workspace of n embedded items over those files (DB + stat)."""
    import numpy as np

    from curate.core.workspace import Workspace
    from curate.ingest.recheck import recheck

    ws = Workspace(Path(tempfile.mkdtemp(prefix="bench_recheck_ws_")))
    con = ws.connect()
    paths = [str(root / f"{i // 1000:04d}" / f"{i:07d}.jpg") for i in range(n)]
    st = [os.stat(p) for p in paths]
    con.execute("INSERT INTO runs (run_id, source, status) VALUES (1, 'folder bench', 'finished')")
    con.register("b", {"id": np.arange(n), "path": np.array(paths, dtype=object),
                       "size": np.array([s.st_size for s in st]), "mtime": np.array([s.st_mtime_ns for s in st])})
    con.execute("INSERT INTO items (id, source_id, path, status, run_id) SELECT id, path, path, 'embedded', 1 FROM b")
    con.execute("INSERT INTO item_files SELECT id, size, mtime, NULL FROM b")
    t = time.perf_counter()
    r = recheck(ws, con, "folder bench", "stat")
    dt = time.perf_counter() - t
    print(f"recheck() stat       {n:>9,} items {dt:6.2f} s  {n / dt:>10,.0f} items/s  ({r.describe()})")


if __name__ == "__main__":
    main()
