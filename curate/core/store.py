"""Embedding shards on disk: write once, commit through the database, stream back.

A shard is two .npy files (vectors float32 [n, d], ids int64 [n]). They are written
to temporary names and renamed, then recorded in the `shards` table in the same
transaction that marks their items embedded (`commit_shards`, the one commit both
build-index paths use). Files with no committed row are left overs from a killed run
and are removed on the next start.

This module is the only one that knows how shard files are named (`shard_name`,
`ids_name`), listed (`shard_files`) and opened (`open_shard`, checked against the
shard's record): every reader goes through it.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import duckdb
import numpy as np

from ..errors import WorkspaceError
from .sql import transaction
from .workspace import KINDS, Workspace


def shard_name(part: int, rewrite: int = 0) -> str:
    """The vectors file of a shard: `part-NNNNNN.npy`, or `part-NNNNNN.rK.npy` once rewritten K times."""
    return f"part-{part:06d}.npy" if rewrite == 0 else f"part-{part:06d}.r{rewrite}.npy"


def ids_name(name: str) -> str:
    """The ids file beside a vectors file: `part-NNNNNN.npy` -> `part-NNNNNN.ids.npy`."""
    return name[: -len(".npy")] + ".ids.npy"


class ShardFile(NamedTuple):
    """A committed shard's files, its recorded row count and what was recorded when it was written
    (checksums and mtimes: None for a shard recorded without them)."""

    vectors: Path
    ids: Path
    rows: int
    vec_sum: str | None = None
    ids_sum: str | None = None
    vec_mtime_ns: int | None = None
    ids_mtime_ns: int | None = None


def shard_file(ws: Workspace, kind: str, name: str, rows: int, vec_sum: str | None = None,
               ids_sum: str | None = None, vec_mtime_ns: int | None = None,
               ids_mtime_ns: int | None = None) -> ShardFile:
    d = ws.embeddings_dir(kind)
    return ShardFile(d / name, d / ids_name(name), int(rows), vec_sum, ids_sum, vec_mtime_ns, ids_mtime_ns)


def shard_files(ws: Workspace, con: duckdb.DuckDBPyConnection, kind: str) -> list[ShardFile]:
    """Committed shards of one kind, in part order (= item-id order, as build-index writes them)."""
    rows = con.execute("SELECT file, rows, vec_sum, ids_sum, vec_mtime_ns, ids_mtime_ns FROM shards "
                       "WHERE kind = ? ORDER BY part", [kind]).fetchall()
    return [shard_file(ws, kind, *r) for r in rows]


def next_part(con: duckdb.DuckDBPyConnection, kind: str) -> int:
    return int(con.execute("SELECT coalesce(max(part), -1) + 1 FROM shards WHERE kind = ?", [kind]).fetchall()[0][0])


def _save_atomic(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, arr)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass(frozen=True)
class Written:
    """A shard's files as written: what `record_shard` records so damage can be found later."""

    name: str
    rows: int
    min_id: int | None
    max_id: int | None
    vec_sum: str | None
    ids_sum: str | None
    vec_mtime_ns: int | None
    ids_mtime_ns: int | None


