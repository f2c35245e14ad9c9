"""`curate classify`: score every image and caption against a label set."""

from __future__ import annotations

from pathlib import Path

import click

from .. import api
from ..classify.run import DEFAULT_BATCH_ROWS, DEFAULT_TOP_K
from ..core.progress import plural
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

    def on_batch(n: int, so_far: int) -> None:
        if log_batches:
            click.echo(f"committed {n} vectors ({so_far} in this run)")

    r = api.classify(ws_path, label_set=label_set, prompts=prompts, logit_scale=logit_scale, storage=storage,
                     top_k=top_k, device=device, restart=restart, batch_rows=batch_rows, on_batch=on_batch)
    store = "every label" if r.storage == "full" else f"top {r.top_k} labels per item + exact bound"
    click.echo(f"classified {plural(r.images, 'image')} and {plural(r.captions, 'caption')} against "
               f"{plural(r.n_labels, 'label')} "
               f"({r.label_set}, prompts {r.prompts}, logit scale {r.logit_scale:g}; stored {store}) "
               f"in {r.seconds:.1f} s")
    if r.resumed_vectors:
        click.echo(f"continued earlier scores: {r.resumed_vectors:,} vectors were scored already")
    click.echo("views: predictions, caption_predictions, ensemble, coverage (see `curate filter`)")
    note_pending(ws_path)
