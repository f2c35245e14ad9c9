"""`curate build-index`: scan a source, embed images and captions once, build the indexes."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import click

from ..core import integrity
from ..core.progress import Progress
from ..core.workspace import DB_NAME, ModelIdentity, Workspace, check_same_model
from ..errors import CurateError, InputError
from ..ingest import recheck as recheck_files
from ..ingest.images import DEFAULT_MAX_PIXELS
from ..ingest.model import (
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    WeightsUnavailable,
    load_encoder,
    pick_device,
)
from ..ingest.scan import scan_into
from ..ingest.sources import detect_source, scanned_extensions
from .options import wait_option


@click.command("build-index")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("-w", "--workspace", "ws_path", type=click.Path(path_type=Path), default=Path("ws"), show_default=True,
              help="Workspace folder (DuckDB file, embeddings, indexes).")
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
              help="Index recipe from indexes/ (flat, ivf, ivfpq) or auto (by collection size).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ...")
@click.option("--batch-size", type=click.IntRange(1), default=None, help="Images per forward pass [64 CPU, 256 GPU].")
@click.option("--workers", type=click.IntRange(0), default=None, help="Decoding processes [one per core, max 16].")
@click.option("--shard-size", type=click.IntRange(1), default=10_000, show_default=True,
              help="Items per committed shard (the most a killed run loses).")
@click.option("--max-pixels", type=click.IntRange(1), default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Refuse images larger than this (decompression bombs).")
@click.option("--draft-decode", is_flag=True,
              help="Decode large JPEGs at reduced scale: faster for decode-bound GPU runs, but the vectors "
                   "differ slightly from open_clip's own preprocessing (see README).")
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
def build_index(source: Path, ws_path: Path, model: str | None, pretrained: str | None, fallback_model: str | None,
                captions_dir: Path | None, recipe: str, device: str, batch_size: int | None, workers: int | None,
                shard_size: int, max_pixels: int, draft_decode: bool, limit: int | None, strict: bool,
                infer_types: bool, recheck: str, retry_rejected: bool, repair: bool) -> None:
    """Ingest SOURCE and embed it once into FAISS indexes and a DuckDB workspace.

    SOURCE is a folder of images (captions as same-name .txt files beside them), an
    InstaCities1M-style tree (img*/ and captions*/ side by side), a manifest (.csv,
    .jsonl, .parquet with columns path, caption, optional id, any extras), or a
    clip-retrieval output folder (img_emb/, text_emb/, metadata/) to import without a model.
    Running it again adds only new items; a killed run resumes where it stopped.
    """
    # torch and faiss load here, not at import: `curate --help` and the other commands start without them
    from ..ingest import faiss_index
    from ..ingest.embed import EmbedOptions, embed_pending

    started = time.time()
    src = detect_source(source, captions_dir)
    ws = Workspace(ws_path)
    # Nothing is created until the model has loaded and the source gave items: a failed first
    # run leaves no stray workspace, and one that existed before is left as it was.
    new = not ws.exists()
    have = None
    if not new:
        con = ws.connect(read_only=True)
        try:
            have = Workspace.model_identity(con)
        finally:
            con.close()
    model = model or (have.model if have else DEFAULT_MODEL)
    pretrained = pretrained or (have.pretrained if have else DEFAULT_PRETRAINED)
    device = pick_device(device)

    if src.kind == "clip-retrieval":
        ident = _precomputed_identity(src.root, model, pretrained)
        enc = None
    else:
        enc = _load(model, pretrained, device, fallback_model)
        ident = enc.identity
    if have is not None:
        check_same_model(have, ident)
    if src.kind in ("folder", "tree") and not _has_images(src.root):
        raise InputError(f"{source}: no images in this folder ({', '.join(sorted(scanned_extensions()))}); nothing to do"
                         + ("" if new else f" (the workspace {ws_path} was not changed)"))

    made = _absent(ws)
    con = ws.connect()
    Workspace.bind_model(con, ident)
    run_id = Workspace.start_run(con, "build-index", src.describe(), ident, device)
    status = "failed"
    scan = None
    scanned = refused = False
    notes: list[str] = []
    try:
        damaged = integrity.check_shards(ws, con, full=repair)
        if damaged:
            n = integrity.repair(ws, con, damaged)
            notes += [f"damaged: {d.describe()}" for d in damaged]
            notes.append(f"repair: {len(damaged)} damaged shard(s) dropped, {n} items to embed again")
        if src.kind == "clip-retrieval":
            from ..ingest.precomputed import count_rows, import_clip_retrieval

            with Progress("import", count_rows(src.root), "row") as bar:
                seen, added, _bad = import_clip_retrieval(ws, con, src.root, run_id, ident.embed_dim, bar.update)
        else:
            with Progress("scan", None, "item") as bar:
                scan = scan_into(con, src, run_id, bar.update, infer_types=infer_types)
                seen, added = scan.seen, scan.added
            if seen == 0:
                raise InputError(f"{source}: the source lists no items; nothing to do")
            scanned = True
            rc = recheck_files.recheck(ws, con, src.describe(), recheck, retry_rejected)
            if rc.checked or rc.retried:
                notes.append(f"recheck: {rc.describe()}")
            todo = con.execute("SELECT count(*) FROM items WHERE status = 'pending'").fetchall()[0][0]
            todo = min(todo, limit) if limit else todo
            con.execute("UPDATE runs SET decode = ? WHERE run_id = ?", ["draft" if draft_decode else "exact", run_id])
            opts = EmbedOptions(shard_size=shard_size, max_pixels=max_pixels, limit=limit, draft_decode=draft_decode,
                                batch_size=batch_size or (256 if device.startswith("cuda") else 64),
                                workers=-1 if workers is None else workers, hash_files=recheck == "hash")
            with Progress("embed", todo, "image") as bar:
                embed_pending(ws, con, enc, run_id, opts, bar.update)
        built = []
        for kind in ("image", "caption"):
            # drawn once the index says how many vectors it adds (nothing for an index up to date)
            with Progress(f"index {kind}s", 0, "vector") as bar:
                built.append(faiss_index.build_index(ws, con, kind, recipe, bar.update,
                                                     plan=lambda rows, _mode, bar=bar: bar.reset(total=rows)))
        status = "finished"
    except CurateError:
        refused = new and not scanned and src.kind != "clip-retrieval"
        raise
    except ValueError as e:  # the index recipe's own checks
        raise InputError(str(e)) from None
    finally:
        if refused:  # a first run refused at the scan (empty or unreadable manifest): leave nothing behind
            con.close()
            _remove(made)
        else:
            Workspace.finish_run(con, run_id, started, status)

    counts = dict(con.execute("SELECT status, count(*) FROM items GROUP BY status").fetchall())
    by_stage = dict(con.execute("SELECT stage, count(*) FROM rejected WHERE run_id = ? GROUP BY stage ORDER BY stage",
                                [run_id]).fetchall())
    n_rej = sum(by_stage.values())
    con.close()
    not_taken = ""
    if scan and (scan.not_taken or scan.other_files):
        not_taken = f"; not taken: {scan.not_taken} (in rejected, stage scan)" + (
            f", {scan.other_files} other files" if scan.other_files else "")
    click.echo(f"source: {src.describe()}: {seen} seen, {added} new{not_taken}")
    for note in scan.notes if scan else []:
        click.echo(f"note: {note}")
    for line in notes:
        click.echo(line)
    click.echo(f"items: {sum(counts.values())} in workspace, {counts.get('embedded', 0)} embedded, "
               f"{counts.get('rejected', 0)} rejected, {counts.get('pending', 0)} pending")
    for r in built:
        if not r.ntotal:
            continue
        what = f"{r.path} ({r.factory}, {r.ntotal} vectors)"
        if r.mode == "added":
            click.echo(f"index: added {r.added} vectors to {what}")
        elif r.mode == "rebuilt":
            click.echo(f"index: {what}, rebuilt: {r.reason}")
        elif r.mode == "unchanged":
            click.echo(f"index: {what}, up to date")
        else:
            click.echo(f"index: {what}")
    if n_rej:
        stages = ", ".join(f"{k} {v}" for k, v in by_stage.items())
        click.echo(f"rejected this run: {n_rej} ({stages}; reasons: duckdb -readonly {ws.db_path} "
                   f"-c \"select path, reason from rejected\")")
    click.echo(f"model: {ident.describe()}; {time.time() - started:.1f} s")
    if ident.random_weights:
        click.echo("NOTE: random weights: these embeddings carry no meaning; use them to test the pipeline only.")
    if strict and n_rej:
        sys.exit(3)


def _load(model: str, pretrained: str, device: str, fallback: str | None):
    try:
        return load_encoder(model, pretrained, device)
    except WeightsUnavailable as e:
        if not fallback:
            raise
        click.echo(f"{e}. Going on with {fallback} on RANDOM weights: the output only shows the pipeline works.",
                   err=True)
        return load_encoder(fallback, "none", device)


def _has_images(root: Path) -> bool:
    """Whether any image file lies below root (stops at the first one)."""
    for _dirpath, _dirs, files in os.walk(root):
        if any(f.lower().endswith(tuple(scanned_extensions())) and not f.startswith(".") for f in files):
            return True
    return False


def _absent(ws: Workspace) -> list[Path]:
    """The workspace's paths that do not exist yet, outermost first: what a refused first run removes."""
    out = [ws.root] if not ws.root.exists() else []
    if not out:
        out = [p for p in (ws.root / "embeddings", ws.indexes_dir) if not p.exists()]
        out += [ws.root / (DB_NAME + suffix) for suffix in ("", ".wal") if not (ws.root / (DB_NAME + suffix)).exists()]
    return out


def _remove(paths: list[Path]) -> None:
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists():
            p.unlink()


def _precomputed_identity(root: Path, model: str, pretrained: str) -> ModelIdentity:
    import open_clip

    from ..ingest.model import register_configs
    from ..ingest.precomputed import embedding_dim

    register_configs()
    cfg = open_clip.get_model_config(model)
    if cfg is None:
        raise InputError(f"unknown model architecture '{model}' (needed to know what made the embeddings)")
    dim = embedding_dim(root)
    if int(cfg["embed_dim"]) != dim:
        raise InputError(f"{root}: vectors are {dim}-d but {model} makes {cfg['embed_dim']}-d ones; "
                                   "pass the --model the embeddings were made with")
    return ModelIdentity(model, pretrained, dim, pretrained in ("none", "random"))
