"""The core every stage stands on: the workspace (DuckDB file, paths, runs), the embedding
shards, the SQL files' loader, the review-marks journal, and the terminal output helpers.
Nothing here imports a stage (ingest, classify, validate)."""
