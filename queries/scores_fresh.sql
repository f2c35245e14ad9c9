-- Scores follow the vectors: every view of a classification's scores (predictions,
-- caption_predictions, ensemble, ensemble_with, coverage, subset...) reads them only while
-- no shard they were made from (scored_shards, scores_tables.sql) was rewritten or removed
-- since. Such a shard means items were embedded again, rejected or repaired after
-- scoring: their scores are older than their vectors, so the views refuse (a DuckDB
-- error naming the fix) rather than show them. Shards added since (new items) are fine:
-- those items are simply not classified yet. `curate classify` (the same label set,
-- prompts and name) rescores what changed; `curate filter` and the other commands say how
-- many items that is.
-- Usage: SELECT * FROM stale_shards;
-- Usage: SELECT * FROM scores_fresh;

-- The recorded shards that are no longer in main.shards as they were.
CREATE OR REPLACE VIEW stale_shards AS
SELECT s.kind, s.part, s.file
FROM scored_shards s
WHERE NOT EXISTS (SELECT 1 FROM main.shards c
                  WHERE c.kind = s.kind AND c.part = s.part AND c.file = s.file AND c.rows = s.rows
                    AND c.run_id IS NOT DISTINCT FROM s.run_id AND c.vec_sum IS NOT DISTINCT FROM s.vec_sum);

-- One row, true; an error when the scores are stale (what the views check first).
CREATE OR REPLACE VIEW scores_fresh AS
SELECT CASE WHEN count(*) = 0 THEN true
            ELSE error('these scores are older than the vectors of some items (' || count(*)
                       || ' embedding shard(s) rewritten or removed since they were scored: items embedded '
                       || 'again or rejected): run the same `curate classify` again to rescore them') END AS fresh
FROM stale_shards;
