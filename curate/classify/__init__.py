"""Stage 2, classify: label sets and prompt wordings, label scores for every image and
caption, and the readers of those scores (`filter`, `search`)."""
