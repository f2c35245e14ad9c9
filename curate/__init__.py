"""curate: a raw photo+caption collection in, a clean, labelled, searchable dataset out."""

__version__ = "0.1.0"
