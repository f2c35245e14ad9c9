"""`curate classify`: score every image and caption against a label set."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..classify.run import DEFAULT_BATCH_ROWS, DEFAULT_TOP_K, classify
from ..core.progress import Progress, plural
from ..errors import CurateError, InputError
from . import options
from .options import wait_option
from .shared import note_pending


@click.command("classify")
@options.workspace_option()
@wait_option
@options.label_set_option
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
    note_pending(ws_path)
