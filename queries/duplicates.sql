-- Near-duplicates (`curate dedup`): groups of items that are the same photo (re-encoded,
-- resized, cropped, bordered, copied under another name) or carry the same caption text.
--
-- duplicate_pairs: every pair (a < b) the image index found at cosine >= the threshold
-- (kind 'image'); dedup keeps them so that a rerun queries only the new items' vectors.
-- duplicates: one row per item that is in a group of two or more: its group (the
-- smallest id in it), the group's representative and the cosine of the item's image
-- vector to the representative's (1 for caption-text groups). Items in no group are
-- unique. Groups are connected components: a ~ b ~ c is one group even when a !~ c.
-- The representative is the item with the largest file (item_files.size), then the
-- smallest id.
-- Usage: SELECT * FROM duplicate_groups ORDER BY size DESC LIMIT 10;
-- Usage: SELECT * FROM dedup_removed LIMIT 10;
-- Usage: SELECT * FROM caption_text_duplicates LIMIT 10;
CREATE TABLE IF NOT EXISTS duplicate_pairs (
    kind VARCHAR NOT NULL,
    a BIGINT NOT NULL,
    b BIGINT NOT NULL,
    similarity FLOAT NOT NULL
);

CREATE TABLE IF NOT EXISTS duplicates (
    kind VARCHAR NOT NULL,          -- 'image' or 'caption-text'
    id BIGINT NOT NULL,
    group_id BIGINT NOT NULL,
    representative BIGINT NOT NULL,
    similarity FLOAT,               -- cosine to the representative's image vector
    PRIMARY KEY (kind, id)
);

-- A caption as compared for caption-text groups: whitespace runs as one space, trimmed,
-- lower case; NULL when nothing is left.
CREATE OR REPLACE MACRO normalised_caption(c) AS
nullif(lower(trim(regexp_replace(c, '\s+', ' ', 'g'))), '');

-- The caption-text groups as the items are now (what `curate dedup --kind caption-text`
-- stores in duplicates): embedded items whose normalised captions are equal, two or more.
CREATE OR REPLACE VIEW caption_text_duplicates AS
WITH c AS (
    SELECT i.id, normalised_caption(i.caption) AS text, f.size
    FROM items i LEFT JOIN item_files f ON f.item_id = i.id
    WHERE i.status = 'embedded' AND normalised_caption(i.caption) IS NOT NULL
), g AS (
    SELECT text, min(id) AS group_id, arg_max(id, (coalesce(size, -1), -id)) AS representative
    FROM c GROUP BY text HAVING count(*) > 1
)
SELECT c.id, g.group_id, g.representative, 1.0::FLOAT AS similarity, g.text
FROM c JOIN g USING (text)
ORDER BY g.group_id, c.id;

-- One row per group: its size, representative (with its path) and the lowest cosine of
-- a member to the representative.
CREATE OR REPLACE VIEW duplicate_groups AS
SELECT d.kind, d.group_id, any_value(d.representative) AS representative, count(*) AS size,
       min(d.similarity) FILTER (WHERE d.id <> d.representative) AS min_similarity,
       any_value(r.path) AS representative_path
FROM duplicates d JOIN items r ON r.id = d.representative
GROUP BY d.kind, d.group_id;

-- What dedup removes: every member of a group but its representative.
CREATE OR REPLACE VIEW dedup_removed AS
SELECT d.kind, d.id, d.group_id, d.representative, d.similarity, i.path, i.caption
FROM duplicates d JOIN items i ON i.id = d.id
WHERE d.id <> d.representative
ORDER BY d.kind, d.group_id, d.id;
