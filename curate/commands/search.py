"""`curate search`: the items nearest to a text prompt or an example image, printed as a
table or written to a file."""

from __future__ import annotations

from pathlib import Path

import click

from .. import api
from ..core.outputs import SUFFIXES
from ..core.termwidth import clip, pad, width
from ..core.textout import safe
from ..core.workspace import Workspace
from ..select.search import MODES, Hit, SearchQuery, out_writer
from . import options
from .shared import note_random_weights

CAPTION_CELLS = 60    # a caption is cut to this many terminal cells (the file has it whole)


@click.command("search")
@options.workspace_option()
@click.argument("text", required=False)
@click.option("--image", "image", type=click.Path(path_type=Path), default=None, metavar="PATH",
              help="Search with this image as the query (encoded by the workspace's model) instead of a text.")
@click.option("--mode", type=click.Choice(tuple(MODES)), default="image", show_default=True,
              help="Which index: the images', or the captions' (labels then are the captions' predictions).")
@options.classification_option
@click.option("-k", type=click.IntRange(1), default=20, show_default=True, help="How many hits.")
@click.option("--out", "out", type=click.Path(path_type=Path), default=None,
              help=f"Write the hits to this file instead of printing them; format by extension "
                   f"({', '.join(SUFFIXES)}): rank, id, score, label, prob, path, caption, the source's columns.")
@click.option("--device", default="auto", show_default=True,
              help="Device for the encoder (the query): auto, cpu, cuda, cuda:1 ...")
@click.option("--search-param", type=click.IntRange(1), default=None, metavar="N",
              help="nprobe (IVF) or efSearch (HNSW) for this search, instead of the one tuned at build-index "
                   "to its recall target.")
def search_cmd(ws_path: Path, text: str | None, image: Path | None, mode: str, classification: str | None, k: int,
               out: Path | None, device: str, search_param: int | None) -> None:
    """The images nearest to a text prompt (or to an example image, --image), from the image
    index or the caption index (--mode caption), with each one's top label; printed as a
    table, or written to a file with --out."""
    query = SearchQuery(text, image, mode)   # refused before anything else is said
    if out is not None:
        out_writer(out)
    with Workspace(ws_path).reading():  # the command's one connection
        note_random_weights(ws_path)
        hits = api.search(ws_path, query, k, device=device, classification=classification,
                          search_param=search_param, out=out)
    if out is not None:
        click.echo(safe(f"{len(hits):,} hits -> {out}"))
        return
    for line in table(hits):
        click.echo(line)


def table(hits: list[Hit]) -> list[str]:
    """The hits as aligned lines (a header first): every column as wide as its widest printed
    cell, measured in terminal cells (wide characters take two), collection text made safe.
    The caption, last, is cut to CAPTION_CELLS cells."""
    labelled = any(h.label is not None for h in hits)
    head = ["rank", "score", "id"] + (["label", "prob"] if labelled else []) + ["path", "caption"]
    right = {"rank", "score", "id", "prob"}
    rows = []
    for h in hits:
        row = [str(h.rank), f"{h.score:.4f}", str(h.id)]
        if labelled:
            row += [safe(h.label or ""), "" if h.prob is None else f"{h.prob:.4f}"]
        row += [safe(h.path), clip(safe(h.caption or ""), CAPTION_CELLS)]
        rows.append(row)
    widths = [max([width(r[c]) for r in rows] + [width(head[c])]) for c in range(len(head))]

    def line(cells: list[str]) -> str:
        last = len(cells) - 1
        return "  ".join(cell if c == last else pad(cell, widths[c], right=head[c] in right)
                         for c, cell in enumerate(cells)).rstrip()

    return [line(head)] + [line(r) for r in rows]
