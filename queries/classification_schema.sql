-- The schema of one named classification (classifications.sql): made when the first run
-- under its name starts, dropped with all it holds by `curate classify --drop NAME`.
--
-- "cls_NAME", here and in every file that makes or drops one classification's objects
-- (active_classification.sql, scores_publish.sql, scores_staging_drop.sql,
-- scores_from_main.sql, calibration_owner.sql), stands for that classification's schema.
-- DuckDB takes no parameter for an identifier, so curate runs such a file with
-- "cls_NAME" replaced by the schema of a checked name (lower case: a real schema is
-- never "cls_NAME"), quoted as an identifier (curate/core/sql.py for_classification: the
-- only change curate makes to the text of a file here). By hand, write the schema of
-- your classification in its place; as written, this file makes a schema of that very
-- name and drops it again.
-- Usage: SELECT count(*) FROM duckdb_schemas() WHERE schema_name = 'cls_NAME';

-- name: create
CREATE SCHEMA IF NOT EXISTS "cls_NAME";

-- name: drop
DROP SCHEMA IF EXISTS "cls_NAME" CASCADE;
