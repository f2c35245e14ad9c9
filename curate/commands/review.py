"""`curate sample`, `curate review`, `curate report`: validation without ground truth."""

from __future__ import annotations

import webbrowser
from pathlib import Path

import click
import duckdb

from .. import calibration, report, sampling
from ..errors import PartialResult, WorkspaceBusy
from ..review import marks, sheet
from ..workspace import Workspace
from .options import wait_option

_WS = click.option("-w", "--workspace", "ws_path", type=click.Path(path_type=Path), default=Path("ws"),
                   show_default=True, help="Workspace folder.")
_SET = click.option("--set", "set_name", default=None, metavar="NAME",
                    help="Review set [default: the most recently drawn].")


def _connect(ws_path: Path, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Readers open read-only (any number at once, beside the review page); writers wait
    for the one write lock a bounded time, then say who holds it (WorkspaceBusy)."""
    ws = Workspace(ws_path)
    if not ws.exists():
        raise click.ClickException(f"no workspace at {ws_path}: run `curate build-index` first")
    con = ws.connect(read_only=read_only)
    if not read_only:
        sampling.ensure_schema(con)
    return con


@click.command("sample")
@_WS
@wait_option
@click.option("--top-classes", type=click.IntRange(1), default=10, show_default=True,
              help="The N most frequent predicted labels (top-1, no threshold).")
@click.option("--per-class", type=click.IntRange(1), default=100, show_default=True,
              help="Random images drawn from each of those labels.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same sample.")
@click.option("--source", type=click.Choice(list(sampling.SOURCES)), default="image", show_default=True,
              help="Which predictions to validate.")
@click.option("--name", default=None, help="Name of the review set [default: SOURCE-topNxM-seedS].")
@click.option("--replace", is_flag=True, help="Redraw a set of that name with new parameters (marks are kept).")
@click.option("--list", "list_only", is_flag=True, help="List the review sets and their progress, draw nothing.")
def sample(ws_path: Path, top_classes: int, per_class: int, seed: int, source: str, name: str | None,
           replace: bool, list_only: bool) -> None:
    """Draw a review set: the study's stratified sample, reproducible from its seed."""
    con = _connect(ws_path, read_only=list_only)
    try:
        if list_only:
            for rs in sampling.list_sets(con):
                p = marks.progress(con, rs.name)
                click.echo(f"{rs.name}: {rs.source}, top {rs.top_classes} x {rs.per_class}, seed {rs.seed}; "
                           f"{p.done} of {p.total} marked")
            return
        rs = sampling.draw(con, source=source, top_classes=top_classes, per_class=per_class, seed=seed,
                           name=name, replace=replace)
        prog = marks.progress(con, rs.name)
        click.echo(f"review set {rs.name}: {rs.items} images from {source} predictions")
        for label, rank, freq in sampling.classes(con, rs.name):
            click.echo(f"  {rank:>3}. {label:<30} {freq:>8} images in the collection")
        if prog.done:
            click.echo(f"{prog.done} of them already marked (marks are shared between sets)")
        click.echo(f"next: curate review -w {ws_path}")
    except sampling.SampleError as e:
        raise click.ClickException(str(e)) from e
    finally:
        con.close()


@click.command("review")
@_WS
@wait_option
@_SET
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
              help="Port on 127.0.0.1 (0: any free port; a busy port falls back to a free one).")
