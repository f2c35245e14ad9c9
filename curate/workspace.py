"""The workspace: one DuckDB file plus the embeddings and indexes beside it.

    ws/curate.duckdb          items, rejected, runs, meta, shards (+ views from queries/)
    ws/embeddings/image/      part-NNNNNN.npy (float32, L2-normalised) + part-NNNNNN.ids.npy
    ws/embeddings/caption/    the same for captions
    ws/indexes/               images.faiss, captions.faiss

The database is the source of truth: a shard file counts only once its row in
`shards` is committed, so a killed run never leaves half-recorded work behind.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb

from .errors import WorkspaceError

DB_NAME = "curate.duckdb"
STORAGE_VERSION = "v1.5.0"

# `id` is ours (dense BIGINT, the FAISS id); `source_id` is what the source calls the
# item (manifest id, or the path relative to the source root) and is what makes a
# second run over the same source add only new items.
SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id BIGINT PRIMARY KEY,
    source_id VARCHAR NOT NULL UNIQUE,
    path VARCHAR NOT NULL,
    caption VARCHAR,
    status VARCHAR NOT NULL DEFAULT 'pending',   -- pending | embedded | rejected
    caption_tokens INTEGER,
    caption_truncated BOOLEAN,
    run_id INTEGER
);
CREATE TABLE IF NOT EXISTS rejected (
    item_id BIGINT,
    source_id VARCHAR,
    path VARCHAR,
    reason VARCHAR NOT NULL,
    stage VARCHAR NOT NULL,                      -- scan | decode | caption | import
    run_id INTEGER,
    rejected_at TIMESTAMP DEFAULT current_timestamp
);
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY,
    command VARCHAR,
    source VARCHAR,
    model VARCHAR,
    pretrained VARCHAR,
    random_weights BOOLEAN,
    embed_dim INTEGER,
    device VARCHAR,
    started_at TIMESTAMP,
    finished_at TIMESTAMP,
    duration_s DOUBLE,
    items_added BIGINT,
    items_embedded BIGINT,
    items_rejected BIGINT,
    status VARCHAR,                              -- running | finished | failed | interrupted
    versions JSON
);
CREATE TABLE IF NOT EXISTS meta (
    key VARCHAR PRIMARY KEY,
    value VARCHAR
);
CREATE TABLE IF NOT EXISTS shards (
    kind VARCHAR NOT NULL,                       -- image | caption
    part INTEGER NOT NULL,
    file VARCHAR NOT NULL,
    rows BIGINT NOT NULL,
    run_id INTEGER,
    PRIMARY KEY (kind, part)
);
"""

# Columns and tables added after the first release, applied to existing workspaces at
# every read-write connect (each statement must be idempotent: IF NOT EXISTS).
UPGRADES: list[str] = [
    # runs: who ran it, so a later start can tell a killed run from a live one
    "ALTER TABLE runs ADD COLUMN IF NOT EXISTS pid INTEGER",
    "ALTER TABLE runs ADD COLUMN IF NOT EXISTS host VARCHAR",
    # each item's file as it was when decoded, so a rerun can tell a changed file (curate/recheck.py);
    # a table of its own, not columns of items, whose other columns are the source's own
    "CREATE TABLE IF NOT EXISTS item_files (item_id BIGINT PRIMARY KEY, size BIGINT, mtime_ns BIGINT, hash VARCHAR)",
    # shards: what was written, so damage is found cheaply (curate/integrity.py)
    "ALTER TABLE shards ADD COLUMN IF NOT EXISTS min_id BIGINT",
    "ALTER TABLE shards ADD COLUMN IF NOT EXISTS max_id BIGINT",
    "ALTER TABLE shards ADD COLUMN IF NOT EXISTS vec_sum VARCHAR",
    "ALTER TABLE shards ADD COLUMN IF NOT EXISTS ids_sum VARCHAR",
    "ALTER TABLE shards ADD COLUMN IF NOT EXISTS vec_mtime_ns BIGINT",
    "ALTER TABLE shards ADD COLUMN IF NOT EXISTS ids_mtime_ns BIGINT",
]

KINDS = ("image", "caption")


@dataclass(frozen=True)
class ModelIdentity:
    """What the workspace's vectors were made with; label vectors must match it."""

    model: str
    pretrained: str
    embed_dim: int
    random_weights: bool

    def describe(self) -> str:
        w = "random weights" if self.random_weights else f"pretrained={self.pretrained}"
        return f"{self.model} ({w}, {self.embed_dim}-d)"


class ModelMismatch(WorkspaceError, RuntimeError):
    pass


