"""`curate labels`, `curate classify`, `curate filter`, `curate search`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..errors import CurateError, InputError, PartialResult
from ..labels import load_label_set
from ..progress import Progress, plural
from ..prompts import prompts_for, resolve
from ..scores import (
    DEFAULT_BATCH_ROWS,
    DEFAULT_TOP_K,
    ENSEMBLE_TEXT_MIN,
    ENSEMBLE_TEXT_WEIGHT,
    classify,
)
from ..search import search_images
from ..subsets import FORMATS, MODES, FilterError, FilterSpec, write_subset
from ..textout import echo, safe
from ..workspace import Workspace
from . import options
from .options import wait_option

workspace_option = options.workspace_option()
set_option = click.option(
    "--set", "label_set", default="places205", show_default=True,
    help="Label set: places205, or a file (one label a line, or CSV with label and optional prompt columns).")
prompts_option = click.option(
    "--prompts", default="natural", show_default=True,
    help="Wording: raw, natural, ensemble, a templates file, or one template ('a photo of {a} {label}.').")


@click.command("labels")
@set_option
@prompts_option
def labels_cmd(label_set: str, prompts: str) -> None:
    """Show each label of a set and the prompt(s) it becomes."""
    ls = load_label_set(label_set)
    texts = prompts_for(ls, resolve(prompts))
    names = [safe(x) for x in ls.labels]
    width = max(len(x) for x in names)
    for i, (lab, ps) in enumerate(zip(names, texts, strict=True)):
        click.echo(f"{i:>4}  {lab:<{width}}  {safe(ps[0])}")
        for p in ps[1:]:
            click.echo(f"{'':>4}  {'':<{width}}  {safe(p)}")
    click.echo(f"{len(ls)} labels, prompts: {safe(prompts)}", err=True)


@click.command("classify")
@workspace_option
@wait_option
@set_option
@prompts_option
@click.option("--logit-scale", type=float, default=None,
              help="Softmax scale [default: the model's own, 100 for trained CLIP].")
@click.option("--temperature", type=float, default=None,
              help="Softmax temperature, the same as --logit-scale 1/T (CLIP's own: 0.01).")
@click.option("--storage", type=click.Choice(["auto", "full", "topk"]), default="auto", show_default=True,
              help="Store every (item, label) score, or each item's top-k labels plus an exact bound (docs/scores.md).")
@click.option("--top-k", type=click.IntRange(1), default=DEFAULT_TOP_K, show_default=True,
              help="Labels kept per item and modality with --storage topk.")
@click.option("--device", default="auto", show_default=True, help="Device for the text encoder (label prompts).")
@click.option("--restart", is_flag=True,
              help="Score everything again, even where the workspace holds scores made with these settings "
                   "(by default a run continues them: a killed run, or items embedded since).")
@click.option("--batch-rows", type=click.IntRange(1), default=DEFAULT_BATCH_ROWS, hidden=True,
              help="Items scored and committed together.")
@click.option("--log-batches", is_flag=True, hidden=True,
              help="Print a line to stdout after each committed batch.")
def classify_cmd(ws_path: Path, label_set: str, prompts: str, logit_scale: float | None, temperature: float | None,
                 storage: str, top_k: int, device: str, restart: bool, batch_rows: int, log_batches: bool) -> None:
    """Score every image and caption against every label; create the SQL views.

    A run with the same settings as the scores in the workspace continues them: after
    a killed run, it scores from the last committed batch on; after a finished one,
    only the items embedded since.
    """
    if temperature is not None:
        if logit_scale is not None:
            raise click.UsageError("give --logit-scale or --temperature, not both")
        if not temperature > 0:
            raise click.UsageError("--temperature must be positive")
        logit_scale = 1.0 / temperature
    from tqdm import tqdm

    bar = Progress("scoring", 0, "vector")  # drawn once classify says how many vectors it scores (plan)
    committed = 0

    def progress(n: int) -> None:
        nonlocal committed
        bar.update(n)
        committed += n
        if log_batches:
            click.echo(f"committed {n} vectors ({committed} in this run)")

    try:
        r = classify(ws_path, label_set, prompts, logit_scale=logit_scale, storage=storage, top_k=top_k,
                     device=device, progress=progress, restart=restart, batch_rows=batch_rows,
                     log=lambda line: tqdm.write(line, file=sys.stderr), plan=bar.reset)
    except CurateError:
        raise
    except ValueError as e:  # scores' own checks on the settings
        raise InputError(str(e)) from None
    finally:
        bar.close()
    store = "every label" if r.storage == "full" else f"top {r.top_k} labels per item + exact bound"
    click.echo(f"classified {plural(r.images, 'image')} and {plural(r.captions, 'caption')} against "
               f"{plural(r.n_labels, 'label')} "
               f"({r.label_set}, prompts {r.prompts}, logit scale {r.logit_scale:g}; stored {store}) "
               f"in {r.seconds:.1f} s")
    if r.resumed_vectors:
        click.echo(f"continued earlier scores: {r.resumed_vectors:,} vectors were scored already")
    click.echo("views: predictions, caption_predictions, ensemble, coverage (see `curate filter`)")
    _note_pending(ws_path)


def _note_pending(ws_path: Path) -> None:
    """Items scanned but not embedded yet cannot be scored: say how many (exit 0, a NOTE)."""
    con = Workspace(ws_path).connect(read_only=True)
    try:
        n = con.execute("SELECT count(*) FROM items WHERE status = 'pending'").fetchall()[0][0]
    finally:
        con.close()
    if n:
        click.echo(f"NOTE: {n:,} items are still pending (scanned, not embedded yet): they are not in these "
                   "results; run `curate build-index` again to embed them, then `curate classify`", err=True)


@click.command("filter")
@workspace_option
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
@click.option("--out", "out", type=click.Path(path_type=Path), default=None,
              help=f"Output file; format by extension ({', '.join(FORMATS)}).")
@click.option("--copy-to", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Copy the kept images here, one folder per label.")
@click.option("--link-to", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Symlink the kept images here instead of copying.")
@click.option("--clean", is_flag=True,
              help="First remove from the --copy-to/--link-to folder what earlier runs of curate placed there "
                   "(listed in its .curate-files); other files are never touched.")
def filter_cmd(ws_path: Path, labels: tuple[str, ...], min_prob: float, mode: str, unmatched: bool,
               text_weight: float, text_min: float, image_max: float, calibrated: bool, out: Path | None,
               copy_to: Path | None, link_to: Path | None, clean: bool) -> None:
    """Cut a labelled subset (or what cleaning drops) out of a classified workspace."""
    spec = FilterSpec(labels=labels, min_prob=min_prob, mode=mode, unmatched=unmatched, text_weight=text_weight,
                      text_min=text_min, image_max=image_max, calibrated=calibrated)
    if clean and not (copy_to or link_to):
        raise FilterError("--clean empties a --copy-to or --link-to folder: give one")
    r = write_subset(ws_path, spec, out, copy_to=copy_to, link_to=link_to, clean=clean)
    echo(safe(r.summary(spec)))
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
    if r.inexact:
        click.echo(f"note: {r.inexact:,} kept rows fall under the top-k bound (their label may not be the full "
                   "argmax); run `curate classify --storage full` for exact ensemble labels at this threshold",
                   err=True)
    if r.unscored > 0:
        click.echo(f"note: {r.unscored:,} embedded images are not classified yet: run `curate classify` again",
                   err=True)
    _note_pending(ws_path)
    if spec.calibrated and r.kept == 0:
        _explain_calibrated_nothing(ws_path, spec)


def _explain_calibrated_nothing(ws_path: Path, spec: FilterSpec) -> None:
    """`--calibrated` kept nothing: name the classes whose threshold the marks could not reach."""
    from ..calibration import for_workspace

    cal = for_workspace(ws_path)
    if cal is None:
        return
    wanted = set(spec.labels)
    classes = [c for c in cal.classes if not wanted or c.label in wanted]
    unreachable = [c for c in classes if c.threshold is None]
    if spec.unmatched or not unreachable:
        return
    reached = [f"{c.label} >= {c.threshold:.4f}" for c in classes if c.threshold is not None]
    raise PartialResult(
        safe(f"kept nothing: no threshold reaches precision {cal.target_precision:g} on the marks for "
             f"{len(unreachable)} of {len(classes)} classes ({', '.join(c.label for c in unreachable)})"
             + (f"; the others ({', '.join(reached)}) keep no image" if reached else "")
             + "; mark more images, or fit again with a lower --target-precision or --min-support "
               "(`curate report`)"))


@click.command("search")
@workspace_option
@click.argument("text")
@click.option("-k", type=click.IntRange(1), default=20, show_default=True, help="How many images.")
@click.option("--device", default="auto", show_default=True)
def search_cmd(ws_path: Path, text: str, k: int, device: str) -> None:
    """The images nearest to a text prompt, from the image index."""
    hits = search_images(ws_path, text, k, device=device)
    click.echo(f"{'rank':>4}  {'score':>7}  {'id':>8}  path  caption")
    for h in hits:
        cap = (h.caption or "").replace("\n", " ")
        click.echo(f"{h.rank:>4}  {h.score:7.4f}  {h.id:>8}  {safe(h.path)}  {safe(cap[:60])}")
