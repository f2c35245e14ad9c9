"""One DuckDB instance per process; a workspace's database is ATTACHed to it while used.

`duckdb.connect(file)` builds a whole DuckDB instance, its catalog of ~1,500 built-in
functions included, and tears it down at close: ~25-30 ms a connect+close on a 2-core AMD
EPYC, more than most app requests and many commands then spend reading. Attaching the file to
an instance that already exists, and detaching it after, costs ~4-7 ms (bench/bench_connect.py).

What other processes see is unchanged: the attach takes the file lock a connect would (shared
for READ_ONLY, exclusive otherwise) and the detach gives it back, checkpointing a written
database as a close does. In this process, scopes of several threads share one attachment
(each its own cursor, so its own transaction and TEMP objects); a database attached read-only
is refused to a writer here until its readers are done, as DuckDB refuses a second connection
in the other mode (`OtherMode`, a lock error for the caller's wait-and-retry). A file another
connection of this process opened with `duckdb.connect` cannot be attached (DuckDB refuses the
same file twice): `attach` answers None and the caller connects as before.

Settings a connection changes with SET are the instance's: a caller that locks the
configuration down (`curate sql`) uses an instance of its own
(`Workspace.reading(own_instance=True)`). The folder DuckDB spills into is one of them: set at
each attach to the workspace's own (`_spill_beside`). A connection a caller keeps and closes
itself (`Workspace.connect`, the tests' reads) is a `Held` cursor of the instance.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb

from . import sql


class OtherMode(duckdb.ConnectionException):
    """The database is attached in the other mode (read-only vs read-write) in this process."""


@dataclass
class _Attachment:
    alias: str
    read_only: bool
    users: int


_lock = threading.Lock()
_host: duckdb.DuckDBPyConnection | None = None
_attached: dict[str, _Attachment] = {}


def _instance() -> duckdb.DuckDBPyConnection:
    """The process's instance, made on first use (a forked child's too: _after_fork_in_child)."""
    global _host
    if _host is None:
        _host = duckdb.connect(":memory:", config=instance_config())
    return _host


def instance_config() -> dict[str, object]:
    """Settings every DuckDB instance curate makes starts with: its threads capped at
    OMP_NUM_THREADS where that is set to a number, the one setting torch, FAISS and OpenBLAS
    already follow (a job scheduler's or a shared machine's share of cores). DuckDB otherwise
    starts a thread a core, and on a small query each waits for the others: the test suite (one
    thread a worker, one worker a core) spent ~4% more CPU and ~5% more time with DuckDB's default."""
    n = os.environ.get("OMP_NUM_THREADS", "").strip()
    return {"threads": int(n)} if n.isdigit() and int(n) > 0 else {}


def _alias(path: Path) -> str:
    """The file's stem, as a plain connect names its catalog (`curate`), unless another
    attachment has it: then the stem and a number."""
    taken = {a.alias for a in _attached.values()}
    alias, n = path.stem, 2
    while alias in taken or alias in ("memory", "system", "temp"):
        alias, n = f"{path.stem}_{n}", n + 1
    return alias


def connect(path: Path, read_only: bool, storage_version: str | None = None, *,
            shared: bool = True) -> tuple[duckdb.DuckDBPyConnection, Callable[[], None]]:
    """(connection, its close) to the database file `path`: through the process's instance
    (`attach`), or, where `shared` is False or a plain connection of this process holds the file,
    in an instance of its own. `storage_version`: the format a new file is written in."""
    if shared:
        key = path.resolve()   # the file, whatever the current folder is when it is released
        con = attach(path, read_only, storage_version)
        if con is not None:
            return con, lambda: release(key, con)
    config = instance_config()
    if storage_version is not None:
        config["storage_compatibility_version"] = storage_version
    con = duckdb.connect(str(path), read_only=read_only, config=config)
    return con, con.close


