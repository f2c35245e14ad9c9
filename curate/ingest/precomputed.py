"""Import embeddings someone already computed, in clip-retrieval's output layout.

    SRC/img_emb/img_emb_0.npy        [n, d] image vectors (often float16)
    SRC/text_emb/text_emb_0.npy      [n, d] caption vectors, same rows (optional)
    SRC/metadata/metadata_0.parquet  n rows: image_path / url, caption, key, ... (extras kept)

LAION's released embeddings come this way, so such users skip the model entirely.
Parts are imported in chunks, each chunk one transaction with its shards, so memory
stays bounded and a killed import resumes at the first chunk it had not committed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np

from ..core import store
from ..core.sql import quote_identifier
from ..core.workspace import Workspace
from ..errors import PartialResult
from .sources import Source, SourceError, clean_sql, column_targets, register_source

CHUNK = 100_000
NPY_MAGIC = np.lib.format.MAGIC_PREFIX  # the first bytes of every .npy file


def _parts(root: Path) -> list[tuple[int, Path, Path | None, Path]]:
    out = []
    for f in (root / "img_emb").glob("img_emb_*.npy"):
        m = re.fullmatch(r"img_emb_(\d+)\.npy", f.name)
        if not m:
            continue
        i = int(m.group(1))
        meta = root / "metadata" / f"metadata_{i}.parquet"
        if not meta.exists():
            raise SourceError(f"{f}: no matching metadata file {meta}")
        text = root / "text_emb" / f"text_emb_{i}.npy"
        out.append((i, f, text if text.exists() else None, meta))
    if not out:
        raise SourceError(f"{root}/img_emb holds no img_emb_N.npy files")
    return sorted(out)


def open_vectors(f: Path, want_rows: int | None = None, want_dim: int | None = None,
                 like: Path | None = None) -> np.ndarray:
    """A memory map of an embeddings file, or an InputError naming the file and what is wrong with it."""
    # np.load takes anything without the .npy magic for a pickle, so a text or CSV file named
    # .npy would be called "pickled": look at the first bytes first.
    try:
        with open(f, "rb") as fh:
            head = fh.read(len(NPY_MAGIC))
    except OSError as e:
        raise SourceError(f"{f}: cannot read: {e.strerror or e}") from None
    if head != NPY_MAGIC:
        what = "it is empty" if not head else f"it starts with {head!r}, not the .npy magic {NPY_MAGIC!r}"
        raise SourceError(f"{f}: not an .npy file ({what}); save the vectors with numpy.save as a "
                          "float16/float32 array [rows, dim]")
    try:
        a = np.load(f, mmap_mode="r")
    except ValueError as e:
        if "object" in str(e).lower() or "pickle" in str(e).lower():
            raise SourceError(f"{f}: holds pickled Python objects, not an array of numbers; "
                              "save the vectors as a float16/float32 array [rows, dim]") from None
        raise SourceError(f"{f}: not a readable .npy file ({e})") from None
    except (OSError, EOFError) as e:
        raise SourceError(f"{f}: cannot read: {e}") from None
    if a.ndim != 2:
        raise SourceError(f"{f}: a {a.ndim}-d array of shape {a.shape}; expected vectors [rows, dim]")
    if a.dtype.kind != "f":
        raise SourceError(f"{f}: {a.dtype} numbers; expected float16, float32 or float64 vectors")
    if want_rows is not None and a.shape[0] != want_rows:
        raise SourceError(f"{f}: {a.shape[0]} rows but {like} has {want_rows}; "
                          "caption vectors must come row for row with the image vectors")
    if want_dim is not None and a.shape[1] != want_dim:
        raise SourceError(f"{f}: {a.shape[1]}-d vectors but {like} holds {want_dim}-d ones")
    return a


def count_rows(root: Path) -> int:
    return sum(int(open_vectors(f).shape[0]) for _, f, _, _ in _parts(root))


def embedding_dim(root: Path) -> int:
    return int(open_vectors(_parts(root)[0][1]).shape[1])


def _normalise(v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float32, unit length, and per row: can it be normalised; is it non-finite (else: all zeros).

    The norm is taken in float64 after dividing by the largest component, so a vector of
    any finite scale (1e30 or 1e-30 times a unit vector) keeps its direction."""
    v = np.asarray(v, dtype=np.float64)
    finite = np.isfinite(v).all(axis=1)
    top = np.where(finite, np.abs(np.where(np.isfinite(v), v, 0)).max(axis=1, initial=0), 0)
    ok = finite & (top > 0)
    out = np.zeros(v.shape, np.float32)
    scaled = v[ok] / top[ok, None]
    out[ok] = scaled / np.linalg.norm(scaled, axis=1, keepdims=True)
    return out, ok, ~finite


