"""Where items come from: a folder, an InstaCities1M-style tree, or a manifest file.

Every source ends as rows of `items` (status 'pending'), added by `scan_into`. A source
is recorded once in `sources` (by its resolved location) and a row is keyed by
(source_no, source_id): source_id is the manifest's id, else the image path relative
to the source root. Scanning the same source again adds only what is new; two sources
whose files are named alike never hide each other's items. Items get dense ids in scan
order, which is deterministic (sorted walk, manifest line order), so a scan killed
half-way and run again numbers items as an uninterrupted one.

Nothing the scan sees is dropped silently: a file it does not take is counted, and
recorded in `rejected` (stage 'scan') when it is a likely image; a bad entry (a name
that is not UTF-8, a folder that cannot be listed, an unreadable caption) costs that
entry only, never the scan. Folders curate itself made (a workspace, report, compare and
--copy-to outputs) are not scanned, and one note names them.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import duckdb
import numpy as np
from PIL import Image

from ..core import output_folder, sql
from ..core.sql import quote_identifier, transaction
from ..core.workspace import DB_NAME, SCHEMA, UPGRADES
from ..errors import InputError

MANIFEST_EXTENSIONS = {".csv": "csv", ".tsv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
                       ".parquet": "parquet"}
SCAN_BATCH = 20_000

# Caption files larger than this are not read (a caption is a few hundred bytes; the model
# reads 77 tokens): the item is kept without a caption and the file recorded as unreadable.
CAPTION_MAX_BYTES = 1 << 20

# The one trimming rule for captions of every source kind: leading and trailing Unicode
# whitespace (exactly what Python's str.strip() removes) goes; nothing left is NULL.
_SPACE = r"[\s\x{0b}\x{1c}-\x{1f}\x{85}\p{Z}]"
_TRIM_RE = f"^{_SPACE}+|{_SPACE}+$"


def clean_sql(expr: str) -> str:
    """SQL for a caption (or id, path) as text with the trimming rule applied; blank -> NULL."""
    return f"nullif(regexp_replace(CAST({expr} AS VARCHAR), '{_TRIM_RE}', '', 'g'), '')"


# Photo formats a folder scan takes when Pillow here can open them; the rest of this list
# (e.g. HEIC without a plugin) and the other image formats below are recorded as not taken.
PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".gif", ".webp", ".bmp", ".tif", ".tiff",
                    ".avif", ".avifs", ".heic", ".heif", ".jxl", ".jp2", ".j2k", ".qoi")
OTHER_IMAGE_EXTENSIONS = (".svg", ".psd", ".ico", ".eps", ".tga", ".pcx", ".ppm", ".pgm", ".pbm", ".pnm", ".dng",
                          ".cr2", ".cr3", ".nef", ".arw", ".orf", ".rw2", ".raf", ".raw", ".xcf")


@cache
def scanned_extensions() -> frozenset[str]:
    openable = {e for e, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    return frozenset(e for e in PHOTO_EXTENSIONS if e in openable)


def _not_taken_reason(ext: str) -> str | None:
    """Why a likely image is not taken; None for files that are not images at all."""
    if ext in PHOTO_EXTENSIONS:
        return f"{ext} image: Pillow here cannot decode {ext} files (a plugin is missing), so it is not taken"
    if ext in OTHER_IMAGE_EXTENSIONS:
        return f"{ext} file: not a photo format the folder scan takes; list it in a manifest to try it"
    return None


@dataclass(frozen=True)
class Source:
    kind: str                     # folder | tree | manifest | clip-retrieval
    root: Path                    # images root (folder, tree) or the manifest's folder
    captions_root: Path | None = None
    manifest: Path | None = None
    # InstaCities1M keeps each photo in a folder named after its city: that folder's name
    # becomes items.city (see set_cities), so one city is a WHERE away.
    city_folders: bool = False

    def describe(self) -> str:
        if self.kind == "manifest":
            return f"manifest {self.manifest}"
        if self.kind == "tree":
            return f"image tree {self.root} with captions under {self.captions_root}"
        return f"{self.kind} {self.root}"

    @property
    def location(self) -> Path:
        return self.manifest if self.manifest is not None else self.root


# What curate itself writes: a workspace (its database) and the output folders of report and
# compare (their manifest) and of filter/search --copy-to (select/filter.py MANIFEST). A scan
# that met one inside a source would take report pictures or copies of the source's own photos
# as new items; it skips the folder and says so.
COPY_MANIFEST = ".curate-files"


def curate_folder(path: str) -> str | None:
    """What curate made this folder for (a workspace, an output folder), or None for any other folder."""
    if os.path.lexists(os.path.join(path, DB_NAME)):
        return "a curate workspace"
    if os.path.lexists(os.path.join(path, output_folder.MANIFEST)):
        return "a curate report or compare folder"
    if os.path.lexists(os.path.join(path, COPY_MANIFEST)):
        return "a curate --copy-to folder"
    if re.fullmatch(r"\..+\.curate-(partial|old)", os.path.basename(path)):
        return "a curate output folder being written"
    return None


@dataclass
class ScanResult:
    seen: int = 0           # items the source offers (image files taken, manifest rows)
    added: int = 0          # new rows of `items`
    not_taken: int = 0      # entries recorded in `rejected` at stage 'scan' (this run or before)
    other_files: int = 0    # files seen that are not images (counted only)
    caption_problems: int = 0
    skipped: list[str] = field(default_factory=list)   # folders curate made (workspaces, outputs): not scanned
    notes: list[str] = field(default_factory=list)

    def __iter__(self):  # `seen, added = scan_into(...)` keeps working
        return iter((self.seen, self.added))


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
    try:
        with os.scandir(p):
            pass
    except OSError as e:
        raise SourceError(f"{path}: the folder cannot be listed: {e.strerror or e}") from None
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
        return Source("tree", imgs[0], captions_root=caps[0], city_folders=True)
    return Source("folder", p)


# -- the sources table and the items key ------------------------------------------------

def upgrade_items(con: duckdb.DuckDBPyConnection) -> bool:
    """Move a workspace made before `sources` existed to the (source_no, source_id) key.

    Those workspaces declare items.source_id UNIQUE, which would hide a second source's
    items named like the first's. DuckDB cannot drop a constraint, so the table is rebuilt
    (same rows, same ids, every column kept) in one transaction, and each item gets the
    source its run recorded in `runs.source` (queries/items_rebuild.sql). Returns whether
    anything was done.
    """
    old_key = con.execute(
        "SELECT count(*) FROM duckdb_constraints() WHERE database_name = current_database() AND schema_name = 'main' "
        "AND table_name = 'items' AND constraint_type = 'UNIQUE' "
        "AND constraint_column_names = ['source_id']").fetchall()[0][0]
    if not old_key:
        return False
    with transaction(con):
        sql.run(con, "items_set_aside")
        con.execute(sql.named("workspace", "items"))
        have = {r[0] for r in con.execute("DESCRIBE items").fetchall()}
        for name, typ, *_ in con.execute("DESCRIBE items_before_sources").fetchall():
            if name not in have:
                con.execute(f"ALTER TABLE items ADD COLUMN {quote_identifier(name)} {typ}")
        for step in ("sources", "items", "drop_old"):
            con.execute(sql.named("items_rebuild", step))
    return True


def register_source(con: duckdb.DuckDBPyConnection, src: Source, run_id: int) -> int:
    """The source's number in `sources`, recording it on first sight."""
    upgrade_items(con)
    desc = src.describe()
    rows = con.execute("SELECT source_no FROM sources WHERE description = ?", [desc]).fetchall()
    if rows:
        return int(rows[0][0])
    no = con.execute("SELECT coalesce(max(source_no), 0) + 1 FROM sources").fetchall()[0][0]
    con.execute("INSERT INTO sources (source_no, kind, location, description, first_run) VALUES (?, ?, ?, ?, ?)",
                [no, src.kind, str(src.location), desc, run_id])
    return int(no)


