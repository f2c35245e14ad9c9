"""Test helpers for classification: independent float64 references and hand-built workspaces.

The references take the stored embeddings and the label vectors and redo the maths in
plain numpy, label by label, without any code of curate's classify stage.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import duckdb
import numpy as np
from conftest import open_db

from curate.core import store
from curate.core.workspace import ModelIdentity, Workspace


def softmax64(vecs: np.ndarray, labels: np.ndarray, scale: float) -> np.ndarray:
    """Full softmax over the labels, float64, the textbook way (with the max subtracted)."""
    logits = vecs.astype(np.float64) @ labels.astype(np.float64).T * scale
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def top2(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(label, prob, label2, prob2) per row; ties go to the lower label index."""
    order = np.argsort(-probs, axis=1, kind="stable")
    rows = np.arange(len(probs))
    return order[:, 0], probs[rows, order[:, 0]], order[:, 1], probs[rows, order[:, 1]]


def ensemble_reference(p_img: dict[int, np.ndarray], p_cap: dict[int, np.ndarray], text_weight: float,
                       text_min: float, image_min: float = 0.0, image_max: float = 1.0,
                       renormalize: bool = True) -> dict[int, tuple[int, float, float]]:
    """id -> (label, prob, prob2) of the ensemble, over every label."""
    out = {}
    for i, pi in p_img.items():
        pc = p_cap.get(i)
        used = pc is not None and pc.max() >= text_min and image_min <= pi.max() <= image_max
        if used:
            p = (1 - text_weight) * pi + text_weight * pc
        else:
            p = pi * (1.0 if renormalize else 1 - text_weight)
        order = np.argsort(-p, kind="stable")
        out[i] = (int(order[0]), float(p[order[0]]), float(p[order[1]]))
    return out


def label_vectors(con: duckdb.DuckDBPyConnection) -> np.ndarray:
    """The label vectors the last classify used (from the workspace's cache)."""
    key = con.execute("SELECT cache_key FROM score_settings").fetchall()[0][0]
    rows = con.execute("SELECT vector FROM label_vectors WHERE cache_key = ? ORDER BY label_idx", [key]).fetchall()
    return np.array([r[0] for r in rows], dtype=np.float64)


def references(ws_path: Path) -> dict:
    """Everything a test compares against: per-kind ids and full probability matrices."""
    ws = Workspace(ws_path)
    con = open_db(str(ws.db_path))
    try:
        q = label_vectors(con)
        scale = con.execute("SELECT logit_scale FROM score_settings").fetchall()[0][0]
        labels = [r[0] for r in con.execute("SELECT label FROM labels ORDER BY label_idx").fetchall()]
        out = {"labels": labels, "q": q, "scale": scale}
        for kind in ("image", "caption"):
            ids, vecs = store.load_all(ws, con, kind)
            out[kind] = (ids, softmax64(vecs, q, scale) if len(ids) else np.zeros((0, len(labels))))
        return out
    finally:
        con.close()


def hand_workspace(root: Path, image: dict[int, np.ndarray], caption: dict[int, np.ndarray],
                   ident: ModelIdentity, shard_rows: int = 4, reverse_shards: bool = False) -> Path:
    """A workspace written through the public store API, with the vectors given.

    `reverse_shards` writes the shards highest ids first (not in id order), as an
    importer might.
    """
    ws = Workspace(root)
    con = ws.connect()
    Workspace.bind_model(con, ident)
    all_ids = sorted(set(image) | set(caption))
    con.executemany("INSERT INTO items (id, source_id, path, caption, status) VALUES (?, ?, ?, ?, ?)",
                    [[i, f"src{i}", str(root / f"img{i}.jpg"), f"caption {i}" if i in caption else None,
                      "embedded"] for i in all_ids])
    for kind, vecs in (("image", image), ("caption", caption)):
        ids = sorted(vecs)
        chunks = [ids[s:s + shard_rows] for s in range(0, len(ids), shard_rows)]
        if reverse_shards:
            chunks = [c[::-1] for c in chunks[::-1]]
        for part, chunk in enumerate(chunks):
            arr = np.stack([vecs[i] for i in chunk]).astype(np.float32)
            name = store.write_shard(ws, kind, part, np.array(chunk, np.int64), arr)
            store.record_shard(con, kind, part, name, len(chunk), 0)
    con.close()
    return root


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    v = rng.standard_normal((n, d))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def in_classification(con: duckdb.DuckDBPyConnection, name: str | None = None) -> duckdb.DuckDBPyConnection:
    """Point a raw connection's unqualified names at a named classification's schema
    ("cls_NAME": its tables and staging next_*): by default the only one there is."""
    if name is None:
        schemas = sorted({r[0] for r in con.execute(
            "SELECT schema_name FROM duckdb_tables() WHERE database_name = current_database() "
            "AND starts_with(schema_name, 'cls_')").fetchall()})
        assert len(schemas) == 1, schemas
        schema = schemas[0]
    else:
        schema = "cls_" + name
    con.execute(f"SET search_path = '\"{schema}\",main'")
    return con


def old_layout(db: Path) -> str:
    """Turn a classified workspace back into the layout of a curate from before named
    classifications: the only classification's tables in main, no registry, no schema.
    Returns the name it had."""
    from curate.core import sql

    con = duckdb.connect(str(db))
    try:
        [(name,)] = con.execute("SELECT name FROM classifications").fetchall()
        schema = f'"cls_{name}"'
        tables = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
                                            "AND schema_name = ?",
                                            [f"cls_{name}"]).fetchall()]
        for view in ("predictions", "caption_predictions", "ensemble", "coverage", "scores_fresh", "stale_shards",
                     "labels", "item_scores", "label_scores", "score_settings", "score_progress", "scored_shards"):
            con.execute(f"DROP VIEW IF EXISTS main.{view}")
        for t in tables:
            con.execute(f"CREATE TABLE main.{t} AS SELECT * FROM {schema}.{t}")
        con.execute(f"DROP SCHEMA {schema} CASCADE")
        con.execute("DROP TABLE classifications")
        if con.execute("SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() "
                       "AND table_name = 'review_sets'").fetchall()[0][0]:
            con.execute("ALTER TABLE review_sets DROP COLUMN classification")
        if "score_settings" in tables:
            for view in sql.VIEWS:
                con.execute(sql.text(view))
        return name
    finally:
        con.close()


def read_out(path: Path) -> list[dict]:
    """The rows of a filter or search output, read back by a reader of its format (DuckDB for parquet)."""
    if path.suffix == ".parquet":
        con = duckdb.connect()
        rel = con.execute("SELECT * FROM read_parquet(?)", [str(path)])
        cols = [d[0] for d in rel.description]
        return [dict(zip(cols, r, strict=True)) for r in rel.fetchall()]
    if path.suffix in (".csv", ".tsv"):
        with path.open(encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ","))
    if path.suffix == ".json":
        return json.loads(path.read_text(encoding="utf-8"))
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
