"""curate: a raw photo+caption collection in, a clean, labelled, searchable dataset out.

The pipeline's steps are functions here as well as commands (curate/api.py):
`curate.build_index`, `classify`, `filter`, `search`, `sample`, `report`, `labels`.
"""

from __future__ import annotations

import importlib
import sys
import types

from .errors import CurateError

__version__ = "0.1.0"

# Loaded on first use, not here: `import curate.cli` (and so `curate --help`) must not pay for
# the stages these pull in (tests/cli/test_startup.py).
_API = ("build_index", "classify", "filter", "search", "sample", "report", "labels")

__all__ = ["CurateError", "__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module("curate.api"), name)
    raise AttributeError(f"module 'curate' has no attribute {name!r}")


class _CallableStage(types.ModuleType):
    """`curate.classify` is both the stage package and the step: once the package is imported,
    the import system binds its name here, so calling it runs `curate.api.classify`."""

    def __call__(self, *args, **kwargs):
        return getattr(importlib.import_module("curate.api"), self.__name__.rpartition(".")[2])(*args, **kwargs)


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value) -> None:
        if name in _API and type(value) is types.ModuleType:
            value.__class__ = _CallableStage
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
