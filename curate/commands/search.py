"""`curate search`: the images nearest to a text prompt."""

from __future__ import annotations

from pathlib import Path

import click

from .. import api
from ..core.textout import safe
from . import options
from .shared import note_random_weights


@click.command("search")
@options.workspace_option()
@click.argument("text")
@options.classification_option
@click.option("-k", type=click.IntRange(1), default=20, show_default=True, help="How many images.")
@click.option("--device", default="auto", show_default=True,
              help="Device for the text encoder (the prompt): auto, cpu, cuda, cuda:1 ...")
@click.option("--search-param", type=click.IntRange(1), default=None, metavar="N",
              help="nprobe (IVF) or efSearch (HNSW) for this search, instead of the one tuned at build-index "
                   "to its recall target.")
def search_cmd(ws_path: Path, text: str, classification: str | None, k: int, device: str,
               search_param: int | None) -> None:
    """The images nearest to a text prompt, from the image index, with each one's top label
    (printed; no --out)."""
    note_random_weights(ws_path)
    hits = api.search(ws_path, text, k, device=device, classification=classification, search_param=search_param)
    labelled = any(h.label is not None for h in hits)
    width = max([len(safe(h.label)) for h in hits if h.label] + [5])
    head = f"  {'label':<{width}}  {'prob':>6}" if labelled else ""
    click.echo(f"{'rank':>4}  {'score':>7}  {'id':>8}{head}  path  caption")
    for h in hits:
        cap = (h.caption or "").replace("\n", " ")
        lab = f"  {safe(h.label or ''):<{width}}  {'' if h.prob is None else f'{h.prob:.4f}':>6}" if labelled else ""
        click.echo(f"{h.rank:>4}  {h.score:7.4f}  {h.id:>8}{lab}  {safe(h.path)}  {safe(cap[:60])}")
