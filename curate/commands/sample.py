"""`curate sample`: draw a review set, the study's stratified sample."""

from __future__ import annotations

from pathlib import Path

import click

from .. import api
from ..core.progress import plural
from ..core.textout import echo, safe
from ..core.workspace import Workspace
from ..select.filter import parse_where
from ..validate import sampling
from ..validate.review import marks
from . import options
from .options import wait_option
from .shared import note_random_weights, review_scope

# The most marks a class of a sequential review may take unless --per-class says otherwise:
# +/-5 points at a share of 50% needs about 385.
SEQUENTIAL_CAP = 400


@click.command("sample")
@options.workspace_option("Workspace folder.")
@wait_option
@click.option("--top-classes", type=click.IntRange(1), default=10, show_default=True,
              help="The N most frequent predicted labels (top-1, no threshold).")
@click.option("--per-class", type=click.IntRange(1), default=None,
              help="Random images drawn from each of those labels [default: 100; with --target-width, "
                   f"the most a class may take: {SEQUENTIAL_CAP}].")
@click.option("--target-width", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              metavar="W",
              help="A sequential review: the page moves on from a class once its 95% interval is at most W wide "
                   "(0.2 = +/-10 points) and says how many marks each class likely still needs.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same sample.")
@click.option("--mode", type=click.Choice(list(sampling.SOURCES)), default="image", show_default=True,
              help="Which predictions to validate: the image's, the caption's, or the ensemble (as in filter).")
@options.old_spelling("--source", "mode", "--mode", type=click.Choice(list(sampling.SOURCES)))
@click.option("--set", "set_name", default=None, metavar="NAME",
              help="Name of the review set to draw [default: MODE-topNxM-seedS].")
@options.old_spelling("--name", "set_name", "--set")
@click.option("--replace", is_flag=True, help="Redraw a set of that name with new parameters (marks are kept).")
@click.option("--where", "where", multiple=True, metavar="COLUMN=VALUE",
              help="Draw only among images whose item has this value in one of its columns (e.g. city=newyork); "
                   "repeat it: values of one column are alternatives, columns all apply.")
@options.classification_option
@click.option("--list", "list_only", is_flag=True, help="List the review sets and their progress, draw nothing.")
def sample_cmd(ws_path: Path, top_classes: int, per_class: int | None, target_width: float | None, seed: int, mode: str,
           set_name: str | None, replace: bool, where: tuple[str, ...], classification: str | None,
           list_only: bool) -> None:
    """Draw a review set: the study's stratified sample, reproducible from its seed."""
    if per_class is None:
        per_class = 100 if target_width is None else SEQUENTIAL_CAP
    if list_only:
        with review_scope(ws_path, read_only=True) as con:
            for rs in sampling.list_sets(con):
                p = marks.progress(con, rs.name)
                drawn_from = f" ({rs.classification})" if rs.classification else ""
                echo(safe(f"{rs.name}{drawn_from}: {rs.source}, top {rs.top_classes} x {rs.per_class}, "
                          f"seed {rs.seed}; {p.done} of {p.total} marked"))
        return
    pairs = parse_where(where)
    spec = api.SampleSpec(top_classes=top_classes, per_class=per_class, seed=seed, mode=mode, where=pairs,
                          classification=classification, target_width=target_width)
    with Workspace(ws_path).writing():  # the command's one connection: drawing a set writes it
        note_random_weights(ws_path)
        s = api.sample(ws_path, spec, set_name=set_name, replace=replace)
    drawn_from = f" of {s.set.classification}" if s.set.classification else ""
    echo(safe(f"review set {s.name}: {s.items} images from {mode} predictions{drawn_from}"))
    for label, rank, freq in s.classes:
        echo(f"  {rank:>3}. {safe(label):<30} {freq:>8} images in the collection")
    if s.marked:
        echo(f"{s.marked} of them already marked (marks are shared between sets)")
    if target_width is not None:
        from ..validate.intervals import SEQUENTIAL_MIN

        echo(f"sequential review: the page moves on from a class once its 95% interval is at most {target_width:g} "
             f"wide (+/-{50 * target_width:g} points), after at least {SEQUENTIAL_MIN} marks; up to {per_class} a class")
    else:
        _note_short_sample(s.set, s.classes, s.drawn)
    echo(safe(f"next: curate review -w {ws_path}"))


def _note_short_sample(rs: sampling.ReviewSet, found: list[tuple[str, int, int]], drawn: dict[str, int]) -> None:
    """A set smaller than asked is still the study's design on this collection: a NOTE, exit 0."""
    if len(found) < rs.top_classes:
        echo(f"NOTE: only {plural(len(found), 'predicted class', 'predicted classes')} in the collection, not the "
             f"{rs.top_classes} asked for", err=True)
    short = [(label, drawn.get(label, 0)) for label, _r, _f in found if drawn.get(label, 0) < rs.per_class]
    if short:
        listed = ", ".join(f"{safe(label)} {n}" for label, n in short[:8]) + (", ..." if len(short) > 8 else "")
        have = f"{plural(len(short), 'class', 'classes')} {'has' if len(short) == 1 else 'have'}"
        echo(f"NOTE: {plural(rs.items, 'image')} drawn, not {len(found)} x {rs.per_class} = "
             f"{len(found) * rs.per_class}: {have} fewer than {rs.per_class} images ({listed}); all of theirs "
             "were drawn", err=True)
