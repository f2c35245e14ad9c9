-- The staging copies of scores_tables.sql's tables, next_<table>: a `curate classify`
-- run writes its rows here and, once it completes, renames them to the plain names in
-- one transaction (no copy), so readers see the previous complete scores until then. A
-- killed run with the same settings continues them (next_score_progress). The same
-- tables as scores_tables.sql, column for column (tests/core/test_schema.py checks it),
-- in the classification's schema, chosen through the search path:
-- Setup: CREATE SCHEMA IF NOT EXISTS "cls_by-hand"; SET search_path = '"cls_by-hand",main';

-- The active label set: the label index used everywhere, the name as written, the
-- prompt(s) whose embeddings became its query.
CREATE OR REPLACE TABLE next_labels (
    label_idx USMALLINT PRIMARY KEY,
    label VARCHAR NOT NULL,
    prompt VARCHAR NOT NULL,              -- the first (often only) prompt
    prompts VARCHAR[] NOT NULL,           -- every prompt averaged into the label's vector
    scene VARCHAR NOT NULL                -- indoor | outdoor | unknown
);

-- One row per scored item: its two best labels by the image and by the caption.
CREATE OR REPLACE TABLE next_item_scores (
    id BIGINT NOT NULL,
    image_label USMALLINT,                -- NULL: no image vector
    image_prob DOUBLE,
    image_sim FLOAT,
    image_label2 USMALLINT,
    image_prob2 DOUBLE,
    image_rest DOUBLE,                    -- the largest image probability of a label with no row
                                          -- in label_scores for this item (0 when all are stored)
    image_lse DOUBLE,                     -- log(sum(exp(logit_scale * sim))) over all labels
    caption_label USMALLINT,              -- NULL: no caption vector
    caption_prob DOUBLE,
    caption_sim FLOAT,
    caption_label2 USMALLINT,
    caption_prob2 DOUBLE,
    caption_rest DOUBLE,
    caption_lse DOUBLE,
    -- the study's ensemble (score_settings.ensemble_text_weight / _text_min), over every
    -- label; equal to ensemble_with(0.2, 0.5), kept here so that it reads as fast as
    -- predictions at any size
    ensemble_label USMALLINT,
    ensemble_prob DOUBLE,
    ensemble_label2 USMALLINT,
    ensemble_prob2 DOUBLE,
    ensemble_caption_used BOOLEAN
);

-- One row per (item, label) kept: every label (storage 'full'), or the union of the
-- item's top-k labels by image and by caption (storage 'topk'), with both modalities'
-- values for each, so that any weighted mix of the two is exact on these rows.
CREATE OR REPLACE TABLE next_label_scores (
    id BIGINT NOT NULL,
    label_idx USMALLINT NOT NULL,
    image_sim FLOAT,                      -- cosine; NULL: no image vector
    image_prob DOUBLE,
    caption_sim FLOAT,                    -- NULL: no caption vector
    caption_prob DOUBLE
);

-- How the scores were made (one row).
CREATE OR REPLACE TABLE next_score_settings (
    label_set VARCHAR NOT NULL,
    label_set_digest VARCHAR NOT NULL,
    prompts VARCHAR NOT NULL,
    model VARCHAR NOT NULL,
    pretrained VARCHAR NOT NULL,
    embed_dim INTEGER NOT NULL,
    logit_scale DOUBLE NOT NULL,
    storage VARCHAR NOT NULL,             -- full | topk
    top_k INTEGER NOT NULL,               -- labels per modality in label_scores (= n_labels when full)
    n_labels INTEGER NOT NULL,
    images BIGINT NOT NULL,
    captions BIGINT NOT NULL,
    cache_key VARCHAR NOT NULL,
    ensemble_text_weight DOUBLE NOT NULL, -- the `ensemble` view's parameters
    ensemble_text_min DOUBLE NOT NULL,
    created_at TIMESTAMP DEFAULT current_timestamp
);

-- How far the scores go (one row), written in the same transaction as each batch of
-- rows: a killed `curate classify` run with the same settings continues after
-- last_id, and a finished one scores only the items embedded since (docs/scores.md).
CREATE OR REPLACE TABLE next_score_progress (
    fingerprint VARCHAR NOT NULL,         -- JSON: every setting the stored values depend on
    last_id BIGINT,                       -- the highest item id of the last committed batch; NULL: none yet
    images BIGINT NOT NULL,               -- image vectors scored up to last_id
    captions BIGINT NOT NULL,             -- caption vectors scored up to last_id
    image_id_sum BIGINT NOT NULL,         -- the sums of their item ids (modulo 2^64): a resumed run
    caption_id_sum BIGINT NOT NULL,       -- checks that the shards still hold exactly these
    finished BOOLEAN NOT NULL,            -- the last run went to the end (score_settings written)
    append_after BIGINT,                  -- staging only: these rows extend the published scores
                                          -- after this id (items embedded since); NULL: a whole run
    rescore BOOLEAN NOT NULL DEFAULT false, -- staging only: these rows replace the published rows of
                                          -- the same items (items embedded again since they were scored)
    updated_at TIMESTAMP DEFAULT current_timestamp
);

-- The shards (main.shards) whose vectors the scores were made from, as they were then.
-- An item's vector is known by its shard's (kind, part, run_id): build-index rewrites a
-- shard only to take items out (file part-NNNNNN.rK.npy, same part and run), and writes
-- every vector it makes into a new shard. A recorded shard rewritten or gone means some
-- scores are older than their item's vector (re-embedded, rejected, repaired):
-- scores_fresh.sql refuses to show them, and the next `curate classify` rescores those
-- items only (docs/scores.md).
CREATE OR REPLACE TABLE next_scored_shards (
    kind VARCHAR NOT NULL,
    part INTEGER NOT NULL,
    run_id INTEGER,
    file VARCHAR NOT NULL,
    rows BIGINT NOT NULL,
    vec_sum VARCHAR
);
