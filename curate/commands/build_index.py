"""`curate build-index`: scan a source, embed images and captions once, build the indexes."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .. import api
from ..core.workspace import Workspace
from ..ingest import recheck as recheck_files
from ..ingest.images import DEFAULT_MAX_PIXELS
from ..ingest.model import DEFAULT_MODEL, DEFAULT_PRETRAINED
from .options import remember_workspace, wait_option


@click.command("build-index")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("-w", "--workspace", "ws_path", type=click.Path(path_type=Path), default=Path("ws"), show_default=True,
              callback=remember_workspace, help="Workspace folder (DuckDB file, embeddings, indexes).")
@wait_option
@click.option("--model", default=None, help=f"open_clip architecture [default: the workspace's, else {DEFAULT_MODEL}].")
@click.option("--pretrained", default=None,
              help=f"open_clip tag, local checkpoint file, or 'none' for random weights "
                   f"[default: the workspace's, else {DEFAULT_PRETRAINED}].")
@click.option("--fallback-model", default=None, metavar="NAME",
              help="If the weights cannot be obtained, say so and go on with this model on random weights "
                   "(smoke runs, demos). Off by default: a missing checkpoint is an error.")
@click.option("--captions-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Captions in a tree parallel to SOURCE (<captions-dir>/<same relative path>.txt).")
@click.option("--index", "recipe", default="auto", show_default=True,
              help="Index recipe from indexes/ (flat, hnsw, ivf, ivfpq) or auto (by collection size and "
                   "--max-index-memory).")
@click.option("--target-recall", type=click.FloatRange(0, 1, min_open=True), default=0.95, show_default=True,
              help="recall@10 the search parameter (nprobe, efSearch) is tuned to, measured on the collection.")
@click.option("--max-index-memory", default=None, metavar="SIZE",
              help="Memory each index may take, e.g. 2GB: the recipe (and PQ size) is picked to fit.")
@click.option("--engine", type=click.Choice(api.ENGINES), default="local", show_default=True,
              help="Where images are embedded: local (this machine) or ray (a Ray cluster: decoding as tasks, "
                   "the model as one actor per GPU, this process commits; needs pip install 'curate[ray]').")
@click.option("--address", default=None, metavar="ADDRESS",
              help="With --engine ray: the cluster to join (auto, ray://host:10001, host:6379) "
                   "[default: start a local Ray for the run].")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ...")
@click.option("--precision", type=click.Choice(("auto", "fp32", "bf16", "fp16")), default="auto", show_default=True,
              help="Float precision of the model (images and captions): auto is fp16 on CUDA, bf16 on a CPU with "
                   "native bf16 (AVX-512 BF16, AMX), fp32 elsewhere, and fp32 for a workspace that is all fp32. "
                   "bf16 on a CPU casts the weights (about 2x fp32), on CUDA it is autocast. "
                   "fp32 agrees with open_clip (images bit for bit, text within 2e-7); bf16/fp16 to a cosine >= 0.9999 (README).")
@click.option("--batch-size", type=click.IntRange(1), default=None, help="Images per forward pass [32 CPU, 256 GPU].")
@click.option("--workers", type=click.IntRange(0), default=None, help="Decoding processes [one per core, max 16].")
@click.option("--shard-size", type=click.IntRange(1), default=10_000, show_default=True,
              help="Items per committed shard (the most a killed run loses).")
@click.option("--max-pixels", type=click.IntRange(1), default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Refuse images larger than this (decompression bombs).")
@click.option("--draft-decode", is_flag=True,
              help="Decode large JPEGs at reduced scale: faster for decode-bound GPU runs, but the vectors "
                   "differ slightly from open_clip's own preprocessing (see README).")
@click.option("--decode", type=click.Choice(("cpu", "gpu")), default="cpu", show_default=True,
              help="Where JPEGs are decoded: cpu (Pillow, in the loader workers) or gpu (torchvision on the CUDA "
                   "device, with the resize and crop there: for decode-bound GPU runs; other formats stay on "
                   "the CPU; see README).")
@click.option("--limit", type=click.IntRange(1), default=None, help="Embed at most this many pending items.")
@click.option("--strict", is_flag=True, help="Exit with status 3 if any item was rejected.")
@click.option("--infer-types", is_flag=True,
              help="Type a manifest's own columns (numbers, dates, booleans) instead of keeping them as written.")
@click.option("--recheck", type=click.Choice(recheck_files.MODES), default="stat", show_default=True,
              help="Which files to compare with what was embedded or rejected: stat (size and mtime of every "
                   "item), hash (also the content: reads every file), rejected (rejected items only), none.")
@click.option("--retry-rejected", is_flag=True, help="Try every rejected item again, changed or not.")
@click.option("--repair", is_flag=True,
              help="Check every embedding shard in full (checksums, ids) instead of the cheap per-run check.")
def build_index_cmd(source: Path, ws_path: Path, model: str | None, pretrained: str | None, fallback_model: str | None,
                captions_dir: Path | None, recipe: str, device: str, batch_size: int | None, workers: int | None,
                shard_size: int, max_pixels: int, draft_decode: bool, limit: int | None, strict: bool,
                infer_types: bool, recheck: str, retry_rejected: bool, repair: bool, target_recall: float,
                max_index_memory: str | None, precision: str, decode: str, engine: str, address: str | None) -> None:
    """Ingest SOURCE and embed it once into FAISS indexes and a DuckDB workspace.

    SOURCE is a folder of images (captions as same-name .txt files beside them), an
    InstaCities1M-style tree (img*/ and captions*/ side by side), a manifest (.csv,
    .jsonl, .parquet with columns path, caption, optional id, any extras), or a
    clip-retrieval output folder (img_emb/, text_emb/, metadata/) to import without a model.
    Running it again adds only new items; a killed run resumes where it stopped.
    """
    r = api.build_index(source, ws_path, model=model, pretrained=pretrained, fallback_model=fallback_model,
                        captions_dir=captions_dir, index=recipe, device=device, batch_size=batch_size,
                        workers=workers, shard_size=shard_size, max_pixels=max_pixels, draft_decode=draft_decode,
                        limit=limit, infer_types=infer_types, recheck=recheck, retry_rejected=retry_rejected,
                        repair=repair, precision=precision, log=lambda line: click.echo(line, err=True),
                        target_recall=target_recall, max_index_memory=max_index_memory, decode=decode,
                        engine=engine, address=address)
    counts, by_stage, n_rej, ident = r.items, r.rejected, r.n_rejected, r.model
    not_taken = ""
    if r.not_taken or r.other_files:
        not_taken = f"; not taken: {r.not_taken} (in rejected, stage scan)" + (
            f", {r.other_files} other files" if r.other_files else "")
    click.echo(f"source: {r.source}: {r.seen} seen, {r.added} new{not_taken}")
    for note in r.notes:
        click.echo(f"note: {note}")
    for line in r.repairs:
        click.echo(line)
    click.echo(f"items: {sum(counts.values())} in workspace, {counts.get('embedded', 0)} embedded, "
               f"{counts.get('rejected', 0)} rejected, {counts.get('pending', 0)} pending")
    for ix in r.indexes:
        if not ix.ntotal:
            continue
        what = f"{ix.path} ({ix.factory}, {ix.ntotal} vectors" + (f"; {ix.search.describe()})" if ix.search else ")")
        if ix.mode == "added":
            click.echo(f"index: added {ix.added} vectors to {what}")
        elif ix.mode == "rebuilt":
            click.echo(f"index: {what}, rebuilt: {ix.reason}")
        elif ix.mode == "unchanged":
            click.echo(f"index: {what}, up to date")
        else:
            click.echo(f"index: {what}")
        if ix.note:
            click.echo(f"note: {ix.note}")
    if n_rej:
        stages = ", ".join(f"{k} {v}" for k, v in by_stage.items())
        click.echo(f"rejected this run: {n_rej} ({stages}; reasons: duckdb -readonly {Workspace(ws_path).db_path} "
                   f"-c \"select path, reason from rejected\")")
    mixed = f" (the workspace holds {'+'.join(r.workspace_precisions)})" if len(r.workspace_precisions) > 1 else ""
    click.echo(f"model: {ident.describe()}; precision {r.precision}{mixed}; {r.seconds:.1f} s")
    if ident.random_weights:
        click.echo("NOTE: random weights: these embeddings carry no meaning; use them to test the pipeline only.")
    if strict and n_rej:
        sys.exit(3)


