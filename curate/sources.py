"""Where items come from: a folder, an InstaCities1M-style tree, or a manifest file.

Every source ends as rows of `items` (status 'pending'), added by `scan_into`. A row
is keyed by `source_id` (the manifest's id, else the image path relative to the
source root), so scanning the same source again adds only what is new. Items get
dense ids in scan order, which is deterministic (sorted walk, manifest line order),
so a scan killed half-way and run again numbers items as an uninterrupted one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np

from .errors import InputError
from .images import IMAGE_EXTENSIONS
from .workspace import quote_ident

MANIFEST_EXTENSIONS = {".csv": "csv", ".tsv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
                       ".parquet": "parquet"}
# Our own columns of `items`; a manifest column of the same name is kept as src_<name>.
RESERVED = {"id", "source_id", "path", "caption", "status", "caption_tokens", "caption_truncated", "run_id"}
SCAN_BATCH = 20_000


@dataclass(frozen=True)
class Source:
    kind: str                     # folder | tree | manifest | clip-retrieval
    root: Path                    # images root (folder, tree) or the manifest's folder
    captions_root: Path | None = None
    manifest: Path | None = None

    def describe(self) -> str:
        if self.kind == "manifest":
            return f"manifest {self.manifest}"
        if self.kind == "tree":
            return f"image tree {self.root} with captions under {self.captions_root}"
        return f"{self.kind} {self.root}"


class SourceError(InputError, ValueError):
    pass


def detect_source(path: str | Path, captions_dir: str | Path | None = None) -> Source:
    p = Path(path).expanduser().resolve()
    if not p.exists():
        raise SourceError(f"source not found: {path}")
    if p.is_file():
        if p.suffix.lower() not in MANIFEST_EXTENSIONS:
            raise SourceError(f"{path}: a manifest must be .csv, .tsv, .jsonl or .parquet (got '{p.suffix}')")
        return Source("manifest", p.parent, manifest=p)
    if (p / "img_emb").is_dir():
        return Source("clip-retrieval", p)
    if captions_dir is not None:
        c = Path(captions_dir).expanduser().resolve()
        if not c.is_dir():
            raise SourceError(f"captions folder not found: {captions_dir}")
        return Source("tree", p, captions_root=c)
    # InstaCities1M ships images and captions as two parallel trees side by side
    # (img_resized*/<city>/<id>.jpg and captions*/<city>/<id>.txt).
    subdirs = sorted(d for d in p.iterdir() if d.is_dir())
    imgs = [d for d in subdirs if d.name.lower().startswith("img")]
    caps = [d for d in subdirs if d.name.lower().startswith("caption")]
    if len(imgs) == 1 and len(caps) == 1:
        return Source("tree", imgs[0], captions_root=caps[0])
    return Source("folder", p)


def read_caption_file(path: Path) -> str | None:
    """A caption file's text, whatever its encoding; None when missing or blank."""
    try:
        raw = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        return None
    return decode_text(raw)


def decode_text(raw: bytes) -> str | None:
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        text = raw.decode("utf-16", errors="replace")
    else:
        for enc in ("utf-8-sig", "cp1252", "latin-1"):
            try:
                text = raw.decode(enc)
                break
            except UnicodeDecodeError:
                continue
    text = text.replace("\x00", "").strip()
    return text or None


def _walk_images(root: Path) -> Iterator[Path]:
    """Image files under root, in a stable (sorted) order."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                yield Path(dirpath) / name


def _folder_rows(src: Source) -> Iterator[tuple[str, str, str | None]]:
    for img in _walk_images(src.root):
        rel = img.relative_to(src.root)
        if src.kind == "tree":
            cap = read_caption_file((src.captions_root / rel).with_suffix(".txt"))
        else:
            cap = read_caption_file(img.with_suffix(".txt"))
        yield rel.as_posix(), str(img), cap


def scan_into(con: duckdb.DuckDBPyConnection, src: Source, run_id: int,
              progress: Callable[[int], None] | None = None) -> tuple[int, int]:
    """Add the source's new items to `items`; returns (seen, added)."""
    if src.kind == "manifest":
        seen, added = _scan_manifest(con, src, run_id)
        if progress:
            progress(seen)
        return seen, added
    seen = added = 0
    batch: list[tuple[str, str, str | None]] = []
    for row in _folder_rows(src):
        batch.append(row)
        if len(batch) >= SCAN_BATCH:
            added += _insert_batch(con, batch, run_id)
            seen += len(batch)
            if progress:
                progress(len(batch))
            batch = []
    if batch:
        added += _insert_batch(con, batch, run_id)
        seen += len(batch)
        if progress:
            progress(len(batch))
    return seen, added