@cache
def curate_columns() -> frozenset[str]:
    """items' columns that curate itself defines (lower case), whatever version of the schema."""
    con = duckdb.connect()
    try:
        con.execute(SCHEMA)
        for stmt in UPGRADES:
            con.execute(stmt)
        names = {r[0].lower() for r in con.execute("DESCRIBE items").fetchall()}
    finally:
        con.close()
    return frozenset(names | {"id", "source_id", "source_no", "path", "caption", "status", "run_id",
                              "caption_tokens", "caption_truncated", "file_size", "file_mtime"})


def column_targets(names: list[str]) -> list[str]:
    """Where each of a source's own columns is kept in `items`.

    A name equal to one of curate's columns, in any case, or starting with `src_`, is
    kept as `src_<name>`; so `status` -> `src_status`, `ID` -> `src_ID`, `src_x` ->
    `src_src_x`, and no user column can ever land on curate's or on another's. A name
    already taken in this source (DuckDB names are case-insensitive: `City` and `city`)
    gets `src_` again. An empty name becomes `column<N>` (1-based position).
    """
    reserved = curate_columns()
    used: set[str] = set()
    out = []
    for pos, name in enumerate(names, 1):
        t = name if name.strip() else f"column{pos}"
        if t.lower() in reserved or t.lower().startswith("src_"):
            t = "src_" + t
        while t.lower() in used:
            t = "src_" + t
        used.add(t.lower())
        out.append(t)
    return out


