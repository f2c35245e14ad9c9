"""`curate dedup`: groups of near-duplicate images (or of one caption text) into the table duplicates."""

from __future__ import annotations

from pathlib import Path

import click

from .. import api
from ..core.textout import echo, safe
from ..select.dedup import BY, CLUSTER_MIN, DEFAULT_THRESHOLD, KINDS, TOLERANCE
from . import options
from .shared import note_random_weights


@click.command("dedup")
@options.workspace_option()
@click.option("--threshold", type=click.FloatRange(0, 1, min_open=True), default=None,
              help=f"Cosine of two images' embeddings at which they count as the same photo "
                   f"[default: {DEFAULT_THRESHOLD:g}, clip-retrieval's value for CLIP] (--kind image). "
                   f"Compared with a tolerance of {TOLERANCE:g} for float32 rounding: 1 groups "
                   f"byte-identical copies (their stored cosine is 0.99999994 or so).")
@click.option("--kind", type=click.Choice(KINDS), default="image", show_default=True,
              help="image: near-duplicate images through the image index; caption-text: the same caption "
                   "after normalising whitespace and case.")
@click.option("--fresh", is_flag=True, help="Query every vector again instead of only those embedded since the last "
                                            "run.")
@click.option("--by", type=click.Choice(BY), default="auto", show_default=True,
              help=f"clusters: compare the stored vectors within k-means clusters (exact products, a provable "
                   f"margin; the index is not asked); index: ask the image index for each vector; auto: clusters "
                   f"for a whole collection of {CLUSTER_MIN:,} vectors or more, else the index (a rerun with only "
                   f"new shards always asks the index).")
def dedup_cmd(ws_path: Path, threshold: float | None, kind: str, fresh: bool, by: str) -> None:
    """Find groups of near-duplicates (a chain a~b~c is one group), each with a representative
    (the largest file, then the first id); stored in the table `duplicates` for `filter --dedup`."""
    note_random_weights(ws_path)
    r = api.dedup(ws_path, threshold=threshold, kind=kind, fresh=fresh, by=by)
    echo(safe(r.summary()))
