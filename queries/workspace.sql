-- The core tables of a workspace (curate/core/workspace.py runs this file at every
-- read-write connect; `curate build-index` fills them). Safe to run again: every
-- statement is IF NOT EXISTS. Columns added since the first release are in
-- workspace_upgrades.sql, which runs right after this file.
--
-- `id` is ours (dense BIGINT, the FAISS id); `source_id` is what the source calls the
-- item (manifest id, or the path relative to the source root); `source_no` is the
-- source (table `sources`). (source_no, source_id) is what makes a second run over the
-- same source add only new items, and keeps two sources' items apart. A manifest's own
-- columns are added to `items` as it is scanned.
CREATE TABLE IF NOT EXISTS sources (
    source_no INTEGER PRIMARY KEY,
    kind VARCHAR NOT NULL,                       -- folder | tree | manifest | clip-retrieval | unknown
    location VARCHAR,                            -- the resolved folder or manifest file
    description VARCHAR NOT NULL UNIQUE,         -- what identifies it (includes a captions folder)
    first_run INTEGER,
    added_at TIMESTAMP DEFAULT current_timestamp
);
-- name: items
CREATE TABLE IF NOT EXISTS items (
    id BIGINT PRIMARY KEY,
    source_id VARCHAR NOT NULL,
    path VARCHAR NOT NULL,
    caption VARCHAR,
    status VARCHAR NOT NULL DEFAULT 'pending',   -- pending | embedded | rejected
    caption_tokens INTEGER,
    caption_truncated BOOLEAN,
    run_id INTEGER,
    source_no INTEGER,
    UNIQUE (source_no, source_id)
);
CREATE TABLE IF NOT EXISTS rejected (
    item_id BIGINT,
    source_id VARCHAR,
    path VARCHAR,
    reason VARCHAR NOT NULL,
    stage VARCHAR NOT NULL,                      -- scan | decode | caption | import
    run_id INTEGER,
    rejected_at TIMESTAMP DEFAULT current_timestamp,
    source_no INTEGER
);
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY,
    command VARCHAR,
    source VARCHAR,
    model VARCHAR,
    pretrained VARCHAR,
    random_weights BOOLEAN,
    embed_dim INTEGER,
    device VARCHAR,
    started_at TIMESTAMP,
    finished_at TIMESTAMP,
    duration_s DOUBLE,
    items_added BIGINT,
    items_embedded BIGINT,
    items_rejected BIGINT,
    status VARCHAR,                              -- running | finished | failed | interrupted
    versions JSON
);
CREATE TABLE IF NOT EXISTS meta (
    key VARCHAR PRIMARY KEY,
    value VARCHAR
);
CREATE TABLE IF NOT EXISTS shards (
    kind VARCHAR NOT NULL,                       -- image | caption
    part INTEGER NOT NULL,
    file VARCHAR NOT NULL,
    rows BIGINT NOT NULL,
    run_id INTEGER,
    PRIMARY KEY (kind, part)
);
-- item_extras: each item's id and the source's own columns (a manifest's columns, the
-- InstaCities `city`, source_id), in their order in items: items without the columns
-- curate manages. What `curate filter` writes after its own columns (subsets.sql and
-- subset_calibrated.sql join it); the one list of curate's internal item columns.
CREATE VIEW IF NOT EXISTS item_extras AS
SELECT COLUMNS(lambda c: NOT list_contains(['path', 'caption', 'status', 'caption_tokens', 'caption_truncated',
                                            'run_id', 'source_no'], lower(c)))
FROM items;

-- next_item_id(): the id a new item takes. Ids are ours and dense (they are the FAISS
-- ids), given in the order a source's new items are found; every scan and import
-- (curate/ingest/sources.py, manifests.py, precomputed.py) allocates through this,
-- as `next_item_id() - 1 + row_number() OVER (ORDER BY <the order found>)`.
-- Usage: SELECT next_item_id();
CREATE MACRO IF NOT EXISTS next_item_id() AS (SELECT coalesce(max(id), -1) + 1 FROM items);
