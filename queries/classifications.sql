-- Named classifications: several `curate classify` results side by side in one workspace.
--
-- Each classification NAME lives in its own schema "cls_NAME": its tables
-- (scores_tables.sql: labels, item_scores, label_scores, score_settings, score_progress,
-- and the staging next_* copies while a run is in flight) and its own views
-- (predictions, caption_predictions, ensemble, coverage), which always read that
-- schema's tables. The plain names in main (labels, item_scores, ..., predictions,
-- ensemble, coverage) show the ACTIVE classification: the one chosen with
-- `curate classify --use NAME`, else the last completed.
--
-- Another classification from the shell: `SELECT * FROM predictions_of('places205-raw')`,
-- or `SET search_path = '"cls_places205-raw",main'` and the plain names and macros
-- (ensemble_with, subset, ...) read it.
-- Usage: SELECT name, created_at, completed_at, active FROM classifications ORDER BY name;
-- Usage: SELECT * FROM predictions_of('places205-natural') ORDER BY id LIMIT 3;

CREATE TABLE IF NOT EXISTS classifications (
    name VARCHAR PRIMARY KEY,             -- [a-z0-9][a-z0-9_-]{0,62}; the schema is "cls_<name>"
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    completed_at TIMESTAMP,               -- when its scores were last published; NULL: never complete
    active BOOLEAN NOT NULL DEFAULT false, -- the one the plain names in main show (at most one)
    -- the settings of the last run started under this name (score_settings holds the
    -- published ones; these say what an incomplete run is making)
    label_set VARCHAR,
    prompts VARCHAR,
    model VARCHAR,
    logit_scale DOUBLE,
    storage VARCHAR
);

-- The views of any classification by name (the view files' names + _of).
CREATE OR REPLACE MACRO predictions_of(name) AS TABLE
SELECT * FROM query_table('"cls_' || name || '".predictions');

CREATE OR REPLACE MACRO caption_predictions_of(name) AS TABLE
SELECT * FROM query_table('"cls_' || name || '".caption_predictions');

CREATE OR REPLACE MACRO ensemble_of(name) AS TABLE
SELECT * FROM query_table('"cls_' || name || '".ensemble');

-- Table 1 (coverage.sql) of a classification's image predictions
-- (coverage_of(relation) is the same table for any relation with a prob column).
CREATE OR REPLACE MACRO image_coverage_of(name) AS TABLE
SELECT * FROM query_table('"cls_' || name || '".coverage');
