-- A `curate classify` run that made a whole classification publishes it: each staging
-- table next_<table> (scores_staging.sql) becomes <table> (scores_tables.sql), the
-- previous scores dropped, in the run's last transaction and without a copy, so readers
-- see the previous complete scores until it commits. "cls_NAME" stands for the
-- classification's schema (classification_schema.sql). To run it as it is, on a stand-in
-- classification whose staging tables are copies of the active one's tables:
-- Setup: CREATE SCHEMA "cls_NAME"; CREATE TABLE "cls_NAME".next_labels AS FROM labels; CREATE TABLE "cls_NAME".next_item_scores AS FROM item_scores;
-- Setup: CREATE TABLE "cls_NAME".next_label_scores AS FROM label_scores; CREATE TABLE "cls_NAME".next_score_settings AS FROM score_settings;
-- Setup: CREATE TABLE "cls_NAME".next_score_progress AS FROM score_progress; CREATE TABLE "cls_NAME".next_scored_shards AS FROM scored_shards;
-- Usage: SELECT count(*) FROM "cls_NAME".item_scores;

DROP TABLE IF EXISTS "cls_NAME".labels;
ALTER TABLE "cls_NAME".next_labels RENAME TO labels;
DROP TABLE IF EXISTS "cls_NAME".item_scores;
ALTER TABLE "cls_NAME".next_item_scores RENAME TO item_scores;
DROP TABLE IF EXISTS "cls_NAME".label_scores;
ALTER TABLE "cls_NAME".next_label_scores RENAME TO label_scores;
DROP TABLE IF EXISTS "cls_NAME".score_settings;
ALTER TABLE "cls_NAME".next_score_settings RENAME TO score_settings;
DROP TABLE IF EXISTS "cls_NAME".score_progress;
ALTER TABLE "cls_NAME".next_score_progress RENAME TO score_progress;
DROP TABLE IF EXISTS "cls_NAME".scored_shards;
ALTER TABLE "cls_NAME".next_scored_shards RENAME TO scored_shards;
