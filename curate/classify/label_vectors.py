"""The label vectors: each label's prompts encoded by the workspace's model and averaged,
cached in the workspace by (model, prompt texts), the queries of classification."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import duckdb
import numpy as np

from ..core import sql
from ..core.workspace import ModelIdentity, check_same_model
from .labels import LabelSet
from .prompts import Wording, prompts_for

if TYPE_CHECKING:  # the model module imports torch and open_clip; load it only when needed
    from ..ingest.model import Encoder


@dataclass(frozen=True)
class LabelQueries:
    """The label vectors of one (model, label set, wording): the queries of classification."""

    cache_key: str
    labels: tuple[str, ...]
    prompts: list[list[str]]
    vectors: np.ndarray          # float64 [n_labels, d], unit rows
    logit_scale: float           # the model's own
    precision: str = "fp32"      # what the prompts were encoded in (curate/ingest/precision.py)


def cache_key(ident: ModelIdentity, prompts: list[list[str]], precision: str = "fp32") -> str:
    """Identity of the model, every prompt text in label order, and the precision.

    float32 keys are those of workspaces from before the precision was recorded, so their
    cached vectors (and the scores fingerprinted with them) stay valid.
    """
    parts: list = [ident.model, ident.pretrained, ident.embed_dim, prompts]
    if precision != "fp32":
        parts.append(precision)
    blob = json.dumps(parts, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


def label_queries(con: duckdb.DuckDBPyConnection, ident: ModelIdentity, label_set: LabelSet,
                  wording: Wording, encoder_factory: Callable[[], Encoder],
                  precision: str = "fp32") -> tuple[LabelQueries, bool]:
    """The label vectors, from the workspace's cache or encoded now (and cached).

    Returns (queries, came_from_cache). The encoder is only built on a cache miss; it
    must run in `precision`, which is part of the cache key.
    """
    sql.run(con, sql.CACHE)
    prompts = prompts_for(label_set, wording)
    key = cache_key(ident, prompts, precision)
    cached = _cached(con, key, label_set, prompts, precision)
    if cached is not None:
        return cached, True
    enc = encoder_factory()
    check_same_model(ident, enc.identity)
    if getattr(enc, "precision", "fp32") != precision:
        raise ValueError(f"label vectors asked in {precision} from an encoder running in {enc.precision}")
    flat = [p for ps in prompts for p in ps]
    emb = enc.encode_text(flat).astype(np.float64)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    vectors = np.empty((len(prompts), emb.shape[1]), np.float64)
    start = 0
    for i, ps in enumerate(prompts):  # prompt ensembling: the mean direction of the prompts
        v = emb[start:start + len(ps)].mean(axis=0)
        vectors[i] = v / np.linalg.norm(v)
        start += len(ps)
    q = LabelQueries(key, label_set.labels, prompts, vectors, float(enc.logit_scale), precision)
    _store_cache(con, q, ident, label_set, wording)
    return q, False


def _cached(con: duckdb.DuckDBPyConnection, key: str, label_set: LabelSet,
            prompts: list[list[str]], precision: str) -> LabelQueries | None:
    head = con.execute("SELECT logit_scale FROM label_vector_sets WHERE cache_key = ?", [key]).fetchall()
    if not head:
        return None
    rows = con.execute("SELECT vector FROM label_vectors WHERE cache_key = ? ORDER BY label_idx", [key]).fetchall()
    if len(rows) != len(label_set):
        return None
    vectors = np.array([r[0] for r in rows], dtype=np.float64)
    return LabelQueries(key, label_set.labels, prompts, vectors, float(head[0][0]), precision)


def _store_cache(con: duckdb.DuckDBPyConnection, q: LabelQueries, ident: ModelIdentity, label_set: LabelSet,
                 wording: Wording) -> None:
    with sql.transaction(con):
        con.execute("DELETE FROM label_vectors WHERE cache_key = ?", [q.cache_key])
        con.execute("DELETE FROM label_vector_sets WHERE cache_key = ?", [q.cache_key])
        con.execute("INSERT INTO label_vector_sets (cache_key, model, pretrained, embed_dim, label_set, prompts, "
                    "logit_scale) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [q.cache_key, ident.model, ident.pretrained, ident.embed_dim, label_set.name, wording.name,
                     q.logit_scale])
        # one statement over lists (executemany runs one INSERT a label: 3x slower at 205 labels)
        con.execute("INSERT INTO label_vectors SELECT $key, i - 1, lab, ps, vec FROM (SELECT "
                    "unnest(range(1, len($labels) + 1)) AS i, unnest($labels) AS lab, unnest($prompts) AS ps, "
                    "unnest($vectors) AS vec)",
                    {"key": q.cache_key, "labels": list(q.labels), "prompts": [list(p) for p in q.prompts],
                     "vectors": q.vectors.tolist()})
