"""A collection through the whole pipeline, stage by stage, as the CLI runs it: time, peak memory, disk.

    python bench/bench_pipeline.py [--n 1000000] [--select 100000] [--dim 512] [--part-size 250000]
        [--work /tmp/pipeline-bench] [--keep]

1. source (the bench's own work, not curate's): N precomputed vectors in clip-retrieval's
   layout, as LAION ships them: img_emb/img_emb_N.npy and text_emb/text_emb_N.npy (float16),
   metadata/metadata_N.parquet (image_path, caption, key), --part-size rows a part. Image
   vectors come from bench_index.py's CLIP-like "hard" generator, with planted near-duplicate
   groups (~1 row in 40: exact copies, copies at cosines 0.95-0.999, and chains a~b~c whose ends
   are below the 0.94 threshold); a caption vector is its image's mixed with an unrelated
   vector of the same shape (cosine ~0.45, as CLIP's image-caption pairs). Every image_path
   names a JPEG that does not exist yet.
2. build-index: `curate build-index SRC -w WS --model ViT-B-32 --pretrained none` (an import:
   no model runs; the index recipe is `auto`'s at N), both indexes (image, caption).
3. classify: `curate classify -w WS --label-set places205 --logit-scale 100`: every image and
   every caption against the 205 labels (the random-weights text tower makes the label vectors;
   the scale is trained CLIP's, so the probabilities are as peaked as real ones).
4. dedup: `curate dedup -w WS --threshold 0.98` (images; see THRESHOLD for why not 0.94).
5. filter: `curate filter -w WS --min-prob X --dedup --out kept.parquet`, X the top image
   probability of the --select-th best item, so that about --select items are kept.
6. images (the bench's again): a small JPEG (96x72, 512 distinct encodings) is written at the
   path of each kept item only: what the export reads, and nothing for the rest.
7. export: `curate filter -w WS --min-prob X --dedup --format webdataset --out WDS`.

Each curate stage is a child process: its wall time, its peak RSS (os.wait4's, the child's own),
and afterwards the disk the workspace takes (allocated blocks, as du), split into vectors,
indexes and the DuckDB file, plus what the stage wrote outside it. The 1-minute load average is
recorded before and after each stage (the machine is shared: a stage run under load 6 on 2 cores
takes up to ~3x the time it would alone). JSON lines to bench/results/pipeline.jsonl; the work
folder is removed at the end unless --keep. At 1M the run takes ~20 min on 2 loaded cores and
12 GiB of disk at its peak, so it is not part of `make bench` (docs/scale.md: the figures).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_index import HardModel, _unit  # noqa: E402
from common import machine, record, synthetic_picture  # noqa: E402

FILE = "pipeline.jsonl"
CHUNK = 100_000
# The hard set is denser than real CLIP embeddings: at 200K its items have on average 73 others at
# cosine >= 0.94 (bench_dedup.py), five times that at 1M, so clip-retrieval's 0.94 would make one
# group of most of it; at 0.98 ~9 pairs an item, as bench_dedup.py measures.
THRESHOLD = 0.98
DISTINCT_JPEGS = 512


def plant_duplicates(v: np.ndarray, rng: np.random.Generator) -> int:
    """Overwrite rows of v (unit vectors) with near-duplicate groups of 2-5; returns how many groups.

    A group is a base row and copies of it: exact (cosine 1), perturbed to a cosine drawn in
    [0.95, 0.999], or a chain (each member the previous one perturbed to 0.965, so that the ends
    of a chain of 3 or more are near 0.93, below the threshold: only transitivity groups them)."""
    n, dim = v.shape
    groups = n // 100
    sizes = rng.integers(2, 6, groups)
    rows = rng.permutation(n)[: sizes.sum()]
    s = 0
    for g, size in enumerate(sizes):
        r = rows[s : s + size]
        s += size
        kind = g % 3
        for k in range(1, size):
            if kind == 0:
                v[r[k]] = v[r[0]]
                continue
            cos = 0.965 if kind == 2 else rng.uniform(0.95, 0.999)
            prev = v[r[k - 1] if kind == 2 else r[0]]
            noise = rng.standard_normal(dim).astype(np.float32)
            noise -= noise @ prev * prev
            noise /= np.linalg.norm(noise)
            # a unit vector at angle acos(cos) from prev, in the plane of prev and the noise
            v[r[k]] = cos * prev + np.sqrt(1 - cos * cos) * noise
    return groups


def make_source(src: Path, n: int, dim: int, part_size: int, photos: Path) -> int:
    """The clip-retrieval folder; returns the number of planted duplicate groups. One made before
    with the same settings (--source) is used as it is: then the number is returned negated."""
    marker = src / f".done-{n}-{dim}-{part_size}"
    if marker.exists():
        return -int(marker.read_text())
    shutil.rmtree(src, ignore_errors=True)
    for d in ("img_emb", "text_emb", "metadata"):
        (src / d).mkdir(parents=True)
    model = HardModel(n, dim)
    rng = np.random.default_rng(7)
    planted = 0
    for p, start in enumerate(range(0, n, part_size)):
        m = min(part_size, n - start)
        img = np.lib.format.open_memmap(src / "img_emb" / f"img_emb_{p}.npy", mode="w+", dtype=np.float16,
                                        shape=(m, dim))
        txt = np.lib.format.open_memmap(src / "text_emb" / f"text_emb_{p}.npy", mode="w+", dtype=np.float16,
                                        shape=(m, dim))
        for s in range(0, m, CHUNK):
            k = min(CHUNK, m - s)
            v = model.sample(k, 1 + start + s)
            planted += plant_duplicates(v, rng)
            img[s : s + k] = v
            txt[s : s + k] = _unit(0.5 * v + model.sample(k, 10**8 + start + s))
        img.flush()
        txt.flush()
        del img, txt
        # the photos' folders hold 10,000 files each, as a large crawl is usually laid out
        duckdb.sql(
            f"COPY (SELECT 'k' || (i + {start}) AS key, "
            f"'{photos}/' || lpad(((i + {start}) // 10000)::VARCHAR, 4, '0') || '/' "
            f"|| lpad((i + {start})::VARCHAR, 8, '0') || '.jpg' AS image_path, "
            f"'photo ' || (i + {start}) || ' of a place, taken on a trip' AS caption "
            f"FROM range({m}) t(i)) TO '{src / 'metadata' / f'metadata_{p}.parquet'}' (FORMAT parquet)")
    marker.write_text(str(planted))
    return planted


def disk_bytes(path: Path) -> int:
    """Allocated bytes below path (du's figure, not the apparent sizes)."""
    if path.is_file():
        return path.stat().st_blocks * 512
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


def curate_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "curate"
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "from curate.cli import cli; cli()"]


