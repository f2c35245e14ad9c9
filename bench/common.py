"""Shared by the benchmarks: what machine this is, and where figures are written."""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
WORK = Path(__file__).resolve().parent / "work"


@contextmanager
def work_folder(root: Path, keep: bool = False) -> Iterator[Path]:
    """A run's work folder, the load average said before and after; removed after (however the run
    ends, its set-up included) unless `keep`."""
    print(f"load average before: {os.getloadavg()}", flush=True)
    try:
        yield root
    finally:
        print(f"load average after: {os.getloadavg()}", flush=True)
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = ""
    try:
        import torch

        if torch.cuda.is_available():
            gpu = f", GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return f"{os.cpu_count()} cores {cpu}, {mem_gb:.0f} GiB{gpu}"


def peak_rss_mb(children: bool = False) -> float:
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024


def record(file: str, name: str, value: float, unit: str, ratio: float | None = None,
           baseline: str | None = None, **extra: object) -> dict:
    """Append one figure; `extra` fields (e.g. the load average it was measured under) go into its row."""
    row = {"name": name, "value": round(value, 4), "unit": unit,
           "ratio": None if ratio is None else round(ratio, 4), "baseline": baseline,
           "machine": machine(), "date": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra}
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / file, "a") as f:
        f.write(json.dumps(row) + "\n")
    r = "" if ratio is None else f"   ratio {ratio:.3f} vs {baseline}"
    print(f"{name:<40} {value:>12.3f} {unit:<8}{r}", flush=True)
    return row


def synthetic_picture(size: tuple[int, int], seed: int):
    """tests/conftest.write_jpeg's picture as an RGB array: gradients plus noise, one per seed."""
    import numpy as np

    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * (1 + seed % 5) + yy) % 256, (yy * (2 + seed % 3)) % 256,
                     (xx + yy * (seed % 7)) % 256], axis=-1).astype(np.float64)
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def vector_workspace(ws_dir: Path, chunks, dim: int) -> None:
    """A fresh workspace at ws_dir whose image shards are `chunks` (float32 [m, dim] each, ids
    counting from 0), recorded as one run of a ViT-B-32-sized model: what the index and dedup
    benches search."""
    import shutil

    import numpy as np

    from curate.core import store
    from curate.core.workspace import ModelIdentity, Workspace

    shutil.rmtree(ws_dir, ignore_errors=True)
    ws = Workspace(ws_dir)
    con = ws.connect()
    ident = ModelIdentity("ViT-B-32", "laion2b_s34b_b79k", dim, False)
    Workspace.bind_model(con, ident)
    run = Workspace.start_run(con, "bench", "synthetic clusters", ident, "cpu")
    start = 0
    for v in chunks:
        part = store.next_part(con, "image")
        ids = np.arange(start, start + len(v))
        store.record_shard(con, "image", part, store.write_shard(ws, "image", part, ids, v), len(v), run)
        start += len(v)
    con.close()
