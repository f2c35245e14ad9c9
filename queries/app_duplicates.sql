-- The app's duplicates view (curate/app/duplicates.py): the groups `curate dedup` stored
-- (queries/duplicates.sql), largest first, each with its members, the representative first.
-- TEMP: the app reads through read-only connections.
-- Usage: SELECT * FROM app_duplicate_groups('image') LIMIT 5;
-- Usage: SELECT * FROM app_group_members('image', [0, 3]);

CREATE OR REPLACE TEMP MACRO app_duplicate_groups(k) AS TABLE
SELECT group_id, representative, size, min_similarity
FROM duplicate_groups
WHERE kind = k
ORDER BY size DESC, group_id;

CREATE OR REPLACE TEMP MACRO app_group_members(k, groups) AS TABLE
SELECT d.group_id, d.id, d.id = d.representative AS representative, d.similarity, i.path, i.caption
FROM duplicates d JOIN items i ON i.id = d.id
WHERE d.kind = k AND list_contains(groups, d.group_id)
ORDER BY d.group_id, d.id <> d.representative, d.similarity DESC NULLS LAST, d.id;
