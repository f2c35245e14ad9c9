"""Resume and staging of a classify run: what the stored scores depend on (the fingerprint),
how far they go, whether a run can continue them, and the staging copies (next_*) a
run writes before it publishes."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import duckdb

from ..core import sql, store
from ..core.workspace import ModelIdentity, Workspace
from . import freshness
from .freshness import Changes
from .label_vectors import LabelQueries
from .labels import LabelSet
from .scoring import ENSEMBLE_TEXT_MIN, ENSEMBLE_TEXT_WEIGHT, Batch
from .state import SCORE_TABLES, STAGE

# Bumped whenever scoring changes what it writes: scores of another version are never resumed.
SCORES_FORMAT = 1


def fingerprint(q: LabelQueries, ls: LabelSet, ident: ModelIdentity, scale: float, storage: str,
                keep_k: int | None) -> str:
    """Everything the stored values depend on, as JSON: only scores made with all of it are resumed.

    (The label set's name and the wording's name are not in it: the same labels and
    prompt texts from another file give the same scores.)
    """
    return json.dumps({"format": SCORES_FORMAT, "label_set_digest": ls.digest, "n_labels": len(ls),
                       "cache_key": q.cache_key, "model": [ident.model, ident.pretrained, ident.embed_dim],
                       "logit_scale": scale, "storage": storage, "top_k": keep_k,
                       "ensemble": [ENSEMBLE_TEXT_WEIGHT, ENSEMBLE_TEXT_MIN]}, sort_keys=True)


def _wrap64(x: int) -> int:
    """x as a BIGINT, modulo 2**64 (the id sums wrap the way numpy's int64 sums do)."""
    return (x + 2 ** 63) % 2 ** 64 - 2 ** 63


@dataclass
class ScoreProgress:
    """The score_progress row: how far the scores go, and what they hold up to there."""

    last_id: int | None          # the highest item id of the last committed batch; None: no batch yet
    images: int                  # image vectors scored
    captions: int
    image_id_sum: int            # sums of their item ids (modulo 2**64)
    caption_id_sum: int

    def add(self, b: Batch) -> None:
        img, cap = b.ids[b.image_rows], b.ids[b.caption_rows]
        self.images += len(img)
        self.captions += len(cap)
        self.image_id_sum = _wrap64(self.image_id_sum + int(img.sum()))
        self.caption_id_sum = _wrap64(self.caption_id_sum + int(cap.sum()))
        self.last_id = int(b.ids[-1])

    def save(self, con: duckdb.DuckDBPyConnection, prefix: str = "", finished: bool = False) -> None:
        con.execute(f"UPDATE {prefix}score_progress SET last_id = ?, images = ?, captions = ?, image_id_sum = ?, "
                    "caption_id_sum = ?, finished = ?, updated_at = current_timestamp",
                    [self.last_id, self.images, self.captions, self.image_id_sum, self.caption_id_sum, finished])


def _vectors_upto(ws: Workspace, con: duckdb.DuckDBPyConnection, kind: str,
                  upto: int | None) -> tuple[int, int, int | None, bool]:
    """(count, id sum, largest id) of the committed vectors of a kind with id <= upto, and
    whether there are vectors with a greater id. Reads the id files only."""
    n, total, top, more = 0, 0, None, False
    for shard in store.shard_files(ws, con, kind):
        ids, _vecs = store.open_shard(shard)
        if upto is None:
            more = more or len(ids) > 0
            continue
        m = ids <= upto
        k = int(m.sum())
        if k:
            n += k
            total = _wrap64(total + int(ids[m].sum()))
            top = max(int(ids[m].max()), top if top is not None else int(ids[m].max()))
        more = more or k < len(ids)
    return n, total, top, more


def covered(ws: Workspace, con: duckdb.DuckDBPyConnection, last_id: int | None) -> ScoreProgress:
    """The progress record of scores that hold every current vector up to last_id."""
    n_img, sum_img, _t, _m = _vectors_upto(ws, con, "image", last_id)
    n_cap, sum_cap, _t, _m = _vectors_upto(ws, con, "caption", last_id)
    return ScoreProgress(last_id, n_img, n_cap, sum_img, sum_cap)


def _bare(schema: str) -> str:
    """A schema's name as information_schema spells it (the argument is a quoted identifier)."""
    return schema[1:-1].replace('""', '"') if schema.startswith('"') else schema


def resume_point(ws: Workspace, con: duckdb.DuckDBPyConnection, fp: str, n_labels: int,
                  log: Callable[[str], None], prefix: str = "", schema: str = "main"
                  ) -> tuple[ScoreProgress, bool] | Changes | None:
    """Where the scores of the tables `<schema>.<prefix>item_scores`... stop, if this run can
    continue them: (progress, whether the rows after progress.last_id must go first). None:
    they cannot be continued (absent, other settings, other vectors). `schema`: the
    classification's, as a quoted identifier.

    Published scores (no prefix) under which vectors changed (items embedded again,
    rejected, embedded late at or below the last id scored) give the Changes instead: a
    run rescores those items only. A staging copy with such changes starts over."""
    have = sql.relations(con, _bare(schema))
    if not all(prefix + t in have for t in SCORE_TABLES):
        if not prefix and "item_scores" in have:
            log("starting over: these scores do not record which vectors they were made from (an older curate "
                "made them)")
        return None
    rows = con.execute(f"SELECT fingerprint, last_id, images, captions, image_id_sum, caption_id_sum "
                       f"FROM {schema}.{prefix}score_progress").fetchall()
    if len(rows) != 1:
        return None
    if rows[0][0] != fp:
        log("starting over: discarding an unfinished classify run made with other settings" if prefix else
            "starting over: the workspace's scores were made with other settings (they stay in use until "
            "this run completes)")
        return None
    if con.execute(f"SELECT count(*) FROM {schema}.{prefix}labels").fetchall()[0][0] != n_labels:
        return None
    p = ScoreProgress(*rows[0][1:])
    if p.last_id is None:
        return p, False
    if not prefix and con.execute(f"SELECT count(*) FROM {schema}.scored_shards").fetchall()[0][0] == 0:
        log("starting over: these scores do not record which vectors they were made from (an older curate "
            "made them)")
        return None
    same = freshness.same_shards(con, f"{schema}.{prefix}scored_shards")   # the common case: reads no file
    ch = None if same else freshness.changes(ws, con, schema, prefix)
    if ch is not None and (len(ch.stale) or (len(ch.rescore) and ch.rescore[0] <= p.last_id)):  # changed where scored
        if not prefix:
            return ch
        log("starting over: items were embedded again under the unfinished classify run")
        return None
    # The shards must still hold exactly the vectors scored, up to the last id scored;
    # what was embedded since must come after it.
    n_img, sum_img, top_img, more_img = _vectors_upto(ws, con, "image", p.last_id)
    n_cap, sum_cap, _top, _more = _vectors_upto(ws, con, "caption", p.last_id)
    if (n_img, sum_img, n_cap, sum_cap) != (p.images, p.image_id_sum, p.captions, p.caption_id_sum):
        log("starting over: the embeddings are not the ones the scores in the workspace were made from")
        return None
    if more_img and (top_img is None or top_img < p.last_id):
        # The last batches held captions only (items after the last image). Images
        # embedded since come after them, and a run from the start puts those captions
        # in one batch with the next images: score them again that way.
        n_cap, sum_cap, _top, _more = _vectors_upto(ws, con, "caption", top_img)
        return ScoreProgress(top_img, n_img, n_cap, sum_img, sum_cap), True
    return p, False


def create_staged(con: duckdb.DuckDBPyConnection, schema: str = "main") -> None:
    """The staging copies <schema>.next_<table>, empty (queries/scores_staging.sql)."""
    with sql.search_path(con, schema):
        sql.run(con, "scores_staging")


def drop_staged(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """The staging copies of the classification `name` dropped (queries/scores_staging_drop.sql)."""
    sql.run_for(con, "scores_staging_drop", name)


@dataclass
class Staged:
    """An unfinished run in the staging tables that this run continues."""

    progress: ScoreProgress
    roll_back: bool              # the staged rows after progress.last_id go first
    append_after: int | None     # the rows extend the published scores after this id
    rescore: bool                # the rows replace the published rows of changed items


def staged_point(ws: Workspace, con: duckdb.DuckDBPyConnection, fp: str, n_labels: int,
                  log: Callable[[str], None], name: str) -> Staged | None:
    """An unfinished run with these settings in the staging tables of the classification
    `name`, if it can be continued.

    Staging tables of other settings (or that cannot be continued) are dropped. A run
    that rescores changed items continues only while the shards are exactly those it
    started from (the items to rescore are then the same).
    """
    schema = sql.classification_schema(name)
    have = sql.relations(con, _bare(schema))
    if not any(STAGE + t in have for t in SCORE_TABLES):
        return None
    rescore = (all(STAGE + t in have for t in SCORE_TABLES)
               and con.execute(f"SELECT bool_or(rescore) FROM {schema}.{STAGE}score_progress").fetchall()[0][0])
    staged = None
    if rescore:
        rows = con.execute(f"SELECT fingerprint, last_id, images, captions, image_id_sum, caption_id_sum "
                           f"FROM {schema}.{STAGE}score_progress").fetchall()
        if (len(rows) == 1 and rows[0][0] == fp and _live_is(con, fp, schema)
                and freshness.same_shards(con, f"{schema}.{STAGE}scored_shards")):
            staged = Staged(ScoreProgress(*rows[0][1:]), False, None, True)
    else:
        point = resume_point(ws, con, fp, n_labels, log, prefix=STAGE, schema=schema)
        if isinstance(point, tuple):
            append_after = con.execute(f"SELECT append_after FROM {schema}.{STAGE}score_progress").fetchall()[0][0]
            if append_after is None or _live_is(con, fp, schema):  # else staged for a base no longer there
                staged = Staged(point[0], point[1], append_after, False)
    if staged is None:
        in_transaction(con, lambda: drop_staged(con, name))
    return staged


def _live_is(con: duckdb.DuckDBPyConnection, fp: str, schema: str = "main") -> bool:
    if not {"score_progress", "score_settings"} <= sql.relations(con, _bare(schema)):
        return False
    rows = con.execute(f"SELECT fingerprint FROM {schema}.score_progress").fetchall()
    return len(rows) == 1 and rows[0][0] == fp


def in_transaction(con: duckdb.DuckDBPyConnection, work: Callable[[], object]) -> None:
    with sql.transaction(con):
        work()
