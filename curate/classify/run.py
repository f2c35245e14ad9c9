"""The classify step: every image and caption against every label, exact softmax, into DuckDB.

The label vectors are the queries. Scoring is an exact, chunked float64 matrix
product of the label vectors with the stored shards (streamed, never all in memory),
then per item the softmax over the whole label set with the model's logit scale.
What is stored depends on the collection's size (docs/scores.md):

- `full`: every (item, label) probability, where the matrix is small;
- `topk`: per item the union of its top-k labels by image and by caption, both
  modalities' probabilities on those rows, and a bound on everything not stored.

Either way each probability written is the float64 softmax over all labels.

The pieces: label_vectors (the queries), vector_stream (the stored vectors in id order),
scoring (the maths of one batch), resume (staging and continuing a run), state (what
readers of the scores check first).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import numpy as np

from ..core import sql, store
from ..core.integrity import verify_shards
from ..core.progress import plural
from ..core.workspace import ModelIdentity, Workspace, check_same_model
from ..ingest import precision as precision_rules
from . import freshness, registry
from .freshness import Changes
from .label_vectors import LabelQueries, label_queries
from .labels import LabelSet, load_label_set
from .prompts import Wording, resolve
from .resume import (
    ScoreProgress,
    covered,
    create_staged,
    drop_staged,
    fingerprint,
    in_transaction,
    resume_point,
    staged_point,
)
from .scoring import ENSEMBLE_TEXT_MIN, ENSEMBLE_TEXT_WEIGHT, score_batch
from .state import STAGE, NotReady
from .vector_stream import aligned_batches, subset_batches

if TYPE_CHECKING:  # the model module imports torch and open_clip; load it only when needed
    from ..ingest.model import Encoder

DEFAULT_TOP_K = 10
# Up to this many (item, label) cells the whole matrix is stored: 100K images x 205
# labels (20.5M) is; 1M images (205M rows, ~10x the rows of top-k) is not.
FULL_MAX_CELLS = 25_000_000
DEFAULT_BATCH_ROWS = 32_768
# DuckDB's buffer pool while scores are written: without a cap it keeps every block
# written (80% of RAM by default), so memory would grow with the collection.
DUCKDB_MEMORY = "1GB"


@contextmanager
def _capped_memory(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """DUCKDB_MEMORY while scores are written, DuckDB's default after: the limit is the
    instance's, which in the app's or a notebook's process outlives the command
    (core/duckdb_host.py)."""
    con.execute(f"SET memory_limit = '{DUCKDB_MEMORY}'")  # a constant of ours, not user text
    try:
        yield
    finally:
        con.execute("RESET memory_limit")


@dataclass(frozen=True)
class ClassifyResult:
    label_set: str
    prompts: str
    n_labels: int
    images: int
    captions: int
    storage: str
    top_k: int
    logit_scale: float
    label_score_rows: int
    seconds: float
    cached_vectors: bool
    resumed_vectors: int = 0     # vectors an earlier run had scored (a resumed run): not scored again
    name: str = ""               # the classification's name (registry.py)
    precision: str = "fp32"      # what the label prompts were encoded in (curate/ingest/precision.py)
    vector_precisions: list[str] = field(default_factory=list)  # what the workspace's vectors were embedded in
    interrupted: bool = False    # it continued a run that had stopped (killed) before completing


_INSERT_ITEMS = """
INSERT INTO {table}
SELECT id,
       nullif(image_label, -1), nan_null(image_prob), nan_null(image_sim),
       nullif(image_label2, -1), nan_null(image_prob2), nan_null(image_rest), nan_null(image_lse),
       nullif(caption_label, -1), nan_null(caption_prob), nan_null(caption_sim),
       nullif(caption_label2, -1), nan_null(caption_prob2), nan_null(caption_rest), nan_null(caption_lse),
       nullif(ensemble_label, -1), nan_null(ensemble_prob), nullif(ensemble_label2, -1), nan_null(ensemble_prob2),
       CASE WHEN image_label = -1 THEN NULL ELSE ensemble_caption_used END
