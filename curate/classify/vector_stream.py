"""The committed image and caption vectors of a workspace, streamed side by side in item-id
order with bounded memory: the batches the scoring runs over."""

from __future__ import annotations

from collections.abc import Iterator

import duckdb
import numpy as np

from ..core import store
from ..core.workspace import Workspace
from .scoring import Batch


def aligned_batches(ws: Workspace, con: duckdb.DuckDBPyConnection, batch_rows: int,
                    after: int | None = None) -> Iterator[Batch]:
    """Image and caption vectors of the same items together, in item-id order.

    Shards are written in id order by build-index, so the two streams merge like
    sorted lists with bounded memory. A kind whose shards are not in id order is
    read through an id index instead (8 bytes an item, still no vector held twice).

    `after`: only items with a greater id (a resumed run). The batches are then the
    ones a run from the start would make from there on, provided `after` ends one
    of them: float64 products are not bit-for-bit the same when a batch holds other
    rows, so the same batches are what makes a resumed run equal an uninterrupted one.
    """
    img = _Buffered(_stream(ws, con, "image", batch_rows, after))
    cap = _Buffered(_stream(ws, con, "caption", batch_rows, after))
    while True:
        ids_i, v_i = img.next_batch()
        if ids_i is None:
            while True:  # captions of items that have no image vector
                ids_c, v_c = cap.next_batch()
                if ids_c is None:
                    return
                yield Batch(ids_c, np.zeros(0, np.int64), v_c[:0], np.arange(len(ids_c)), v_c)
        ids_c, v_c = cap.take_upto(int(ids_i[-1]))
        if len(ids_c) == 0:
            yield Batch(ids_i, np.arange(len(ids_i)), v_i, np.zeros(0, np.int64), v_c)
            continue
        ids = np.union1d(ids_i, ids_c)
        yield Batch(ids, np.searchsorted(ids, ids_i), v_i, np.searchsorted(ids, ids_c), v_c)


def _chunk_start(sorted_ids: np.ndarray, after: int | None, batch_rows: int) -> tuple[int, int]:
    """(first chunk's start, first row to yield) among sorted ids, for items after `after`.

    Chunks stay where a run from the start puts them (multiples of batch_rows); the
    first one is cut at the resume point.
    """
    if after is None:
        return 0, 0
    first = int(np.searchsorted(sorted_ids, after, side="right"))
    return first - first % batch_rows, first