def file_sum(path: Path, chunk: int = 1 << 22) -> str:
    """blake2b of a whole file (the checksum `build-index --repair` compares)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def write_shard(ws: Workspace, kind: str, part: int, ids: np.ndarray, vecs: np.ndarray,
                name: str | None = None) -> Written:
    """Write the files of one shard; the caller records it with `record_shard`."""
    assert len(ids) == len(vecs)
    d = ws.embeddings_dir(kind)
    d.mkdir(parents=True, exist_ok=True)
    name = name or shard_name(part)
    vp, ip = d / name, d / ids_name(name)
    _save_atomic(ip, np.ascontiguousarray(ids, dtype=np.int64))
    _save_atomic(vp, np.ascontiguousarray(vecs, dtype=np.float32))
    return Written(name, len(ids), int(ids.min()) if len(ids) else None, int(ids.max()) if len(ids) else None,
                   file_sum(vp), file_sum(ip), vp.stat().st_mtime_ns, ip.stat().st_mtime_ns)


def record_shard(con: duckdb.DuckDBPyConnection, kind: str, part: int, w: Written | str, rows: int,
                 run_id: int) -> None:
    """Record a written shard (a bare file name records no checksums: damage is then found by shape only)."""
    if isinstance(w, str):
        w = Written(w, rows, None, None, None, None, None, None)
    assert w.rows == rows
    con.execute("INSERT INTO shards (kind, part, file, rows, run_id, min_id, max_id, vec_sum, ids_sum, "
                "vec_mtime_ns, ids_mtime_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [kind, part, w.name, rows, run_id, w.min_id, w.max_id, w.vec_sum, w.ids_sum,
                 w.vec_mtime_ns, w.ids_mtime_ns])


def commit_shards(ws: Workspace, con: duckdb.DuckDBPyConnection, run_id: int,
                  vectors: dict[str, tuple[np.ndarray, np.ndarray]],
                  items: Callable[[duckdb.DuckDBPyConnection], None] | None = None,
                  max_rows: int | None = None) -> dict[str, list[Written]]:
    """The resume promise, in one place: new vectors made durable together with their items.

    `vectors` maps a kind to (ids, vecs); an empty kind writes nothing. Each kind's
    vectors are written as shards of at most `max_rows` rows (one shard when None), in
    order, under the next part numbers (temporary name, fsync, rename); then one
    transaction records the shards, runs `items(con)` (the caller's own changes to its
    items: new rows, rejections, caption token counts...) and marks the items of the
    image shards `embedded`. A process killed before the COMMIT leaves files no row owns,
    which `remove_orphans` deletes at the next start; after it, everything is there.
    Returns what was written, by kind.
    """
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows {max_rows}: a shard holds at least one row")
    written: dict[str, list[tuple[int, Written]]] = {}
    for kind, (ids, vecs) in vectors.items():
        step = max_rows or max(len(ids), 1)
        part = next_part(con, kind)
        for s in range(0, len(ids), step):
            written.setdefault(kind, []).append((part, write_shard(ws, kind, part, ids[s : s + step],
                                                                   vecs[s : s + step])))
            part += 1
    with transaction(con):
        for kind, shards in written.items():
            for part, w in shards:
                record_shard(con, kind, part, w, w.rows, run_id)
        if items is not None:
            items(con)
        if "image" in written:
            con.register("embedded_ids", {"id": np.asarray(vectors["image"][0], dtype=np.int64)})
            con.execute("UPDATE items SET status = 'embedded' FROM embedded_ids e WHERE items.id = e.id")
            con.unregister("embedded_ids")
    return {kind: [w for _part, w in shards] for kind, shards in written.items()}


def remove_orphans(ws: Workspace, con: duckdb.DuckDBPyConnection) -> int:
    """Delete shard files that no committed row owns (a run killed mid-commit)."""
    removed = 0
    for kind in KINDS:
        d = ws.embeddings_dir(kind)
        if not d.exists():
            continue
        owned = {f for (f,) in con.execute("SELECT file FROM shards WHERE kind = ?", [kind]).fetchall()}
        owned |= {ids_name(f) for f in owned}
        for p in d.iterdir():
            if p.name not in owned:
                p.unlink()
                removed += 1
    return removed


def count_vectors(ws: Workspace, con: duckdb.DuckDBPyConnection, kind: str) -> int:
    return int(con.execute("SELECT coalesce(sum(rows), 0) FROM shards WHERE kind = ?", [kind]).fetchall()[0][0])


def iter_embeddings(
    ws: Workspace, con: duckdb.DuckDBPyConnection, kind: str, batch_rows: int = 65536
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Stream (ids, vectors) over every committed shard, at most `batch_rows` at a time.

    Vectors are memory-mapped, so memory stays bounded whatever the collection size.
    """
    for shard in shard_files(ws, con, kind):
        ids, vecs = open_shard(shard)
        for s in range(0, len(ids), batch_rows):
            yield ids[s : s + batch_rows], np.asarray(vecs[s : s + batch_rows])


