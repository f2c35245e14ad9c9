-- The first step of items_rebuild.sql (a workspace from before `sources`, curate/ingest/sources.py
-- upgrade_items): items set aside as items_before_sources, for workspace.sql's `items`
-- to be made again beside it and filled back.
-- Usage: SELECT count(*) FROM items_before_sources;

ALTER TABLE items RENAME TO items_before_sources;
