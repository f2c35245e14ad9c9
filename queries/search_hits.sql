-- The hits of a `curate search`, ranked, before they are written out with their items'
-- paths, captions and the source's own columns (curate/select/search.py write_hits): a
-- TEMP table of the connection that writes them.
-- Usage: SELECT count(*) FROM hits;

CREATE OR REPLACE TEMP TABLE hits (
    rank INTEGER,
    id BIGINT,
    score DOUBLE,            -- cosine of the query and the image (--mode caption: the caption)
    label VARCHAR,           -- the item's top label under the classification read (NULL: not classified)
    prob DOUBLE
);