def load_all(ws: Workspace, con: duckdb.DuckDBPyConnection, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Every vector of one kind, sorted by item id (small collections and tests only)."""
    parts = list(iter_embeddings(ws, con, kind))
    if not parts:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    ids = np.concatenate([p[0] for p in parts])
    vecs = np.concatenate([p[1] for p in parts])
    order = np.argsort(ids, kind="stable")
    return ids[order], vecs[order]


def _next_name(part: int, old: str) -> str:
    """A new file name for a rewritten shard: the old files stay until the new row is committed."""
    m = re.fullmatch(r"part-\d+(?:\.r(\d+))?\.npy", old)
    return shard_name(part, int(m.group(1) or 0) + 1 if m else 1)


def drop_items(ws: Workspace, con: duckdb.DuckDBPyConnection, ids: np.ndarray,
               drop_shards: list[tuple[str, int]] = ()) -> int:
    """Take these items' vectors out of every shard and make them pending again, in one transaction.

    Each shard holding one of them is rewritten without them under a new name; the shard
    rows, the items' status (and their old rejections) change in one commit, and the old
    files are deleted after it (a run killed in between leaves orphans, removed at the next
    start). Shards are found by their recorded id range, so only those that can hold an
    id are read. `drop_shards` (kind, part) are deleted in the same transaction, unread
    (damaged ones). Returns the number of vectors removed.
    """
    ids = np.unique(np.asarray(ids, dtype=np.int64))
    if not len(ids) and not drop_shards:
        return 0
    lo, hi = (int(ids[0]), int(ids[-1])) if len(ids) else (0, -1)
    rewrites: list[tuple[str, int, str, Written | None]] = []
    removed = 0
    for kind in KINDS:
        rows = con.execute(
            "SELECT part, file, rows, vec_sum, ids_sum, vec_mtime_ns, ids_mtime_ns FROM shards "
            "WHERE kind = ? AND (min_id IS NULL OR (min_id <= ? AND max_id >= ?)) ORDER BY part",
            [kind, hi, lo]).fetchall()
        for part, name, n, *recorded in rows:
            if (kind, part) in drop_shards:
                continue
            # checked: a rewrite must never give damaged vectors a new, right checksum
            have, vecs = open_shard(shard_file(ws, kind, name, n, *recorded))
            drop = np.isin(have, ids)
            if not drop.any():
                continue
            removed += int(drop.sum())
            keep = ~drop
            w = None
            if keep.any():
                w = write_shard(ws, kind, part, have[keep], np.asarray(vecs[keep]), name=_next_name(part, name))
            rewrites.append((kind, part, name, w))
    with transaction(con):
        for kind, part in drop_shards:
            con.execute("DELETE FROM shards WHERE kind = ? AND part = ?", [kind, part])
        for kind, part, _old, w in rewrites:
            if w is None:
                con.execute("DELETE FROM shards WHERE kind = ? AND part = ?", [kind, part])
            else:
                con.execute("UPDATE shards SET file = ?, rows = ?, min_id = ?, max_id = ?, vec_sum = ?, ids_sum = ?, "
                            "vec_mtime_ns = ?, ids_mtime_ns = ? WHERE kind = ? AND part = ?",
                            [w.name, w.rows, w.min_id, w.max_id, w.vec_sum, w.ids_sum, w.vec_mtime_ns,
                             w.ids_mtime_ns, kind, part])
        con.register("dropped", {"id": ids})
        con.execute("UPDATE items SET status = 'pending', caption_tokens = NULL, caption_truncated = NULL "
                    "FROM dropped d WHERE items.id = d.id")
        con.execute("DELETE FROM rejected WHERE item_id IN (SELECT id FROM dropped)")  # tried again: judged again
        con.unregister("dropped")
    for kind, _part, old, _w in rewrites:
        d = ws.embeddings_dir(kind)
        (d / old).unlink(missing_ok=True)
        (d / ids_name(old)).unlink(missing_ok=True)
    return removed


def shard_error(path: Path, problem: str) -> WorkspaceError:
    return WorkspaceError(f"embedding shard {path} is damaged ({problem}); "
                          "run curate build-index SOURCE again to repair it")


# Files whose checksum was found right in this process, by (path, inode, size, mtime_ns, checksum):
# a reader that opens a shard again (dedup, classify after verify_shards) does not hash it twice.
_verified: set[tuple[str, int, int, int, str]] = set()


def check_content(path: Path, want_sum: str | None, recorded_mtime_ns: int | None) -> None:
    """A WorkspaceError naming the file when it changed on disk since it was written.

    What build-index checks each run, for readers, which cannot record anything (their
    connection is read-only): a file whose mtime is the one recorded at write time costs
    one stat; another mtime (touched, copied, overwritten) is hashed and compared with the
    recorded checksum, every time until build-index records the new mtime. A shard
    recorded without a checksum is checked by shape only.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise shard_error(path, "missing") from None
    except OSError as e:
        raise shard_error(path, f"cannot be read: {e.strerror or e}") from None
    if not want_sum or st.st_mtime_ns == recorded_mtime_ns:
        return
    key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns, want_sum)
    if key in _verified:
        return
    try:
        have = file_sum(path)
    except OSError as e:
        raise shard_error(path, f"cannot be read: {e.strerror or e}") from None
    if have != want_sum:
        raise shard_error(path, "its content is not what was written: the checksum differs; it changed on disk "
                                "after curate wrote it")
    _verified.add(key)


def open_shard(shard: ShardFile, mmap: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A shard's (ids, vectors), checked against its record: a WorkspaceError naming the file otherwise.

    Both files are checked as `check_content` says too (a stat each while their mtimes are
    the recorded ones). The vectors are memory-mapped (unless `mmap` is False), so a reader that
    needs only the ids reads only the ids file and the vectors' header.
    """
    vec_path, ids_path, rows = shard.vectors, shard.ids, shard.rows
    for path in (ids_path, vec_path):
        if not os.path.exists(path):
            raise shard_error(path, "missing")
    try:
        ids = np.load(ids_path)
    except (ValueError, OSError, EOFError) as e:
        raise shard_error(ids_path, f"cannot be read: {e}") from None
    try:
        vecs = np.load(vec_path, mmap_mode="r" if mmap else None)
    except (ValueError, OSError, EOFError) as e:
        raise shard_error(vec_path, f"cannot be read: {e}") from None
    if ids.dtype != np.int64 or ids.shape != (rows,):
        raise shard_error(ids_path, f"holds {ids.dtype} {ids.shape}, expected int64 ({rows},)")
    if vecs.dtype != np.float32 or vecs.ndim != 2 or vecs.shape[0] != rows:
        raise shard_error(vec_path, f"holds {vecs.dtype} {vecs.shape}, expected float32 ({rows}, d)")
    check_content(ids_path, shard.ids_sum, shard.ids_mtime_ns)
    check_content(vec_path, shard.vec_sum, shard.vec_mtime_ns)
    return ids, vecs
