"""Where curate may write an output, the one way a file output is written, and the row formats.

Every command that writes a file or a folder (`filter --out/--copy-to/--link-to`, the
webdataset and embedding exports, `search --out`, `sql --out`, `review --out`, `report
--out`, `compare --out`) goes through `check_output` before it writes: through
`write_atomic` (files), `output_folder.replace_folder` (folders replaced whole) or
`place_files` (copies and links). tests/cli/test_output_guard.py runs every such option
of every command against a workspace's own files, so a new writer that skips it fails.

The rule: an output never lands in a workspace's own files (the database and what DuckDB
keeps beside it, the embedding shards, the indexes, the marks journal) nor is a workspace
itself, for any workspace (found by its `curate.duckdb`), not just the one a command
reads; symbolic links are followed for this check, so a link into a workspace is refused
too. Nor does an output replace a DuckDB database of any name (found by its header).

A query's rows are written by one `RowWriter` per format (parquet, csv, tsv, jsonl, json),
chosen by name (`WRITERS`) or by the file's extension (`SUFFIXES`): filter, search and
`sql --out` write through the same ones.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import ClassVar

import duckdb

from ..errors import OutputError
from .sql import quote_literal
from .workspace import DB_NAME, JOURNAL_REJECTED
from .workspace import JOURNAL as JOURNAL_NAME

PARTIAL = ".curate-partial"    # suffix of a file being written; renamed to its name when whole
# A workspace's own entries at its root: the database and what DuckDB keeps beside it
# (curate.duckdb.wal, .tmp), the journal and anything named after it, its set-aside bad lines,
# the running review page's address; the shard and index folders, the app's folder.
_OWN_PREFIXES = (DB_NAME, JOURNAL_NAME, JOURNAL_REJECTED, "review-server.json")
_OWN_FOLDERS = ("embeddings", "indexes", "app")  # app: `curate app`'s thumbnails and browsing marks


def workspace_entry(path: str | Path) -> tuple[Path, str] | None:
    """(workspace root, its entry) when `path` is, or lies inside, a workspace's own files;
    (root, "") when `path` is a workspace's root; None otherwise. Checked on the path as
    written and on the path with every symbolic link resolved."""
    # resolved from the path as given: `link/..` is the parent of the link's target
    for p in dict.fromkeys((Path(os.path.abspath(path)), Path(path).resolve())):
        if (p / DB_NAME).is_file():
            return p, ""
        if p.name.lower() == DB_NAME:
            return p.parent, p.name
        for root in p.parents:
            if (root / DB_NAME).is_file():
                entry = p.relative_to(root).parts[0]
                # in any case: on a case-insensitive file system Curate.duckdb is the database
                if entry.lower().startswith(_OWN_PREFIXES) or entry.lower() in _OWN_FOLDERS:
                    return root, entry
                break   # the nearest workspace decides; an output beside its own files is fine
    return None


def check_output(path: str | Path, what: str = "output") -> Path:
    """Refuse (OutputError) an output at `path` that would land in a workspace's own files,
    be a workspace, or replace a DuckDB database of any name. Returns `path` made absolute
    (links in it not resolved)."""
    hit = workspace_entry(path)
    if hit is not None:
        root, entry = hit
        where = f"is the workspace {root}" if not entry else f"is inside the workspace {root} ({entry})"
        raise OutputError(f"will not write the {what} to {path}: it {where}, which only curate's own steps "
                          "write; choose another place")
    path = Path(os.path.abspath(path))
    if _is_database(path):
        raise OutputError(f"will not replace {path} with the {what}: it is a DuckDB database; choose another name")
    return path


def _is_database(path: Path) -> bool:
    """A DuckDB database file (its header's magic bytes), seen through a link too."""
    try:
        with open(path, "rb") as f:
            return f.read(12)[8:12] == b"DUCK"
    except OSError:
        return False


def partial_path(path: str | Path) -> Path:
    """The temporary name `write_atomic` writes `path` under (hidden, beside it)."""
    path = Path(os.path.abspath(path))
    return path.with_name(f".{path.name}{PARTIAL}")


def write_atomic(path: str | Path, write: Callable[[Path], object], what: str = "output",
                 checked: bool = False) -> None:
    """Call write(tmp) for a temporary file beside `path`, then rename it to `path`.

    `check_output` first, unless `checked`: the caller checked the folder it writes in
    (place_files, once per folder). A reader
    never sees a half-written `path`: it is the earlier file or the whole new one. On
    failure the temporary file is removed (a kill leaves it, hidden, and the next write to
    `path` removes it) and OutputError says what happened.
    """
    path = Path(os.path.abspath(path)) if checked else check_output(path, what)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    try:
        tmp.unlink(missing_ok=True)
        write(tmp)
        with open(tmp, "rb") as f:          # on disk before the rename makes it visible
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, duckdb.Error) as e:
        tmp.unlink(missing_ok=True)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        full = getattr(e, "errno", None) == errno.ENOSPC or "no space left" in first.lower()
        raise OutputError(f"{'disk full: ' if full else ''}could not write {path}: {first}; nothing was left at "
                          "that name (free space or fix permissions and run the same command again)") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def kv_metadata_option(meta: Mapping[str, str]) -> str:
    """`, KV_METADATA {...}` for a parquet COPY: DuckDB takes the map as literal text only, so
    every key and value is a quoted SQL string (quotes doubled), never a bare user value."""
    return ", KV_METADATA {" + ", ".join(f"{quote_literal(k)}: {quote_literal(v)}" for k, v in meta.items()) + "}"