@click.option("--no-browser", is_flag=True, help="Print the address instead of opening a browser.")
@click.option("--export", "export_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the set as a CSV sheet (id, path, caption, label, prob, mark) and exit.")
@click.option("--import", "import_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Read marks from a CSV sheet and exit; bad rows are reported by line.")
def review(ws_path: Path, set_name: str | None, port: int, no_browser: bool, export_path: Path | None,
           import_path: Path | None) -> None:
    """Mark a review set by hand in the browser (or through a CSV sheet)."""
    if export_path is not None or import_path is not None:
        con = _connect(ws_path, read_only=import_path is None)
        try:
            rs = sampling.get_set(con, set_name)
            if import_path is not None:
                res = sheet.import_sheet(con, rs.name, import_path)
                for p in res.problems:
                    click.echo(f"{import_path}: {p}", err=True)
                click.echo(f"imported {res.changed} new or changed marks ({res.unchanged} unchanged, "
                           f"{res.empty} empty, {len(res.problems)} bad rows skipped)")
            if export_path is not None:
                n = sheet.export_sheet(con, rs.name, export_path)
                click.echo(f"wrote {n} rows to {export_path}")
            _echo_progress(con, rs.name)
        except sampling.SampleError as e:
            raise click.ClickException(str(e)) from e
        finally:
            con.close()
        return
    from ..review.server import ReviewServer

    if not Workspace(ws_path).exists():
        raise click.ClickException(f"no workspace at {ws_path}: run `curate build-index` first")
    # The server holds no connection while it serves (curate/review/server.py): other
    # commands read and write the workspace meanwhile.
    try:
        try:
            server = ReviewServer(ws_path, set_name, port)
        except OSError:
            server = ReviewServer(ws_path, set_name, 0)
    except sampling.SampleError as e:
        raise click.ClickException(str(e)) from e
    name = server.app.set.name
    prog = server.app.progress()
    click.echo(f"reviewing {name}: {prog.done} done, {prog.left} left")
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
    click.echo(f"{name}: {p.done} of {p.total} marked ({p.hits} hits, {p.misses} misses, {p.skips} skipped), "
               f"{p.left} left")
    if left:
        click.echo(f"{left} marks wait in {Workspace(ws_path).root / 'marks.jsonl'} (another process holds the "
                   "database): every curate command reads them, and the next one that writes the workspace "
                   "saves them into it", err=True)


def _echo_progress(con: duckdb.DuckDBPyConnection, set_name: str) -> None:
    p = marks.progress(con, set_name)
    click.echo(f"{set_name}: {p.done} of {p.total} marked ({p.hits} hits, {p.misses} misses, {p.skips} skipped), "
               f"{p.left} left")


@click.command("report")
@_WS
@_SET
@click.option("--marks", "marks_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Report on any CSV sheet with columns label, prob, mark instead of a workspace.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("report"), show_default=True)
@click.option("--min-hit-rate", type=click.FloatRange(0, 1), default=report.DEFAULT_MIN_HIT_RATE, show_default=True,
              help="The best threshold must keep at least this share of the sample's hits.")
@click.option("--target-precision", type=click.FloatRange(0, 1, min_open=True), default=0.9, show_default=True,
              help="Per-class calibrated thresholds reach this precision on the marks.")
@click.option("--min-support", type=click.IntRange(1), default=10, show_default=True,
              help="A per-class threshold must keep at least this many marked images.")
@click.option("--grid-size", type=click.IntRange(0), default=24, show_default=True,
              help="Images per grid (hits, misses) per class.")
def report_cmd(ws_path: Path, set_name: str | None, marks_path: Path | None, out: Path, min_hit_rate: float,
               target_precision: float, min_support: int, grid_size: int) -> None:
    """Accuracy per class, the threshold table, coverage and calibration: CSV, HTML, PNG."""
    not_saved = None
    if marks_path is not None:
        rep = report.from_sheet(marks_path, min_hit_rate)
        for p in rep.problems:
            click.echo(f"{marks_path}: {p}", err=True)
    else:
        cal, not_saved = None, None
        con = _connect(ws_path, read_only=True)  # a reader: it runs beside the review page
        try:
            rep = report.from_workspace(con, set_name, min_hit_rate)
            try:
                cal = calibration.fit(con, rep.main.name, target_precision, min_support)
                rep.calibration = cal
            except ValueError as e:
                click.echo(f"no calibration: {e}", err=True)
        except sampling.SampleError as e:
            raise click.ClickException(str(e)) from e
        finally:
            con.close()
        if cal is not None:  # saving it for `filter --calibrated` takes the write lock for a moment
            try:
                con = _connect(ws_path)
            except WorkspaceBusy as e:
                not_saved = e
            else:
                try:
                    calibration.save(con, cal)
                finally:
                    con.close()
    if rep.main.summary.hits + rep.main.summary.misses == 0:
        click.echo("no hit/miss marks yet: the tables below are empty (run `curate review`)", err=True)
    files = report.write(rep, out, grid_size)
    click.echo(report.text_tables(rep))
    click.echo(f"\nwrote {len(files)} files; open {out / 'index.html'}")
    if not_saved is not None:
        raise PartialResult(f"the report is written, but its calibration is not saved for `curate filter "
                            f"--calibrated`: {not_saved}")


report_cmd.name = "report"
