"""`curate classify`: score every image and caption against a label set."""

from __future__ import annotations

from pathlib import Path

import click

from .. import api
from ..classify.run import DEFAULT_BATCH_ROWS, DEFAULT_TOP_K
from ..core.progress import plural
from ..core.workspace import Workspace
from . import options
from .options import wait_option
from .shared import note_pending


@click.command("classify")
@options.workspace_option()
@wait_option
@options.label_set_option
@options.old_label_set
@options.prompts_option
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
@click.option("--name", default=None, metavar="NAME",
              help="Name of this classification [default: LABEL_SET-PROMPTS, e.g. places205-natural]; "
                   "several live side by side in a workspace.")
@click.option("--list", "list_only", is_flag=True, help="List the workspace's classifications, classify nothing.")
@click.option("--use", "use_name", default=None, metavar="NAME",
              help="Make this classification the active one (what the plain views and other commands read).")
@click.option("--drop", "drop_name", default=None, metavar="NAME", help="Remove this classification and its scores.")
@click.option("--batch-rows", type=click.IntRange(1), default=DEFAULT_BATCH_ROWS, hidden=True,
              help="Items scored and committed together.")
@click.option("--log-batches", is_flag=True, hidden=True,
              help="Print a line to stdout after each committed batch.")
def classify_cmd(ws_path: Path, label_set: str, prompts: str, logit_scale: float | None, temperature: float | None,
                 storage: str, top_k: int, device: str, restart: bool, name: str | None, list_only: bool,
                 use_name: str | None, drop_name: str | None, batch_rows: int, log_batches: bool) -> None:
    """Score every image and caption against every label; create the SQL views.

    Each run is a named classification (--name; by default label set and wording), so
    raw labels and natural prompts live side by side (`curate compare` sets them against
    each other). The last one completed is the active one, unless --use chose another.
    A run with the same name and settings continues its scores: after a killed run, it
    scores from the last committed batch on; after a finished one, only the items
    embedded since.
    """
    if sum(map(bool, (list_only, use_name, drop_name))) > 1:
        raise click.UsageError("give one of --list, --use and --drop")
    if list_only:
        _print_list(api.classifications(ws_path))
        return
    if use_name:
        api.use_classification(ws_path, use_name)
        click.echo(f"active classification: {use_name} (the plain views and every command read it)")
        return
    if drop_name:
        now = api.drop_classification(ws_path, drop_name)
        click.echo(f"dropped classification {drop_name}; active: {now or 'none (run curate classify)'}")
        return
    if temperature is not None:
        if logit_scale is not None:
            raise click.UsageError("give --logit-scale or --temperature, not both")
        if not temperature > 0:
            raise click.UsageError("--temperature must be positive")
        logit_scale = 1.0 / temperature

    def on_batch(n: int, so_far: int) -> None:
        if log_batches:
            click.echo(f"committed {n} vectors ({so_far} in this run)")

    with Workspace(ws_path).writing():  # the command's one connection: the scores, then the note
        r = api.classify(ws_path, label_set=label_set, prompts=prompts, logit_scale=logit_scale, storage=storage,
                         top_k=top_k, device=device, restart=restart, batch_rows=batch_rows, on_batch=on_batch,
                         name=name)
        store = "every label" if r.storage == "full" else f"top {r.top_k} labels per item + exact bound"
        click.echo(f"classification {r.name}: classified {plural(r.images, 'image')} and {plural(r.captions, 'caption')} against "
                   f"{plural(r.n_labels, 'label')} "
                   f"({r.label_set}, prompts {r.prompts}, logit scale {r.logit_scale:g}; stored {store}; "
                   f"precision: vectors {'+'.join(r.vector_precisions) or 'imported'}, labels {r.precision}) "
                   f"in {r.seconds:.1f} s")
        if r.resumed_vectors and r.interrupted:   # only after a stopped run (a finished one logs its own line)
            click.echo(f"continued earlier scores: {r.resumed_vectors:,} vectors were scored already")
        click.echo("views: predictions, caption_predictions, ensemble, coverage (see `curate filter`)")
        note_pending(ws_path)


def _print_list(rows: list[api.Classification]) -> None:
    if not rows:
        click.echo("no classifications yet: run `curate classify`")
        return
    header = ("", "name", "label set", "prompts", "model", "scale", "storage", "images", "captions", "state", "when")
    table = [header]
    for c in rows:
        state = "complete" if c.complete and not c.in_progress else \
            "complete, a run in progress" if c.complete else "incomplete"
        when = c.completed_at or c.created_at
        table.append(("*" if c.active else "", c.name, c.label_set or "", c.prompts or "", c.model or "",
                      "" if c.logit_scale is None else f"{c.logit_scale:g}", c.storage or "", f"{c.images:,}",
                      f"{c.captions:,}", state, when.strftime("%Y-%m-%d %H:%M") if when else ""))
    widths = [max(len(str(r[i])) for r in table) for i in range(len(header))]
    for r in table:
        click.echo("  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    click.echo("(* the active classification: the plain views and every command read it; --use NAME changes it)")
