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

-- How each index is searched, as measured when it was last built or grown: the search
-- parameter (nprobe for IVF, efSearch for HNSW; NULL for an exact flat index) tuned to
-- the smallest value whose recall@10's lower bound (`recall_low`, one-sided 95%, the query
-- the unit) reaches `target`, on `queries` of the collection's own vectors against exact
-- search; `curate search` uses it. From the index record in meta.
CREATE OR REPLACE VIEW index_search AS
SELECT substr(key, 7) AS kind,
       json_extract_string(value, '$.current.recipe') AS recipe,
       json_extract_string(value, '$.current.factory') AS factory,
       json_extract_string(value, '$.current.ntotal')::BIGINT AS vectors,
       json_extract_string(value, '$.current.search.param') AS param,
       json_extract_string(value, '$.current.search.value')::INTEGER AS value,
       json_extract_string(value, '$.current.search.recall')::DOUBLE AS recall,
       json_extract_string(value, '$.current.search.recall_low')::DOUBLE AS recall_low,
       json_extract_string(value, '$.current.search.target')::DOUBLE AS target,
       json_extract_string(value, '$.current.search.queries')::INTEGER AS queries,
       json_extract_string(value, '$.current.search.latency_ms')::DOUBLE AS latency_ms,
       json_extract_string(value, '$.current.search.qps')::DOUBLE AS qps
FROM meta
WHERE key IN ('index.image', 'index.caption') AND json_extract(value, '$.current') IS NOT NULL;
