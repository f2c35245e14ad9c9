-- A workspace holding an InstaCities1M tree (img_resized*/<city>/<id>.jpg beside
-- captions*/<city>/<id>.txt) has items.city: the folder each photo is in, set by
-- build-index for that source's items (curate/ingest/sources.py set_cities). Other
-- workspaces have no such column; a manifest's own `city` column is the same column.
ALTER TABLE items ADD COLUMN IF NOT EXISTS city VARCHAR;
