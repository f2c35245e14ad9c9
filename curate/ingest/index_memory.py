"""How much memory an index takes, and the `--max-index-memory` budget it must fit.

Pure arithmetic (no faiss), so the budget is read and checked before any embedding runs.
The estimate is of the index as `faiss.read_index` loads it: vectors or codes, ids,
graph links, centroids. It is deliberately a little high (IDMap2's reverse id map is
counted though it is not in the file).
"""

from __future__ import annotations

import re

_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}

IDMAP2_BYTES = 8 + 40        # id_map entry, and the reverse map's hash node and bucket
IVF_ID_BYTES = 8             # an id beside each vector in its inverted list
HNSW_NODE_BYTES = 8 + 4 + 1  # offsets, levels, and the upper levels' share beyond level 0


def parse_size(text: str | int | None) -> int | None:
    """'2GB' -> 2_000_000_000, '1.5GiB' -> 1.5 * 2**30, '800M', a plain number of bytes; None stays None."""
    if text is None or isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*", str(text), re.IGNORECASE)
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"--max-index-memory {text!r}: write a size such as 2GB, 1.5GiB or 800MB")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()])


def describe(nbytes: int) -> str:
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if nbytes >= size:
            return f"{nbytes / size:.3g} {unit}"
    return f"{nbytes} B"


def index_bytes(n: int, d: int, *, ids: str, nlist: int = 0, pq_m: int = 0, hnsw_m: int = 0) -> int:
    """The memory of an index of n d-dimensional vectors.

    ids: 'idmap2' (flat, HNSW) or 'ivf'; nlist: inverted lists (their centroids are kept);
    pq_m: PQ code bytes per vector (0: full float32 vectors); hnsw_m: HNSW links per node
    (level 0 holds 2*M of them, 4 bytes each).
    """
    per_vector = pq_m if pq_m else 4 * d
    per_vector += IDMAP2_BYTES if ids == "idmap2" else IVF_ID_BYTES
    if hnsw_m:
        per_vector += 2 * hnsw_m * 4 + HNSW_NODE_BYTES + hnsw_m * 4 // 8
    fixed = nlist * d * 4 + (256 * d * 4 if pq_m else 0)
    return n * per_vector + fixed
