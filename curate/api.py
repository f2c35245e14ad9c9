"""curate as Python functions: the same steps as the commands, for a notebook or a script.

    from curate import api
    api.build_index("photos/", "ws", model="ViT-B-32")
    api.classify("ws")
    api.filter("ws", api.FilterSpec(labels=["skyscraper"], min_prob=0.6), api.FilterOutput(out="sky.parquet"))

Each function takes a workspace path, opens and closes its own connection, takes the
options of the command of the same name (keyword arguments, the same defaults; filter's and
search's query, sample's and report's settings as options objects: FilterSpec, FilterOutput,
SearchQuery, SampleSpec, ReportOptions) and returns
a small result object instead of printing; the commands (curate/commands/) only parse
options, call these and print. Errors are `curate.CurateError` subclasses. Progress bars
go to stderr through curate.core.progress; `quiet=True` turns them off (None: as
`curate --quiet` says, when called from the command line).

Heavy libraries (torch, open_clip, faiss, matplotlib) load inside the functions that need
them, so importing this module stays cheap.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from .classify import registry
from .classify.calibrated import Calibration, for_workspace
from .classify.registry import Classification
from .classify.run import DEFAULT_BATCH_ROWS, DEFAULT_TOP_K, ClassifyResult
from .classify.state import NotReady
from .core import check, integrity
from .core.progress import Progress
from .core.sql import has_relation
from .core.textout import safe
from .core.workspace import DB_NAME, ModelIdentity, Workspace, check_same_model
from .errors import CurateError, InputError, WorkspaceBusy, WorkspaceError
from .ingest import recheck as recheck_files
from .ingest.images import DEFAULT_MAX_PIXELS
from .ingest.index_memory import parse_size
from .ingest.model import (
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    WeightsUnavailable,
    load_encoder,
    pick_device,
)
from .ingest.scan import scan_into
from .ingest.sources import detect_source, scanned_extensions
from .select.dedup import DedupResult
from .select.exports import command_line
from .select.filter import FilterOutput, FilterResult, FilterSpec, write_subset
from .select.search import Hit, SearchQuery
from .validate import calibration, collection, compare_render, ppi, report_render, sampling
from .validate import compare as compare_mod
from .validate import report as report_mod
from .validate.report import ReportOptions
from .validate.review import marks as marks_mod
from .validate.sampling import SampleSpec

__all__ = ["build_index", "classify", "classifications", "use_classification", "drop_classification",
           "filter", "search", "dedup", "sample", "report", "compare", "labels", "must_exist", "BuildResult",
           "Compared", "ClassifyResult", "DedupResult", "Filtered", "Hit", "Sample", "ReportResult",
           "LabelRow", "FilterSpec", "FilterOutput", "SearchQuery", "SampleSpec", "ReportOptions"]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _enabled(quiet: bool | None) -> bool | None:
    return None if quiet is None else not quiet


@check.params(workspace=check.path())
def must_exist(workspace: str | Path) -> Path:
    """Refuse a folder without a workspace database, the same way for every step (exit 4)."""
    value = Path(workspace)
    if not (value / DB_NAME).is_file():
        raise WorkspaceError(f"no workspace at {value} (no {DB_NAME} there): run `curate build-index SOURCE "
                             f"-w {value}` first, or give the right -w/--workspace")
    return value


# --------------------------------------------------------------------------- build-index

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


# where build-index embeds: this machine, or a Ray cluster (curate/ingest/ray_engine.py)
ENGINES = ("local", "ray")


@check.params(
    source=check.path(), workspace=check.path(), model=check.text(none=True), pretrained=check.text(none=True),
    fallback_model=check.text(none=True), captions_dir=check.path(none=True), index=check.text(),
    device=check.text(), batch_size=check.integer(1, none=True), workers=check.integer(0, none=True),
    shard_size=check.integer(1), max_pixels=check.integer(1), draft_decode=check.flag(),
    limit=check.integer(1, none=True), infer_types=check.flag(), recheck=check.text(), retry_rejected=check.flag(),
    repair=check.flag(), precision=check.text(), quiet=check.flag(none=True), log=check.function(),
    target_recall=check.number(0, 1, lo_open=True), max_index_memory=check.size(none=True), decode=check.text(),
    engine=check.text(), address=check.text(none=True))
def build_index(source: str | Path, workspace: str | Path = "ws", *, model: str | None = None,
                pretrained: str | None = None, fallback_model: str | None = None,
                captions_dir: str | Path | None = None, index: str = "auto", device: str = "auto",
                batch_size: int | None = None, workers: int | None = None, shard_size: int = 10_000,
                max_pixels: int = DEFAULT_MAX_PIXELS, draft_decode: bool = False, limit: int | None = None,
                infer_types: bool = False, recheck: str = "stat", retry_rejected: bool = False,
                repair: bool = False, precision: str = "auto", quiet: bool | None = None,
                log: Callable[[str], None] = _stderr, target_recall: float = 0.95,
                max_index_memory: str | int | None = None, decode: str = "cpu", engine: str = "local",
                address: str | None = None) -> BuildResult:
    """Ingest `source` and embed it once into FAISS indexes and a DuckDB workspace.

    The options are `curate build-index`'s (`index` is its --index recipe, chosen within
    `max_index_memory` (bytes or '2GB'), searched at the parameter tuned to `target_recall`). Running it
    again adds only new items; a killed run resumes where it stopped. `log` hears the one
    warning that is not an error (the fallback model's random weights). `precision`: auto
    (fp16 on CUDA, bf16 on a CPU with native bf16, else fp32; a workspace that is all fp32
    stays fp32), fp32, bf16 or fp16. `decode`: cpu (Pillow in the loader workers) or gpu (JPEGs
    decoded and preprocessed on the CUDA device, curate/ingest/device_decode.py). `engine`: local
    (this machine) or ray (the embedding step on the Ray cluster at `address`, or on a local Ray
    started for the run; curate/ingest/ray_engine.py); `device` then means the actors' device.
    """
    started = time.time()
    try:  # a budget that cannot be read fails before anything is embedded
        max_index_memory = parse_size(max_index_memory)
    except ValueError as e:
        raise InputError(str(e)) from None
    if not 0 < target_recall <= 1:
        raise InputError(f"--target-recall {target_recall:g}: give a recall@10 above 0 and at most 1")
    if engine not in ENGINES:
        raise InputError(f"--engine {engine}: choose one of {', '.join(ENGINES)}")
    if address is not None and engine != "ray":
        raise InputError("--address is the Ray cluster's address: it goes with --engine ray")
    if engine == "ray" and decode == "gpu":  # before a cluster is started for nothing
        raise InputError("--decode gpu decodes in the local engine's main process; the Ray engine decodes in "
                         "its CPU tasks: use --decode cpu with --engine ray")
    source = Path(source)
    ws_path = Path(workspace)
    src = detect_source(source, Path(captions_dir) if captions_dir is not None else None)
    session = None
    if engine == "ray" and src.kind != "clip-retrieval":  # an import embeds nothing: no cluster needed
        from .ingest import ray_engine

        session = ray_engine.connect(address)  # before the model loads: a missing Ray fails at once
    try:
        return _build_index(source, ws_path, src, session, model, pretrained, fallback_model, index, device,
                            batch_size, workers, shard_size, max_pixels, draft_decode, limit, infer_types, recheck,
                            retry_rejected, repair, precision, quiet, log, target_recall, max_index_memory, decode,
                            started)
    finally:
        if session is not None:
            session.close()


def _build_index(source: Path, ws_path: Path, src, session, model, pretrained, fallback_model, index, device,
                 batch_size, workers, shard_size, max_pixels, draft_decode, limit, infer_types, recheck,
                 retry_rejected, repair, precision, quiet, log, target_recall, max_index_memory, decode,
                 started: float) -> BuildResult:
    # torch and faiss load here, not at import: `curate --help` and the other commands start without them
    from .ingest import faiss_index
    from .ingest import precision as precision_rules
    from .ingest.embed import EmbedOptions, embed_pending

    ws = Workspace(ws_path)
    # Nothing is created until the model has loaded and the source gave items: a failed first
    # run leaves no stray workspace, and one that existed before is left as it was.
    new = not ws.exists()
    have = None
    have_precisions: list[str] = []
    precision_rules.check(precision)
    if not new:
        con = ws.connect(read_only=True)
        try:
            have = Workspace.model_identity(con)
            have_precisions = precision_rules.workspace_precisions(con)
        finally:
            con.close()
    asked = (model, pretrained)
    model = model or (have.model if have else DEFAULT_MODEL)
    pretrained = pretrained or (have.pretrained if have else DEFAULT_PRETRAINED)
    say = (lambda _line: None) if quiet else log
    # with Ray the model runs in the cluster's actors: their device decides the precision, and the
    # driver's copy (on its CPU) only names the model and gives the decode tasks its preprocessing
    device = session.device(device) if session is not None else pick_device(device)
    _check_decode(decode, device, draft_decode)
    used = precision_rules.resolve(precision, device, have_precisions)

    if src.kind == "clip-retrieval":
        ident = _precomputed_identity(src.root, model, pretrained)
        enc = None
    else:
        if have is not None and have.random_weights:
            _note_fallback_workspace(ws_path, source, asked, fallback_model, log)
        enc = (_load(model, pretrained, device, fallback_model, log, used, say) if session is None
               else _load(model, pretrained, "cpu", fallback_model, log, "fp32", say))
        ident = enc.identity
        if decode == "gpu":
            from .ingest.device_decode import check_ready

            check_ready(enc.preprocess, enc.image_size, device)
    if have is not None:
        check_same_model(have, ident)
    if src.kind in ("folder", "tree") and not _has_images(src.root):
        raise InputError(f"{source}: no images in this folder ({', '.join(sorted(scanned_extensions()))}); nothing to do"
                         + ("" if new else f" (the workspace {ws_path} was not changed)"))

    made = _absent(ws)
    con = ws.connect()
    Workspace.bind_model(con, ident)
    if new and enc is not None and ident.model != model:  # the fallback stood in: later runs say so
        Workspace.set_meta(con, FALLBACK_FOR, json.dumps({"model": model, "pretrained": pretrained}))
    run_id = Workspace.start_run(con, "build-index", src.describe(), ident, device)
    status = "failed"
    scan = None
    scanned = refused = False
    repairs: list[str] = []
    on = _enabled(quiet)
    try:
        damaged = integrity.check_shards(ws, con, full=repair)
        if damaged:
            n = integrity.repair(ws, con, damaged)
            repairs += [f"damaged: {d.describe()}" for d in damaged]
            repairs.append(f"repair: {len(damaged)} damaged shard(s) dropped, {n} items to embed again")
        if src.kind == "clip-retrieval":
            from .ingest.precomputed import count_rows, import_clip_retrieval

            with Progress("import", count_rows(src.root), "row", enabled=on) as bar:
                seen, added, _bad = import_clip_retrieval(ws, con, src.root, run_id, ident.embed_dim, bar.update,
                                                          shard_size=shard_size)
        else:
            with Progress("scan", None, "item", enabled=on) as bar:
                scan = scan_into(con, src, run_id, bar.update, infer_types=infer_types)
                seen, added = scan.seen, scan.added
            if seen == 0:
                raise InputError(f"{source}: the source lists no items; nothing to do")
            scanned = True
            rc = recheck_files.recheck(ws, con, src.describe(), recheck, retry_rejected)
            if rc.checked or rc.retried:
                repairs.append(f"recheck: {rc.describe()}")
            todo = con.execute("SELECT count(*) FROM items WHERE status = 'pending'").fetchall()[0][0]
            todo = min(todo, limit) if limit else todo
            con.execute("UPDATE runs SET decode = ?, precision = ? WHERE run_id = ?",
                        ["gpu" if decode == "gpu" else "draft" if draft_decode else "exact", used, run_id])
            if todo:
                have_precisions = precision_rules.record(con, used)
            opts = EmbedOptions(shard_size=shard_size, max_pixels=max_pixels, limit=limit, draft_decode=draft_decode,
                                batch_size=batch_size or (256 if device.startswith("cuda") else EmbedOptions.batch_size),
                                workers=-1 if workers is None else workers, hash_files=recheck == "hash",
                                decode=decode)
            with Progress("embed", todo, "image", enabled=on) as bar:
                if session is None:
                    embed_pending(ws, con, enc, run_id, opts, bar.update)
                else:
                    from .ingest.ray_engine import embed_pending_ray

                    # the identity, not the names asked for: a fallback model is what the actors load
                    embed_pending_ray(ws, con, session, ident.model, ident.pretrained, device, used, run_id, opts,
                                      enc.preprocess, enc.image_size, bar.update)
        built = []
        for kind in ("image", "caption"):
            # drawn once the index says how many vectors it adds (nothing for an index up to date)
            with Progress(f"index {kind}s", 0, "vector", enabled=on) as bar:
                built.append(faiss_index.build_index(ws, con, kind, index, bar.update,
                                                     plan=lambda rows, _mode, bar=bar: bar.reset(total=rows),
                                                     target_recall=target_recall, max_memory=max_index_memory))
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
    try:
        counts = dict(con.execute("SELECT status, count(*) FROM items GROUP BY status").fetchall())
        by_stage = dict(con.execute("SELECT stage, count(*) FROM rejected WHERE run_id = ? GROUP BY stage "
                                    "ORDER BY stage", [run_id]).fetchall())
    finally:
        con.close()
    return BuildResult(ws_path, src.describe(), seen, added, counts, by_stage, built, ident, time.time() - started,
                       precision=used, workspace_precisions=have_precisions,
                       not_taken=scan.not_taken if scan else 0, other_files=scan.other_files if scan else 0,
                       notes=list(scan.notes) if scan else [], repairs=repairs)


def _check_decode(decode: str, device: str, draft_decode: bool) -> None:
    """--decode gpu decodes on the model's device: it needs a CUDA one, and has no draft mode."""
    if decode not in ("cpu", "gpu"):
        raise InputError(f"--decode {decode}: give cpu or gpu")
    if decode != "gpu":
        return
    if not device.startswith("cuda"):
        import torch

        why = "torch here sees no CUDA device" if not torch.cuda.is_available() else f"--device is {device}"
        raise InputError(f"--decode gpu decodes JPEGs on the model's CUDA device, but {why}; use --decode cpu")
    if draft_decode:
        raise InputError("--draft-decode is the CPU decoder's reduced-scale mode; it does not combine with "
                         "--decode gpu (which decodes at full size on the device)")


def _load(model: str, pretrained: str, device: str, fallback: str | None, log: Callable[[str], None],
          precision: str = "auto", say: Callable[[str], None] | None = None):
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


def _note_fallback_workspace(ws_path: Path, source: Path, asked: tuple[str | None, str | None],
                             fallback: str | None, log: Callable[[str], None]) -> None:
    """A workspace keeps its model, the fallback's random weights too: a rerun of the command that
    made it (a second `make demo`) says so, and says what to run when the real weights are here now."""
    con = Workspace(ws_path).connect(read_only=True)
    try:
        raw = Workspace.get_meta(con, FALLBACK_FOR)
    finally:
        con.close()
    if raw is None or asked != (None, None):  # asked for a model by name: check_same_model answers that
        return
    wanted = json.loads(raw)
    from .ingest.model import weights_cached

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


def _precomputed_identity(root: Path, model: str, pretrained: str) -> ModelIdentity:
    import open_clip

    from .ingest.model import register_configs
    from .ingest.precomputed import embedding_dim

    register_configs()
    cfg = open_clip.get_model_config(model)
    if cfg is None:
        raise InputError(f"unknown model architecture '{model}' (needed to know what made the embeddings)")
    dim = embedding_dim(root)
    if int(cfg["embed_dim"]) != dim:
        raise InputError(f"{root}: vectors are {dim}-d but {model} makes {cfg['embed_dim']}-d ones; "
                         "pass the --model the embeddings were made with")
    return ModelIdentity(model, pretrained, dim, pretrained in ("none", "random"))


# --------------------------------------------------------------------------- labels, classify

@dataclass(frozen=True)
class LabelRow:
    index: int
    label: str
    prompts: list[str]
    scene: str


@check.params(workspace=check.path())
def labels(workspace: str | Path) -> list[LabelRow]:
    """The label set the workspace was classified with (its `labels` table), in label order."""
    ws_path = must_exist(workspace)
    con = Workspace(ws_path).connect(read_only=True)
    try:
        if not has_relation(con, "labels"):
            raise NotReady(f"the workspace {ws_path} is not classified yet: it has no label set; run "
                           f"`curate classify -w {ws_path}` first (or `curate labels --label-set NAME` to see a set)")
        rows = con.execute("SELECT label_idx, label, prompts, scene FROM labels ORDER BY label_idx").fetchall()
    finally:
        con.close()
    return [LabelRow(int(i), lab, list(ps), scene) for i, lab, ps, scene in rows]


@check.params(
    workspace=check.path(), label_set=check.path(), prompts=check.path(), logit_scale=check.number(0, lo_open=True, none=True),
    temperature=check.number(0, lo_open=True, none=True), storage=check.text(), top_k=check.integer(1),
    device=check.text(), restart=check.flag(), batch_rows=check.integer(1), name=check.text(none=True),
    quiet=check.flag(none=True), on_batch=check.function(none=True), log=check.function(none=True))
def classify(workspace: str | Path = "ws", *, label_set: str | Path = "places205", prompts: str | Path = "natural",
             logit_scale: float | None = None, temperature: float | None = None, storage: str = "auto",
             top_k: int = DEFAULT_TOP_K, device: str = "auto", restart: bool = False,
             batch_rows: int = DEFAULT_BATCH_ROWS, name: str | None = None, quiet: bool | None = None,
             on_batch: Callable[[int, int], None] | None = None,
             log: Callable[[str], None] | None = None) -> ClassifyResult:
    """Score every image and caption against every label; create the SQL views.

    The options are `curate classify`'s. The scores are the classification `name`
    (default: label set and wording, e.g. places205-natural), which becomes the active one
    when it completes. A run with the settings of that classification's scores continues them. `on_batch(vectors, so_far)` hears each committed batch;
    `log` the line said when a run resumes or starts over (default: stderr, beside the bar).
    """
    from .classify.run import classify as run_classify

    ws_path = must_exist(workspace)
    if temperature is not None:
        if logit_scale is not None:
            raise InputError("give logit_scale or temperature, not both")
        if not temperature > 0:
            raise InputError("the temperature must be positive")
        logit_scale = 1.0 / temperature
    if log is None:
        from tqdm import tqdm

        def log(line: str) -> None:
            tqdm.write(line, file=sys.stderr)

    bar = Progress("scoring", 0, "vector", enabled=_enabled(quiet))  # drawn once classify says how many (plan)
    committed = 0

    def progress(n: int) -> None:
        nonlocal committed
        bar.update(n)
        committed += n
        if on_batch is not None:
            on_batch(n, committed)

    try:
        return run_classify(ws_path, label_set, prompts, logit_scale=logit_scale, storage=storage, top_k=top_k,
                            device=device, progress=progress, restart=restart, batch_rows=batch_rows, log=log,
                            plan=bar.reset, name=name)
    except CurateError:
        raise
    except ValueError as e:  # scores' own checks on the settings
        raise InputError(str(e)) from None
    finally:
        bar.close()


@check.params(workspace=check.path())
def classifications(workspace: str | Path = "ws") -> list[Classification]:
    """The workspace's named classifications, oldest first (`curate classify --list`)."""
    con = Workspace(must_exist(workspace)).connect(read_only=True)
    try:
        return registry.list_classifications(con)
    finally:
        con.close()


@check.params(workspace=check.path(), name=check.text())
def use_classification(workspace: str | Path, name: str) -> None:
    """Make a complete classification the active one: the plain views show it (`classify --use`)."""
    con = Workspace(must_exist(workspace)).connect()
    try:
        registry.use(con, name)
    finally:
        con.close()


@check.params(workspace=check.path(), name=check.text())
def drop_classification(workspace: str | Path, name: str) -> str | None:
    """Remove a classification and its scores (`classify --drop`); returns the active one after.

    Review sets drawn from it stay (their marks judge (image, label) pairs, which count
    for every classification); a calibration fitted on it goes with it."""
    ws = Workspace(must_exist(workspace))
    con = ws.connect()
    try:
        return registry.drop(ws, con, name)
    finally:
        con.close()


# --------------------------------------------------------------------------- filter, search

@dataclass(frozen=True)
class Filtered:
    """A subset cut by `filter`: the counts and files (`result`), and the rule that cut it."""
    spec: FilterSpec
    result: FilterResult
    # with calibrated=True and nothing kept: which classes' thresholds the marks could not reach
    unreachable: str | None = None
    # labels asked for in another spelling (case, separators): (as given, the label taken)
    labels_taken: list[tuple[str, str]] = field(default_factory=list)
    # the subset's precision estimated from the marks of random review sets (validate/collection.py)
    precision: collection.SubsetPrecision | None = None

    @property
    def kept(self) -> int:
        return self.result.kept

    @property
    def total(self) -> int:
        return self.result.total

    @property
    def out(self) -> Path | None:
        return self.result.out

    def summary(self) -> str:
        return self.result.summary(self.spec)


@check.params(workspace=check.path(), spec=check.options(FilterSpec, none=True),
              output=check.options(FilterOutput, none=True), level=check.number(0, 1, lo_open=True, hi_open=True))
def filter(workspace: str | Path = "ws", spec: FilterSpec | None = None,  # noqa: A001
           output: FilterOutput | None = None, *, level: float = 0.95) -> Filtered:
    """Cut a labelled subset (or what cleaning drops) out of a classified workspace.

    `spec` is what `curate filter` selects (labels, thresholds, mode, --where, the
    classification, dedup), `output` where it writes (a file, a webdataset folder, the
    embeddings beside it, files copied or linked): both `curate filter`'s options, checked
    when made. None: every label at the default threshold; counted only.
    `precision` on the result: the subset's precision estimated from random review marks, with
    its interval at `level`.
    """
    spec = spec or FilterSpec()
    output = output or FilterOutput()
    ws_path = must_exist(workspace)
    taken = _match_labels(ws_path, spec.labels, spec.classification)
    spec = replace(spec, labels=tuple(label for _given, label in taken))
    o = output
    command = command_line(ws_path, [
        ("--classification", spec.classification), ("--label", spec.labels),
        ("--min-prob", None if spec.calibrated else spec.min_prob), ("--mode", spec.mode),
        ("--unmatched", spec.unmatched),
        *([("--text-weight", spec.text_weight), ("--text-min", spec.text_min), ("--image-max", spec.image_max)]
          if spec.mode == "ensemble" else []),
        ("--calibrated", spec.calibrated), ("--where", spec.where), ("--format", o.format), ("--out", o.out),
        ("--shard-size", o.shard_size if o.format == "webdataset" else None),
        ("--with-embeddings", o.with_embeddings), ("--copy-to", o.copy_to), ("--link-to", o.link_to),
        ("--clean", o.clean)])
    est: list[collection.SubsetPrecision] = []
    r = write_subset(ws_path, spec, output, command=command,
                     inspect=lambda con: est.append(collection.for_filter(con, spec, level)))
    return Filtered(spec, r, _explain_calibrated_nothing(ws_path, spec) if spec.calibrated and r.kept == 0 else None,
                    [(given, label) for given, label in taken if given != label], est[0] if est else None)


def _match_labels(ws_path: Path, labels: Iterable[str], classification: str | None) -> list[tuple[str, str]]:
    """The labels asked for, each with the one it names in the classification's label set (case
    and separators forgiven where that leaves one: classify/labels.py match_labels)."""
    from .classify.labels import match_labels
    from .select.filter import open_scored

    labels = tuple(labels)
    if not labels:
        return []
    con = open_scored(ws_path, classification)
    try:
        known = [r[0] for r in con.execute("SELECT label FROM labels ORDER BY label_idx").fetchall()]
    finally:
        con.close()
    return match_labels(labels, known)


def _explain_calibrated_nothing(ws_path: Path, spec: FilterSpec) -> str | None:
    """`calibrated` kept nothing: name the classes whose threshold the marks could not reach."""
    cal = for_workspace(ws_path)
    if cal is None:
        return None
    wanted = set(spec.labels)
    classes = [c for c in cal.classes if not wanted or c.label in wanted]
    unreachable = [c for c in classes if c.threshold is None]
    if spec.unmatched or not unreachable:
        return None
    reached = [f"{c.label} >= {c.threshold:.4f}" for c in classes if c.threshold is not None]
    return safe(f"kept nothing: no threshold reaches precision {cal.target_precision:g} on the marks for "
                f"{len(unreachable)} of {len(classes)} classes ({', '.join(c.label for c in unreachable)})"
                + (f"; the others ({', '.join(reached)}) keep no image" if reached else "")
                + "; mark more images, or fit again with a lower --target-precision or --min-support "
                  "(`curate report`)")


def _query(name: str, value: object) -> object:
    """search's query: a SearchQuery, or a text (the image index)."""
    return value if value is None or isinstance(value, SearchQuery) else check.text(empty=True)(name, value)


@check.params(
    workspace=check.path(), query=_query, k=check.integer(1), device=check.text(),
    classification=check.text(none=True), search_param=check.integer(1, none=True), out=check.path(none=True))
def search(workspace: str | Path, query: str | SearchQuery | None = None, k: int = 20, *, device: str = "auto",
           classification: str | None = None, search_param: int | None = None,
           out: str | Path | None = None) -> list[Hit]:
    """The k items nearest to `query`: a text prompt (the image index), or a SearchQuery (a
    text or an example image file, in the image or the caption index): rank, id, score,
    path, caption, with each one's top label and probability under `classification`
    (default: the active one; None when the workspace is not classified). The index is
    searched at the parameter its record holds (tuned to the recall target), or at
    `search_param` (nprobe or efSearch) when given. `out`: also write the hits to this file
    (format by extension, as filter's: parquet, csv, tsv, jsonl, json).
    """
    from .select.search import out_writer, write_hits
    from .select.search import search as search_items

    # before any model loads: an empty query is refused at once
    q = query if isinstance(query, SearchQuery) else SearchQuery(text=query)
    if out is not None:
        out_writer(out)
    ws_path = must_exist(workspace)
    hits = search_items(ws_path, q, k=k, device=device, classification=classification,
                        search_param=search_param)
    if out is not None:
        write_hits(ws_path, hits, out)
    return hits


# --------------------------------------------------------------------------- sample, report

@dataclass(frozen=True)
class Sample:
    """A review set drawn by `sample`: the set, its classes (label, rank, images in the
    collection) and how many of each were drawn, and how many were marked already."""
    set: sampling.ReviewSet
    classes: list[tuple[str, int, int]]
    drawn: dict[str, int]
    marked: int

    @property
    def name(self) -> str:
        return self.set.name

    @property
    def items(self) -> int:
        return self.set.items


@check.params(workspace=check.path(), spec=check.options(SampleSpec, none=True), set_name=check.text(none=True),
              replace=check.flag())
def sample(workspace: str | Path = "ws", spec: SampleSpec | None = None, *, set_name: str | None = None,
           replace: bool = False) -> Sample:
    """Draw a review set: the study's stratified sample, reproducible from its seed.

    `spec` is how it is drawn (`curate sample`'s options: SampleSpec; None: its defaults),
    `set_name` the set's name (default: MODE-topNxM-seedS); the set remembers the
    classification it was drawn from.
    """
    spec = spec or SampleSpec()
    ws_path = must_exist(workspace)
    con = Workspace(ws_path).connect()
    try:
        sampling.ensure_schema(con)
        rs = sampling.draw(con, source=spec.mode, top_classes=spec.top_classes, per_class=spec.per_class,
                           seed=spec.seed, name=set_name, replace=replace, where=spec.where,
                           classification=spec.classification, target_width=spec.target_width)
        found = sampling.classes(con, rs.name)
        drawn = dict(con.execute("SELECT label, count(*) FROM review_items WHERE set_name = ? GROUP BY label",
                                 [rs.name]).fetchall())
        done = marks_mod.progress(con, rs.name).done
    finally:
        con.close()
    return Sample(rs, found, drawn, done)


@dataclass
class ReportResult:
    """A report written by `report`: the tables (`report`), the files and folder written,
    and the calibration fitted on the marks (None: `no_calibration` says why)."""
    report: report_mod.Report
    out: Path
    files: list[Path]
    calibration: Calibration | None = None
    no_calibration: str | None = None
    # the calibration could not be saved for `filter --calibrated` (another process held the workspace)
    not_saved: str | None = None
    problems: list[str] = field(default_factory=list)    # rows of a --marks sheet that were skipped

    @property
    def text(self) -> str:
        return report_render.text_tables(self.report)


@check.params(
    workspace=check.path(none=True), set_name=check.text(none=True), marks=check.path(none=True), out=check.path(),
    classification=check.text(none=True), options=check.options(ReportOptions, none=True))
def report(workspace: str | Path | None = "ws", *, set_name: str | None = None, marks: str | Path | None = None,
           out: str | Path = "report", classification: str | None = None,
           options: ReportOptions | None = None) -> ReportResult:
    """Accuracy per class, the threshold table, coverage and calibration from the review marks,
    written to the folder `out` (CSV, HTML, PNG; replaced whole).

    The options are `curate report`'s: the review set `set_name` (default: the latest), or a
    CSV sheet `marks` (label, prob, mark) instead of the workspace; `options` how the study is
    computed and drawn (ReportOptions: thresholds, calibration, grids, intervals). The calibration fitted on
    the marks is saved in the workspace for `filter(calibrated=True)`. The report reads the
    classification the set was drawn from; `classification` picks the latest set drawn from it.
    Every estimate comes with its interval at `level`; `interval`: "wilson" or "exact"
    (Clopper-Pearson) for the proportions (curate/validate/intervals.py).
    """
    o = options or ReportOptions()
    min_hit_rate, target_precision, min_support, level, interval = (o.min_hit_rate, o.target_precision,
                                                                   o.min_support, o.level, o.interval)
    out = Path(out)
    cal = None
    no_cal = not_saved = None
    problems: list[str] = []
    if marks is not None:
        rep = report_mod.from_sheet(marks, min_hit_rate, level, interval)
        problems = list(rep.problems)
    else:
        ws_path = must_exist(workspace if workspace is not None else "ws")
        con = Workspace(ws_path).connect(read_only=True)  # a reader: it runs beside the review page
        try:
            rs = sampling.get_set(con, set_name, classification)
            registry.select(con, rs.classification if registry.exists(con, rs.classification or "") else None)
            rep = report_mod.from_workspace(con, rs.name, min_hit_rate, level, interval)
            try:
                cal = calibration.fit(con, rep.main.name, target_precision, min_support)
                rep.calibration = cal
            except ValueError as e:  # too few marks, or a temperature the marks do not pin down
                no_cal = str(e)
            else:
                rep.ppi = ppi.estimates(con, cal, level)
        finally:
            con.close()
        if cal is not None:  # saving it for `filter --calibrated` takes the write lock for a moment
            try:
                con = Workspace(ws_path).connect()
            except WorkspaceBusy as e:
                not_saved = str(e)
            else:
                try:
                    sampling.ensure_schema(con)
                    calibration.save(con, cal)
                finally:
                    con.close()
    files = report_render.write(rep, out, o.grid_size)
    return ReportResult(rep, out, files, cal, no_cal, not_saved, problems)


# --------------------------------------------------------------------------- compare

@dataclass
class Compared:
    """Classifications compared by `compare`: the tables (`comparison`) and the files written."""
    comparison: compare_mod.Comparison
    out: Path | None
    files: list[Path]

    @property
    def text(self) -> str:
        return "\n".join(compare_render.summary_lines(self.comparison))


@check.params(workspace=check.path(), names=check.names(), out=check.path(none=True),
              min_prob=check.probability())
def compare(workspace: str | Path = "ws", names: Iterable[str] = (), *, out: str | Path | None = "compare",
            min_prob: float = compare_mod.MIN_PROB) -> Compared:
    """Two or more named classifications side by side (`curate compare`): coverage per kind,
    agreement, per-label counts, and the hit rate on marked pairs, written to the folder
    `out` (CSV, PNG, HTML; replaced whole; None: compute only)."""
    ws_path = must_exist(workspace)
    con = Workspace(ws_path).connect(read_only=True)
    try:
        cmp = compare_mod.compare(con, list(names), min_prob)
    finally:
        con.close()
    files = compare_render.write(cmp, out) if out is not None else []
    return Compared(cmp, Path(out) if out is not None else None, files)


# --------------------------------------------------------------------------- dedup

@check.params(workspace=check.path(), threshold=check.number(0, 1, lo_open=True, none=True), kind=check.text(),
              fresh=check.flag(), quiet=check.flag(none=True))
def dedup(workspace: str | Path = "ws", *, threshold: float | None = None, kind: str = "image",
          fresh: bool = False, quiet: bool | None = None) -> DedupResult:
    """Find near-duplicate groups and store them in the table `duplicates` (view `duplicate_groups`).

    kind "image": images at cosine >= `threshold` (default 0.94) on their embeddings, through the
    image index; a rerun queries only vectors embedded since (`fresh`: all again). kind
    "caption-text": items whose captions are equal after normalising whitespace and case.
    """
    from .select.dedup import DEFAULT_THRESHOLD, DedupError, find_duplicates

    ws_path = must_exist(workspace)
    if kind != "image" and threshold is not None:
        raise DedupError("--threshold is for --kind image (caption-text groups are equal texts)")
    with Progress("dedup", None, "vector", enabled=_enabled(quiet)) as bar:
        return find_duplicates(ws_path, kind, DEFAULT_THRESHOLD if threshold is None else threshold,
                               fresh=fresh, progress=bar.update)
