"""Which float precision the model runs in: auto's rule, how each precision is carried out on a
device, the CPU's bf16 check, and the workspace's record of what its vectors were made with
(the mixing rule).

bf16 means one thing to the user, "the model computes in bfloat16", and is carried out the
way that is fast on the device (`mode`): on a CPU the model's weights are cast to bf16 and
its inputs with them; on CUDA it runs under bf16 autocast. CPU autocast is not offered:
it re-casts every weight on every call, and for ViT-B-32's image tower (torch 2.14, batch
32, 2 cores with avx512_bf16) it ran slower than float32 (15.4 against 19.3 images/s, quiet)
while the bf16 weights ran at 40.7 (2.1x float32), both with the same fidelity (min cosine
to float32 0.99994 on 64 random inputs, 0.99994 for autocast). Parameters that are not part
of a forward pass (logit_scale, logit_bias) stay float32: in bf16 a logit scale of 100
would read 98.9 (14.29 reads 14.25), a shift of every probability that the vectors never
had. Every output is converted to float32 before it is normalised and stored.

auto, on a workspace without a float32 promise: fp16 on CUDA; bf16 on a CPU with native bf16
arithmetic (AVX-512 BF16 or AMX: `native_bf16`); float32 elsewhere (emulated bf16 is slower
than float32). The CPU rule follows bench/bench_precision.py's figures for the bf16-weights
path against float32 (ViT-B-32, random weights). bf16 is auto's choice on such a CPU
because (1) the image tower runs >= 1.5x float32 model-only, same run, and (2) the image
embeddings of the 5 bundled photos and the ~2,000 synthetic JPEGs keep a min cosine >= 0.9999
to float32's, and top-1 agreement of the 205-label classification (logit scale 100) is
>= 99% among the images whose float32 top two are >= 0.05 apart in probability. Measured on 2 quiet
cores (bench/results/precision.jsonl, 5 photos + 2,000 synthetic JPEGs, one run): 2.16x
float32 (37.6 against 17.4 images/s; text tower 1.99x), min cosine 0.99993, 100% top-1
agreement where float32's top two are >= 0.05 apart (97.5% over all). Top-1 agreement over
all images is reported beside it but is no criterion with random weights, whose
probabilities are nearly flat: bf16 autocast flipped ~5% of top-1s, all where float32's top
two were within 0.013 of each other. A run that misses a threshold takes bf16 out of auto here.

bf16 and fp16 vectors agree with float32 ones to a cosine of >= 0.9999, so they are
comparable with each other and with float32 ones: a workspace embedded in a reduced
precision takes vectors of any precision. A workspace whose vectors are all float32
holds one more promise, open_clip's float32 output (images bit for bit, text within 2e-7: the
padding cut in model.py rounds the last bit); vectors of
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
NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16 autocast"}

# Flags of a CPU that computes bf16 itself (AVX-512 BF16 dot products, AMX tiles); without
# them torch emulates bf16, slower than float32.
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
    """auto's choice on a device, for a workspace without a float32 promise: fp16 on CUDA, bf16
    on a CPU with native bf16, float32 elsewhere (the module's docstring has the figures)."""
    if device.startswith("cuda"):
        return "fp16"
    return "bf16" if device == "cpu" and native_bf16() else "fp32"


def mode(precision: str, device: str) -> str:
    """How `precision` runs on `device`: fp32, autocast (CUDA; fp16 anywhere), or weights (bf16 on a CPU)."""
    if precision == "fp32":
        return "fp32"
    if precision == "bf16" and not device.startswith("cuda"):
        return "weights"
    return "autocast"


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
            f"this workspace's vectors are all float32 (open_clip's float32 output); --precision {precision} "
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