# -- folders -----------------------------------------------------------------------------

def read_caption_file(path: Path) -> str | None:
    """A caption file's text, whatever its encoding; None when missing or blank."""
    text, _problem = read_caption(path)
    return text


def read_caption(path: Path | str) -> tuple[str | None, str | None]:
    """(text, problem): text None when there is no caption; problem says why a file was not read.

    Only a regular file (or a link to one) of at most CAPTION_MAX_BYTES is read: a FIFO
    would block forever and /dev/zero never ends. Opened non-blocking and checked again
    on the open file, so a file swapped for a FIFO in between cannot hang the scan.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None, None
    except OSError as e:
        return None, f"caption file unreadable: {e.strerror or e}"
    if stat.S_ISDIR(st.st_mode):
        return None, "caption path is a folder, not a file"
    if not stat.S_ISREG(st.st_mode):
        return None, f"caption file is not a regular file ({_file_kind(st.st_mode)}), so it is not read"
    if st.st_size > CAPTION_MAX_BYTES:
        return None, f"caption file too large ({st.st_size} bytes, limit {CAPTION_MAX_BYTES}), so it is not read"
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None, "caption file is not a regular file, so it is not read"
            with os.fdopen(fd, "rb", closefd=False) as f:
                raw = f.read(CAPTION_MAX_BYTES + 1)
        finally:
            os.close(fd)
    except OSError as e:
        return None, f"caption file unreadable: {e.strerror or e}"
    if len(raw) > CAPTION_MAX_BYTES:
        return None, f"caption file too large (over {CAPTION_MAX_BYTES} bytes), so it is not read"
    return decode_text(raw), None


def _file_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a plain file"


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


def shown(p: str) -> str:
    """A path as text that can be stored: bytes that are not UTF-8 shown as \\xNN."""
    try:
        p.encode("utf-8")
        return p
    except UnicodeEncodeError:
        return os.fsencode(p).decode("utf-8", "backslashreplace")


@dataclass
class _Entry:
    source_id: str
    path: str                     # absolute
    caption: str | None = None
    caption_problem: str | None = None
    caption_path: str | None = None
    reject: str | None = None     # not taken: the reason (recorded at stage 'scan')


def _folder_entries(src: Source, res: ScanResult) -> Iterator[_Entry]:
    """Every entry under the root, in a stable (sorted) order: items to take and entries not taken.

    Symlinked folders are followed; a folder already scanned (a loop, or a second link to
    the same folder) is recorded and not entered twice.
    """
    root = str(src.root)
    made = curate_folder(root)
    if made == "a curate workspace":
        raise SourceError(f"{root} is {made} (it holds {DB_NAME}), not a folder of photos; give the photo folder")
    taken = scanned_extensions()
    st = os.stat(root)
    visited = {(st.st_dev, st.st_ino)}
    # os.walk reports a folder it cannot list through onerror, when it gets to it: after the
    # parent's step, and for the last folder walked after the last step. Every error is taken
    # at the next step and once more when the walk ends.
    walk_errors: list[OSError] = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=walk_errors.append, followlinks=True):
        yield from _walk_errors(walk_errors, root)
        dirnames.sort()
        keep = []
        for d in dirnames:
            full = os.path.join(dirpath, d)
            if shown(d) != d:
                yield _Entry(_rel(shown(full), root), shown(full),
                             reject="folder name is not valid UTF-8 (bytes shown as \\xNN): its files are not "
                                    "scanned; rename it")
                continue
            try:
                ds = os.stat(full)
            except OSError as e:
                yield _Entry(_rel(full, root), full, reject=f"folder cannot be entered: {e.strerror or e}")
                continue
            if (ds.st_dev, ds.st_ino) in visited:
                yield _Entry(_rel(full, root), full,
                             reject=f"link to a folder already scanned ({os.path.realpath(full)}): not scanned twice")
                continue
            visited.add((ds.st_dev, ds.st_ino))
            if curate_folder(full):
                res.skipped.append(_rel(full, root))
                continue
            keep.append(d)
        dirnames[:] = keep
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            ext = os.path.splitext(name)[1].lower()
            if shown(name) != name:
                if ext in taken or _not_taken_reason(ext):
                    yield _Entry(_rel(shown(full), root), shown(full),
                                 reject="file name is not valid UTF-8 (bytes shown as \\xNN); rename the file")
                else:
                    res.other_files += 1
                continue
            if ext not in taken:
                why = _not_taken_reason(ext)
                if why:
                    yield _Entry(_rel(full, root), full, reject=why)
                elif ext != ".txt":
                    res.other_files += 1
                continue
            if name.startswith("."):
                yield _Entry(_rel(full, root), full, reject="hidden file (name starts with '.'), not taken")
                continue
            rel = _rel(full, root)
            if src.kind == "tree":
                cap_path = os.path.join(str(src.captions_root), os.path.splitext(rel)[0] + ".txt")
            else:
                cap_path = os.path.splitext(full)[0] + ".txt"
            text, problem = read_caption(cap_path)
            yield _Entry(rel, full, text, problem, cap_path)
    yield from _walk_errors(walk_errors, root)


def _walk_errors(errors: list[OSError], root: str) -> Iterator[_Entry]:
    """The folders os.walk could not list, in the order it met them, as entries not taken."""
    for e in errors:
        where = shown(os.fsdecode(e.filename)) if e.filename is not None else root
        if os.path.realpath(where) == os.path.realpath(root):
            raise SourceError(f"{root}: the folder cannot be listed: {e.strerror or e}")
        yield _Entry(_rel(where, root), where, reject=f"folder cannot be listed: {e.strerror or e}")
    errors.clear()


def _rel(full: str, root: str) -> str:
    return Path(os.path.relpath(full, root)).as_posix()


def scan_folder(con: duckdb.DuckDBPyConnection, src: Source, source_no: int, run_id: int,
                progress: Callable[[int], None] | None = None) -> ScanResult:
    """Add a folder's or tree's new items to `items` (scan.scan_into picks this or the manifest reader)."""
    res = ScanResult()
    batch: list[_Entry] = []

    def flush() -> None:
        taken = sum(e.reject is None for e in batch)
        _insert_entries(con, batch, source_no, run_id, res)
        res.seen += taken
        if progress:
            progress(taken)
        batch.clear()

    for entry in _folder_entries(src, res):
        batch.append(entry)
        if len(batch) >= SCAN_BATCH:
            flush()
    flush()
    if res.skipped:
        shown_ = ", ".join(res.skipped[:3]) + (f" and {len(res.skipped) - 3} more" if len(res.skipped) > 3 else "")
        res.notes.append(f"{len(res.skipped)} folder(s) under the source are curate's own (workspaces, outputs) "
                         f"and were not scanned: {shown_}")
    if src.city_folders:
        set_cities(con, source_no)
    return res


def set_cities(con: duckdb.DuckDBPyConnection, source_no: int) -> None:
    """items.city: the name of the folder holding each photo of an InstaCities1M tree
    (`.../cities_instagram/<city>/<id>.jpg`). A column of its own, not only part of source_id,
    so `filter`'s output, `sample` and SQL can take one city. Only this source's rows still
    without a city are set: items of a workspace scanned before the column existed get theirs
    on the next build-index of the tree. Workspaces without such a tree have no `city` column,
    and a manifest's own `city` column (text as well) is the same column."""
    sql.run(con, "items_city")
    con.execute("UPDATE items SET city = nullif(regexp_extract(source_id, '([^/]+)/[^/]+$', 1), '') "
                "WHERE source_no = ? AND city IS NULL", [source_no])


