"""curate: a raw photo+caption collection in, a clean, labelled, searchable dataset out."""

from .errors import CurateError

__version__ = "0.1.0"

__all__ = ["CurateError", "__version__"]
