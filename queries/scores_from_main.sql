-- A workspace classified by a curate from before named classifications kept its score
-- tables (scores_tables.sql, and the staging next_* copies of a run in flight) in main.
-- At its first read-write connect curate moves them, once, into the schema of a
-- classification ("cls_NAME", classification_schema.sql; the name comes from their
-- settings: curate/classify/registry.py upgrade): each table that is there is copied
-- whole, as it is (the columns of the curate that made it), and dropped from main. The
-- tables are read by their plain names, from the schema first on the search path (main
-- when curate runs it). To run it as it is, on a stand-in for such a workspace (a schema
-- `legacy` first on the search path, holding copies of the active classification's
-- tables under both names):
-- Setup: CREATE SCHEMA "cls_NAME"; CREATE SCHEMA legacy; SET search_path = 'legacy';
-- Setup: CREATE TABLE labels AS FROM main.labels; CREATE TABLE next_labels AS FROM main.labels;
-- Setup: CREATE TABLE item_scores AS FROM main.item_scores; CREATE TABLE next_item_scores AS FROM main.item_scores;
-- Setup: CREATE TABLE label_scores AS FROM main.label_scores; CREATE TABLE next_label_scores AS FROM main.label_scores;
-- Setup: CREATE TABLE score_settings AS FROM main.score_settings; CREATE TABLE next_score_settings AS FROM main.score_settings;
-- Setup: CREATE TABLE score_progress AS FROM main.score_progress; CREATE TABLE next_score_progress AS FROM main.score_progress;
-- Setup: CREATE TABLE scored_shards AS FROM main.scored_shards; CREATE TABLE next_scored_shards AS FROM main.scored_shards;
-- Usage: SELECT count(*) FROM "cls_NAME".item_scores;

-- name: labels
CREATE TABLE "cls_NAME".labels AS SELECT * FROM labels;
-- name: drop labels
DROP TABLE labels;

-- name: item_scores
CREATE TABLE "cls_NAME".item_scores AS SELECT * FROM item_scores;
-- name: drop item_scores
DROP TABLE item_scores;

-- name: label_scores
CREATE TABLE "cls_NAME".label_scores AS SELECT * FROM label_scores;
-- name: drop label_scores
DROP TABLE label_scores;

-- name: score_settings
CREATE TABLE "cls_NAME".score_settings AS SELECT * FROM score_settings;
-- name: drop score_settings
DROP TABLE score_settings;

-- name: score_progress
CREATE TABLE "cls_NAME".score_progress AS SELECT * FROM score_progress;
-- name: drop score_progress
DROP TABLE score_progress;

-- name: scored_shards
CREATE TABLE "cls_NAME".scored_shards AS SELECT * FROM scored_shards;
-- name: drop scored_shards
DROP TABLE scored_shards;

-- name: next_labels
CREATE TABLE "cls_NAME".next_labels AS SELECT * FROM next_labels;
-- name: drop next_labels
DROP TABLE next_labels;

-- name: next_item_scores
CREATE TABLE "cls_NAME".next_item_scores AS SELECT * FROM next_item_scores;
-- name: drop next_item_scores
DROP TABLE next_item_scores;

-- name: next_label_scores
CREATE TABLE "cls_NAME".next_label_scores AS SELECT * FROM next_label_scores;
-- name: drop next_label_scores
DROP TABLE next_label_scores;

-- name: next_score_settings
CREATE TABLE "cls_NAME".next_score_settings AS SELECT * FROM next_score_settings;
-- name: drop next_score_settings
DROP TABLE next_score_settings;

-- name: next_score_progress
CREATE TABLE "cls_NAME".next_score_progress AS SELECT * FROM next_score_progress;
-- name: drop next_score_progress
DROP TABLE next_score_progress;

-- name: next_scored_shards
CREATE TABLE "cls_NAME".next_scored_shards AS SELECT * FROM next_scored_shards;
-- name: drop next_scored_shards
DROP TABLE next_scored_shards;
