"""`curate compare`: named classifications side by side (the study's comparisons)."""

from __future__ import annotations

from pathlib import Path

import click

from .. import api
from ..core.textout import echo, safe
from ..core.workspace import Workspace
from . import options
from .shared import note_random_weights


@click.command("compare")
@click.argument("names", nargs=-1, required=True, metavar="NAME NAME [NAME ...]")
@options.workspace_option()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("compare"), show_default=True,
              help="Folder (not a file) to write into: coverage*.csv, agreement.csv, classes.csv, marks.csv, "
                   "coverage.png, index.html; replaced whole.")
@click.option("--min-prob", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="The working threshold: agreement among images both classify at it, and images per label.")
def compare_cmd(names: tuple[str, ...], ws_path: Path, out: Path, min_prob: float) -> None:
    """Compare two or more classifications of a workspace (`curate classify --list` names them):
    Table 1 side by side, agreement, images per label, hit rate on the marks."""
    with Workspace(ws_path).reading():  # the command's one connection
        note_random_weights(ws_path)
        r = api.compare(ws_path, names, out=out, min_prob=min_prob)
    for line in r.text.splitlines():
        echo(safe(line))
    echo(safe(f"wrote {len(r.files)} files; open {out / 'index.html'}"))
