"""build-index's steps, in order, as classify/run.py owns classify's.

    opts = BuildOptions(model="ViT-B-32", index="auto")
    result = run(Path("photos"), Path("ws"), opts)

1. the options that go together are checked (each option's own value was checked where it
   entered: curate/api.py's boundary);
2. the source is read, the engine opened (curate/ingest/engines.py: local or ray, by name;
   a Ray session is closed on leaving), the device and precision resolved, the model loaded
   (or, for a clip-retrieval import, only named);
3. in one run row (`runs`): damaged shards repaired, the source scanned (or imported),
   changed files rechecked, pending items embedded by the engine, whose batch times are
   recorded with the run;
4. the image and caption indexes brought up to date.

Nothing is created until the model has loaded and the source gave items: a failed first run
leaves no stray workspace, and one that existed before is left as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..core import integrity
from ..core.progress import Progress
from ..core.workspace import DB_NAME, ModelIdentity, Workspace, check_same_model
from ..errors import CurateError, InputError
from . import recheck as recheck_files
from .engines import Engine, open_engine
from .images import DEFAULT_MAX_PIXELS
from .index_memory import parse_size
from .model import DEFAULT_MODEL, DEFAULT_PRETRAINED, WeightsUnavailable, load_encoder
from .scan import scan_into
from .sources import Source, detect_source, scanned_extensions


@dataclass(frozen=True)
class BuildOptions:
    """`curate build-index`'s options (the same names and defaults); the fields are api.build_index's
    keyword arguments. `index` is the --index recipe, chosen within `max_index_memory` (bytes or '2GB')
    and searched at the parameter tuned to `target_recall`. `precision`: auto (fp16 on CUDA, bf16 on a
    CPU with native bf16, else fp32; a workspace that is all fp32 stays fp32), fp32, bf16 or fp16.
    `decode`: cpu (Pillow in the loader workers) or gpu (on the CUDA device, device_decode.py).
    `engine`: local or ray (the cluster at `address`, or a local Ray started for the run); `device`
    then means the actors' device."""

    model: str | None = None
    pretrained: str | None = None
    fallback_model: str | None = None
    captions_dir: str | Path | None = None
    index: str = "auto"
    device: str = "auto"
    batch_size: int | None = None
    workers: int | None = None
    shard_size: int = 10_000
    max_pixels: int = DEFAULT_MAX_PIXELS
    draft_decode: bool = False
    limit: int | None = None
    infer_types: bool = False
    recheck: str = "stat"
    retry_rejected: bool = False
    repair: bool = False
    precision: str = "auto"
    target_recall: float = 0.95
    max_index_memory: str | int | None = None
    decode: str = "cpu"
    engine: str = "local"
    address: str | None = None


@dataclass(frozen=True)
class BuildResult:
    """What one `build_index` run did; `items` counts the whole workspace by status."""
    workspace: Path
    source: str                                  # the source, described
    seen: int
    added: int
    items: dict[str, int]                        # status -> count, the whole workspace
    rejected: dict[str, int]                     # stage -> items this run rejected
    indexes: list                                # faiss_index.IndexResult, images then captions
    model: ModelIdentity
    seconds: float
    precision: str = "fp32"                      # what this run embedded in (fp32, bf16, fp16)
    workspace_precisions: list[str] = field(default_factory=list)  # every precision the workspace holds
    not_taken: int = 0                           # manifest rows refused at the scan
    other_files: int = 0                         # files in a folder that are not images
    notes: list[str] = field(default_factory=list)       # the scan's notes
    repairs: list[str] = field(default_factory=list)     # damaged shards, rechecked files

    @property
    def n_rejected(self) -> int:
        return sum(self.rejected.values())


def _combinations(opts: BuildOptions) -> None:
    """The options that only go together (each one's value is checked at the boundary)."""
    if opts.address is not None and opts.engine != "ray":
        raise InputError("--address is the Ray cluster's address: it goes with --engine ray")
    if opts.engine == "ray" and opts.decode == "gpu":  # before a cluster is started for nothing
        raise InputError("--decode gpu decodes in the local engine's main process; the Ray engine decodes in "
                         "its CPU tasks: use --decode cpu with --engine ray")