class RowWriter:
    """One file format of a query's rows, written by DuckDB's COPY: one class per format, chosen
    by name (`WRITERS`) or by a file's extension (`SUFFIXES`). The COPY options are fixed text,
    never from the user; the file name is a bound parameter."""

    name: ClassVar[str]
    copy_options: ClassVar[str]

    def __init__(self, metadata: Mapping[str, str] | None = None) -> None:
        self.metadata = dict(metadata or {})     # what made the rows, where the format keeps it

    def options(self) -> str:
        return f"({self.copy_options})"

    def copy(self, con: duckdb.DuckDBPyConnection, source: str, target: str | Path) -> None:
        """COPY `source` (a table's name or a parenthesised query) to `target`, as it stands."""
        con.execute(f"COPY {source} TO ? {self.options()}", [str(target)])

    def write(self, con: duckdb.DuckDBPyConnection, source: str, path: str | Path, what: str = "output") -> None:
        """`source` written to `path` whole or not at all (`write_atomic`)."""
        write_atomic(path, lambda tmp: self.copy(con, source, tmp), what)


class ParquetWriter(RowWriter):
    name = "parquet"
    copy_options = "FORMAT parquet"

    def options(self) -> str:
        # the provenance travels in the file's key-value metadata
        return f"({self.copy_options}{kv_metadata_option(self.metadata) if self.metadata else ''})"


class CsvWriter(RowWriter):
    name = "csv"
    copy_options = "FORMAT csv, HEADER true"     # NULL as an empty field


class TsvWriter(RowWriter):
    name = "tsv"
    copy_options = "FORMAT csv, HEADER true, DELIMITER '\t'"


class JsonlWriter(RowWriter):
    name = "jsonl"
    copy_options = "FORMAT json"                 # one object a line, NULL as null


class JsonWriter(RowWriter):
    name = "json"
    copy_options = "FORMAT json, ARRAY true"     # one array of objects


WRITERS: dict[str, type[RowWriter]] = {w.name: w for w in (ParquetWriter, CsvWriter, TsvWriter, JsonlWriter,
                                                           JsonWriter)}
# a file's extension -> its writer
SUFFIXES: dict[str, type[RowWriter]] = {".parquet": ParquetWriter, ".csv": CsvWriter, ".tsv": TsvWriter,
                                        ".jsonl": JsonlWriter, ".ndjson": JsonlWriter, ".json": JsonWriter}


def writer_for(path: str | Path) -> type[RowWriter] | None:
    """The writer a file's extension names (any case); None for an extension of no row format."""
    return SUFFIXES.get(Path(path).suffix.lower())