FROM batch_items
"""
_INSERT_ROWS = """
INSERT INTO {table}
SELECT id, label_idx, nan_null(image_sim), nan_null(image_prob), nan_null(caption_sim), nan_null(caption_prob)
FROM batch_rows
"""


@dataclass(frozen=True)
class ClassifyOptions:
    """`curate classify`'s options (the same names and defaults): what is scored against what, and how
    it is stored. The scores are the classification `name` (default: label set and wording, e.g.
    places205-natural). `storage` is full, topk or auto (by size); `logit_scale` None is the model's;
    `restart` starts over instead of continuing scores with these settings."""

    label_set: str | Path | LabelSet = "places205"
    prompts: str | Path = "natural"
    name: str | None = None
    logit_scale: float | None = None
    top_k: int = DEFAULT_TOP_K
    storage: str = "auto"
    batch_rows: int = DEFAULT_BATCH_ROWS
    device: str = "auto"
    restart: bool = False


@dataclass(frozen=True)
class Listeners:
    """Who hears a run: `plan` how many vectors it will score, `progress` the vectors of each
    committed batch, `log` a line when it resumes or starts over."""

    progress: Callable[[int], None] | None = None
    log: Callable[[str], None] = lambda _line: None
    plan: Callable[[int], None] | None = None


@dataclass(frozen=True)
class ScoreJob:
    """One classification's scores to write, its settings resolved (what _write_scores needs)."""

    name: str
    q: LabelQueries
    ls: LabelSet
    wording: Wording
    ident: ModelIdentity
    scale: float
    storage: str
    keep_k: int | None       # top-k rows kept per item; None: every label (full)
    n_img: int
    n_cap: int
    batch_rows: int
    restart: bool


def classify(ws_path: str | Path, label_set: str | Path | LabelSet = "places205", prompts: str | Path = "natural",
             encoder: Encoder | None = None, *, progress: Callable[[int], None] | None = None,
             log: Callable[[str], None] | None = None, plan: Callable[[int], None] | None = None,
             **options: object) -> ClassifyResult:
    """Score every image and caption of a workspace against a label set; (re)create the views.

    The keyword options are ClassifyOptions' fields. The scores are the classification `name`,
    in its own schema beside any others (registry.py); completing makes it the active one,
    the one the plain views show.

    `encoder` is only needed when the label vectors are not cached yet; by default the
    workspace's own model is loaded then. A run with the settings of the scores already in
    the workspace (a killed run, or a finished one before more items were embedded)
    continues after the last item they hold; `restart` starts over anyway. The listeners
    are Listeners'.
    """
    opts = ClassifyOptions(label_set=label_set, prompts=prompts, **options)  # type: ignore[arg-type]
    return run(ws_path, opts, encoder, Listeners(progress, log or (lambda _line: None), plan))