def _insert_batch(con: duckdb.DuckDBPyConnection, rows: list[tuple[str, str, str | None]], run_id: int) -> int:
    sid, path, cap = zip(*rows, strict=True)
    con.register("scan_batch", {
        "ord": np.arange(len(rows), dtype=np.int64),
        "source_id": np.array(sid, dtype=object),
        "path": np.array(path, dtype=object),
        "caption": np.array(cap, dtype=object),
    })
    try:
        before = con.execute("SELECT count(*) FROM items").fetchall()[0][0]
        con.execute(
            """
            INSERT INTO items (id, source_id, path, caption, status, run_id)
            SELECT (SELECT coalesce(max(id), -1) FROM items) + row_number() OVER (ORDER BY b.ord),
                   b.source_id, b.path, b.caption, 'pending', ?
            FROM scan_batch b
            WHERE NOT EXISTS (SELECT 1 FROM items i WHERE i.source_id = b.source_id)
            """,
            [run_id],
        )
        return con.execute("SELECT count(*) FROM items").fetchall()[0][0] - before
    finally:
        con.unregister("scan_batch")


def _reader(fmt: str) -> str:
    return {"csv": "read_csv(?, header = true, sample_size = -1)",
            "jsonl": "read_json(?, format = 'newline_delimited')",
            "parquet": "read_parquet(?)"}[fmt]


def _scan_manifest(con: duckdb.DuckDBPyConnection, src: Source, run_id: int) -> tuple[int, int]:
    m = src.manifest
    assert m is not None
    fmt = MANIFEST_EXTENSIONS[m.suffix.lower()]
    try:
        con.execute(f"CREATE OR REPLACE TEMP TABLE manifest_raw AS "
                    f"SELECT row_number() OVER () AS _row, * FROM {_reader(fmt)}", [str(m)])
    except duckdb.Error as e:
        raise SourceError(f"{m}: cannot read as {fmt}: {str(e).splitlines()[0]}") from None
    cols = [r[0] for r in con.execute("DESCRIBE manifest_raw").fetchall()]
    types = {r[0]: r[1] for r in con.execute("DESCRIBE manifest_raw").fetchall()}
    if "path" not in cols:
        raise SourceError(f"{m}: a manifest needs a 'path' column (found: {', '.join(c for c in cols if c != '_row')})")
    extras = [c for c in cols if c not in ("_row", "id", "path", "caption")]
    has_id, has_caption = "id" in cols, "caption" in cols
    existing = {r[0] for r in con.execute("DESCRIBE items").fetchall()}
    targets = {}
    for c in extras:
        target = f"src_{c}" if c in RESERVED else c
        targets[c] = target
        if target not in existing:
            con.execute(f"ALTER TABLE items ADD COLUMN {quote_ident(target)} {types[c]}")

    path_expr = "nullif(trim(CAST(path AS VARCHAR)), '')"
    sid = f"coalesce(nullif(trim(CAST(id AS VARCHAR)), ''), {path_expr})" if has_id else path_expr
    cap = "nullif(trim(CAST(caption AS VARCHAR)), '')" if has_caption else "CAST(NULL AS VARCHAR)"
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE manifest_rows AS
        SELECT _row, source_id, rel_path, caption, min(_row) OVER (PARTITION BY source_id) AS first_row
               {''.join(', ' + quote_ident(c) for c in extras)}
        FROM (SELECT *, {sid} AS source_id, {path_expr} AS rel_path, {cap} AS caption FROM manifest_raw)
        """
    )
    # Bad rows: no path, or an id seen on an earlier row; reported by row number, once.
    con.execute(
        """
        INSERT INTO rejected (item_id, source_id, path, reason, stage, run_id)
        SELECT NULL, source_id, rel_path, reason, 'scan', ? FROM (
            SELECT source_id, rel_path,
                   CASE WHEN rel_path IS NULL THEN 'manifest row ' || _row || ': empty path'
                        ELSE 'manifest row ' || _row || ': duplicate id "' || source_id
                             || '" (first on row ' || first_row || ')' END AS reason
            FROM manifest_rows WHERE rel_path IS NULL OR _row > first_row) bad
        WHERE NOT EXISTS (SELECT 1 FROM rejected x WHERE x.stage = 'scan' AND x.reason = bad.reason)
        """,
        [run_id],
    )
    before = con.execute("SELECT count(*) FROM items").fetchall()[0][0]
    extra_targets = "".join(", " + quote_ident(targets[c]) for c in extras)
    extra_src = "".join(", r." + quote_ident(c) for c in extras)
    con.execute(
        f"""
        INSERT INTO items (id, source_id, path, caption, status, run_id{extra_targets})
        SELECT (SELECT coalesce(max(id), -1) FROM items) + row_number() OVER (ORDER BY r._row),
               r.source_id,
               CASE WHEN r.rel_path[1] = '/' THEN r.rel_path ELSE ? || '/' || r.rel_path END,
               r.caption, 'pending', ?{extra_src}
        FROM manifest_rows r
        WHERE r.rel_path IS NOT NULL AND r._row = r.first_row
          AND NOT EXISTS (SELECT 1 FROM items i WHERE i.source_id = r.source_id)
        """,
        [str(src.root), run_id],
    )
    seen = con.execute("SELECT count(*) FROM manifest_rows").fetchall()[0][0]
    added = con.execute("SELECT count(*) FROM items").fetchall()[0][0] - before
    con.execute("DROP TABLE manifest_raw; DROP TABLE manifest_rows")
    return int(seen), int(added)
