"""`curate report`: accuracy, thresholds, coverage and calibration from the review marks."""

from __future__ import annotations

from pathlib import Path

import click

from ..core.textout import echo, safe
from ..errors import PartialResult, WorkspaceBusy
from ..validate import calibration, report, report_render
from . import options
from .shared import connect_review, default_set, note_random_weights


@click.command("report")
@options.workspace_option("Workspace folder (not needed with --marks).", must_exist=False)
@options.review_set_option
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
            echo(safe(f"{marks_path}: {p}"), err=True)
    else:
        cal, not_saved = None, None
        options.must_exist(ws_path)
        con = connect_review(ws_path, read_only=True)  # a reader: it runs beside the review page
        try:
            note_random_weights(ws_path, con)
            rep = report.from_workspace(con, default_set(con, set_name).name, min_hit_rate)
            try:
                cal = calibration.fit(con, rep.main.name, target_precision, min_support)
                rep.calibration = cal
            except ValueError as e:  # too few marks, or a temperature the marks do not pin down
                echo(f"no calibration: {safe(e)}", err=True)
        finally:
            con.close()
        if cal is not None:  # saving it for `filter --calibrated` takes the write lock for a moment
            try:
                con = connect_review(ws_path)
            except WorkspaceBusy as e:
                not_saved = e
            else:
                try:
                    calibration.save(con, cal)
                finally:
                    con.close()
    if rep.main.summary.hits + rep.main.summary.misses == 0:
        click.echo("no hit/miss marks yet: the tables below are empty (run `curate review`)", err=True)
    files = report_render.write(rep, out, grid_size)
    echo(report_render.text_tables(rep))
    echo(safe(f"\nwrote {len(files)} files; open {out / 'index.html'}", keep_newlines=True))
    if not_saved is not None:
        raise PartialResult(f"the report is written, but its calibration is not saved for `curate filter "
                            f"--calibrated`: {not_saved}")


report_cmd.name = "report"