def run(ws_path: str | Path, opts: ClassifyOptions, encoder: Encoder | None = None,
        hear: Listeners = Listeners()) -> ClassifyResult:
    """`classify` with its options as one object (each value checked where it entered: curate/api.py)."""
    started = time.time()
    ws = Workspace(ws_path).require()
    ls = opts.label_set if isinstance(opts.label_set, LabelSet) else load_label_set(opts.label_set)
    wording = resolve(opts.prompts)
    name = registry.check_name(opts.name) if opts.name is not None else registry.default_name(ls.name, wording.name)
    device = opts.device
    with ws.writing() as con:
        ident = Workspace.model_identity(con)
        if ident is None:
            raise NotReady(f"the workspace {ws.root} has no embeddings yet: run `curate build-index` first")
        if encoder is not None:
            check_same_model(ident, encoder.identity)

        # the label prompts follow build-index's rule: a workspace that is all fp32 keeps them fp32
        held = precision_rules.workspace_precisions(con)
        if encoder is not None:
            precision = getattr(encoder, "precision", "fp32")  # a stand-in encoder: float32
        elif held in ([], ["fp32"]):
            # float32 vectors, or vectors of unknown precision (imported, or written by a
            # program): float32 prompts, the reference; and no torch import to find the device
            precision = "fp32"
        else:
            from ..ingest.model import pick_device

            precision = precision_rules.resolve("auto", pick_device(device), held)

        def factory():
            if encoder is not None:
                return encoder
            from ..ingest.model import load_encoder
            return load_encoder(ident.model, ident.pretrained, device, precision)

        q, was_cached = label_queries(con, ident, ls, wording, factory, precision)
        if q.vectors.shape[1] != ident.embed_dim:
            raise NotReady(f"label vectors are {q.vectors.shape[1]}-d but the workspace is {ident.embed_dim}-d")
        scale = float(opts.logit_scale) if opts.logit_scale is not None else q.logit_scale
        n_img = store.count_vectors(ws, con, "image")
        n_cap = store.count_vectors(ws, con, "caption")
        storage = opts.storage
        if storage == "auto":
            storage = "full" if max(n_img, n_cap) * len(ls) <= FULL_MAX_CELLS else "topk"
        if opts.top_k >= len(ls):
            storage = "full"
        keep_k = None if storage == "full" else opts.top_k
        with sql.transaction(con):
            registry.register(con, name, label_set=ls.name, prompts=wording.name, model=ident.model,
                              logit_scale=scale, storage=storage)
        job = ScoreJob(name, q, ls, wording, ident, scale, storage, keep_k, n_img, n_cap, opts.batch_rows,
                       opts.restart)
        with _capped_memory(con):
            rows, resumed, interrupted = _write_scores(ws, con, job, hear)
    return ClassifyResult(ls.name, wording.name, len(ls), n_img, n_cap, storage,
                          len(ls) if keep_k is None else keep_k, scale, rows, time.time() - started, was_cached,
                          resumed, name, q.precision, held, interrupted)