def _reason(nonfinite: np.ndarray, what: str) -> np.ndarray:
    return np.where(nonfinite, f"{what} embedding has NaN or infinite values",
                    f"{what} embedding is all zeros").astype(object)


def import_clip_retrieval(ws: Workspace, con: duckdb.DuckDBPyConnection, root: Path, run_id: int,
                          expect_dim: int, progress: Callable[[int], None] | None = None,
                          chunk: int = CHUNK, shard_size: int | None = None) -> tuple[int, int, int]:
    """Import every part in shards of at most `shard_size` rows; returns (rows seen, items added, rejected)."""
    if shard_size is not None:
        # a chunk (one transaction) is whole shards where it can be, so no small shard ends each chunk
        chunk = shard_size * max(1, chunk // shard_size) if shard_size <= chunk else chunk
    store.remove_orphans(ws, con)
    into = _Into(ws, con, run_id, register_source(con, Source("clip-retrieval", root), run_id), shard_size)
    seen = added = bad = 0
    for part, img_f, text_f, meta_f in _parts(root):
        n_rows, dim = open_vectors(img_f).shape
        if text_f is not None:
            open_vectors(text_f, n_rows, dim, like=img_f)
        if dim != expect_dim:
            raise SourceError(f"{img_f}: vectors are {dim}-d but the model makes {expect_dim}-d ones; "
                              "pass the --model the embeddings were made with")
        con.execute("CREATE OR REPLACE TEMP TABLE cr_meta AS "
                    "SELECT row_number() OVER () - 1 AS _row, * FROM read_parquet(?)", [str(meta_f)])
        n_meta = con.execute("SELECT count(*) FROM cr_meta").fetchall()[0][0]
        if n_meta != n_rows:
            raise SourceError(f"{meta_f}: {n_meta} rows but {img_f} has {n_rows} vectors")
        cols = [r[0] for r in con.execute("DESCRIBE cr_meta").fetchall()]
        path_col = next((c for c in ("image_path", "url", "path") if c in cols), None)
        id_col = next((c for c in ("key", "id") if c in cols), None)
        extras = [c for c in cols if c not in ("_row", "caption", path_col, id_col)]
        targets = column_targets(extras)
        _add_extra_columns(con, extras, targets)
        _reject_duplicates(con, run_id, meta_f, id_col, path_col, into.source_no)
        layout = _Part(part, img_f, text_f, cols, path_col, id_col, extras, targets)
        for start in range(0, n_rows, chunk):
            stop = min(start + chunk, n_rows)
            a, b, c = _import_chunk(into, layout, start, stop)
            seen, added, bad = seen + a, added + b, bad + c
            if progress:
                progress(stop - start)
        con.execute("DROP TABLE cr_meta")
    if added and bad == added:
        raise PartialResult(f"{root}: all {added} rows imported were rejected (no usable vector); reasons: "
                            f"duckdb {ws.db_path} -c \"select reason, count(*) from rejected group by all\"")
    return seen, added, bad


def _reject_duplicates(con: duckdb.DuckDBPyConnection, run_id: int, meta_f: Path, id_col: str | None,
                       path_col: str | None, source_no: int) -> None:
    """Rows whose key an earlier row of the same part had: recorded once each, by row number."""
    col = id_col or path_col
    if col is None:
        return
    key = f"CAST({quote_identifier(col)} AS VARCHAR)"
    con.execute(
        f"""
        INSERT INTO rejected (item_id, source_id, path, reason, stage, run_id, source_no)
        SELECT NULL, k, NULL, reason, 'import', ?, ? FROM (
            SELECT {key} AS k, '{meta_f.name} row ' || _row || ': duplicate {col} "' || {key}
                   || '" (first on row ' || min(_row) OVER (PARTITION BY {key}) || ')' AS reason,
                   row_number() OVER (PARTITION BY {key} ORDER BY _row) AS nth
            FROM cr_meta WHERE nullif({key}, '') IS NOT NULL) d
        WHERE nth > 1 AND NOT EXISTS (SELECT 1 FROM rejected x WHERE x.stage = 'import' AND x.reason = d.reason)
        """,
        [run_id, source_no],
    )


def _add_extra_columns(con: duckdb.DuckDBPyConnection, extras: list[str], targets: list[str]) -> None:
    have = {r[0].lower() for r in con.execute("DESCRIBE items").fetchall()}
    types = {r[0]: r[1] for r in con.execute("DESCRIBE cr_meta").fetchall()}
    for c, t in zip(extras, targets, strict=True):
        if t.lower() not in have:
            con.execute(f"ALTER TABLE items ADD COLUMN {quote_identifier(t)} {types[c]}")


def _rows(f: Path, start: int, stop: int, rows: np.ndarray) -> np.ndarray:
    """Rows of a .npy file, read through a map opened for this chunk alone, so pages
    already imported do not pile up in the process's memory."""
    return np.array(np.load(f, mmap_mode="r")[start:stop][rows - start])


@dataclass(frozen=True)
class _Into:
    """Where an import writes: the workspace, this run, the source's number, the shard size."""

    ws: Workspace
    con: duckdb.DuckDBPyConnection
    run_id: int
    source_no: int
    shard_size: int | None


@dataclass(frozen=True)
class _Part:
    """One part of a clip-retrieval folder: its files and its metadata's columns."""

    part: int
    img_f: Path
    text_f: Path | None
    cols: list[str]
    path_col: str | None
    id_col: str | None
    extras: list[str]      # the metadata's own columns, kept
    targets: list[str]     # the items columns they go to


def _import_chunk(into: _Into, layout: _Part, start: int, stop: int) -> tuple[int, int, int]:
    """Rows start..stop of a part, committed in shards; returns (rows seen, items added, rejected)."""
    ws, con, run_id, source_no, shard_size = into.ws, into.con, into.run_id, into.source_no, into.shard_size
    part, img_f, text_f, cols = layout.part, layout.img_f, layout.text_f, layout.cols
    path_col, id_col, extras, targets = layout.path_col, layout.id_col, layout.extras, layout.targets
    sid_expr = f"CAST({quote_identifier(id_col)} AS VARCHAR)" if id_col else "NULL"
    path_expr = f"CAST({quote_identifier(path_col)} AS VARCHAR)" if path_col else "NULL"
    fallback = f"'part{part}:' || _row"
    cap_expr = clean_sql("caption") if "caption" in cols else "CAST(NULL AS VARCHAR)"
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE cr_chunk AS
        SELECT _row, coalesce(nullif({sid_expr}, ''), {fallback}) AS source_id,
               coalesce({path_expr}, {fallback}) AS path, {cap_expr} AS caption
               {''.join(', ' + quote_identifier(c) for c in extras)}
        FROM cr_meta WHERE _row >= ? AND _row < ?
        """,
        [start, stop],
    )
    # New keys, and keys whose item is pending again because build-index dropped a damaged
    # shard that held its vectors: those are imported again under their own id.
    new = con.execute(
        "SELECT c._row, c.caption IS NOT NULL AS has_cap, coalesce(i.id, -1) AS old_id FROM cr_chunk c "
        "LEFT JOIN items i ON i.source_no = ? AND i.source_id = c.source_id "
        "WHERE i.id IS NULL OR i.status = 'pending' "
        "QUALIFY row_number() OVER (PARTITION BY c.source_id ORDER BY c._row) = 1 ORDER BY c._row", [source_no]
    ).fetchnumpy()
    rows, has_cap = new["_row"].astype(np.int64), new["has_cap"].astype(bool)
    old_id = new["old_id"].astype(np.int64)
    if len(rows) == 0:
        return stop - start, 0, 0
    first_id = int(con.execute("SELECT next_item_id()").fetchall()[0][0])  # queries/workspace.sql
    fresh = old_id < 0
    ids = old_id.copy()
    ids[fresh] = first_id + np.arange(int(fresh.sum()), dtype=np.int64)
    vecs, ok, nonfinite = _normalise(_rows(img_f, start, stop, rows))
    reasons = _reason(nonfinite, "image")
    vectors = {"image": (ids[ok], vecs[ok])}
    cap_bad = np.zeros(len(rows), bool)
    if text_f is not None:
        tv, tok, t_nonfinite = _normalise(_rows(text_f, start, stop, rows))
        use = ok & has_cap & tok
        cap_bad = ok & has_cap & ~tok  # the image is kept; the caption vector is recorded as rejected
        cap_reasons = _reason(t_nonfinite, "caption")
        vectors["caption"] = (ids[use], tv[use])
    extra_cols = "".join(", " + quote_identifier(t) for t in targets)
    extra_vals = "".join(", c." + quote_identifier(c) for c in extras)

    def items(con: duckdb.DuckDBPyConnection) -> None:
        # In the shards' transaction; store marks the items with an image vector `embedded`
        # after this (new ones go in `pending` until then, invisible outside the transaction).
        con.register("cr_new", {"_row": rows, "id": ids, "ok": ok, "reason": reasons, "fresh": fresh})
        con.execute(
            f"INSERT INTO items (id, source_id, path, caption, status, run_id, source_no{extra_cols}) "
            f"SELECT n.id, c.source_id, c.path, c.caption, CASE WHEN n.ok THEN 'pending' ELSE 'rejected' END, ?, ?"
            f"{extra_vals} FROM cr_new n JOIN cr_chunk c USING (_row) WHERE n.fresh ORDER BY n.id",
            [run_id, source_no],
        )
        con.execute("UPDATE items SET status = 'rejected' FROM cr_new n WHERE items.id = n.id AND NOT n.fresh "
                    "AND NOT n.ok")
        con.execute(
            "INSERT INTO rejected (item_id, source_id, path, reason, stage, run_id, source_no) "
            "SELECT n.id, c.source_id, c.path, n.reason, 'import', ?, ? "
            "FROM cr_new n JOIN cr_chunk c USING (_row) WHERE NOT n.ok",
            [run_id, source_no],
        )
        con.unregister("cr_new")
        if cap_bad.any():
            con.register("cr_cap", {"_row": rows[cap_bad], "id": ids[cap_bad], "reason": cap_reasons[cap_bad]})
            con.execute("INSERT INTO rejected (item_id, source_id, path, reason, stage, run_id, source_no) "
                        "SELECT n.id, c.source_id, c.path, n.reason, 'caption', ?, ? "
                        "FROM cr_cap n JOIN cr_chunk c USING (_row)", [run_id, source_no])
            con.unregister("cr_cap")

    store.commit_shards(ws, con, run_id, vectors, items, max_rows=shard_size)
    return stop - start, int(fresh.sum()), int((~ok & fresh).sum())
