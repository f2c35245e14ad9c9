"""Which float precision the model runs in: auto's rule, the CPU's bf16 check, and the
workspace's record of what its vectors were made with (the mixing rule).

bf16 and fp16 vectors agree with float32 ones to a cosine of >= 0.9999 (bench/bench_precision.py),
so they are comparable with each other and with float32 ones: a workspace embedded in a
reduced precision takes vectors of any precision. A workspace whose vectors are all float32
holds one more promise, bit-for-bit agreement with open_clip's float32 output; vectors of
another precision would silently break it, so such a workspace stays float32 (`auto` keeps
it, an explicit other precision is refused with what to do).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import duckdb

from ..errors import InputError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
META_KEY = "precision"
NAMES = {"fp32": "float32", "bf16": "bfloat16 autocast", "fp16": "float16 autocast"}

# Flags of a CPU that computes bf16 itself (AVX-512 BF16 dot products, AMX tiles); without
# them torch emulates bf16 and autocast is slower than float32.
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")

# "0" or "1" overrides the check: the test suite sets 0 so that `auto` is float32 there, where
# vectors are compared with open_clip's own float32 output.
NATIVE_BF16_ENV = "CURATE_NATIVE_BF16"


def native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this CPU has native bf16 arithmetic (AVX-512 BF16 or AMX); $CURATE_NATIVE_BF16 overrides."""
    forced = os.environ.get(NATIVE_BF16_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:  # not Linux: no cheap, reliable check; float32 is the safe side
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[-1].split())
            return any(f in flags for f in _BF16_FLAGS)
    return False


def check(precision: str) -> str:
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision '{precision}': one of {', '.join(PRECISIONS)}")
    return precision


def for_device(device: str) -> str:
    """auto's choice on a device, for a workspace without a float32 promise: fp16 on CUDA,
    float32 on a CPU.

    Not bf16 on a CPU, even one with native bf16 (`native_bf16`): with torch 2.14 here,
    bf16 autocast ran ViT-B-32's image tower no faster than float32 (batch 32, 2 cores with
    avx512_bf16: 15.4 images/s against 19.3; the text tower 1.6x), while the model's
    weights cast to bf16 ran at 40.7. `--precision bf16` stays available; auto takes it on
    a CPU once that path is the fast one and its fidelity is measured (issue 13)."""
    return "fp16" if device.startswith("cuda") else "fp32"


def workspace_precisions(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The precisions the workspace's vectors were embedded in, sorted ([] before any were).

    Workspaces from before the record: CPU runs were float32 and CUDA runs float16.
    """
    row = con.execute("SELECT value FROM meta WHERE key = ?", [META_KEY]).fetchall()
    if row:
        return sorted(json.loads(row[0][0]))
    devices = con.execute("SELECT DISTINCT device FROM runs WHERE command = 'build-index' "
                          "AND coalesce(items_embedded, 0) > 0").fetchall()
    return sorted({"fp16" if str(d).startswith("cuda") else "fp32" for (d,) in devices})


def resolve(precision: str, device: str, have: list[str]) -> str:
    """The precision a run uses: `precision` as asked, checked against the workspace's `have`."""
    check(precision)
    exact = have == ["fp32"]
    if precision == "auto":
        return "fp32" if exact else for_device(device)
    if exact and precision != "fp32":
        raise InputError(
            f"this workspace's vectors are all float32 (bit-for-bit open_clip output); --precision {precision} "
            "would mix in vectors that differ slightly from them: embed with --precision fp32 (or auto, which "
            "keeps it), or build a new workspace for reduced precision")
    return precision


def record(con: duckdb.DuckDBPyConnection, used: str) -> list[str]:
    """Add `used` to the workspace's precisions (meta); returns them all."""
    have = workspace_precisions(con)
    now = sorted(set(have) | {used})
    con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [META_KEY, json.dumps(now)])
    return now


def describe(precisions: list[str]) -> str:
    return "+".join(precisions) if precisions else "none yet"
