"""Stage 2, classify: label sets and prompt wordings, label scores for every image and
caption (their readers are the select wing)."""
