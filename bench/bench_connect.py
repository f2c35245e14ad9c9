"""Opening a workspace: a scope through the process's DuckDB instance against one of its own.

    python bench/bench_connect.py [--repeat 300] [--items 12]

Builds a small workspace with the real commands (`--items` synthetic JPEGs, curate-tiny with
random weights; build-index, then classify), in a temporary folder removed at the end, and
times each way of opening and closing it, `--repeat` times after a warm-up, with a trivial
query in between:

  reading.shared / writing.shared   Workspace.reading() / writing(): the database attached to
                                    the process's instance (core/duckdb_host.py), detached after
  reading.own / writing.own         the same scope with an instance of its own, as every open
                                    was before: duckdb.connect builds DuckDB's catalog of
                                    built-in functions each time and tears it down at close
  duckdb.connect / duckdb.attach    DuckDB alone on the same file: connect+close against
                                    ATTACH+DETACH on an instance that exists (the floor)

The figure is the median's wall time per open+close (the process is single-threaded here);
the ratio is shared over own in the same run. JSON lines to bench/results/connect.jsonl.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record, synthetic_picture, work_folder  # noqa: E402

OUT = "connect.jsonl"


def build(root: Path, n: int) -> Path:
    from click.testing import CliRunner
    from PIL import Image

    from curate.cli import cli

    photos = root / "photos"
    photos.mkdir()
    for i in range(n):
        Image.fromarray(synthetic_picture((96, 80), i), "RGB").save(photos / f"img_{i:03d}.jpg", quality=90)
        (photos / f"img_{i:03d}.txt").write_text(f"a photo number {i}", encoding="utf-8")
    ws = root / "ws"
    for args in (["build-index", str(photos), "-w", str(ws), "--model", "curate-tiny", "--pretrained", "none",
                  "--workers", "0"], ["classify", "-w", str(ws)]):
        r = CliRunner().invoke(cli, args, catch_exceptions=False)
        if r.exit_code != 0:
            raise SystemExit(f"{args[0]} failed:\n{r.output}")
    return ws


def timed(fn, repeat: int) -> float:
    """Median milliseconds of one call."""
    for _ in range(5):
        fn()
    runs = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - t) * 1e3)
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=300)
    ap.add_argument("--items", type=int, default=12)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from curate.core.workspace import Workspace

    load = os.getloadavg()[0]
    with work_folder(Path(tempfile.mkdtemp(prefix="curate-bench-connect-"))) as root:
        ws = Workspace(build(root, args.items))
        path = str(ws.db_path)

        def reading(own: bool):
            def go():
                with ws.reading(own_instance=own) as con:
                    con.execute("SELECT count(*) FROM items").fetchall()
            return go

        def writing(own: bool):
            def go():
                if own:
                    con = ws.connect()
                    con.execute("SELECT count(*) FROM items").fetchall()
                    con.close()
                    return
                with ws.writing() as con:
                    con.execute("SELECT count(*) FROM items").fetchall()
            return go

        host = duckdb.connect(":memory:")

        def plain():
            con = duckdb.connect(path, read_only=True)
            con.execute("SELECT count(*) FROM items").fetchall()
            con.close()

        def attached():
            con = host.cursor()
            con.execute(f"ATTACH '{path}' AS w (READ_ONLY)")
            con.execute("USE w")
            con.execute("SELECT count(*) FROM items").fetchall()
            con.close()
            host.execute("DETACH w")

        figures = {}
        for name, fn in (("reading.own", reading(True)), ("reading.shared", reading(False)),
                         ("writing.own", writing(True)), ("writing.shared", writing(False)),
                         ("duckdb.connect", plain), ("duckdb.attach", attached)):
            figures[name] = timed(fn, args.repeat)
        for name in ("reading", "writing"):
            record(OUT, f"{name}.own", figures[f"{name}.own"], "ms", load=load, items=args.items)
            record(OUT, f"{name}.shared", figures[f"{name}.shared"], "ms",
                   ratio=figures[f"{name}.shared"] / figures[f"{name}.own"], baseline=f"{name}.own",
                   load=load, items=args.items)
        record(OUT, "duckdb.connect", figures["duckdb.connect"], "ms", load=load)
        record(OUT, "duckdb.attach", figures["duckdb.attach"], "ms",
               ratio=figures["duckdb.attach"] / figures["duckdb.connect"], baseline="duckdb.connect", load=load)


if __name__ == "__main__":
    main()
