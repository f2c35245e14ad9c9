"""curate: a raw photo+caption collection in, a clean, labelled, searchable dataset out.

The pipeline's steps are Python functions as well as commands, in `curate.api`:

    from curate import api
    api.build_index("photos/", "ws")
    api.classify("ws")

(They live in their own module, not here: `curate.classify` is the classify stage's
package, and `import curate.cli` must not load the stages, which import torch.)
"""

from __future__ import annotations

from .errors import CurateError

__version__ = "0.1.0"

__all__ = ["CurateError", "__version__"]