def run(source: Path, ws_path: Path, opts: BuildOptions, log: Callable[[str], None],
        quiet: bool | None = None) -> BuildResult:
    """Ingest `source` into the workspace at `ws_path` and embed it once (the module's steps).
    `log` hears the one warning that is not an error (the fallback model's random weights);
    `quiet` turns the progress bars off (None: as `curate --quiet` says)."""
    started = time.time()
    _combinations(opts)
    try:  # a budget that cannot be read fails before anything is embedded
        max_memory = parse_size(opts.max_index_memory)
    except ValueError as e:
        raise InputError(str(e)) from None
    src = detect_source(source, Path(opts.captions_dir) if opts.captions_dir is not None else None)
    # an import embeds nothing: no cluster is started for it
    with open_engine(opts.engine if src.kind != "clip-retrieval" else "local", opts.address) as engine:
        return _Build(source, ws_path, src, engine, opts, log, quiet, max_memory).run(started)


@dataclass
class _Build:
    """One run of the steps: what they share."""

    source: Path
    ws_path: Path
    src: Source
    engine: Engine
    opts: BuildOptions
    log: Callable[[str], None]
    quiet: bool | None
    max_memory: int | None

    def run(self, started: float) -> BuildResult:
        # torch and faiss load here, not at import: `curate --help` and the other commands start without them
        from . import faiss_index
        from . import precision as precision_rules
        from .embed import EmbedOptions

        opts, src, ws_path, log = self.opts, self.src, self.ws_path, self.log
        ws = Workspace(ws_path)
        new = not ws.exists()
        have = None
        have_precisions: list[str] = []
        fallback_for = None
        if not new:  # read first: the model loads without the write lock held
            with ws.reading() as con:
                have = Workspace.model_identity(con)
                have_precisions = precision_rules.workspace_precisions(con)
                fallback_for = Workspace.get_meta(con, FALLBACK_FOR)
        asked = (opts.model, opts.pretrained)
        model = opts.model or (have.model if have else DEFAULT_MODEL)
        pretrained = opts.pretrained or (have.pretrained if have else DEFAULT_PRETRAINED)
        say = (lambda _line: None) if self.quiet else log
        # with Ray the model runs in the cluster's actors: their device decides the precision, and the
        # driver's copy (on its CPU) only names the model and gives the decode tasks its preprocessing
        device = self.engine.device(opts.device)
        _check_decode(opts.decode, device, opts.draft_decode)
        used = precision_rules.resolve(opts.precision, device, have_precisions)

        if src.kind == "clip-retrieval":
            ident = _precomputed_identity(src.root, model, pretrained)
            enc = None
        else:
            if have is not None and have.random_weights:
                _note_fallback_workspace(ws_path, fallback_for, self.source, asked, opts.fallback_model, log)
            if have is not None and not opts.fallback_model:
                _refuse_other_model(have, model, pretrained)
            enc = _load(model, pretrained, *self.engine.driver(device, used), opts.fallback_model, log, say)
            ident = enc.identity
            if opts.decode == "gpu":
                from .device_decode import check_ready

                check_ready(enc.preprocess, enc.image_size, device)
        if have is not None:
            check_same_model(have, ident)
        if src.kind in ("folder", "tree") and not _has_images(src.root):
            raise InputError(f"{self.source}: no images in this folder ({', '.join(sorted(scanned_extensions()))}); "
                             "nothing to do" + ("" if new else f" (the workspace {ws_path} was not changed)"))

        made = _absent(ws)
        refused = False  # a first run refused at the scan (empty or unreadable manifest): leave nothing behind
        try:
            with ws.writing(create=True) as con:
                Workspace.bind_model(con, ident)
                if new and enc is not None and ident.model != model:  # the fallback stood in: later runs say so
                    Workspace.set_meta(con, FALLBACK_FOR, json.dumps({"model": model, "pretrained": pretrained}))
                run_id = Workspace.start_run(con, "build-index", src.describe(), ident, device)
                status = "failed"
                scan = None
                scanned = False
                repairs: list[str] = []
                on = None if self.quiet is None else not self.quiet
                try:
                    damaged = integrity.check_shards(ws, con, full=opts.repair)
                    if damaged:
                        n = integrity.repair(ws, con, damaged)
                        repairs += [f"damaged: {d.describe()}" for d in damaged]
                        repairs.append(f"repair: {len(damaged)} damaged shard(s) dropped, {n} items to embed again")
                    if src.kind == "clip-retrieval":
                        from .precomputed import count_rows, import_clip_retrieval

                        with Progress("import", count_rows(src.root), "row", enabled=on) as bar:
                            seen, added, _bad = import_clip_retrieval(ws, con, src.root, run_id, ident.embed_dim, bar.update,
                                                                      shard_size=opts.shard_size)
                    else:
                        with Progress("scan", None, "item", enabled=on) as bar:
                            scan = scan_into(con, src, run_id, bar.update, infer_types=opts.infer_types)
                            seen, added = scan.seen, scan.added
                        if seen == 0:
                            raise InputError(f"{self.source}: the source lists no items; nothing to do")
                        scanned = True
                        rc = recheck_files.recheck(ws, con, src.describe(), opts.recheck, opts.retry_rejected)
                        if rc.checked or rc.retried:
                            repairs.append(f"recheck: {rc.describe()}")
                        todo = con.execute("SELECT count(*) FROM items WHERE status = 'pending'").fetchall()[0][0]
                        todo = min(todo, opts.limit) if opts.limit else todo
                        con.execute("UPDATE runs SET decode = ?, precision = ? WHERE run_id = ?",
                                    ["gpu" if opts.decode == "gpu" else "draft" if opts.draft_decode else "exact", used,
                                     run_id])
                        if todo:
                            have_precisions = precision_rules.record(con, used)
                        embed = EmbedOptions(shard_size=opts.shard_size, max_pixels=opts.max_pixels, limit=opts.limit,
                                             draft_decode=opts.draft_decode,
                                             batch_size=opts.batch_size or (256 if device.startswith("cuda")
                                                                            else EmbedOptions.batch_size),
                                             workers=-1 if opts.workers is None else opts.workers,
                                             hash_files=opts.recheck == "hash", decode=opts.decode, device=device,
                                             precision=used)
                        with Progress("embed", todo, "image", enabled=on) as bar:
                            stats = self.engine.embed(ws, con, enc, run_id, embed, bar.update)
                        con.execute("UPDATE runs SET batches = ?, decode_s = ?, forward_s = ?, commit_s = ? WHERE run_id = ?",
                                    [stats.batches, stats.decode_s, stats.forward_s, stats.commit_s, run_id])
                    built = []
                    for kind in ("image", "caption"):
                        # drawn once the index says how many vectors it adds (nothing for an index up to date)
                        with Progress(f"index {kind}s", 0, "vector", enabled=on) as bar:
                            built.append(faiss_index.build_index(ws, con, kind, opts.index, bar.update,
                                                                 plan=lambda rows, _mode, bar=bar: bar.reset(total=rows),
                                                                 target_recall=opts.target_recall, max_memory=self.max_memory))
                    status = "finished"
                except CurateError:
                    refused = new and not scanned and src.kind != "clip-retrieval"
                    raise
                except ValueError as e:  # the index recipe's own checks
                    raise InputError(str(e)) from None
                finally:
                    if not refused:
                        Workspace.finish_run(con, run_id, started, status)
                counts = dict(con.execute("SELECT status, count(*) FROM items GROUP BY status").fetchall())
                by_stage = dict(con.execute("SELECT stage, count(*) FROM rejected WHERE run_id = ? GROUP BY stage "
                                            "ORDER BY stage", [run_id]).fetchall())
        finally:
            if refused:
                _remove(made)  # after the connection closed

        return BuildResult(ws_path, src.describe(), seen, added, counts, by_stage, built, ident, time.time() - started,
                           precision=used, workspace_precisions=have_precisions,
                           not_taken=scan.not_taken if scan else 0, other_files=scan.other_files if scan else 0,
                           notes=list(scan.notes) if scan else [], repairs=repairs)


