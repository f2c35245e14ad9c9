"""Shared by the benchmarks: what machine this is, and where figures are written."""

from __future__ import annotations

import json
import os
import platform
import resource
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
WORK = Path(__file__).resolve().parent / "work"


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
           baseline: str | None = None) -> dict:
    row = {"name": name, "value": round(value, 4), "unit": unit,
           "ratio": None if ratio is None else round(ratio, 4), "baseline": baseline,
           "machine": machine(), "date": time.strftime("%Y-%m-%dT%H:%M:%S")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / file, "a") as f:
        f.write(json.dumps(row) + "\n")
    r = "" if ratio is None else f"   ratio {ratio:.3f} vs {baseline}"
    print(f"{name:<40} {value:>12.3f} {unit:<8}{r}", flush=True)
    return row
