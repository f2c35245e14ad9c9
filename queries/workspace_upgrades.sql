-- Columns and tables added to the core tables (workspace.sql) after the first release,
-- applied to existing workspaces at every read-write connect, after workspace.sql:
-- every statement is idempotent (IF NOT EXISTS). Append new ones at the end.
-- (items.source_no and the (source_no, source_id) key came by a table rebuild:
-- curate/ingest/sources.py upgrade_items.)

ALTER TABLE rejected ADD COLUMN IF NOT EXISTS source_no INTEGER;

-- how build-index decoded images ('exact' or 'draft'): it changes the vectors
ALTER TABLE runs ADD COLUMN IF NOT EXISTS decode VARCHAR;

-- runs: who ran it, so a later start can tell a killed run from a live one
ALTER TABLE runs ADD COLUMN IF NOT EXISTS pid INTEGER;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS host VARCHAR;

-- each item's file as it was when decoded, so a rerun can tell a changed file
-- (curate/ingest/recheck.py); a table of its own, not columns of items, whose other
-- columns are the source's own
CREATE TABLE IF NOT EXISTS item_files (item_id BIGINT PRIMARY KEY, size BIGINT, mtime_ns BIGINT, hash VARCHAR);

-- shards: what was written, so damage is found cheaply (curate/core/integrity.py)
ALTER TABLE shards ADD COLUMN IF NOT EXISTS min_id BIGINT;
ALTER TABLE shards ADD COLUMN IF NOT EXISTS max_id BIGINT;
ALTER TABLE shards ADD COLUMN IF NOT EXISTS vec_sum VARCHAR;
ALTER TABLE shards ADD COLUMN IF NOT EXISTS ids_sum VARCHAR;
ALTER TABLE shards ADD COLUMN IF NOT EXISTS vec_mtime_ns BIGINT;
ALTER TABLE shards ADD COLUMN IF NOT EXISTS ids_mtime_ns BIGINT;

-- the float precision build-index embedded in (fp32, bf16, fp16: curate/ingest/precision.py);
-- NULL for runs from before it was recorded (CPU runs were fp32, CUDA runs fp16)
ALTER TABLE runs ADD COLUMN IF NOT EXISTS precision VARCHAR;

-- build-index's embedding step, summed over its batches (curate/ingest/embed.py EmbedStats):
-- seconds waiting for decoded images, in the model, writing shards; a run whose decode_s is
-- well above its forward_s was decode-bound (run_times shows it per batch)
ALTER TABLE runs ADD COLUMN IF NOT EXISTS batches INTEGER;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS decode_s DOUBLE;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS forward_s DOUBLE;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS commit_s DOUBLE;

-- each build-index run's time per batch, and what bounded it: `select * from run_times`
CREATE OR REPLACE VIEW run_times AS
SELECT run_id, started_at, device, precision, decode, batches,
       round(1000 * decode_s / batches, 1) AS decode_ms,
       round(1000 * forward_s / batches, 1) AS forward_ms,
       round(1000 * commit_s / batches, 1) AS commit_ms,
       CASE WHEN decode_s >= greatest(forward_s, commit_s) THEN 'decode'
            WHEN forward_s >= commit_s THEN 'forward'
            ELSE 'commit' END AS bound_by
FROM runs
WHERE command = 'build-index' AND batches > 0;
