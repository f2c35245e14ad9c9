"""SQL of curate, one readable file per step; the package loads them, the DuckDB shell can run them."""
