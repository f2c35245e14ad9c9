"""`curate filter`: cut a labelled subset out of a classified workspace."""

from __future__ import annotations

from pathlib import Path

import click

from .. import api
from ..classify.scoring import ENSEMBLE_TEXT_MIN, ENSEMBLE_TEXT_WEIGHT
from ..core.textout import echo, safe
from ..core.workspace import Workspace
from ..errors import PartialResult
from ..select.exports import SHARD_SIZE, shard_pattern
from ..select.filter import FORMAT_NAMES, FORMATS, MODES, FilterOutput, FilterSpec, parse_where
from . import options
from .shared import note_pending, note_random_weights


@click.command("filter")
@options.workspace_option()
@options.classification_option
@click.option("--label", "labels", multiple=True, help="Keep images whose top label is this (repeatable).")
@click.option("--min-prob", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Keep a top label only at this probability or above.")
@click.option("--mode", type=click.Choice(MODES), default="image", show_default=True,
              help="Whose probabilities: the image's, the caption's, or the ensemble of both.")
@click.option("--unmatched", is_flag=True, help="Keep instead the images no label claims at --min-prob.")
@click.option("--text-weight", type=click.FloatRange(0, 1), default=ENSEMBLE_TEXT_WEIGHT, show_default=True,
              help="Ensemble: weight of the caption's probabilities.")
@click.option("--text-min", type=click.FloatRange(0, 1), default=ENSEMBLE_TEXT_MIN, show_default=True,
              help="Ensemble: the caption counts only when its own top probability reaches this.")
@click.option("--image-max", type=click.FloatRange(0, 1), default=1.0, show_default=True,
              help="Ensemble (conditional variant): the caption counts only when the image's top probability "
                   "is at most this.")
@click.option("--calibrated", is_flag=True,
              help="Use the calibrated probabilities and each label's own threshold for the target precision, "
                   "as fitted on the review marks by `curate report` (replaces --min-prob).")
@click.option("--where", "where", multiple=True, metavar="COLUMN=VALUE",
              help="Keep only images whose item has this value in one of its columns (e.g. city=newyork, "
                   "compared as text); repeat it: values of one column are alternatives, columns all apply.")
@click.option("--dedup", is_flag=True,
              help="Keep one image per near-duplicate group found by `curate dedup` (its representative when "
                   "selected, else the group's best-scoring one); with --unmatched: the ones it leaves out.")
@click.option("--out", "out", type=click.Path(path_type=Path), default=None,
              help=f"Output file; format by extension ({', '.join(FORMATS)}); with --format webdataset a folder.")
@click.option("--format", "fmt", type=click.Choice(list(FORMAT_NAMES)), default=None,
              help="Output format instead of the extension's; webdataset: tar shards ({id}.jpg, .txt, .json) "
                   "in the --out folder.")
@click.option("--shard-size", type=click.IntRange(1), default=SHARD_SIZE, show_default=True,
              help="webdataset: samples per tar shard.")
@click.option("--with-embeddings", is_flag=True,
              help="Also write the kept rows' image and caption embeddings beside --out, aligned to its rows "
                   "(<out>.image.npy, <out>.caption.npy; in a webdataset folder image.npy, caption.npy, ids.npy).")
@click.option("--copy-to", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Copy the kept images here, one folder per label.")
@click.option("--link-to", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Symlink the kept images here instead of copying.")
@click.option("--clean", is_flag=True,
              help="First remove from the --copy-to/--link-to folder what earlier runs of curate placed there "
                   "(listed in its .curate-files); other files are never touched.")
def filter_cmd(ws_path: Path, classification: str | None, labels: tuple[str, ...], min_prob: float, mode: str, unmatched: bool,
               text_weight: float, text_min: float, image_max: float, calibrated: bool, where: tuple[str, ...],
               dedup: bool, out: Path | None, fmt: str | None, shard_size: int, with_embeddings: bool,
               copy_to: Path | None, link_to: Path | None, clean: bool) -> None:
    """Cut a labelled subset (or what cleaning drops) out of a classified workspace."""
    pairs = parse_where(where)  # a bad --where is refused before anything is said
    output = FilterOutput(out=out, format=fmt, shard_size=shard_size, with_embeddings=with_embeddings,
                          copy_to=copy_to, link_to=link_to, clean=clean)
    with Workspace(ws_path).reading():  # the command's one connection: each step below reads through it
        note_random_weights(ws_path)
        spec = FilterSpec(labels=labels, min_prob=min_prob, mode=mode, unmatched=unmatched, text_weight=text_weight,
                          text_min=text_min, image_max=image_max, calibrated=calibrated, where=pairs,
                          classification=classification, dedup=dedup)
        f = api.filter(ws_path, spec, output)
        r = f.result
        for given, label in f.labels_taken:
            echo(safe(f"note: --label '{given}' taken as the label {label}"), err=True)
        echo(safe(f.summary()))
        for line in (f.precision.lines() if f.precision is not None else []):
            echo(safe(line))
        x = r.exported
        if x is not None and x.shards:
            echo(safe(f"wrote {x.samples:,} samples in {len(x.shards):,} shards ({x.bytes / 1e6:,.1f} MB): "
                      f"{shard_pattern(x.shards)}" + (f" ({x.missing:,} missing at their path)" if x.missing else "")))
        elif x is not None and fmt == "webdataset":
            echo(safe(f"wrote no shards to {out}" + (f" ({x.missing:,} missing at their path)" if x.missing else "")))
        if x is not None and x.embeddings:
            echo(safe(f"embeddings: {', '.join(str(p) for p in x.embeddings)}"))
        if copy_to or link_to:
            folder = copy_to or link_to
            if r.removed:
                echo(safe(f"removed {r.removed:,} files of an earlier run from {folder}"))
            echo(safe(f"{'linked' if link_to else 'copied'} {r.files_done:,} files to {folder}"
                      + (f" ({r.files_missing:,} missing at their path)" if r.files_missing else "")))
            if r.earlier:
                echo(safe(f"note: {folder} also holds {r.earlier:,} files an earlier run placed there and this one "
                          "did not: add --clean to remove them"), err=True)
            if r.others:
                echo(safe(f"note: {folder} also holds {r.others:,} files curate did not place there (left as they are)"),
                     err=True)
            if r.refused:
                echo(safe(f"note: left {r.refused:,} names of {folder}/.curate-files alone: they lead out of the "
                          "folder or through a link, so curate did not place them there"), err=True)
        if r.inexact:
            click.echo(f"note: {r.inexact:,} kept rows fall under the top-k bound (their label may not be the full "
                       "argmax); run `curate classify --storage full` for exact ensemble labels at this threshold",
                       err=True)
        if r.unscored > 0:
            echo(safe(f"note: {r.unscored:,} embedded images are not classified yet: run `curate classify -w {ws_path}` "
                      "again"), err=True)
        note_pending(ws_path)
    if f.unreachable:
        raise PartialResult(f.unreachable)
