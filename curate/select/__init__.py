"""The read-back wing: what the scores select, written out (`filter`, `search`, `dedup`, the
training exports)."""
