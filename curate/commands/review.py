"""`curate review`: mark a review set by hand, in the browser or through a CSV sheet."""

from __future__ import annotations

import webbrowser
from pathlib import Path

import click
import duckdb

from ..core.textout import echo, safe
from ..core.workspace import Workspace
from ..errors import InputError, WorkspaceBusy
from ..validate import sampling
from ..validate.review import marks, sheet
from . import options
from .options import wait_option
from .shared import default_set, note_random_weights, review_scope


@click.command("review")
@options.workspace_option("Workspace folder.")
@wait_option
@options.review_set_option
@options.classification_option
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
              help="Port on 127.0.0.1 (0: any free port; a busy port falls back to a free one).")
@click.option("--no-browser", is_flag=True, help="Print the address instead of opening a browser.")
@click.option("--out", "export_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the set (--set, else the most recently drawn) to this file (not a folder) as a CSV "
                   "sheet (id, path, caption, label, prob, mark, review_set) and exit.")
@options.old_spelling("--export", "export_path", "--out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--import", "import_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Read marks from a CSV sheet into the set it names (its review_set column; "
                                 "else --set or the default) and exit; bad rows are reported by line.")
def review_cmd(ws_path: Path, set_name: str | None, classification: str | None, port: int, no_browser: bool, export_path: Path | None,
           import_path: Path | None) -> None:
    """Mark a review set by hand in the browser (or through a CSV sheet)."""
    if export_path is not None or import_path is not None:
        with review_scope(ws_path, read_only=import_path is None) as con:
            note_random_weights(ws_path)
            if import_path is not None:
                target = _import_target(con, set_name, import_path, classification)
                res = sheet.import_sheet(con, target.name, import_path)
                for p in res.problems:
                    echo(safe(f"{import_path}: {p}"), err=True)
                echo(safe(f"imported {res.changed} new or changed marks into review set {target.name} "
                          f"({res.unchanged} unchanged, {res.empty} empty, {len(res.problems)} bad rows skipped)"))
                if export_path is None:
                    _echo_progress(con, target.name)
                    return
            rs = default_set(con, set_name, classification)
            n = sheet.export_sheet(con, rs.name, export_path)
            echo(safe(f"wrote {n} rows of review set {rs.name} to {export_path}"))
            _echo_progress(con, rs.name)
        return
    # starlette and uvicorn load here: `curate --help` stays fast
    from ..app.review import running_review
    from ..app.server import ReviewServer

    other = running_review(ws_path)
    if other is not None:  # one page per workspace: a second on another port would split the marking
        raise WorkspaceBusy(safe(f"a review page of {ws_path} is already open at {other.url} (process {other.pid}, "
                                 f"review set {other.set_name}): use that page, or stop it (Ctrl-C where it "
                                 "runs) first"))
    with review_scope(ws_path, read_only=True) as con:
        note_random_weights(ws_path)
        name = default_set(con, set_name, classification).name
    # `curate app` opened at its review view. The server holds no connection while it serves
    # (curate/app/review.py): other commands read and write the workspace meanwhile.
    server = ReviewServer(ws_path, name, port)
    if server.fallback:
        click.echo(server.fallback, err=True)
    prog = server.app.progress()
    echo(safe(f"reviewing {name}: {prog.done} done, {prog.left} left"))
    click.echo(f"open {server.url}   (keys: h hit, m miss, s skip, b back; Ctrl-C to stop)")
    click.echo("every mark is saved in the workspace as it is made; reopening continues where you stopped")
    if not no_browser:
        webbrowser.open(server.url)
    left = 0
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        left = server.stop()
    p = server.app.progress()
    echo(f"{safe(name)}: {p.done} of {p.total} marked ({p.hits} hits, {p.misses} misses, {p.skips} skipped), "
         f"{p.left} left")
    if left:
        click.echo(f"{left} marks wait in {Workspace(ws_path).root / 'marks.jsonl'} (another process holds the "
                   "database): every curate command reads them, and the next one that writes the workspace "
                   "saves them into it", err=True)


def _import_target(con: duckdb.DuckDBPyConnection, set_name: str | None, path: Path,
                   classification: str | None = None) -> sampling.ReviewSet:
    """A sheet goes back to the set it was exported from (its `review_set` column), whatever
    was drawn since; a sheet without one (older, or made by hand) goes to --set or the default."""
    named = sheet.sheet_set(path)
    if named is None:
        return default_set(con, set_name, classification)
    if set_name is not None and set_name != named:
        raise InputError(safe(f"{path} holds marks of review set {named!r}, not {set_name!r}: drop --set, "
                              "or give the sheet of that set"))
    return sampling.get_set(con, named)


def _echo_progress(con: duckdb.DuckDBPyConnection, set_name: str) -> None:
    p = marks.progress(con, set_name)
    echo(f"{safe(set_name)}: {p.done} of {p.total} marked ({p.hits} hits, {p.misses} misses, {p.skips} skipped), "
         f"{p.left} left")