class Held:
    """A connection its caller keeps beyond a block and closes itself (`Workspace.connect`): the
    cursor `connect` made, every attribute its own, and `close()` (or a `with` block, or the object
    going away) gives the attachment back. ~5 ms an open and close where a connection of its own
    builds and tears down an instance (~25-35 ms)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, close: Callable[[], None]) -> None:
        self._con: duckdb.DuckDBPyConnection | None = con
        self._close = close

    def __getattr__(self, name: str):
        if name.startswith("_"):    # (before __init__ ran, or after close: no recursion)
            raise AttributeError(name)
        if self._con is None:
            raise duckdb.ConnectionException("Connection already closed!")
        return getattr(self._con, name)

    def close(self) -> None:
        con, self._con = self.__dict__.get("_con"), None
        if con is not None:
            self._close()

    def __enter__(self) -> Held:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:    # a one-line read (`Held(...).execute(...)`) frees the file too
        try:
            self.close()
        except Exception:   # noqa: BLE001 - at interpreter exit, or the instance gone
            pass


def attach(path: Path, read_only: bool, storage_version: str | None = None) -> duckdb.DuckDBPyConnection | None:
    """A cursor of the process's instance whose default database is `path` (attached now, or
    shared with the scopes using it); None where a plain connection of this process holds the
    file. `storage_version`: the format a new file is written in. Raises DuckDB's lock error
    while another process holds the file, `OtherMode` while this one has it in the other mode.
    The file is known by its resolved path (`release` takes the same)."""
    key = str(path.resolve())
    with _lock:
        host = _instance()
        got = _attached.get(key)
        if got is not None:
            if got.read_only != read_only:
                # worded as DuckDB words its own refusal, which workspace.busy_message reads
                raise OtherMode(f"{path} is open {'in read-only mode' if got.read_only else 'for writing'} "
                                "by another connection of this process")
        else:
            options = ["READ_ONLY"] if read_only else []
            if storage_version is not None:
                options.append(f"STORAGE_VERSION {sql.quote_literal(storage_version)}")
            got = _Attachment(_alias(path), read_only, 0)
            try:
                host.execute(f"ATTACH {sql.quote_literal(str(path))} AS {sql.quote_identifier(got.alias)}"
                             + (f" ({', '.join(options)})" if options else ""))
            except duckdb.Error as e:
                if "Unique file handle conflict" in str(e):
                    return None
                raise
            _attached[key] = got
            _spill_beside(host, path)
        con = host.cursor()
        got.users += 1
    try:
        con.execute(f"USE {sql.quote_identifier(got.alias)}")
    except BaseException:
        release(path, con)
        raise
    return con


def _spill_beside(host: duckdb.DuckDBPyConnection, path: Path) -> None:
    """What does not fit in memory spills beside the database (`curate.duckdb.tmp`), where a
    connection of its own puts it, not into the in-memory instance's default, `.tmp` in the
    current folder. The instance has one such folder: once DuckDB has spilled into one it keeps
    it until the process ends, so a second workspace attached later spills into the first's."""
    try:
        host.execute(f"SET temp_directory = {sql.quote_literal(str(path.resolve()) + '.tmp')}")
    except duckdb.Error:   # "Cannot switch temporary directory after [it] has been used"; and a
        pass               # preference must not strand the attachment just made (its file lock)


def release(path: Path, con: duckdb.DuckDBPyConnection) -> None:
    """Close a cursor `attach` gave; the last user of an attachment detaches it (the file lock
    goes, a written database is checkpointed). A detach that fails (its checkpoint on a full
    disk) leaves the attachment known, unused: the next scope takes it up, its release tries again."""
    con.close()
    key = str(path.resolve())
    with _lock:
        got = _attached.get(key)
        if got is None or _host is None:
            return
        got.users -= 1
        if got.users == 0:
            _host.execute(f"DETACH {sql.quote_identifier(got.alias)}")
            del _attached[key]


def _after_fork_in_child() -> None:
    """A forked child starts without the parent's instance. Its objects are kept, never
    closed: closing them here would run the parent's DuckDB teardown (threads that are not in
    the child, a checkpoint of the parent's attached databases) from the child."""
    global _lock, _host, _attached
    if _host is not None:
        _inherited.append(_host)
    _lock, _host, _attached = threading.Lock(), None, {}


_inherited: list[duckdb.DuckDBPyConnection] = []
os.register_at_fork(after_in_child=_after_fork_in_child)
