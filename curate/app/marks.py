"""Marks made while browsing: kept apart from the marks on random review sets.

A review set's marks (`judgments`, keyed by the pair (image, label)) are a random sample:
the report's Table 2 and the calibration stand on that. Marks made on tiles while browsing
are not: a person marks what catches the eye. If they went into `judgments`, a pair that is
also in a review set would be counted by the report as if the reviewer had marked it there.
A "browse" review set would not keep them apart either, since `judgments` has no set column.

So they go to their own journal, ws/app/marks.jsonl, through the review journal's own
code (curate/validate/review/journal.py `append`: one JSON line a mark, under a lock, fsynced before
the page is told it is saved). `Workspace.connect` folds only ws/marks.jsonl into
`judgments`; nothing ever folds this one, and sampling, report and calibration never read it.
A user reads them in the duckdb shell with
    SELECT * FROM read_json('ws/app/marks.jsonl');
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from pathlib import Path

from ..validate.review import journal

MARKS = ("hit", "miss", "skip")


class BrowseMarks:
    """The browse marks of one workspace, the latest per (id, label), under one lock."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.lock = threading.Lock()
        self._last = datetime.min
        self._seen: tuple[int, int] | None = None
        self._latest: dict[tuple[int, str], tuple[str, str]] = {}

    @property
    def path(self) -> Path:
        return journal.path(self.folder)

    def _reload(self) -> None:
        """Read the journal again when it changed (another app process on the same workspace)."""
        try:
            st = self.path.stat()
            key = (st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            key = (0, 0)
        if key == self._seen:
            return
        self._latest = {(i, label): (mark, at) for i, label, mark, at in journal.read(self.folder)}
        self._seen = key

    def add(self, item_id: int, label: str, mark: str) -> dict:
        """Record a mark; it is on disk (fsynced) when this returns. OSError: not saved."""
        if mark not in MARKS:
            raise ValueError(f"unknown mark {mark!r}: use one of {', '.join(MARKS)}")
        with self.lock:
            new_folder = not self.folder.exists()
            if new_folder:
                self.folder.mkdir(parents=True, exist_ok=True)
            # strictly increasing times: of two marks on one tile the later always wins
            at = max(datetime.now(), self._last + timedelta(microseconds=1))
            journal.append(self.folder, [(item_id, label, mark, at)])  # fsynced, and the new file's entry
            if new_folder:   # the folder's own entry must survive a crash too
                _fsync_dir(self.folder.parent)
            self._last = at
            self._reload()
            self._latest[(item_id, label)] = (mark, at.isoformat(sep=" ", timespec="microseconds"))
        return {"ok": True, "id": item_id, "label": label, "mark": mark}

    def of(self, item_id: int, label: str | None) -> str | None:
        with self.lock:
            self._reload()
            got = self._latest.get((item_id, label or ""))
        return got[0] if got else None

    def of_item(self, item_id: int) -> list[dict]:
        with self.lock:
            self._reload()
            return [{"label": label, "mark": m, "at": at} for (i, label), (m, at) in sorted(self._latest.items())
                    if i == item_id]

    def counts(self) -> dict[str, int]:
        with self.lock:
            self._reload()
            got = [m for m, _ in self._latest.values()]
        return {m: got.count(m) for m in MARKS}


def _fsync_dir(path: Path) -> None:
    import os

    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
