"""Marking a review set by hand: the marks store, the browser page and the CSV sheet.

- `marks`: every mark goes to DuckDB at once (`judgments`, keyed by image and label).
- `server`: the local page (127.0.0.1 only, stdlib http.server, static files, no CDN).
- `sheet`: the same set as a CSV, exported and imported with an exact round trip.
"""
