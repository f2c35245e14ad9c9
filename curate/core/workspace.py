"""The workspace: one DuckDB file plus the embeddings and indexes beside it.

    ws/curate.duckdb          items, rejected, runs, meta, shards (+ views from queries/)
    ws/embeddings/image/      shards: vectors (float32, L2-normalised) + ids (curate/core/store.py)
    ws/embeddings/caption/    the same for captions
    ws/indexes/               images.faiss, captions.faiss

The database is the source of truth: a shard file counts only once its row in
`shards` is committed, so a killed run never leaves half-recorded work behind.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import os
import platform
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb

from ..errors import WorkspaceBusy, WorkspaceError
from . import duckdb_host, sql

DB_NAME = "curate.duckdb"
# review marks not yet in `judgments`, and the lines of it that were not marks
# (curate/validate/review/journal.py)
JOURNAL = "marks.jsonl"
JOURNAL_REJECTED = "marks.rejected.jsonl"
STORAGE_VERSION = "v1.5.0"

# The core tables' DDL is SQL a user can read and run: queries/workspace.sql (the tables
# as first made) and queries/workspace_upgrades.sql (what was added since; one
# idempotent statement each, applied at every read-write connect).
SCHEMA = sql.text("workspace")
UPGRADES: list[str] = sql.statements("workspace_upgrades")
# What those files say, kept in `meta` once applied: a read-write connect runs them only for a
# workspace whose stamp differs (made before the stamp, or by another curate version), not at
# every open, where they cost ~11 ms of DDL and a catalog write (CREATE OR REPLACE VIEW) each time.
SCHEMA_STAMP = hashlib.sha256("\n;\n".join([SCHEMA, *UPGRADES]).encode()).hexdigest()[:16]

KINDS = ("image", "caption")

# What a connect does after opening, in order, beyond the core tables (SCHEMA, UPGRADES):
# the steps a stage owns, named here (module, function(con, root)) so that each runs
# whatever this process happened to import; the stage's module is imported at the connect.
# Each is cheap once done.
ON_READ_CONNECT: tuple[tuple[str, str], ...] = (
    # `judgments` includes the marks journal's good marks (a TEMP view)
    ("curate.validate.review.journal", "overlay"),
)
ON_WRITE_CONNECT: tuple[tuple[str, str], ...] = (
    # the marks journal's good marks into `judgments`, its bad lines set aside
    ("curate.validate.review.journal", "fold"),
    # score tables of a workspace from before named classifications into their own schema
    ("curate.classify.registry", "upgrade_on_connect"),
)


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


# Connections opened, by mode ("read", "write"), since the process started: a command opens
# its workspace once (tests/core/test_connections.py reads this).
CONNECTS: Counter[str] = Counter()


def missing(root: str | Path) -> WorkspaceError:
    """The one refusal of a folder that holds no workspace, for every command and step (exit 4)."""
    root = Path(root)
    return WorkspaceError(f"no workspace at {root} (no {DB_NAME} there): run `curate build-index SOURCE -w {root}` "
                          "first, or give the right -w/--workspace")


# The connection a `reading()`/`writing()` scope holds, per thread and database file: a scope
# opened inside another one of the same workspace shares its connection rather than opening a
# second (a read-write connection reads too; DuckDB refuses a process both modes on one file).
_scopes = threading.local()


def _held() -> dict[str, tuple[duckdb.DuckDBPyConnection, bool]]:
    if not hasattr(_scopes, "held"):
        _scopes.held = {}
    return _scopes.held


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

    def require(self) -> Workspace:
        """This workspace, or `missing` when its folder holds no database."""
        if not self.db_path.is_file():
            raise missing(self.root)
        return self

    # -- connection scopes ----------------------------------------------------
    @contextmanager
    def reading(self, wait: float | None = None, *, own_instance: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection for the `with` block, closed after; inside another scope of
        this workspace (reading or writing), that scope's connection. `own_instance`: a DuckDB
        instance of its own rather than the process's (core/duckdb_host.py), for a caller that
        changes instance-wide settings (`curate sql` locks the configuration); never nested."""
        key = str(self.db_path.resolve())
        held = _held().get(key)
        if held is not None:
            if own_instance:
                raise RuntimeError(f"a connection of its own to {self.db_path} inside another scope of it")
            yield held[0]
            return
        self.require()
        con, close = self._connect(True, wait, shared=not own_instance)
        _held()[key] = (con, False)
        try:
            yield con
        finally:
            del _held()[key]
            close()

    @contextmanager
    def writing(self, wait: float | None = None, *, create: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-write connection for the `with` block (the one write lock), closed after;
        inside another writing scope of this workspace, that scope's connection. `create`: make
        the workspace where there is none (build-index); otherwise a missing one is refused."""
        key = str(self.db_path.resolve())
        held = _held().get(key)
        if held is not None:
            if not held[1]:
                raise RuntimeError(f"a write to {self.db_path} inside a read-only scope of it: close the reader first")
            yield held[0]
            return
        if not create:
            self.require()
        con, close = self._connect(False, wait, shared=True)
        _held()[key] = (con, True)
        try:
            yield con
        finally:
            del _held()[key]
            close()

    # -- database -------------------------------------------------------------
    def connect(self, read_only: bool = False, wait: float | None = None) -> duckdb_host.Held:
        """The database opened for a caller that keeps it beyond a block and closes it itself
        (`close()`, or a `with` block): through the process's DuckDB instance, as `reading()` /
        `writing()` open it, so a scope of this process opened meanwhile shares it. While another
        process holds it, retry for `wait` seconds (default: `lock_wait()`), then raise
        `WorkspaceBusy` naming that process.

        DuckDB's rule: one read-write process, or any number of read-only ones. Read-only
        connections see the marks the review server has not folded in yet (curate/validate/review/journal.py);
        read-write ones fold them in first.
        """
        return duckdb_host.Held(*self._connect(read_only, wait, shared=True))

    def _connect(self, read_only: bool, wait: float | None,
                 shared: bool) -> tuple[duckdb.DuckDBPyConnection, Callable[[], None]]:
        """(connection, its close), as `connect` says; `shared`: through the process's instance."""
        if read_only and not self.exists():
            raise missing(self.root)
        deadline = time.monotonic() + (lock_wait() if wait is None else max(0.0, wait))
        pause = 0.02
        while True:
            try:
                con, close = self._open(read_only, shared)
                break
            except (duckdb.IOException, duckdb.ConnectionException) as e:
                if not is_lock_error(e):
                    raise
                if time.monotonic() >= deadline:
                    raise WorkspaceBusy(busy_message(self.db_path, str(e), read_only,
                                                     lock_wait() if wait is None else wait)) from None
                time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
                pause = min(pause * 2, 0.25)
        CONNECTS["read" if read_only else "write"] += 1
        try:
            if not read_only:
                _apply_schema(con)
            for module, function in ON_READ_CONNECT if read_only else ON_WRITE_CONNECT:
                getattr(importlib.import_module(module), function)(con, self.root)
        except BaseException:
            close()
            raise
        return con, close

    def _open(self, read_only: bool, shared: bool) -> tuple[duckdb.DuckDBPyConnection, Callable[[], None]]:
        if not read_only:
            self.root.mkdir(parents=True, exist_ok=True)
        # Written in a storage format the `duckdb` shell (duckdb-cli, one release behind
        # the Python package) can open, so `duckdb ws/curate.duckdb` works.
        new = not read_only and not self.db_path.exists()
        return duckdb_host.connect(self.db_path, read_only, STORAGE_VERSION if new else None, shared=shared)

    # -- meta -----------------------------------------------------------------
    @staticmethod
    def get_meta(con: duckdb.DuckDBPyConnection, key: str) -> str | None:
        # main.meta: the caller's search path may point at a classification's schema
        rows = con.execute("SELECT value FROM main.meta WHERE key = ?", [key]).fetchall()
        return rows[0][0] if rows else None

    @staticmethod
    def set_meta(con: duckdb.DuckDBPyConnection, key: str, value: str) -> None:
        con.execute("INSERT OR REPLACE INTO main.meta VALUES (?, ?)", [key, value])

    @staticmethod
    def delete_meta(con: duckdb.DuckDBPyConnection, key: str) -> None:
        con.execute("DELETE FROM main.meta WHERE key = ?", [key])

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


_RUN_COUNTS = """
                items_added = (SELECT count(*) FROM items WHERE run_id = ?),
                items_embedded = (SELECT coalesce(sum(rows), 0) FROM shards WHERE kind = 'image' AND run_id = ?),
                items_rejected = (SELECT count(*) FROM rejected WHERE run_id = ?)"""


def _apply_schema(con: duckdb.DuckDBPyConnection) -> None:
    """The core tables and their upgrades (SCHEMA, UPGRADES), unless this workspace's stamp says
    they are applied already."""
    try:
        if Workspace.get_meta(con, "schema_stamp") == SCHEMA_STAMP:
            return
    except duckdb.CatalogException:     # a new database: no `meta` yet
        pass
    con.execute(SCHEMA)
    for stmt in UPGRADES:
        con.execute(stmt)
    Workspace.set_meta(con, "schema_stamp", SCHEMA_STAMP)


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


# -- the one-writer rule ---------------------------------------------------------
# How long a command waits for a workspace another process holds (`curate --wait`,
# `--wait` on the writers, or CURATE_WAIT), before it says who holds it.
DEFAULT_LOCK_WAIT = 10.0
_lock_wait: float | None = None


def set_lock_wait(seconds: float | None) -> None:
    global _lock_wait
    _lock_wait = seconds


def lock_wait() -> float:
    if _lock_wait is not None:
        return _lock_wait
    try:
        return max(0.0, float(os.environ.get("CURATE_WAIT", DEFAULT_LOCK_WAIT)))
    except ValueError:
        return DEFAULT_LOCK_WAIT


def is_lock_error(e: BaseException) -> bool:
    """Another process holds the file, or (same rule, one process) another connection of
    this process holds it in the other mode (a review server in a notebook or a test)."""
    text = str(e)
    if isinstance(e, duckdb_host.OtherMode):
        return True
    if isinstance(e, duckdb.ConnectionException):
        return "different configuration" in text
    return isinstance(e, duckdb.IOException) and ("Could not set lock" in text or "Conflicting lock" in text)


def holder_command(pid: int) -> str | None:
    """The command line of a process, as a person would type it (from /proc), or None."""
    try:
        argv = [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        return None
    if not argv:
        return None
    for i, a in enumerate(argv[:-1]):  # python [-u] -m curate.cli ARGS -> curate ARGS
        if a == "-m" and argv[i + 1] in ("curate.cli", "curate"):
            argv = ["curate", *argv[i + 2:]]
            break
    else:
        if len(argv) > 1 and Path(argv[1]).name == "curate" and "python" in Path(argv[0]).name:
            argv = ["curate", *argv[2:]]
        else:
            argv = [Path(argv[0]).name, *argv[1:]]
    if argv[0] == "duckdb":  # the duckdb-cli wrapper starts the shell with a long `-cmd SET ...`
        argv = [a for i, a in enumerate(argv) if a != "-cmd" and (i == 0 or argv[i - 1] != "-cmd")]
    cmd = " ".join(" ".join(argv).split())
    return cmd if len(cmd) <= 120 else cmd[:117] + "..."


def busy_message(db_path: Path, error: str, read_only: bool, waited: float) -> str:
    """One line: which process holds the database, and what to do."""
    m = re.search(r"\(PID (\d+)\)", error)
    pid = int(m.group(1)) if m else None
    cmd = holder_command(pid) if pid is not None else None
    if pid is not None:
        who = f"process {pid}" + (f" ({cmd})" if cmd else "")
    else:
        who = ("another connection of this process"
               if "different configuration" in error or "by another connection of this process" in error
               else "another process")
    # DuckDB adds this hint only when the holder itself is a read-only connection.
    how = "reading it" if "read-only mode" in error else "writing it"
    todo = ("wait for it to finish or stop it" if how == "writing it"
            else "close it (a duckdb shell opened with -readonly does not block curate's reads, only its writes)")
    return (f"the workspace {db_path} is busy: {who} is {how} (DuckDB allows one writer, or any number of "
            f"readers); waited {waited:g} s. {todo[0].upper() + todo[1:]}, or run again with --wait SECONDS")


def check_same_model(have: ModelIdentity, want: ModelIdentity) -> None:
    if (have.model, have.pretrained, have.embed_dim) != (want.model, want.pretrained, want.embed_dim):
        raise ModelMismatch(
            f"this workspace was embedded with {have.describe()}, not {want.describe()}: "
            "vectors from different models cannot be compared. Use the same --model/--pretrained, "
            "or a new --workspace."
        )


def package_versions() -> dict[str, str]:
    """The versions a run records (`runs.versions`): read once a process (importlib.metadata
    parses each package's METADATA file: ~15 ms for the eight, at every run)."""
    return dict(_package_versions())


@functools.cache
def _package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("curate", "torch", "open_clip_torch", "faiss-cpu", "faiss-gpu", "duckdb", "numpy", "pillow"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out