def _check_decode(decode: str, device: str, draft_decode: bool) -> None:
    """--decode gpu decodes on the model's device: it needs a CUDA one, and has no draft mode."""
    if decode != "gpu":
        return
    if not device.startswith("cuda"):
        import torch

        why = "torch here sees no CUDA device" if not torch.cuda.is_available() else f"--device is {device}"
        raise InputError(f"--decode gpu decodes JPEGs on the model's CUDA device, but {why}; use --decode cpu")
    if draft_decode:
        raise InputError("--draft-decode is the CPU decoder's reduced-scale mode; it does not combine with "
                         "--decode gpu (which decodes at full size on the device)")


def _load(model: str, pretrained: str, device: str, precision: str, fallback: str | None,
          log: Callable[[str], None], say: Callable[[str], None] | None = None):
    try:
        return load_encoder(model, pretrained, device, precision, say=say)
    except WeightsUnavailable as e:
        if not fallback:
            raise
        log(f"{e.reason}; going on with {fallback} on RANDOM weights (--fallback-model): the output only shows the "
            f"pipeline works, and this workspace keeps {fallback} on later runs (for real labels: get the weights, "
            f"run without --fallback-model to see how, and build a new workspace)")
        return load_encoder(fallback, "none", device, precision)


# meta key: the model and weights a workspace was asked for when the fallback model stood in
FALLBACK_FOR = "fallback_for"


