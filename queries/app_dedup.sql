-- The browse grid's "duplicates" control (curate/app/data.py): a selection (the relation named
-- `rel`: id, label, prob, the rows app_view keeps that pass the where filters, as a TEMP table)
-- shown with its image duplicate groups. `dup`:
--   'all'              every row;
--   'representatives'  one row per group, as `curate filter --dedup` keeps (dedup_dropped,
--                      queries/dedup_keep.sql), and every row in no group;
--   'groups'           only the rows in a group (the whole groups the selection holds).
-- It needs queries/dedup_keep.sql made on the connection first (the app runs both).
-- Setup: .read queries/dedup_keep.sql
-- Setup: CREATE OR REPLACE TEMP TABLE app_kept AS SELECT id, label, prob FROM predictions;
-- Usage: SELECT * FROM app_deduped('app_kept', 'representatives') LIMIT 5;
-- Usage: SELECT * FROM app_in_groups('app_kept') WHERE pos > 0 ORDER BY pos LIMIT 5;
-- Usage: SELECT * FROM app_dedup_label_counts('app_kept', 0.5, 'representatives') LIMIT 5;
-- Usage: SELECT * FROM app_dedup_count('app_kept', 0.5, [], 'groups');
-- Usage: SELECT * FROM app_groups() LIMIT 5;

-- app_deduped(rel, dup): the rows `dup` keeps, each with its group (NULL: in none), whether it
-- is the group's representative, its cosine to it, and the group's size (all its members).
CREATE OR REPLACE TEMP MACRO app_deduped(rel, dup) AS TABLE
SELECT s.id, s.label, s.prob, d.group_id, d.id = d.representative AS representative, d.similarity,
       g.size AS group_size
FROM query_table(rel) s
LEFT JOIN duplicates d ON d.kind = 'image' AND d.id = s.id
LEFT JOIN (SELECT group_id, count(*) AS size FROM duplicates WHERE kind = 'image' GROUP BY group_id) g
       ON g.group_id = d.group_id
WHERE CASE dup WHEN 'representatives' THEN s.id NOT IN (SELECT id FROM dedup_dropped(rel))
               WHEN 'groups' THEN d.id IS NOT NULL
               ELSE true END;

-- app_in_groups(rel): the 'groups' rows in the grid's order, `pos` 1, 2, ...: a group's rows
-- together, its representative first, then by prob; the groups by their most probable row
-- (the grid's order, group by group), then group id.
CREATE OR REPLACE TEMP MACRO app_in_groups(rel) AS TABLE
SELECT *, row_number() OVER (ORDER BY group_best DESC, group_id, representative DESC, prob DESC, id) AS pos
FROM (SELECT *, max(prob) OVER (PARTITION BY group_id) AS group_best FROM app_deduped(rel, 'groups'));

-- app_dedup_keys(rel, dup): what a count under `dup` counts, one key per row (NULL: no row):
-- with 'representatives' a group's rows share one key (the rows --dedup keeps of a selection
-- are one per group the selection meets, and its rows in none); otherwise each row its own.
CREATE OR REPLACE TEMP MACRO app_dedup_keys(rel, dup) AS TABLE
SELECT s.id, s.label, s.prob,
       {'g': CASE WHEN dup = 'representatives' THEN d.group_id END,
        'i': CASE WHEN dup <> 'representatives' OR d.group_id IS NULL THEN s.id END} AS k
FROM query_table(rel) s
LEFT JOIN duplicates d ON d.kind = 'image' AND d.id = s.id
WHERE dup <> 'groups' OR d.id IS NOT NULL;

-- app_dedup_label_counts(rel, min_prob, dup): the sidebar under the control (app_label_counts,
-- app_browse.sql): per label, the items selecting that label alone at min_prob shows, and at 0.
CREATE OR REPLACE TEMP MACRO app_dedup_label_counts(rel, min_prob, dup) AS TABLE
SELECT l.label, count(DISTINCT s.k) FILTER (s.prob >= min_prob) AS kept, count(DISTINCT s.k) AS items
FROM labels l LEFT JOIN app_dedup_keys(rel, dup) s ON s.label = l.label
GROUP BY l.label, l.label_idx
ORDER BY kept DESC, items DESC, l.label_idx;

-- app_dedup_count(rel, min_prob, wanted, dup): how many items the selection (min_prob, its
-- labels `wanted`, an empty list: any) shows under `dup`: what `curate filter --dedup` writes.
CREATE OR REPLACE TEMP MACRO app_dedup_count(rel, min_prob, wanted, dup) AS TABLE
SELECT count(DISTINCT k) AS n
FROM app_dedup_keys(rel, dup)
WHERE prob >= min_prob AND (len(wanted) = 0 OR list_contains(wanted, label));

-- app_groups(): every item of an image group, by id: its group, whether it is the
-- representative, its cosine to it (NaN: none stored) and its group's size. What the app keeps
-- in memory (curate/app/data.py `Groups`) to answer the macros above without opening the file
-- while the database is unchanged (tests/app/test_app_browse_filters.py holds both to the same answers).
CREATE OR REPLACE TEMP MACRO app_groups() AS TABLE
SELECT id, group_id, id = representative AS representative, coalesce(similarity, 'NaN'::FLOAT) AS similarity,
       count(*) OVER (PARTITION BY group_id) AS size
FROM duplicates
WHERE kind = 'image'
ORDER BY id;
