-- main's plain names for the active classification taken away: the view files' views
-- in main (the ones that read others first), then the views over the score tables
-- (active_classification.sql). curate runs this before making them again over the
-- classification that became active, and alone when none is complete.
-- Usage: SELECT count(*) FROM duckdb_views() WHERE schema_name = 'main' AND view_name = 'predictions';

DROP VIEW IF EXISTS main.coverage;
DROP VIEW IF EXISTS main.predictions;
DROP VIEW IF EXISTS main.caption_predictions;
DROP VIEW IF EXISTS main.ensemble;
DROP VIEW IF EXISTS main.scores_fresh;
DROP VIEW IF EXISTS main.stale_shards;

DROP VIEW IF EXISTS main.labels;
DROP VIEW IF EXISTS main.item_scores;
DROP VIEW IF EXISTS main.label_scores;
DROP VIEW IF EXISTS main.score_settings;
DROP VIEW IF EXISTS main.score_progress;
DROP VIEW IF EXISTS main.scored_shards;
