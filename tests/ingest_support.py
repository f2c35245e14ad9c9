"""Test helpers for ingestion: a workspace's whole embedded state, read back for comparison; folder
permissions that hold for a test run as root."""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

from curate.core import store
from curate.core.workspace import Workspace


class WorkspaceState(NamedTuple):
    items: list[tuple]        # id, source_id, path, caption, status, caption_tokens, caption_truncated
    rejected: list[tuple]     # item_id, source_id, reason
    files: list[tuple]        # item_id, size, mtime_ns
    image: tuple[np.ndarray, np.ndarray]    # ids, vectors in shard order
    caption: tuple[np.ndarray, np.ndarray]


def stored_vectors(ws: Path, kind: str = "image") -> tuple[np.ndarray, np.ndarray]:
    """One kind's stored (ids, vectors), in shard order, from a read-only connection."""
    w = Workspace(ws)
    con = w.connect(read_only=True)
    try:
        return store.load_all(w, con, kind)
    finally:
        con.close()


def query(ws: Path, sql: str) -> list[tuple]:
    """The rows of one SQL query on a read-only connection (the journal's marks included)."""
    con = Workspace(ws).connect(read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def workspace_state(ws: Path) -> WorkspaceState:
    w = Workspace(ws)
    con = w.connect(read_only=True)
    try:
        return WorkspaceState(
            con.execute("SELECT id, source_id, path, caption, status, caption_tokens, caption_truncated "
                        "FROM items ORDER BY id").fetchall(),
            con.execute("SELECT item_id, source_id, reason FROM rejected ORDER BY item_id").fetchall(),
            con.execute("SELECT item_id, size, mtime_ns FROM item_files ORDER BY item_id").fetchall(),
            store.load_all(w, con, "image"),
            store.load_all(w, con, "caption"))
    finally:
        con.close()


@contextlib.contextmanager
def permissions_apply() -> Iterator[None]:
    """Folder permissions that stop this thread even when it runs as root: the thread's effective
    capabilities to override them (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH) are dropped for the
    block and restored after. Capabilities belong to a thread (capset), so DuckDB's own threads
    keep theirs; the walk runs in this one."""
    if os.geteuid() != 0:
        yield
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        capget, capset = libc.capget, libc.capset
    except (OSError, AttributeError):
        pytest.skip("no capget/capset here to take root's override of folder permissions away")

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    version3 = 0x20080522
    data = (Data * 2)()
    if capget(ctypes.byref(Header(version3, 0)), data) != 0:
        pytest.skip("capget failed")
    saved = data[0].effective
    data[0].effective &= ~((1 << 1) | (1 << 2))  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
    if capset(ctypes.byref(Header(version3, 0)), data) != 0:
        pytest.skip("capset failed")
    try:
        yield
    finally:
        data[0].effective = saved
        capset(ctypes.byref(Header(version3, 0)), data)
