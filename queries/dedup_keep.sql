-- `curate filter --dedup`'s rule (curate/select/dedup.py restrict_kept), shared with the app's
-- browse filter "duplicates: representatives only" (queries/app_duplicates.sql), so both keep
-- the same rows. TEMP: made on the caller's connection (filter and the app read read-only).
-- Setup: CREATE OR REPLACE TEMP TABLE dedup_demo AS SELECT id, 0.5 AS prob FROM items;
-- Usage: SELECT * FROM dedup_dropped('dedup_demo') LIMIT 5;

-- dedup_dropped(rel): the ids of the relation named `rel` (columns id, prob: a selection) that
-- --dedup leaves out. Of each image duplicate group (queries/duplicates.sql) the selection
-- keeps one row: the group's representative when it is selected, else its selected member
-- of highest prob, then smallest id; items in no group are all kept.
CREATE OR REPLACE TEMP MACRO dedup_dropped(rel) AS TABLE
SELECT id FROM (
    SELECT k.id, row_number() OVER (PARTITION BY d.group_id
                                    ORDER BY (k.id = d.representative) DESC, k.prob DESC, k.id) AS nth
    FROM query_table(rel) k JOIN duplicates d ON d.kind = 'image' AND d.id = k.id
)
WHERE nth > 1;
