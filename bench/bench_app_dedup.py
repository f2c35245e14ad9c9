"""The browse grid's duplicates control at scale: server-side times over real HTTP on 127.0.0.1.

    .venv/bin/python bench/bench_app_dedup.py [--n 100000] [--keep]

The workspace is bench_app.py's (N items from random vectors, classified against places205,
kept under bench/work/app-N/ with --keep). Its vectors have no near-duplicates, so groups are
planted in the `duplicates` table as `curate dedup` stores them: every item whose id is 0, 1
or 2 modulo 30 is in a group of three (10% of the items), the first its representative
(`--groups-share` changes the share). The app runs in this process without its model (the
control needs none); each figure is the median of 5 requests (JSON only, no thumbnails):
  grid.all_ms         the first page of the plain grid (kept in memory: the baseline)
  grid.reps_ms        the first page, representatives only (SQL: the selection into a TEMP
                      table, less what `filter --dedup` leaves out)
  grid.reps_deep_ms   page 6 through the cursor, representatives only
  grid.groups_ms      the first page, only items in groups (group by group)
  grid.groups_deep_ms page 6 through the cursor, only items in groups
  counts.all_ms       the sidebar at a new threshold, all items (the baseline)
  counts.reps_ms      the sidebar at a new threshold, representatives only
Figures go to bench/results/app.jsonl (names app.dedup.*).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_app import RESULTS, _ms, _post, make_workspace  # noqa: E402
from common import WORK, record, work_folder  # noqa: E402


def plant_groups(ws_dir: Path, share: float) -> int:
    """Groups of three as `curate dedup` stores them; returns how many items are in one."""
    from curate.core import sql
    from curate.core.workspace import Workspace
    from curate.select.dedup import META_KEY

    period = max(3, round(3 / share))
    with Workspace(ws_dir).writing() as con:
        sql.run(con, "duplicates")
        con.execute("DELETE FROM duplicates WHERE kind = 'image'")
        con.execute("INSERT INTO duplicates SELECT 'image', id, id - id % ?, id - id % ?, "
                    "CASE WHEN id % ? = 0 THEN 1.0 ELSE 0.97 END FROM items WHERE id % ? < 3",
                    [period, period, period, period])
        Workspace.set_meta(con, META_KEY, json.dumps({"threshold": 0.94, "shards": [], "planted": True}))
        return int(con.execute("SELECT count(*) FROM duplicates WHERE kind = 'image'").fetchall()[0][0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--groups-share", type=float, default=0.1)
    ap.add_argument("--keep", action="store_true", help="keep the workspace under bench/work/ (default: remove it)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from curate.app.server import AppServer

    with work_folder(WORK / f"app-{args.n}", args.keep) as root:
        ws_dir = make_workspace(root, args.n, args.dim, "ViT-B-32")
        grouped = plant_groups(ws_dir, args.groups_share)
        base = f"n={args.n:,}, {grouped:,} items in planted groups of 3, load {os.getloadavg()[0]:.1f}"
        srv = AppServer(ws_dir, 0, load_model=False).start()
        url = srv.url
        try:
            def median(body: dict, path: str = "api/grid") -> float:
                _post(url + path, body)   # the first read of this generation is not what is timed
                return statistics.median(_ms(lambda: _post(url + path, body))[0] for _ in range(5))

            def deep(sel: dict) -> float:
                after = None
                for _ in range(5):
                    after = _post(url + "api/grid", {"selection": sel, "after": after})["next"]
                return statistics.median(_ms(lambda: _post(url + "api/grid", {"selection": sel, "after": after}))[0]
                                         for _ in range(5))

            figures = {
                "app.dedup.grid.all_ms": (median({"selection": {"min_prob": 0.0}}), "first page, all items (kept)"),
                "app.dedup.grid.reps_ms": (median({"selection": {"min_prob": 0.0, "duplicates": "representatives"}}),
                                           "first page, representatives only"),
                "app.dedup.grid.reps_deep_ms": (deep({"min_prob": 0.0, "duplicates": "representatives"}),
                                                "page 6, representatives only"),
                "app.dedup.grid.groups_ms": (median({"selection": {"min_prob": 0.0, "duplicates": "groups"}}),
                                             "first page, only items in groups"),
                "app.dedup.grid.groups_deep_ms": (deep({"min_prob": 0.0, "duplicates": "groups"}),
                                                  "page 6, only items in groups"),
            }
            for name, dup in (("all", "all"), ("reps", "representatives")):
                times = []
                for t in (0.13, 0.27, 0.41, 0.56, 0.73):
                    times.append(_ms(lambda t=t, dup=dup: _post(url + "api/counts",
                                                       {"selection": {"min_prob": t, "duplicates": dup}}))[0])
                figures[f"app.dedup.counts.{name}_ms"] = (statistics.median(times),
                                                          f"label counts at a new threshold, {dup}, median of 5 "
                                                          f"(max {max(times):.0f})")
        finally:
            srv.stop()
        for name, (value, what) in figures.items():
            record(RESULTS, name, value, "ms", baseline=f"{what}; {base}")


if __name__ == "__main__":
    main()