class Workspace:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    # -- layout ---------------------------------------------------------------
    @property
    def db_path(self) -> Path:
        return self.root / DB_NAME

    def embeddings_dir(self, kind: str) -> Path:
        assert kind in KINDS, kind
        return self.root / "embeddings" / kind

    @property
    def indexes_dir(self) -> Path:
        return self.root / "indexes"

    def index_path(self, kind: str) -> Path:
        return self.indexes_dir / ("images.faiss" if kind == "image" else "captions.faiss")

    def exists(self) -> bool:
        return self.db_path.exists()

    # -- database -------------------------------------------------------------
    def connect(self, read_only: bool = False) -> duckdb.DuckDBPyConnection:
        if read_only:
            if not self.exists():
                raise FileNotFoundError(
                    f"no workspace at {self.root} (expected {self.db_path}); run `curate build-index` first"
                )
            return duckdb.connect(str(self.db_path), read_only=True)
        self.root.mkdir(parents=True, exist_ok=True)
        # Written in a storage format the `duckdb` shell (duckdb-cli, one release behind
        # the Python package) can open, so `duckdb ws/curate.duckdb` works.
        config = {} if self.db_path.exists() else {"storage_compatibility_version": STORAGE_VERSION}
        con = duckdb.connect(str(self.db_path), config=config)
        con.execute(SCHEMA)
        for stmt in UPGRADES:
            con.execute(stmt)
        return con

    # -- meta -----------------------------------------------------------------
    @staticmethod
    def get_meta(con: duckdb.DuckDBPyConnection, key: str) -> str | None:
        rows = con.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchall()
        return rows[0][0] if rows else None

    @staticmethod
    def set_meta(con: duckdb.DuckDBPyConnection, key: str, value: str) -> None:
        con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [key, value])

    @classmethod
    def model_identity(cls, con: duckdb.DuckDBPyConnection) -> ModelIdentity | None:
        raw = cls.get_meta(con, "model")
        if raw is None:
            return None
        d = json.loads(raw)
        return ModelIdentity(d["model"], d["pretrained"], int(d["embed_dim"]), bool(d["random_weights"]))

    @classmethod
    def bind_model(cls, con: duckdb.DuckDBPyConnection, ident: ModelIdentity) -> None:
        """Record the model on first use; refuse a different one afterwards."""
        have = cls.model_identity(con)
        if have is None:
            cls.set_meta(con, "model", json.dumps(ident.__dict__))
            return
        check_same_model(have, ident)

    # -- runs -----------------------------------------------------------------
    @staticmethod
    def start_run(con: duckdb.DuckDBPyConnection, command: str, source: str, ident: ModelIdentity | None,
                  device: str) -> int:
        mark_interrupted(con)
        run_id = con.execute("SELECT coalesce(max(run_id), 0) + 1 FROM runs").fetchall()[0][0]
        con.execute(
            "INSERT INTO runs (run_id, command, source, model, pretrained, random_weights, embed_dim, device,"
            " started_at, status, versions, pid, host) VALUES (?, ?, ?, ?, ?, ?, ?, ?, now(), 'running', ?, ?, ?)",
            [run_id, command, source,
             ident.model if ident else None, ident.pretrained if ident else None,
             ident.random_weights if ident else None, ident.embed_dim if ident else None,
             device, json.dumps(package_versions()), os.getpid(), socket.gethostname()],
        )
        return int(run_id)

    @staticmethod
    def finish_run(con: duckdb.DuckDBPyConnection, run_id: int, started: float | None, status: str) -> None:
        """Close a run with what it did itself: items its scan added, image vectors it committed
        (shards it wrote), rejections it recorded; a resumed run counts its own work only."""
        con.execute(
            f"""
            UPDATE runs SET finished_at = now(), status = ?,
                duration_s = coalesce(?, epoch(now()::TIMESTAMP) - epoch(started_at)),
                {_RUN_COUNTS}
            WHERE run_id = ?
            """,
            [status, None if started is None else time.time() - started, run_id, run_id, run_id, run_id],
        )

    # -- shards ---------------------------------------------------------------
    def shard_files(self, con: duckdb.DuckDBPyConnection, kind: str) -> list[tuple[Path, Path, int]]:
        """Committed shards of one kind, in part order: (vectors, ids, rows)."""
        rows = con.execute(
            "SELECT file, rows FROM shards WHERE kind = ? ORDER BY part", [kind]
        ).fetchall()
        d = self.embeddings_dir(kind)
        return [(d / f, d / (f[: -len(".npy")] + ".ids.npy"), int(n)) for f, n in rows]


_RUN_COUNTS = """
                items_added = (SELECT count(*) FROM items WHERE run_id = ?),
                items_embedded = (SELECT coalesce(sum(rows), 0) FROM shards WHERE kind = 'image' AND run_id = ?),
                items_rejected = (SELECT count(*) FROM rejected WHERE run_id = ?)"""


def _alive(pid: int | None, host: str | None) -> bool:
    """Whether a run's process may still be running: only a process on this host can be checked."""
    if pid is None or host != socket.gethostname():
        return host is not None and host != socket.gethostname()  # another host's: cannot tell, leave it
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def mark_interrupted(con: duckdb.DuckDBPyConnection) -> list[int]:
    """Runs left `running` by a process that is gone (kill -9, power loss) become `interrupted`,
    with the counts of what they committed before they died."""
    rows = con.execute("SELECT run_id, pid, host FROM runs WHERE status = 'running' ORDER BY run_id").fetchall()
    dead = [r for r, pid, host in rows if not _alive(pid, host)]
    for run_id in dead:
        con.execute(f"UPDATE runs SET status = 'interrupted', {_RUN_COUNTS} WHERE run_id = ?",
                    [run_id, run_id, run_id, run_id])
    return dead


def check_same_model(have: ModelIdentity, want: ModelIdentity) -> None:
    if (have.model, have.pretrained, have.embed_dim) != (want.model, want.pretrained, want.embed_dim):
        raise ModelMismatch(
            f"this workspace was embedded with {have.describe()}, not {want.describe()}: "
            "vectors from different models cannot be compared. Use the same --model/--pretrained, "
            "or a new --workspace."
        )


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("curate", "torch", "open_clip_torch", "faiss-cpu", "faiss-gpu", "duckdb", "numpy", "pillow"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def quote_ident(name: str) -> str:
    """A user-supplied column name, safe to put in SQL as an identifier."""
    return '"' + name.replace('"', '""') + '"'