def _write_scores(ws: Workspace, con: duckdb.DuckDBPyConnection, job: ScoreJob,
                  hear: Listeners) -> tuple[int, int, bool]:
    """Write the scores of classification `job.name`; returns (label_scores rows, vectors scored
    by an earlier run, whether it continued a stopped run).

    A classification's scores (labels, item_scores, label_scores, score_settings,
    score_progress, in its schema "cls_<name>") always hold one complete classification,
    or none: a run writes into
    staging copies (next_*), batch by batch, and publishes them in one transaction at the
    end, so every reader (filter, sample, report, the views in the duckdb shell) sees the
    previous complete scores until then. Batches commit one by one because DuckDB holds a
    transaction's appended rows in memory: one transaction would grow with the collection
    (35 MB a batch, 2 GB at 1M items). Each commits its rows with next_score_progress,
    so the next run with the same settings continues after the last batch committed.

    A run that continues the workspace's own finished scores (items embedded since)
    stages only the new items' rows (append_after: the last id of the scores it
    extends) and appends them when it completes; one over scores whose vectors changed
    since (items embedded again, rejected, repaired: freshness.py) stages the rows of
    those items only (rescore) and replaces theirs with them; any other run stages a
    whole classification, published by renaming the tables (no copy). Every publish
    records the shards the scores now reflect (scored_shards).
    """
    q, ls, wording, ident, scale, storage, keep_k = (job.q, job.ls, job.wording, job.ident, job.scale, job.storage,
                                                     job.keep_k)
    n_img, n_cap, batch_rows, restart, name = job.n_img, job.n_cap, job.batch_rows, job.restart, job.name
    log, progress, plan = hear.log, hear.progress, hear.plan
    con.execute("CREATE OR REPLACE TEMP MACRO nan_null(x) AS CASE WHEN isnan(x) THEN NULL ELSE x END")
    fp = fingerprint(q, ls, ident, scale, storage, keep_k)
    sch = registry.schema(name)
    live_t = sch + "."            # the published tables
    stage_t = sch + "." + STAGE   # the staging copies
    verify_shards(ws, con)  # a shard lost or damaged under the workspace fails here, not half way
    if restart:
        in_transaction(con, lambda: drop_staged(con, name))
    staged = None if restart else staged_point(ws, con, fp, len(ls), log, name)
    refresh: Changes | None = None     # vectors changed under the published scores: rescore those items
    interrupted = staged is not None
    if staged is None:
        live = None if restart else resume_point(ws, con, fp, len(ls), log, schema=sch)
        if isinstance(live, Changes):
            refresh, live = live, None
        done = ScoreProgress(None, 0, 0, 0, 0) if live is None else live[0]
        append_after = done.last_id
        if live is not None and not live[1] and done.images + done.captions == n_img + n_cap:
            log(f"{name}: already classified, nothing to do")

            def again():     # it becomes the active one, as a run that scored something would
                freshness.snapshot(con, live_t + "scored_shards")
                registry.completed(con, name)

            in_transaction(con, again)
            rows = con.execute(f"SELECT count(*) FROM {live_t}label_scores").fetchall()[0][0]
            return int(rows), done.images + done.captions, False

        def start():
            drop_staged(con, name)
            create_staged(con, sch)
            # one statement over the lists (row by row, 205 labels took 0.2-0.4 s of every classify)
            con.execute(f"INSERT INTO {stage_t}labels SELECT generate_subscripts($1, 1) - 1, unnest($1), unnest($2), "
                        "unnest($3), unnest($4)",
                        [list(ls.labels), [ps[0] for ps in q.prompts], [list(ps) for ps in q.prompts], list(ls.scenes)])
            con.execute(f"INSERT INTO {stage_t}score_progress (fingerprint, last_id, images, captions, image_id_sum, "
                        "caption_id_sum, finished, append_after, rescore) VALUES (?, ?, ?, ?, ?, ?, false, ?, ?)",
                        [fp, done.last_id, done.images, done.captions, done.image_id_sum, done.caption_id_sum,
                         append_after, refresh is not None])
            freshness.snapshot(con, stage_t + "scored_shards")

        in_transaction(con, start)
    elif staged.rescore:
        done, append_after = staged.progress, None
        refresh = freshness.changes(ws, con, sch)   # the shards are as the run found them: the same items
    else:
        done, append_after = staged.progress, staged.append_after
        if staged.roll_back:
            if append_after is not None and (done.last_id is None or done.last_id < append_after):
                append_after = done.last_id

        def reopen():
            if staged.roll_back:
                where, args = ("", []) if done.last_id is None else (" WHERE id > ?", [done.last_id])
                con.execute(f"DELETE FROM {stage_t}item_scores" + where, args)
                con.execute(f"DELETE FROM {stage_t}label_scores" + where, args)
                done.save(con, stage_t)
                con.execute(f"UPDATE {stage_t}score_progress SET append_after = ?", [append_after])
            freshness.snapshot(con, stage_t + "scored_shards")   # the shards its rows were checked against

        in_transaction(con, reopen)
    if refresh is not None:
        if done.last_id is not None:
            log(f"resuming after item id {done.last_id:,}: {done.images:,} image and {done.captions:,} caption "
                "vectors of the changed items are rescored already")
        log(_refresh_line(refresh, name))
        batches = subset_batches(ws, con, refresh.rescore, batch_rows, done.last_id)
        todo = max(0, _count_located(ws, con, refresh.rescore) - done.images - done.captions)
    else:
        if done.last_id is not None:
            if interrupted:
                log(f"resuming after item id {done.last_id:,}: {done.images:,} image and {done.captions:,} caption "
                    "vectors are scored already")
            else:
                log(f"{n_img + n_cap - done.images - done.captions:,} vectors embedded since {name} was classified "
                    f"(items after id {done.last_id:,}): scoring them")
        batches = aligned_batches(ws, con, batch_rows, done.last_id)
        todo = max(0, n_img + n_cap - done.images - done.captions)
    resumed = done.images + done.captions if refresh is None else n_img + n_cap - todo
    if plan:
        plan(todo)
    insert_items, insert_rows = _INSERT_ITEMS.format(table=stage_t + "item_scores"), \
        _INSERT_ROWS.format(table=stage_t + "label_scores")
    for b in batches:
        items, scored = score_batch(b, q.vectors, scale, keep_k)
        done.add(b)
        con.register("batch_items", items)
        con.register("batch_rows", scored)
        in_transaction(con, lambda: (con.execute(insert_items), con.execute(insert_rows), done.save(con, stage_t)))
        con.unregister("batch_items")
        con.unregister("batch_rows")
        if progress:
            progress(len(b.image_rows) + len(b.caption_rows))

    def publish():
        target = stage_t if append_after is None and refresh is None else live_t
        con.execute(f"DELETE FROM {target}score_settings")
        con.execute(f"INSERT INTO {target}score_settings (label_set, label_set_digest, prompts, model, pretrained, "
                    "embed_dim, logit_scale, storage, top_k, n_labels, images, captions, cache_key, "
                    "ensemble_text_weight, ensemble_text_min) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [ls.name, ls.digest, wording.name, ident.model, ident.pretrained, ident.embed_dim, scale,
                     storage, len(ls) if keep_k is None else keep_k, len(ls), n_img, n_cap, q.cache_key,
                     ENSEMBLE_TEXT_WEIGHT, ENSEMBLE_TEXT_MIN])
        freshness.snapshot(con, target + "scored_shards")    # the shards these scores now reflect
        if refresh is not None:    # the changed items' rows replace theirs; the gone ones' go
            con.register("replaced", {"id": np.concatenate([refresh.rescore, refresh.gone])})
            for t in ("item_scores", "label_scores"):
                con.execute(f"DELETE FROM {live_t}{t} WHERE id IN (SELECT id FROM replaced)")
                con.execute(f"INSERT INTO {live_t}{t} BY NAME SELECT * FROM {stage_t}{t}")
            con.unregister("replaced")
            last = con.execute(f"SELECT last_id FROM {live_t}score_progress").fetchall()[0][0]
            if refresh.new_max is not None:
                last = refresh.new_max if last is None else max(last, refresh.new_max)
            covered(ws, con, last).save(con, live_t, finished=True)
            drop_staged(con, name)
        elif append_after is None:   # a whole classification: the staging tables become the scores
            con.execute(f"UPDATE {stage_t}score_progress SET append_after = NULL")
            done.save(con, stage_t, finished=True)
            sql.run_for(con, "scores_publish", name)
        else:                      # the new items' rows join the scores they extend
            for t in ("item_scores", "label_scores"):
                con.execute(f"DELETE FROM {live_t}{t} WHERE id > ?", [append_after])
                con.execute(f"INSERT INTO {live_t}{t} BY NAME SELECT * FROM {stage_t}{t}")
            done.save(con, live_t, finished=True)
            drop_staged(con, name)
        registry.completed(con, name)   # its views, and it becomes the active one

    in_transaction(con, publish)
    rows = con.execute(f"SELECT count(*) FROM {live_t}label_scores").fetchall()[0][0]
    return int(rows), resumed, interrupted


def _refresh_line(ch: Changes, name: str) -> str:
    """What a run that rescores changed items says it does, in one line."""
    again = int(np.isin(ch.rescore, ch.stale).sum())
    parts = []
    if again:
        parts.append(f"{plural(again, 'item')} re-embedded since {name} was last classified: rescored")
    if len(ch.rescore) > again:
        parts.append(f"{plural(len(ch.rescore) - again, 'item')} embedded since (or given a vector they lacked): "
                     "scored")
    if len(ch.gone):
        parts.append(f"{plural(len(ch.gone), 'item')} without vectors now (rejected or not embedded): "
                     "their scores removed")
    return "; ".join(parts)


def _count_located(ws: Workspace, con: duckdb.DuckDBPyConnection, ids: np.ndarray) -> int:
    """How many image and caption vectors these items have (what rescoring them scores)."""
    return sum(int(np.isin(store.open_shard(sh)[0], ids).sum())
               for kind in ("image", "caption") for sh in store.shard_files(ws, con, kind))