def _note_fallback_workspace(ws_path: Path, raw: str | None, source: Path, asked: tuple[str | None, str | None],
                             fallback: str | None, log: Callable[[str], None]) -> None:
    """A workspace keeps its model, the fallback's random weights too: a rerun of the command that
    made it (a second `make demo`) says so, and says what to run when the real weights are here now
    (`raw`: its meta FALLBACK_FOR, the model it was asked for)."""
    if raw is None or asked != (None, None):  # asked for a model by name: check_same_model answers that
        return
    wanted = json.loads(raw)
    from .model import weights_cached

    here = weights_cached(wanted["model"], wanted["pretrained"])
    fb = f" --fallback-model {fallback}" if fallback else ""
    log(f"NOTE: {ws_path} was built with the fallback model on RANDOM weights because {wanted['model']} "
        f"pretrained='{wanted['pretrained']}' could not be obtained, and a workspace keeps its model"
        + (f"; those weights are here now: for real labels, build a new workspace: "
           f"`curate build-index {source} -w NEW_WS{fb}` (or remove {ws_path} and run the same command again)"
           if here else f"; to label for real, get those weights (`curate build-index {source} -w NEW_WS` "
                        "says how) and build a new workspace"))


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


def _refuse_other_model(have: ModelIdentity, model: str, pretrained: str) -> None:
    """A workspace of another architecture refused before that model loads: its weights may be a
    download of gigabytes, and a random-weights build of a large one takes seconds, for a run
    refused once it is made. Known here where the name is an open_clip architecture (its size is
    in its config); other weights of the same one, or a hf-hub: or local-dir: model, are checked
    once loaded (check_same_model), so a missing checkpoint is still reported as that. Not with
    --fallback-model: the model that stands in may be the workspace's."""
    if model == have.model or model.startswith(("hf-hub:", "local-dir:")):
        return
    import open_clip

    from .model import register_configs

    register_configs()
    cfg = open_clip.get_model_config(model)
    if cfg is None:    # an unknown name: load_encoder says so, with the names it may have meant
        return
    tag = pretrained or "none"
    check_same_model(have, ModelIdentity(model, tag, int(cfg["embed_dim"]), tag in ("none", "random")))


def _precomputed_identity(root: Path, model: str, pretrained: str) -> ModelIdentity:
    import open_clip

    from .model import register_configs
    from .precomputed import embedding_dim

    register_configs()
    cfg = open_clip.get_model_config(model)
    if cfg is None:
        raise InputError(f"unknown model architecture '{model}' (needed to know what made the embeddings)")
    dim = embedding_dim(root)
    if int(cfg["embed_dim"]) != dim:
        raise InputError(f"{root}: vectors are {dim}-d but {model} makes {cfg['embed_dim']}-d ones; "
                         "pass the --model the embeddings were made with")
    return ModelIdentity(model, pretrained, dim, pretrained in ("none", "random"))
