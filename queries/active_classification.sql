-- main's plain names for the ACTIVE classification (classifications.sql: the one chosen
-- with `curate classify --use NAME`, else the last completed): one view over each of its
-- score tables (scores_tables.sql), so every reader and a shell user see it by the
-- names of the tables; the view files (predictions.sql, ...) then run in main over
-- these. "cls_NAME" stands for the active classification's schema
-- (classification_schema.sql says how curate fills it in). The views name that schema:
-- a DuckDB view binds its names in its own schema, so a view main.labels over a plain
-- `labels` would read itself.
-- active_classification_drop.sql takes them away first (and alone, when no
-- classification is complete). To run this file as it is, on a stand-in classification:
-- Setup: CREATE SCHEMA "cls_NAME"; CREATE TABLE "cls_NAME".labels AS FROM labels; CREATE TABLE "cls_NAME".item_scores AS FROM item_scores;
-- Setup: CREATE TABLE "cls_NAME".label_scores AS FROM label_scores; CREATE TABLE "cls_NAME".score_settings AS FROM score_settings;
-- Setup: CREATE TABLE "cls_NAME".score_progress AS FROM score_progress; CREATE TABLE "cls_NAME".scored_shards AS FROM scored_shards;
-- Usage: SELECT count(*) FROM item_scores;

CREATE OR REPLACE VIEW main.labels AS SELECT * FROM "cls_NAME".labels;
CREATE OR REPLACE VIEW main.item_scores AS SELECT * FROM "cls_NAME".item_scores;
CREATE OR REPLACE VIEW main.label_scores AS SELECT * FROM "cls_NAME".label_scores;
CREATE OR REPLACE VIEW main.score_settings AS SELECT * FROM "cls_NAME".score_settings;
CREATE OR REPLACE VIEW main.score_progress AS SELECT * FROM "cls_NAME".score_progress;
CREATE OR REPLACE VIEW main.scored_shards AS SELECT * FROM "cls_NAME".scored_shards;
