"""What the page shows, as one checked value: the selection behind a grid, and the
`curate filter` command (and api.filter call) that writes exactly that selection.

Every field comes from the page, so from an untrusted client: each is checked here and
reaches SQL only as a bound parameter or as one of the fixed relation names below.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..classify.registry import NAME_RE
from ..errors import InputError
from ..select.exports import command_line
from ..select.filter import FilterSpec

# mode -> the relation app_view reads (queries/app_browse.sql, app_calibrated.sql): fixed names
RELATIONS = {"image": "predictions", "caption": "caption_predictions", "ensemble": "ensemble",
             "calibrated": "app_calibrated"}
STATUSES = ("embedded", "rejected")
# the duplicates control (after `curate dedup`): every item, one per image group as `curate filter
# --dedup` keeps (queries/dedup_keep.sql), or only the items in a group, group by group
DUPLICATES = ("all", "representatives", "groups")
MAX_LABELS = 500
MAX_WHERE = 50
MAX_TEXT = 1000


class BadSelection(InputError, ValueError):
    """A selection the page sent that cannot be shown (an unknown mode, a probability out of range...)."""


@dataclass(frozen=True)
class Selection:
    classification: str | None = None      # None: the active one
    mode: str = "image"                    # a key of RELATIONS
    labels: tuple[str, ...] = ()           # empty: any label
    min_prob: float = 0.0
    where: tuple[tuple[str, str], ...] = ()
    status: str = "embedded"
    duplicates: str = "all"                # a value of DUPLICATES
    review_set: str | None = None          # only the images of this review set (None: any)

    @property
    def relation(self) -> str:
        return RELATIONS[self.mode]

    @property
    def floor(self) -> float:
        """The min-prob the SQL applies: a calibrated view keeps by each class's own threshold."""
        return 0.0 if self.mode == "calibrated" else self.min_prob

    @classmethod
    def parse(cls, raw: Mapping) -> Selection:
        """From the page's JSON object; BadSelection naming the field otherwise."""
        if not isinstance(raw, Mapping):
            raise BadSelection("the selection must be a JSON object")
        name = raw.get("classification")
        if name is not None and (not isinstance(name, str) or NAME_RE.fullmatch(name) is None):
            raise BadSelection(f"classification: {str(name)[:80]!r} is not a classification's name")
        mode = raw.get("mode", "image")
        if mode not in RELATIONS:
            raise BadSelection(f"mode must be one of {', '.join(RELATIONS)}, not {str(mode)[:40]!r}")
        labels = raw.get("labels", [])
        if not isinstance(labels, list) or len(labels) > MAX_LABELS or \
                not all(isinstance(x, str) and 0 < len(x) <= MAX_TEXT for x in labels):
            raise BadSelection(f"labels must be a list of at most {MAX_LABELS} label names")
        prob = raw.get("min_prob", 0.0)
        if isinstance(prob, bool) or not isinstance(prob, int | float) or not math.isfinite(prob) \
                or not 0.0 <= prob <= 1.0:
            raise BadSelection(f"min_prob must be a number in [0, 1], not {str(prob)[:40]}")
        where = raw.get("where", [])
        if not isinstance(where, list) or len(where) > MAX_WHERE or not all(
                isinstance(w, list | tuple) and len(w) == 2 and all(isinstance(x, str) and len(x) <= MAX_TEXT for x in w)
                and w[0].strip() for w in where):
            raise BadSelection("where must be a list of [column, value] pairs")
        status = raw.get("status", "embedded")
        if status not in STATUSES:
            raise BadSelection(f"status must be one of {', '.join(STATUSES)}, not {str(status)[:40]!r}")
        duplicates = raw.get("duplicates", "all")
        if duplicates not in DUPLICATES:
            raise BadSelection(f"duplicates must be one of {', '.join(DUPLICATES)}, not {str(duplicates)[:40]!r}")
        if duplicates != "all" and status != "embedded":
            raise BadSelection("duplicates: only embedded items are in duplicate groups (choose status embedded)")
        review_set = raw.get("review_set")
        if review_set is not None and (not isinstance(review_set, str) or not 0 < len(review_set) <= MAX_TEXT):
            raise BadSelection("review_set must be a review set's name (or null: any image)")
        return cls(name, mode, tuple(dict.fromkeys(labels)), round(float(prob), 6),
                   tuple((c.strip(), v) for c, v in where), status, duplicates, review_set)

    @property
    def exportable(self) -> str | None:
        """Why `curate filter` cannot write this selection (None: it can)."""
        if self.status != "embedded":
            return "only classified items can be exported (`curate filter` writes predictions)"
        if self.duplicates == "groups":
            return ("no `curate filter` option writes whole duplicate groups (--dedup keeps one item of each, "
                    "--dedup --unmatched the others); choose all items or representatives only to export")
        if self.review_set is not None:
            return ("no `curate filter` option selects a review set's images; "
                    f"`curate review --set {shlex.quote(self.review_set)} --out FILE` writes the set "
                    "(with the labels it was drawn with, and its marks)")
        return None

    def filter_spec(self, source_mode: str | None = None) -> FilterSpec:
        """What api.filter selects to write this selection (`source_mode`: the mode the calibration
        was fitted on, for the calibrated view)."""
        if self.exportable is not None:
            raise BadSelection(self.exportable)
        calibrated = self.mode == "calibrated"
        mode = (source_mode or "image") if calibrated else self.mode
        return FilterSpec(classification=self.classification, labels=self.labels, mode=mode, calibrated=calibrated,
                          where=self.where, dedup=self.duplicates == "representatives",
                          **({} if calibrated else {"min_prob": self.min_prob}))

    def filter_command(self, ws_path: str | Path, out: str | Path, source_mode: str | None = None) -> str:
        """The `curate filter` command line that writes this selection to `out`: the options in
        the order and spelling api.filter records as a subset's provenance."""
        spec = self.filter_spec(source_mode)
        return command_line(ws_path, [
            ("--classification", spec.classification), ("--label", spec.labels),
            ("--min-prob", None if spec.calibrated else spec.min_prob), ("--mode", spec.mode),
            *([("--text-weight", spec.text_weight), ("--text-min", spec.text_min), ("--image-max", spec.image_max)]
              if spec.mode == "ensemble" else []),
            ("--calibrated", spec.calibrated),
            ("--where", spec.where), ("--dedup", spec.dedup), ("--out", out)])
