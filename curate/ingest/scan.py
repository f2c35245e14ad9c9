"""Scan a source into the workspace: register it, then add its new items, from a folder or
tree (sources.py) or from a manifest (manifests.py)."""

from __future__ import annotations

from collections.abc import Callable

import duckdb

from .manifests import scan_manifest
from .sources import ScanResult, Source, register_source, scan_folder


def scan_into(con: duckdb.DuckDBPyConnection, src: Source, run_id: int,
              progress: Callable[[int], None] | None = None, infer_types: bool = False) -> ScanResult:
    """Add the source's new items to `items`; says what was seen, added and not taken."""
    source_no = register_source(con, src, run_id)
    if src.kind == "manifest":
        res = scan_manifest(con, src, source_no, run_id, infer_types)
        if progress:
            progress(res.seen)
        return res
    return scan_folder(con, src, source_no, run_id, progress)
