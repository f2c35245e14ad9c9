"""Stage 2, classify: label sets and prompt wordings, label scores for every image and
caption, and the readers of those scores (`filter`, `search`)."""

# Registers the upgrade of workspaces classified before names (a read-write connect moves
# their score tables into a named classification).
from . import registry as _registry  # noqa: E402,F401
