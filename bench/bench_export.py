"""webdataset export throughput: kept rows -> tar shards, rows/s and MB/s.

    python bench/bench_export.py [--n 100000] [--shard-size 10000] [--distinct 512]

`--n` small real JPEG files (160x120, synthetic gradients + noise, `--distinct` different
encodings, each file its own copy on disk) are listed in the TEMP table `kept` that
`curate filter` selects into (id, path, caption, label, prob, source_id, city) with a
runner-up table, and written by `curate.select.exports.write_webdataset`, the writer
`filter --format webdataset` calls: what is timed is reading each file, the three tar
members per sample and the shard files (the selection SQL is filter's and not timed here).
The files were just written, so they are read from the page cache: figures for a cold
disk are lower. JSON lines are appended to bench/results/export.jsonl; the work files
are removed at the end.
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import WORK, peak_rss_mb, record, synthetic_picture  # noqa: E402

from curate.select.exports import write_webdataset  # noqa: E402

FILE = "export.jsonl"


def jpeg_bytes(seed: int, size: tuple[int, int] = (160, 120)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(synthetic_picture(size, seed), "RGB").save(buf, "JPEG", quality=85)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--shard-size", type=int, default=10_000)
    ap.add_argument("--distinct", type=int, default=512)
    a = ap.parse_args()
    work = WORK / "export"
    shutil.rmtree(work, ignore_errors=True)
    photos = work / "photos"
    photos.mkdir(parents=True)
    try:
        encodings = [jpeg_bytes(s) for s in range(a.distinct)]
        t0 = time.perf_counter()
        for i in range(a.n):
            (photos / f"{i:07d}.jpg").write_bytes(encodings[i % a.distinct])
        print(f"wrote {a.n:,} JPEGs (mean {np.mean([len(e) for e in encodings]) / 1024:.1f} KiB) "
              f"in {time.perf_counter() - t0:.1f} s", flush=True)

        con = duckdb.connect()
        con.execute("""
            CREATE TEMP TABLE kept AS
            SELECT i::BIGINT AS id, ? || '/' || lpad(i::VARCHAR, 7, '0') || '.jpg' AS path,
                   'caption of photo ' || i AS caption, 'label_' || (i % 205) AS label,
                   0.5 + (i % 50) / 100.0 AS prob, 'post-' || i AS source_id,
                   CASE WHEN i % 2 = 0 THEN 'newyork' ELSE 'paris' END AS city
            FROM range(?) t(i) ORDER BY id""", [str(photos), a.n])
        con.execute("CREATE TEMP TABLE runner_up AS SELECT id, 'label_' || ((id + 1) % 205) AS label2, "
                    "0.1 AS prob2 FROM kept")
        t0 = time.perf_counter()
        res = write_webdataset(work, con, work / "shards", shard_size=a.shard_size,
                               prov={"curate.command": "bench"}, with_embeddings=False, runner_up="runner_up")
        dt = time.perf_counter() - t0
        assert res.samples == a.n and res.missing == 0
        setting = (f"{a.n:,} rows, {len(res.shards)} shards of {a.shard_size:,}, {a.distinct} distinct "
                   f"160x120 JPEGs (q85) as {a.n:,} files, page-cached")
        record(FILE, "export.webdataset_rows_per_s", a.n / dt, "rows/s", baseline=setting)
        record(FILE, "export.webdataset_mb_per_s", res.bytes / 1e6 / dt, "MB/s", baseline=setting)
        record(FILE, "export.webdataset_seconds", dt, "s", baseline=setting)
        record(FILE, "export.webdataset_shard_mb", res.bytes / 1e6, "MB", baseline=setting)
        record(FILE, "export.peak_rss_mb", peak_rss_mb(), "MB", baseline=setting)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