# Linux keeps a process's peak RSS across exec, and a forked child starts with its parent's pages
# counted: a curate child forked from this process (numpy, duckdb, the source just made) would
# report this process's peak as its own. So the children are started by a small launcher, itself
# started before anything large is loaded, which reports each child's own peak from os.wait4.
LAUNCHER = """
import json, os, subprocess, sys
for line in sys.stdin:
    job = json.loads(line)
    with open(job["log"], "w") as out:
        p = subprocess.Popen(job["args"], stdout=out, stderr=subprocess.STDOUT)
        _, status, ru = os.wait4(p.pid, 0)
    print(json.dumps({"rc": os.waitstatus_to_exitcode(status), "maxrss_kib": ru.ru_maxrss}), flush=True)
"""


class Launcher:
    def __init__(self) -> None:
        self.p = subprocess.Popen([sys.executable, "-S", "-c", LAUNCHER], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})

    def run(self, args: list[str], log: Path) -> dict:
        """One curate command as a child: wall seconds, its peak RSS (MiB), load averages around it."""
        load0 = os.getloadavg()[0]
        t = time.perf_counter()
        self.p.stdin.write(json.dumps({"args": [*curate_cmd(), *args], "log": str(log)}) + "\n")
        self.p.stdin.flush()
        r = json.loads(self.p.stdout.readline())
        took = time.perf_counter() - t
        if r["rc"] != 0:
            sys.exit(f"stage failed (exit {r['rc']}): curate {' '.join(args)}\n{log.read_text()[-3000:]}")
        return {"seconds": took, "peak_mib": r["maxrss_kib"] / 1024, "load_before": load0,
                "load_after": os.getloadavg()[0]}

    def close(self) -> None:
        self.p.stdin.close()
        self.p.wait()