def _stream(ws: Workspace, con: duckdb.DuckDBPyConnection, kind: str, batch_rows: int,
            after: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    if _in_id_order(ws, con, kind):  # shard by shard, in chunks of batch_rows (store.iter_embeddings)
        for shard in store.shard_files(ws, con, kind):
            ids, vecs = store.open_shard(shard)  # vectors memory-mapped: read only where yielded
            if len(ids) == 0 or (after is not None and ids[-1] <= after):
                continue  # scored already: its vectors are not read
            start, first = _chunk_start(ids, after, batch_rows)
            for s in range(start, len(ids), batch_rows):
                lo = max(s, first)
                yield ids[lo:s + batch_rows], np.asarray(vecs[lo:s + batch_rows])
        return
    opened = [store.open_shard(s) for s in store.shard_files(ws, con, kind)]
    ids, mm = [i for i, _v in opened], [v for _i, v in opened]
    del opened
    where = np.concatenate([np.full(len(a), s, np.int32) for s, a in enumerate(ids)])
    row = np.concatenate([np.arange(len(a), dtype=np.int64) for a in ids])
    all_ids = np.concatenate(ids)
    del ids
    order = np.argsort(all_ids, kind="stable")
    if len(order) > 1 and (np.diff(all_ids[order]) == 0).any():
        raise ValueError(f"the {kind} shards hold an item twice; rebuild the workspace")
    start, first = _chunk_start(all_ids[order], after, batch_rows)
    if first >= len(order):
        return
    for s in range(start, len(order), batch_rows):
        sel = order[max(s, first):s + batch_rows]
        out = np.empty((len(sel), mm[0].shape[1]), np.float32)
        for sh in np.unique(where[sel]):
            m = where[sel] == sh
            out[m] = mm[sh][row[sel][m]]
        yield all_ids[sel], out


def _in_id_order(ws: Workspace, con: duckdb.DuckDBPyConnection, kind: str) -> bool:
    last = -(2 ** 63)
    for shard in store.shard_files(ws, con, kind):
        ids, _vecs = store.open_shard(shard)
        if len(ids) == 0:
            continue
        if ids[0] <= last or (len(ids) > 1 and (np.diff(ids) <= 0).any()):
            return False
        last = int(ids[-1])
    return True


class _Buffered:
    """A sorted (ids, vectors) stream that can be read up to a given id."""

    def __init__(self, it: Iterator[tuple[np.ndarray, np.ndarray]]):
        self._it = it
        self._ids: list[np.ndarray] = []
        self._vecs: list[np.ndarray] = []
        self._done = False

    def _pull(self) -> bool:
        if self._done:
            return False
        nxt = next(self._it, None)
        if nxt is None:
            self._done = True
            return False
        self._ids.append(nxt[0])
        self._vecs.append(nxt[1])
        return True

    def next_batch(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        if not self._ids and not self._pull():
            return None, None
        ids, vecs = self._ids.pop(0), self._vecs.pop(0)
        return ids, vecs

    def take_upto(self, cut: int) -> tuple[np.ndarray, np.ndarray]:
        while (not self._ids or self._ids[-1][-1] <= cut) and self._pull():
            pass
        take_i, take_v = [], []
        while self._ids and self._ids[0][0] <= cut:
            ids, vecs = self._ids.pop(0), self._vecs.pop(0)
            n = int(np.searchsorted(ids, cut, side="right"))
            take_i.append(ids[:n])
            take_v.append(vecs[:n])
            if n < len(ids):
                self._ids.insert(0, ids[n:])
                self._vecs.insert(0, vecs[n:])
                break
        if not take_i:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        return np.concatenate(take_i), np.concatenate(take_v)


def subset_batches(ws: Workspace, con: duckdb.DuckDBPyConnection, ids: np.ndarray, batch_rows: int,
                   after: int | None = None) -> Iterator[Batch]:
    """The current image and caption vectors of these items (sorted, unique ids), in id order,
    `batch_rows` items at a time: what a classify that rescores changed items scores.

    Batches are cut at fixed positions of `ids`, so a run resumed `after` the last id of a
    batch makes the batches an uninterrupted one makes. Reads the ids files of every shard
    and, memory-mapped, only the vectors of these items.
    """
    ids = np.asarray(ids, dtype=np.int64)
    located = {kind: _locate(ws, con, kind, ids) for kind in ("image", "caption")}
    first = 0 if after is None else int(np.searchsorted(ids, after, side="right"))
    for s in range(first - first % batch_rows, len(ids), batch_rows):
        chunk = ids[max(s, first):s + batch_rows]
        if not len(chunk):
            continue
        got = {kind: loc.take(int(chunk[0]), int(chunk[-1])) for kind, loc in located.items()}
        (img_ids, img), (cap_ids, cap) = got["image"], got["caption"]
        yield Batch(chunk, np.searchsorted(chunk, img_ids), img, np.searchsorted(chunk, cap_ids), cap)


class _Located:
    """Where some items' vectors of one kind are: (id, shard, row), sorted by id."""

    def __init__(self, ids: np.ndarray, shard: np.ndarray, row: np.ndarray, mms: list[np.ndarray], dim: int):
        self.ids, self.shard, self.row, self.mms, self.dim = ids, shard, row, mms, dim

    def take(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = np.searchsorted(self.ids, lo, side="left"), np.searchsorted(self.ids, hi, side="right")
        out = np.empty((b - a, self.dim), np.float32)
        shard, row = self.shard[a:b], self.row[a:b]
        for sh in np.unique(shard):
            m = shard == sh
            out[m] = self.mms[sh][row[m]]
        return self.ids[a:b], out


def _locate(ws: Workspace, con: duckdb.DuckDBPyConnection, kind: str, wanted: np.ndarray) -> _Located:
    found_ids, found_shard, found_row, mms = [], [], [], []
    dim = 0
    for shard in store.shard_files(ws, con, kind):
        have, vecs = store.open_shard(shard)
        dim = vecs.shape[1]
        rows = np.nonzero(np.isin(have, wanted))[0]
        if not len(rows):
            continue
        found_ids.append(have[rows])
        found_shard.append(np.full(len(rows), len(mms), np.int32))
        found_row.append(rows)
        mms.append(vecs)
    if not found_ids:
        return _Located(np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int64), [], dim)
    all_ids = np.concatenate(found_ids)
    order = np.argsort(all_ids, kind="stable")
    return _Located(all_ids[order], np.concatenate(found_shard)[order], np.concatenate(found_row)[order], mms, dim)
