"""Scores follow the vectors: which items of a classification were scored from vectors
they no longer have, and which items have vectors its scores do not reflect.

A classification records the shards it scored (`scored_shards`, queries/scores_tables.sql).
An item's vector is known by its shard's (kind, part, run_id): build-index rewrites a
shard only to take items out of it (store.drop_items: same part and run, new file name),
and writes every vector it makes (new items, items embedded again, repaired ones) into a
new shard. So, per kind:

- kept: ids in a current shard whose (part, run_id) was scored: the vectors scored;
- new: ids in any other current shard: vectors the scores do not reflect;
- stale: ids scored by that kind that are not kept (embedded again, rejected, pending).

Readers need only "is anything stale", which is a query over the shard tables
(queries/scores_fresh.sql, the views' own guard); the ids files are read only when
it is (a count for the message) and by `classify`, which rescores exactly those items.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np

from ..core import sql, store
from ..core.workspace import KINDS, Workspace

_EMPTY = np.zeros(0, np.int64)


@dataclass
class Changes:
    """What changed under a classification's scores since they were made."""

    stale: np.ndarray       # items with scores made from vectors they no longer have
    rescore: np.ndarray     # items to (re)score: stale ones that still have a vector, and items
                            # with a vector the scores do not reflect (embedded since; late captions...)
    gone: np.ndarray        # stale items with no vector now (rejected, pending): their rows go
    new_max: int | None     # the largest id among `rescore`


def workspace_of(con: duckdb.DuckDBPyConnection) -> Workspace:
    """The workspace a connection was opened on (its database file's folder)."""
    path = con.execute("SELECT path FROM duckdb_databases() WHERE database_name = current_database()").fetchall()[0][0]
    return Workspace(Path(path).parent)


def _bare(schema: str) -> str:
    return schema[1:-1].replace('""', '"') if schema.startswith('"') else schema


def recorded(con: duckdb.DuckDBPyConnection, schema: str, prefix: str = "") -> bool:
    """Whether the scores of `schema` (a quoted identifier) record the shards they were made from."""
    return sql.has_relation(con, prefix + "scored_shards", schema=_bare(schema))


def stale_shards(con: duckdb.DuckDBPyConnection, schema: str, prefix: str = "") -> int:
    """How many shards the scores were made from are rewritten or gone (0: nothing is stale).
    The same test as queries/scores_fresh.sql, for any classification and its staging copy."""
    if not recorded(con, schema, prefix):
        return 0
    return int(con.execute(
        f"SELECT count(*) FROM {schema}.{prefix}scored_shards s WHERE NOT EXISTS (SELECT 1 FROM main.shards c "
        "WHERE c.kind = s.kind AND c.part = s.part AND c.file = s.file AND c.rows = s.rows "
        "AND c.run_id IS NOT DISTINCT FROM s.run_id AND c.vec_sum IS NOT DISTINCT FROM s.vec_sum)").fetchall()[0][0])


def _ids(con: duckdb.DuckDBPyConnection, query: str) -> np.ndarray:
    got = con.execute(query).fetchnumpy()
    col = next(iter(got.values())) if got else _EMPTY
    return np.asarray(col, dtype=np.int64)


def changes(ws: Workspace, con: duckdb.DuckDBPyConnection, schema: str, prefix: str = "") -> Changes:
    """The changes under `schema`.<prefix>item_scores since its shards were recorded.

    Reads the ids files of the current shards (8 bytes an item), never the vectors.
    """
    scored_parts = {(k, p, r) for k, p, r in con.execute(
        f"SELECT kind, part, run_id FROM {schema}.{prefix}scored_shards").fetchall()}
    rows = con.execute("SELECT kind, part, run_id, file, rows FROM main.shards ORDER BY kind, part").fetchall()
    kept: dict[str, list[np.ndarray]] = {k: [] for k in KINDS}
    new: dict[str, list[np.ndarray]] = {k: [] for k in KINDS}
    for kind, part, run_id, file, n in rows:
        ids, _vecs = store.open_shard(store.shard_file(ws, kind, file, n))
        (kept if (kind, part, run_id) in scored_parts else new)[kind].append(ids)

    def cat(parts: list[np.ndarray]) -> np.ndarray:
        return _sorted_unique(np.concatenate(parts)) if parts else _EMPTY

    have = cat([a for k in KINDS for a in kept[k] + new[k]])
    stale, fresh_new = [], []
    for kind in KINDS:
        scored = _ids(con, f"SELECT id FROM {schema}.{prefix}item_scores WHERE {kind}_label IS NOT NULL")
        stale.append(scored[~np.isin(scored, cat(kept[kind]))])
        fresh_new.append(cat(new[kind]))
    stale_ids = cat(stale)
    rescore = cat([stale_ids[np.isin(stale_ids, have)], *fresh_new])
    gone = stale_ids[~np.isin(stale_ids, have)]
    return Changes(stale_ids, rescore, gone, int(rescore[-1]) if len(rescore) else None)


def _sorted_unique(a: np.ndarray) -> np.ndarray:
    """np.unique of int64 ids by a sort (numpy's own takes a slower hashing path here: 0.66 s
    against ~0.03 s for 400K ids)."""
    a = np.sort(a)
    return a[np.concatenate(([True], a[1:] != a[:-1]))] if len(a) else a


def snapshot(con: duckdb.DuckDBPyConnection, table: str) -> None:
    """Record the current shards as the ones `table` (a scored_shards table) was made from."""
    con.execute(f"DELETE FROM {table}")
    con.execute(f"INSERT INTO {table} (kind, part, run_id, file, rows, vec_sum) "
                "SELECT kind, part, run_id, file, rows, vec_sum FROM main.shards")


def same_shards(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    """Whether main.shards is exactly what `table` recorded (nothing added, rewritten or removed)."""
    return con.execute(
        f"SELECT count(*) FROM ((SELECT kind, part, run_id, file, rows, vec_sum FROM {table} EXCEPT ALL "
        "SELECT kind, part, run_id, file, rows, vec_sum FROM main.shards) UNION ALL "
        "(SELECT kind, part, run_id, file, rows, vec_sum FROM main.shards EXCEPT ALL "
        f"SELECT kind, part, run_id, file, rows, vec_sum FROM {table}))").fetchall()[0][0] == 0
