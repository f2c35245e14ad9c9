"""Near-duplicates: groups of items that are the same photo, or carry the same caption text.

Image groups come from the image index: each stored vector is a query, and every other
vector at cosine >= the threshold is its duplicate. A flat or IVF index answers a range
search (exact for flat; IVF at the nprobe build-index tuned); an index without range
search (or a GPU copy) answers a k-NN search whose hits under the threshold are dropped.
Queries stream shard by shard in batches, so memory holds one batch's results and the
pairs found, never an n x n matrix. Groups are the connected components of the pairs.

The pairs are kept (table duplicate_pairs, queries/duplicates.sql) with the shards they
came from, so a rerun after new items were embedded queries only the new shards: their
vectors meet the old ones through the index, which already holds them. A changed
threshold, or a shard rewritten since (items re-embedded), makes the rerun start over.

Caption-text groups are SQL only (the view caption_text_duplicates), stored the same way.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np

from ..core import sql, store
from ..core.workspace import Workspace
from ..errors import InputError
from .state import NotReady

# Cosine on the image embeddings. clip-retrieval's dedup (clip_back.py, get_non_uniques)
# range-searches CLIP image embeddings at 0.94; curate-tiny's random weights cannot tell
# what a trained model would need (README, "Near-duplicates", has the measurements).
DEFAULT_THRESHOLD = 0.94
KINDS = ("image", "caption-text")
BATCH_ROWS = 4096
KNN_K = 32          # neighbours a query gets when the index has no range search
META_KEY = "dedup.image"


class DedupError(InputError, ValueError):
    """A dedup that cannot run as asked."""


@dataclass(frozen=True)
class DedupResult:
    kind: str
    threshold: float | None       # None for caption-text
    items: int                    # items in the collection looked at (embedded)
    queried: int                  # vectors queried by this run (0 for caption-text)
    pairs: int                    # pairs at or above the threshold (all runs)
    groups: int
    in_groups: int                # items in a group of two or more
    method: str                   # how the index was asked
    started_over: bool            # every vector queried (first run, new threshold, rewritten shards)
    seconds: float

    @property
    def removed(self) -> int:
        """What `filter --dedup` leaves out: every member of a group but one."""
        return self.in_groups - self.groups

    def summary(self) -> str:
        what = ("images at cosine >= " + f"{self.threshold:g}") if self.kind == "image" else "same caption text"
        line = (f"dedup {self.kind}: {self.groups:,} groups of {what} hold {self.in_groups:,} of {self.items:,} "
                f"items ({self.removed:,} beside one per group")
        line += (", what `filter --dedup` leaves out)" if self.kind == "image" else ")")
        if self.kind == "image":
            line += (f" ({self.queried:,} vectors queried by {self.method}"
                     f"{', all again' if self.started_over else ', new shards only'}, {self.seconds:.1f}s)")
        return line


def find_duplicates(ws_path: str | Path, kind: str = "image", threshold: float = DEFAULT_THRESHOLD, *,
                    batch_rows: int = BATCH_ROWS, k: int = KNN_K, fresh: bool = False,
                    progress: Callable[[int], None] | None = None) -> DedupResult:
    """Find the groups of `kind` and store them in the table duplicates (replacing that kind's rows)."""
    if kind not in KINDS:
        raise DedupError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if not 0.0 < threshold <= 1.0:
        raise DedupError(f"threshold must lie in (0, 1], not {threshold}")
    ws = Workspace(ws_path)
    if not ws.exists():
        raise NotReady(f"no workspace at {ws.root}: run `curate build-index` first")
    started = time.monotonic()
    con = ws.connect()
    try:
        sql.run(con, "duplicates")
        items = con.execute("SELECT count(*) FROM items WHERE status = 'embedded'").fetchall()[0][0]
        if kind == "caption-text":
            with sql.transaction(con):
                con.execute("DELETE FROM duplicates WHERE kind = 'caption-text'")
                con.execute("INSERT INTO duplicates SELECT 'caption-text', id, group_id, representative, similarity "
                            "FROM caption_text_duplicates")
            groups, members = _counts(con, kind)
            return DedupResult(kind, None, items, 0, 0, groups, members, "SQL", True,
                               time.monotonic() - started)
        return _image(ws, con, items, float(threshold), batch_rows, k, fresh, progress, started)
    finally:
        con.close()


def _image(ws: Workspace, con: duckdb.DuckDBPyConnection, items: int, threshold: float, batch_rows: int, k: int,
           fresh: bool, progress: Callable[[int], None] | None, started: float) -> DedupResult:
    import faiss

    from ..ingest import faiss_index, index_recall

    path = ws.index_path("image")
    if not path.exists():
        raise NotReady(f"the workspace {ws.root} has no image index: run `curate build-index` first")
    shards = store.shard_files(ws, con, "image")
    index = faiss.read_index(str(path))
    held = sum(s.rows for s in shards)
    if index.ntotal != held:
        raise NotReady(f"the image index holds {index.ntotal:,} vectors but the workspace {held:,}: "
                       "run `curate build-index` again to bring it up to date")
    tuned = faiss_index.search_setting(con, "image")
    index_recall.set_param(index, tuned.value if tuned else None)
    index, on_gpu = _to_gpu(faiss, index)

    names = [s.vectors.name for s in shards]
    before = json.loads(Workspace.get_meta(con, META_KEY) or "null")
    start_over = (fresh or before is None or before.get("threshold") != threshold
                  or not set(before.get("shards", [])) <= set(names))
    todo = shards if start_over else [s for s in shards if s.vectors.name not in set(before["shards"])]

    method = "k-NN" if on_gpu else "range search"
    found_a, found_b, found_s = [], [], []
    queried = 0
    for shard in todo:
        ids, vecs = store.open_shard(shard)
        for s in range(0, len(ids), batch_rows):
            q_ids = np.asarray(ids[s:s + batch_rows], dtype=np.int64)
            q = np.ascontiguousarray(vecs[s:s + batch_rows], dtype=np.float32)
            a, b, sim, method = _neighbours(index, q_ids, q, threshold, k, method)
            found_a.append(a)
            found_b.append(b)
            found_s.append(sim)
            queried += len(q_ids)
            if progress:
                progress(len(q_ids))
    a = np.concatenate(found_a) if found_a else np.zeros(0, np.int64)
    b = np.concatenate(found_b) if found_b else np.zeros(0, np.int64)
    sim = np.concatenate(found_s) if found_s else np.zeros(0, np.float32)

    with sql.transaction(con):
        if start_over:
            con.execute("DELETE FROM duplicate_pairs WHERE kind = 'image'")
        con.register("found_pairs", {"a": a, "b": b, "s": sim})
        try:
            con.execute("INSERT INTO duplicate_pairs SELECT 'image', f.a, f.b, max(f.s) FROM found_pairs f "
                        "ANTI JOIN (SELECT a, b FROM duplicate_pairs WHERE kind = 'image') p "
                        "ON p.a = f.a AND p.b = f.b GROUP BY f.a, f.b")
        finally:
            con.unregister("found_pairs")
        got = con.execute("SELECT a, b FROM duplicate_pairs WHERE kind = 'image'").fetchnumpy()
        pa, pb = np.asarray(got["a"], dtype=np.int64), np.asarray(got["b"], dtype=np.int64)
        node, group = components(pa, pb)
        con.execute("DELETE FROM duplicates WHERE kind = 'image'")
        if len(node):
            con.register("members", {"id": node, "group_id": group})
            try:
                con.execute(
                    "INSERT INTO duplicates SELECT 'image', m.id, m.group_id, r.representative, NULL "
                    "FROM members m JOIN (SELECT m.group_id, arg_max(m.id, (coalesce(f.size, -1), -m.id)) "
                    "AS representative FROM members m LEFT JOIN item_files f ON f.item_id = m.id "
                    "GROUP BY m.group_id) r USING (group_id)")
            finally:
                con.unregister("members")
            _similarities(ws, con, shards)
        Workspace.set_meta(con, META_KEY, json.dumps({"threshold": threshold, "shards": names}))
    groups, members = _counts(con, "image")
    return DedupResult("image", threshold, items, queried, len(pa), groups, members, method, start_over,
                       time.monotonic() - started)


def _to_gpu(faiss, index):
    """The index on the GPUs when FAISS has them (k-NN there: GPU indexes have no range search)."""
    try:
        n = faiss.get_num_gpus()
    except AttributeError:
        n = 0
    if n <= 0:
        return index, False
    try:
        return faiss.index_cpu_to_all_gpus(index), True
    except (RuntimeError, AttributeError):   # an index type the GPU does not take (HNSW): stay on the CPU
        return index, False


def _neighbours(index, q_ids: np.ndarray, q: np.ndarray, threshold: float, k: int,
                method: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """The pairs (a < b, cosine) of this batch at or above the threshold."""
    if method == "range search":
        try:
            lims, dist, hit = index.range_search(q, threshold)
            src = np.repeat(q_ids, np.diff(lims).astype(np.int64))
        except RuntimeError:       # an index type without range search
            method = "k-NN"
    if method != "range search":
        kk = min(k + 1, index.ntotal)
        dist, hit = index.search(q, kk)
        src = np.repeat(q_ids, kk)
        dist, hit = dist.ravel(), hit.ravel()
        method = f"k-NN (k={k})"
    keep = (hit >= 0) & (hit != src) & (dist >= threshold)
    src, hit, dist = src[keep], hit[keep].astype(np.int64), dist[keep].astype(np.float32)
    return np.minimum(src, hit), np.maximum(src, hit), np.minimum(dist, np.float32(1.0)), method


def components(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Connected components of the edges a[i] - b[i]: (node ids, sorted; each one's group = its
    component's smallest id). Label propagation with pointer jumping, numpy only: O(edges) a round,
    a few rounds for the chains of duplicates."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    if len(a) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    node, inv = np.unique(np.concatenate([a, b]), return_inverse=True)
    ea, eb = inv[:len(a)], inv[len(a):]
    label = np.arange(len(node))
    while True:
        low = np.minimum(label[ea], label[eb])
        new = label.copy()
        np.minimum.at(new, ea, low)
        np.minimum.at(new, eb, low)
        while True:                     # pointer jumping: each node to its label's label
            jumped = new[new]
            if np.array_equal(jumped, new):
                break
            new = jumped
        if np.array_equal(new, label):
            break
        label = new
    return node, node[label]            # labels are indices of the smallest node: sorted ids


def _similarities(ws: Workspace, con: duckdb.DuckDBPyConnection, shards: list) -> None:
    """Each member's cosine to its representative, from the stored vectors: one pass gathers the
    representatives' vectors (one per group), a second scores the members."""
    rep_of = dict(con.execute("SELECT id, representative FROM duplicates WHERE kind = 'image'").fetchall())
    members = np.fromiter(rep_of.keys(), dtype=np.int64, count=len(rep_of))
    reps = np.unique(np.fromiter(rep_of.values(), dtype=np.int64, count=len(rep_of)))
    rep_vec: dict[int, np.ndarray] = {}
    for shard in shards:
        ids, vecs = store.open_shard(shard)
        for j in np.flatnonzero(np.isin(ids, reps)):
            rep_vec[int(ids[j])] = np.asarray(vecs[j], dtype=np.float32)
    out_id, out_s = [], []
    for shard in shards:
        ids, vecs = store.open_shard(shard)
        sel = np.flatnonzero(np.isin(ids, members))
        if len(sel) == 0:
            continue
        mine = np.asarray(vecs[sel], dtype=np.float32)
        theirs = np.stack([rep_vec[rep_of[int(i)]] for i in ids[sel]])
        out_id.append(np.asarray(ids[sel], dtype=np.int64))
        out_s.append(np.einsum("ij,ij->i", mine, theirs).astype(np.float32))
    if not out_id:
        return
    con.register("sims", {"id": np.concatenate(out_id), "s": np.minimum(np.concatenate(out_s), np.float32(1.0))})
    try:
        con.execute("UPDATE duplicates SET similarity = sims.s FROM sims "
                    "WHERE duplicates.kind = 'image' AND duplicates.id = sims.id")
    finally:
        con.unregister("sims")


def _counts(con: duckdb.DuckDBPyConnection, kind: str) -> tuple[int, int]:
    groups, members = con.execute("SELECT count(DISTINCT group_id), count(*) FROM duplicates WHERE kind = ?",
                                  [kind]).fetchall()[0]
    return int(groups), int(members)


# --------------------------------------------------------------------------- filter --dedup

def restrict_kept(con: duckdb.DuckDBPyConnection, removed: bool) -> None:
    """`filter --dedup` on the TEMP table kept: one row per image group (the representative when
    it is kept, else the kept member of highest prob, then smallest id); `removed`: instead the
    kept rows dedup leaves out, with their group, representative and cosine to it."""
    if not sql.has_relation(con, "duplicates"):
        raise DedupError("no duplicates found yet: run `curate dedup` first")
    if not con.execute("SELECT count(*) FROM meta WHERE key = ?", [META_KEY]).fetchall()[0][0]:
        raise DedupError("no image duplicates found yet: run `curate dedup` first")
    con.execute("CREATE TEMP TABLE dedup_drop AS SELECT id FROM ("
                "SELECT k.id, row_number() OVER (PARTITION BY d.group_id ORDER BY (k.id = d.representative) DESC, "
                "k.prob DESC, k.id) AS r FROM kept k JOIN duplicates d ON d.kind = 'image' AND d.id = k.id) "
                "WHERE r > 1")
    if not removed:
        con.execute("DELETE FROM kept WHERE id IN (SELECT id FROM dedup_drop)")
        return
    con.execute("DELETE FROM kept WHERE id NOT IN (SELECT id FROM dedup_drop)")
    con.execute("ALTER TABLE kept ADD COLUMN dup_group BIGINT")
    con.execute("ALTER TABLE kept ADD COLUMN dup_representative BIGINT")
    con.execute("ALTER TABLE kept ADD COLUMN dup_similarity FLOAT")
    con.execute("UPDATE kept SET dup_group = d.group_id, dup_representative = d.representative, "
                "dup_similarity = d.similarity FROM duplicates d WHERE d.kind = 'image' AND d.id = kept.id")
