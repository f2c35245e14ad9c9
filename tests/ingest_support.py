"""Test helpers for ingestion: a workspace's whole embedded state, read back for comparison."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

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