def workspace_disk(ws: Path) -> dict:
    parts = {"total": disk_bytes(ws), "vectors": disk_bytes(ws / "embeddings"), "indexes": disk_bytes(ws / "indexes"),
             "duckdb": sum(disk_bytes(f) for f in ws.glob("curate.duckdb*"))}
    parts["other"] = parts["total"] - parts["vectors"] - parts["indexes"] - parts["duckdb"]
    return parts


def log_steps(log: Path) -> dict[str, float]:
    """A command's summary lines ("import: 100,000 rows in 1m21s (...)", "index images: ... in 24s"):
    seconds per step, to the second, as curate prints them."""
    out = {}
    for line in log.read_text().replace("\r", "\n").splitlines():
        m = re.match(r"([a-z][a-z ]*): [\d,]+ \w+ in (?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?\b", line)
        if m and any(m.groups()[1:]):
            h, mi, se = (int(x or 0) for x in m.groups()[1:])
            out[m.group(1)] = h * 3600 + mi * 60 + se
    return out


def jpeg_bytes(seed: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(synthetic_picture((96, 72), seed), "RGB").save(buf, "JPEG", quality=85)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--select", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--part-size", type=int, default=250_000)
    ap.add_argument("--work", type=Path, default=Path("/tmp/pipeline-bench"))
    ap.add_argument("--keep", action="store_true", help="leave the work folder (source, workspace, outputs)")
    ap.add_argument("--source", type=Path, default=None,
                    help="make the clip-retrieval folder here, or use the one made here before with the same "
                         "--n/--dim/--part-size, and leave it (the rest of the work folder goes)")
    ap.add_argument("--threshold", type=float, default=THRESHOLD, help="dedup's cosine")
    ap.add_argument("--from-stage", choices=["build-index", "dedup"], default="build-index",
                    help="dedup: take the workspace a --keep run left in --work (built and classified) and "
                         "run dedup, filter and the export on it")
    a = ap.parse_args()
    launcher = Launcher()
    print(f"machine: {machine()}; load {os.getloadavg()}")
    work = a.work.resolve()
    fresh = a.from_stage == "build-index"
    if fresh:
        shutil.rmtree(work, ignore_errors=True)
    src = (a.source or work / "src").resolve()
    # the photos live beside the vectors whose metadata names them: a source made once serves any --work
    ws, photos, logs = work / "ws", src / "photos", work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    setting = f"n={a.n:,} x {a.dim}, select {a.select:,}"
    rows: list[dict] = []

    def rec(stage: str, what: str, value: float, unit: str, **extra) -> None:
        rows.append(record(FILE, f"pipeline.{stage}.{what}", value, unit, baseline=setting, n=a.n, stage=stage,
                           **extra))

    def stage_figures(stage: str, r: dict, outputs: dict[str, Path] | None = None) -> None:
        load = {"load_before": round(r["load_before"], 2), "load_after": round(r["load_after"], 2)}
        rec(stage, "seconds", r["seconds"], "s", **load)
        rec(stage, "peak_rss", r["peak_mib"], "MiB", **load)
        d = workspace_disk(ws)
        for k, v in d.items():
            rec(stage, f"disk.workspace.{k}", v / 2**20, "MiB")
        for k, p in (outputs or {}).items():
            rec(stage, f"disk.{k}", disk_bytes(p) / 2**20, "MiB")

    try:
        t = time.perf_counter()
        load0 = os.getloadavg()[0]
        planted = make_source(src, a.n, a.dim, a.part_size, photos)
        if planted >= 0:
            rec("source", "seconds", time.perf_counter() - t, "s", load_before=round(load0, 2),
                load_after=round(os.getloadavg()[0], 2), planted_groups=planted)
        planted = abs(planted)
        if fresh:
            rec("source", "disk", disk_bytes(src) / 2**20, "MiB")
            r = launcher.run(["build-index", str(src), "-w", str(ws), "--model", "ViT-B-32", "--pretrained", "none"],
                             logs / "build-index.log")
            stage_figures("build-index", r)
            # import, then per index: training (not in its line), adding, tuning and writing (in its line)
            steps = log_steps(logs / "build-index.log")
            for step, sec in steps.items():
                rec("build-index", f"{step.replace(' ', '_')}.seconds", sec, "s")
            rec("build-index", "rest.seconds", r["seconds"] - sum(steps.values()), "s")
            r = launcher.run(["classify", "-w", str(ws), "--label-set", "places205", "--logit-scale", "100"],
                             logs / "classify.log")
            stage_figures("classify", r)
        r = launcher.run(["dedup", "-w", str(ws), "--threshold", str(a.threshold)], logs / "dedup.log")
        stage_figures("dedup", r)

        con = duckdb.connect(str(ws / "curate.duckdb"), read_only=True)
        # filter --dedup keeps one item of each group that has any member at --min-prob: the
        # --select-th best group (or lone item), by its best member, sets the cut
        cut = con.execute(
            "SELECT max(p.prob) AS best FROM predictions p "
            "LEFT JOIN duplicates d ON d.kind = 'image' AND d.id = p.id "
            "GROUP BY coalesce(-1 - d.group_id, p.id) ORDER BY best DESC LIMIT 1 OFFSET ?",
            [a.select - 1]).fetchall()[0][0]
        info = {
            "index": {k: f"{f} {p}={v} recall {r:.3f}" if p else f for k, f, p, v, r in con.execute(
                "SELECT kind, factory, param, value, recall FROM index_search").fetchall()},
            "storage": con.execute("SELECT count(*) FROM label_scores").fetchall()[0][0],
            "dup_groups": con.execute("SELECT count(DISTINCT group_id) FROM duplicates WHERE kind = 'image'")
                             .fetchall()[0][0],
            "dup_items": con.execute("SELECT count(*) FROM duplicates WHERE kind = 'image'").fetchall()[0][0],
            "method": next((line[:400] for line in (logs / "dedup.log").read_text().replace("\r", "\n").splitlines()
                            if "cluster" in line or "queried" in line), ""),
        }
        con.close()
        rec("dedup", "groups_found", info["dup_groups"], "groups", planted_groups=planted,
            items_in_groups=info["dup_items"], threshold=a.threshold, method=info["method"])
        rec("classify", "label_scores_rows", info["storage"], "rows")

        min_prob = f"{math.floor(float(cut) * 1e9) / 1e9:.9f}"  # rounded down: the cut's own group stays in
        kept = work / "kept.parquet"
        r = launcher.run(["filter", "-w", str(ws), "--min-prob", min_prob, "--dedup", "--out", str(kept)],
                      logs / "filter.log")
        stage_figures("filter", r, {"kept_parquet": kept})
        n_kept = duckdb.sql(f"SELECT count(*) FROM '{kept}'").fetchall()[0][0]
        rec("filter", "kept", n_kept, "items", min_prob=float(min_prob))

        t = time.perf_counter()
        encodings = [jpeg_bytes(s) for s in range(DISTINCT_JPEGS)]
        for i, (item, path) in enumerate(duckdb.sql(f"SELECT id, path FROM '{kept}'").fetchall()):
            f = Path(path)
            if i == 0 or not f.parent.exists():
                f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(encodings[item % DISTINCT_JPEGS])
        rec("images", "seconds", time.perf_counter() - t, "s")
        rec("images", "disk", disk_bytes(photos) / 2**20, "MiB")

        wds = work / "wds"
        r = launcher.run(["filter", "-w", str(ws), "--min-prob", min_prob, "--dedup", "--format", "webdataset",
                       "--out", str(wds)], logs / "export.log")
        stage_figures("export", r, {"webdataset": wds})
        print(f"\n{setting}: index {info['index']}, {info['storage']:,} label_scores rows, "
              f"{info['dup_groups']:,} duplicate groups found ({planted:,} planted), {n_kept:,} kept at "
              f"--min-prob {min_prob}; disk peak {disk_bytes(work) / 2**30:.2f} GiB")
        print(open(logs / "export.log").read()[-400:])
    finally:
        launcher.close()
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
            shutil.rmtree(photos, ignore_errors=True)


if __name__ == "__main__":
    main()
