-- A workspace made before `sources` existed moves to the (source_no, source_id) key
-- (curate/ingest/sources.py upgrade_items). Those workspaces declare items.source_id
-- UNIQUE, which would hide a second source's items named like the first's, and DuckDB
-- cannot drop a constraint: items is set aside (items_set_aside.sql: renamed items_before_sources), made again (workspace.sql's `items`, plus
-- every column the old one had), and filled back with the same rows and ids, each item
-- given the source its run recorded in `runs.source`; all in one transaction.
-- To run it by hand on a current workspace, set its items aside as an old one's were:
-- Setup: CREATE TABLE items_before_sources AS SELECT * EXCLUDE (source_no) FROM items; DELETE FROM items;
-- Usage: SELECT count(*) FROM items;

-- One source per recorded run description, numbered in the order they first ran.
-- name: sources
INSERT INTO sources (source_no, kind, location, description, first_run)
SELECT row_number() OVER (ORDER BY first_run), kind, location, description, first_run FROM (
    SELECT coalesce(r.source, 'items from before sources were recorded') AS description,
           min(i.run_id) AS first_run
    FROM items_before_sources i LEFT JOIN runs r USING (run_id) GROUP BY 1) d,
LATERAL (SELECT CASE WHEN starts_with(description, 'manifest ') THEN 'manifest'
                     WHEN starts_with(description, 'folder ') THEN 'folder'
                     WHEN starts_with(description, 'image tree ') THEN 'tree'
                     WHEN starts_with(description, 'clip-retrieval ') THEN 'clip-retrieval'
                     ELSE 'unknown' END AS kind,
                CASE WHEN starts_with(description, 'image tree ')
                     THEN regexp_extract(description, '^image tree (.*) with captions under ', 1)
                     WHEN starts_with(description, 'items from') THEN NULL
                     ELSE regexp_extract(description, '^[a-z-]+ (.*)$', 1) END AS location)
WHERE description NOT IN (SELECT description FROM sources);

-- The rows back, in id order, each with its source's number.
-- name: items
INSERT INTO items BY NAME
SELECT b.*, s.source_no
FROM items_before_sources b LEFT JOIN runs r USING (run_id)
JOIN sources s ON s.description = coalesce(r.source, 'items from before sources were recorded')
ORDER BY b.id;

-- name: drop_old
DROP TABLE items_before_sources;
