"""An output folder written whole: the new files in a folder beside it, then swapped in.

`curate report` and `curate compare` write folders of CSVs, pictures and a page. A
second run must not leave files of the first (grids of classes no longer there), and
a run killed half way must leave the earlier folder whole. A folder holding files no
curate run wrote (its manifest lists ours) is never replaced, nor is a workspace or a folder
holding one, whatever its manifest says (core/outputs.py: where no output may go).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from ..errors import OutputError
from .outputs import check_output
from .workspace import DB_NAME

MANIFEST = ".curate-report"    # in an output folder: the files curate wrote there, one a line
# a report of a curate from before the manifest: only its own kinds of files
_OLD_REPORT_FILE = re.compile(r"[\w.-]+\.(csv|png|html|txt)|grids/[\w.-]+\.png")


def replace_folder(out: str | Path, fill: Callable[[Path], list[Path]], what: str = "report") -> list[Path]:
    """Fill a new folder with `fill(folder)` (returning the files it wrote) and put it at `out`.

    Returns the files at their final place. OutputError when `out` is a file, holds
    foreign files, or cannot be written (then the earlier folder is as it was).
    """
    out = check_output(out, what)
    if out.exists() and not out.is_dir():
        raise OutputError(f"cannot write the {what} to {out}: it is a file; choose another --out")
    foreign = foreign_files(out)
    if foreign:
        raise OutputError(f"{out} holds files that are not from curate ({', '.join(foreign[:3])}"
                          f"{', ...' if len(foreign) > 3 else ''}): choose another --out, or empty that folder")
    new, old = (out.with_name(f".{out.name}.curate-{state}") for state in ("partial", "old"))
    for leftover in (new, old):       # from a run killed at the wrong moment
        if leftover.exists():
            shutil.rmtree(leftover)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        new.mkdir()
        files = fill(new)
        (new / MANIFEST).write_text("".join(f"{f.relative_to(new).as_posix()}\n" for f in files),
                                    encoding="utf-8")
        if out.exists():
            os.replace(out, old)
        os.replace(new, out)
    except OSError as e:
        shutil.rmtree(new, ignore_errors=True)
        if old.exists() and not out.exists():
            os.replace(old, out)      # put the earlier folder back
        raise OutputError(f"could not write the {what} to {out}: {e.strerror or e}; the earlier {what} "
                          "(if any) is as it was") from e
    shutil.rmtree(old, ignore_errors=True)
    return [out / f.relative_to(new) for f in files]


def foreign_files(out: Path) -> list[str]:
    """Files in `out` that its manifest does not list (all of them when it has none); a
    workspace's database is never ours, even if a hand-edited manifest lists it."""
    if not out.is_dir():
        return []
    files = sorted(f.relative_to(out).as_posix() for f in out.rglob("*") if not f.is_dir())
    try:
        ours = {f for f in (out / MANIFEST).read_text(encoding="utf-8").splitlines()
                if Path(f).name != DB_NAME} | {MANIFEST}
    except FileNotFoundError:
        if "index.html" not in files:
            return files
        return [f for f in files if not _OLD_REPORT_FILE.fullmatch(f)]
    return [f for f in files if f not in ours]