def _insert_entries(con: duckdb.DuckDBPyConnection, entries: list[_Entry], source_no: int, run_id: int,
                    res: ScanResult) -> None:
    if not entries:
        return
    con.register("scan_batch", {
        "ord": np.arange(len(entries), dtype=np.int64),
        "source_id": np.array([e.source_id for e in entries], dtype=object),
        "path": np.array([posixpath.normpath(e.path) for e in entries], dtype=object),
        "caption": np.array([e.caption for e in entries], dtype=object),
        "cap_problem": np.array([e.caption_problem for e in entries], dtype=object),
        "cap_path": np.array([e.caption_path for e in entries], dtype=object),
        "reject": np.array([e.reject for e in entries], dtype=object),
    })
    try:
        before = con.execute("SELECT count(*) FROM items").fetchall()[0][0]
        con.execute(
            f"""
            INSERT INTO items (id, source_id, path, caption, status, run_id, source_no)
            SELECT next_item_id() - 1 + row_number() OVER (ORDER BY b.ord),
                   b.source_id, b.path, {clean_sql('b.caption')}, 'pending', ?, ?
            FROM scan_batch b
            WHERE b.reject IS NULL
              AND NOT EXISTS (SELECT 1 FROM items i WHERE i.source_no = ? AND i.source_id = b.source_id)
            """,
            [run_id, source_no, source_no],
        )
        res.added += con.execute("SELECT count(*) FROM items").fetchall()[0][0] - before
        con.execute(
            """
            CREATE OR REPLACE TEMP TABLE scan_rejects AS
            SELECT i.id AS item_id, b.source_id, b.cap_path AS path, b.cap_problem || '; the image is taken without '
                   || 'a caption' AS reason, 'caption' AS stage
            FROM scan_batch b JOIN items i ON i.source_no = ? AND i.source_id = b.source_id
            WHERE b.cap_problem IS NOT NULL
            UNION ALL
            SELECT NULL, b.source_id, b.path, b.reject, 'scan' FROM scan_batch b WHERE b.reject IS NOT NULL
            """,
            [source_no],
        )
        res.not_taken += sum(e.reject is not None for e in entries)
        res.caption_problems += sum(e.caption_problem is not None for e in entries)
        record_rejects(con, source_no, run_id)
    finally:
        con.unregister("scan_batch")


def record_rejects(con: duckdb.DuckDBPyConnection, source_no: int, run_id: int) -> None:
    """Record temp table scan_rejects(item_id, source_id, path, reason, stage) in `rejected`,
    each (source, path, reason) once however often the source is scanned."""
    con.execute(
        """
        INSERT INTO rejected (item_id, source_id, path, reason, stage, run_id, source_no)
        SELECT r.item_id, r.source_id, r.path, r.reason, r.stage, ?, ?
        FROM scan_rejects r
        WHERE NOT EXISTS (SELECT 1 FROM rejected x
                          WHERE x.source_no = ? AND x.stage = r.stage AND x.reason = r.reason
                            AND x.path IS NOT DISTINCT FROM r.path)
        """,
        [run_id, source_no, source_no],
    )
    con.execute("DROP TABLE scan_rejects")
