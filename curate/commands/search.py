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
@click.option("-k", type=click.IntRange(1), default=20, show_default=True, help="How many images.")
@click.option("--device", default="auto", show_default=True,
              help="Device for the text encoder (the prompt): auto, cpu, cuda, cuda:1 ...")
def search_cmd(ws_path: Path, text: str, k: int, device: str) -> None:
    """The images nearest to a text prompt, from the image index (printed; no --out)."""
    note_random_weights(ws_path)
    hits = api.search(ws_path, text, k, device=device)
    click.echo(f"{'rank':>4}  {'score':>7}  {'id':>8}  path  caption")
    for h in hits:
        cap = (h.caption or "").replace("\n", " ")
        click.echo(f"{h.rank:>4}  {h.score:7.4f}  {h.id:>8}  {safe(h.path)}  {safe(cap[:60])}")
