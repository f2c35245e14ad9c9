-- Which shards each FAISS index file holds (curate/ingest/faiss_index.py), so a later
-- `curate build-index` adds only the shards a file does not hold yet. The rest of an
-- index's record (recipe, factory, nlist, trained size, file fingerprint) is the JSON
-- in meta['index.<kind>'].
CREATE TABLE IF NOT EXISTS index_shards (
    kind VARCHAR NOT NULL,                       -- image | caption: which index file
    part INTEGER NOT NULL,                       -- a shards.part whose vectors the file holds
    rows BIGINT NOT NULL,
    run_id INTEGER,
    PRIMARY KEY (kind, part)
);
