"""`curate report`: accuracy, thresholds, coverage and calibration from the review marks."""

from __future__ import annotations

from pathlib import Path

import click

from .. import api
from ..core.textout import echo, safe
from ..errors import PartialResult
from ..validate import report
from . import options
from .shared import note_random_weights


@click.command("report")
@options.workspace_option("Workspace folder (not needed with --marks).", must_exist=False)
@options.review_set_option
@options.classification_option
@click.option("--marks", "marks_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Report on any CSV sheet with columns label, prob, mark instead of a workspace.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("report"), show_default=True,
              help="Folder (not a file) to write the report into: index.html, CSV tables, PNG figures; "
                   "replaced whole.")
@click.option("--min-hit-rate", type=click.FloatRange(0, 1), default=report.DEFAULT_MIN_HIT_RATE, show_default=True,
              help="The best threshold must keep at least this share of the sample's hits.")
@click.option("--target-precision", type=click.FloatRange(0, 1, min_open=True), default=0.9, show_default=True,
              help="Per-class calibrated thresholds reach this precision on the marks.")
@click.option("--min-support", type=click.IntRange(1), default=10, show_default=True,
              help="A per-class threshold must keep at least this many marked images.")
@click.option("--grid-size", type=click.IntRange(0), default=24, show_default=True,
              help="Images per grid (hits, misses) per class.")
@click.option("--plots/--no-plots", default=True, show_default=True,
              help="The PNG plots (hit and error rates, coverage, accuracy per class, calibration); "
                   "--no-plots writes the tables and the page without them (it says so), sooner (drawing is most of "
                   "a report's time).")
@click.option("--level", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.95, show_default=True,
              help="Confidence level of the interval beside every estimate.")
@click.option("--interval", type=click.Choice(report.intervals.METHODS), default="wilson", show_default=True,
              help="Interval of a proportion: Wilson's score, or exact (Clopper-Pearson: never below the level, wider).")
def report_cmd(ws_path: Path, set_name: str | None, classification: str | None, marks_path: Path | None, out: Path, min_hit_rate: float,
               target_precision: float, min_support: int, grid_size: int, plots: bool, level: float,
               interval: str) -> None:
    """Accuracy per class, the threshold table, coverage and calibration, each estimate with its
    interval: CSV, HTML, PNG."""
    if marks_path is None:
        options.must_exist(ws_path)
        note_random_weights(ws_path)
    settings = api.ReportOptions(min_hit_rate=min_hit_rate, target_precision=target_precision,
                                 min_support=min_support, grid_size=grid_size, plots=plots, level=level,
                                 interval=interval)
    r = api.report(ws_path, set_name=set_name, marks=marks_path, out=out, classification=classification,
                   options=settings)
    rep, files = r.report, r.files
    for p in r.problems:
        echo(safe(f"{marks_path}: {p}"), err=True)
    if r.no_calibration is not None:
        echo(f"no calibration: {safe(r.no_calibration)}", err=True)
    if rep.main.summary.hits + rep.main.summary.misses == 0:
        click.echo("no hit/miss marks yet: the tables below are empty (run `curate review`)", err=True)
    echo(r.text)
    echo(safe(f"\nwrote {len(files)} files; open {out / 'index.html'}", keep_newlines=True))
    if r.not_saved is not None:
        raise PartialResult(f"the report is written, but its calibration is not saved for `curate filter "
                            f"--calibrated`: {r.not_saved}")


report_cmd.name = "report"
