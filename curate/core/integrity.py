"""Shards deleted or damaged by hand: found by build-index, and their items embedded again.

Every run checks each committed shard cheaply: both files present, the .npy headers say
the recorded shape and dtype, the file sizes fit the headers, and a file whose mtime is
not the one recorded at write time is hashed and compared with its recorded checksum
(an ids file overwritten by hand is caught this way). `build-index --repair` hashes every
file (reads the whole store) and checks the ids against `items`. Readers make the same
per-file checks (`verify_shards`, `store.open_shard`) but cannot record a new mtime (their
connection is read-only): they hash such a file each time, until build-index records it.

A damaged shard is dropped: its row goes, and the items it held (embedded items in its
recorded id range found in no intact shard of its kind) lose their other vectors too and
become pending, so the embedding loop embeds them again under the same ids and the
indexes, which no longer match the shards, are rebuilt.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np

from . import store
from .workspace import KINDS, Workspace


@dataclass(frozen=True)
class Damage:
    kind: str
    part: int
    file: Path
    reason: str

    def describe(self) -> str:
        return f"{self.file}: {self.reason}"


def read_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) of a .npy file, reading the header only."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        if fortran:
            raise ValueError("Fortran-ordered array")
        return shape, dtype, f.tell()


def check_file(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> str | None:
    """Why a shard file is not what was written (None: it looks right)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    try:
        have_shape, have_dtype, offset = read_header(path)
    except (ValueError, OSError, EOFError, SyntaxError) as e:
        return f"not a readable .npy file ({e})"
    if have_dtype != dtype:
        return f"dtype {have_dtype}, expected {dtype}"
    if tuple(have_shape) != tuple(shape):
        return f"shape {tuple(have_shape)}, expected {tuple(shape)}"
    want = offset + int(np.prod(shape)) * dtype.itemsize
    if size != want:
        return f"{size} bytes, expected {want} (truncated or overwritten)"
    return None


def check_shards(ws: Workspace, con: duckdb.DuckDBPyConnection, full: bool = False) -> list[Damage]:
    ident = Workspace.model_identity(con)
    out: list[Damage] = []
    for kind in KINDS:
        rows = con.execute("SELECT part, file, rows, vec_sum, ids_sum, vec_mtime_ns, ids_mtime_ns FROM shards "
                           "WHERE kind = ? ORDER BY part", [kind]).fetchall()
        for part, name, n, vec_sum, ids_sum, vec_mtime, ids_mtime in rows:
            shard = store.shard_file(ws, kind, name, n)
            vp, ip = shard.vectors, shard.ids
            reason = None
            dim = ident.embed_dim if ident else None
            if dim is None:
                try:
                    dim = int(read_header(vp)[0][1])
                except (ValueError, OSError, EOFError, SyntaxError, IndexError):
                    dim = -1
            for path, shape, dtype, want_sum, mtime, col in (
                    (vp, (n, dim), np.dtype(np.float32), vec_sum, vec_mtime, "vec_mtime_ns"),
                    (ip, (n,), np.dtype(np.int64), ids_sum, ids_mtime, "ids_mtime_ns")):
                reason = check_file(path, shape, dtype)
                now = path.stat().st_mtime_ns if reason is None else None
                if reason is None and want_sum and (full or now != mtime):
                    if store.file_sum(path) != want_sum:
                        reason = "content differs from what was written (checksum)"
                    elif now != mtime:  # copied without its mtime, same bytes: remember, hash once
                        con.execute(f"UPDATE shards SET {col} = ? WHERE kind = ? AND part = ?", [now, kind, part])
                if reason:
                    out.append(Damage(kind, part, path, reason))
                    break
            if reason is None and full:
                reason = _check_ids(con, store.open_shard(shard)[0])
                if reason:
                    out.append(Damage(kind, part, ip, reason))
    return out


def _check_ids(con: duckdb.DuckDBPyConnection, ids: np.ndarray) -> str | None:
    if len(np.unique(ids)) != len(ids):
        return "an item id appears twice"
    con.register("shard_ids", {"id": ids})
    try:
        bad = con.execute("SELECT count(*) FROM shard_ids s LEFT JOIN items i ON i.id = s.id "
                          "WHERE i.status IS DISTINCT FROM 'embedded'").fetchall()[0][0]
    finally:
        con.unregister("shard_ids")
    return f"{bad} ids are not embedded items" if bad else None


def repair(ws: Workspace, con: duckdb.DuckDBPyConnection, damaged: list[Damage]) -> int:
    """Drop damaged shards; their items become pending (with their other vectors removed).
    Returns the number of items to embed again."""
    if not damaged:
        return 0
    parts = {(d.kind, d.part) for d in damaged}
    lost: set[int] = set()
    for kind in KINDS:
        bad = [p for k, p in parts if k == kind]
        if not bad:
            continue
        ranges = con.execute("SELECT min(min_id), max(max_id), bool_or(min_id IS NULL) FROM shards "
                             "WHERE kind = ? AND list_contains(?, part)", [kind, bad]).fetchall()[0]
        lo, hi = (-1, 2**62) if ranges[2] else (ranges[0], ranges[1])
        # Which items the damaged files held: the ids file may be what is damaged, so ask the
        # other side: embedded items (with a caption, for caption shards) in the range that
        # no intact shard of this kind holds.
        # (an imported item whose caption vector was rejected never had one)
        cond = (" AND caption IS NOT NULL AND NOT EXISTS (SELECT 1 FROM rejected x WHERE x.item_id = items.id "
                "AND x.stage = 'caption')") if kind == "caption" else ""
        want = {int(i) for (i,) in con.execute(
            f"SELECT id FROM items WHERE status = 'embedded' AND id BETWEEN ? AND ?{cond}", [lo, hi]).fetchall()}
        for name, n in con.execute(
                "SELECT file, rows FROM shards WHERE kind = ? AND NOT list_contains(?, part) "
                "AND (min_id IS NULL OR (min_id <= ? AND max_id >= ?))", [kind, bad, hi, lo]).fetchall():
            want.difference_update(store.open_shard(store.shard_file(ws, kind, name, n))[0].tolist())
        lost |= want
    # One transaction: the damaged shards' rows go, and their items become pending (with
    # their vectors of the other kind taken out), so a kill leaves either state whole.
    store.drop_items(ws, con, np.array(sorted(lost), np.int64), sorted(parts))
    store.remove_orphans(ws, con)  # what is left of the dropped shards
    return len(lost)


def verify_shards(ws: Workspace, con: duckdb.DuckDBPyConnection) -> None:
    """For readers (classify): every committed shard is present with the recorded shape and, where
    its mtime is not the recorded one, the recorded checksum; else a WorkspaceError naming the
    first file that is not and saying how to repair it."""
    ident = Workspace.model_identity(con)
    for kind in KINDS:
        for shard in store.shard_files(ws, con, kind):
            vec_path, ids_path, n = shard.vectors, shard.ids, shard.rows
            dim = ident.embed_dim if ident else None
            for path, shape, dtype in ((ids_path, (n,), np.dtype(np.int64)), (vec_path, (n, dim), np.dtype(np.float32))):
                if dim is None and path == vec_path:
                    try:
                        shape = (n, int(read_header(vec_path)[0][1]))
                    except (ValueError, OSError, EOFError, SyntaxError, IndexError):
                        pass
                problem = check_file(path, shape, dtype)
                if problem:
                    raise store.shard_error(path, problem)
            store.check_content(ids_path, shard.ids_sum, shard.ids_mtime_ns)
            store.check_content(vec_path, shard.vec_sum, shard.vec_mtime_ns)
