-- A classification's staging tables (scores_staging.sql) dropped: the unfinished run
-- they held is discarded (`curate classify --restart`, other settings), or its rows
-- have joined the published scores (a run that rescored or added items only).
-- "cls_NAME" stands for the classification's schema (classification_schema.sql).
-- Usage: SELECT count(*) FROM duckdb_tables() WHERE schema_name = 'cls_NAME';

DROP TABLE IF EXISTS "cls_NAME".next_labels;
DROP TABLE IF EXISTS "cls_NAME".next_item_scores;
DROP TABLE IF EXISTS "cls_NAME".next_label_scores;
DROP TABLE IF EXISTS "cls_NAME".next_score_settings;
DROP TABLE IF EXISTS "cls_NAME".next_score_progress;
DROP TABLE IF EXISTS "cls_NAME".next_scored_shards;
