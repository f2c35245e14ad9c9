"""Label sets: the taxonomy images are classified into.

A label set is an ordered list of names (the order is the label index everywhere:
vectors, scores, SQL). It comes from the package (`places205`, the 205 Places
categories in their original form, e.g. `cathedral/outdoor`) or from a user file:

- a text file, one label a line (blank lines and `#` comments skipped);
- a CSV/TSV file with a `label` column and optional `prompt` and `scene` columns
  (without a header row: label, then prompt, positionally).

A label keeps the name as written; `readable()` is how it reads in a sentence.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from ..errors import InputError

BUILTIN = ("places205",)

# How a Places-style qualifier ("head/qualifier") reads in English. The study reads
# "cathedral/outdoor" as "outdoor cathedral" and "bakery/shop" as "bakery shop", so
# a qualifier is not always a prefix. Unknown qualifiers go first ("wild field").
QUALIFIER_PHRASES = {
    "outdoor": "outdoor {head}",
    "indoor": "indoor {head}",
    "shop": "{head} shop",
    "platform": "{head} platform",
    "vegetation": "{head} with vegetation",
    "coral_reef": "{head} coral reef",
    "east_asia": "east asian {head}",
    "south_asia": "south asian {head}",
}


class LabelSetError(InputError, ValueError):
    """A label set that cannot be used (missing file, empty, duplicate names)."""


class UnknownLabel(InputError, ValueError):
    """A label asked for that the active label set does not have."""


@dataclass(frozen=True)
class LabelSet:
    name: str                          # `places205`, or the file's path as given
    labels: tuple[str, ...]            # names as written, in index order
    prompts: tuple[str | None, ...]    # a user's own prompt per label (CSV `prompt` column)
    scenes: tuple[str, ...]            # indoor | outdoor | unknown

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def digest(self) -> str:
        """Changes whenever a name, a prompt or the order changes (cache keys)."""
        h = hashlib.sha256()
        for row in zip(self.labels, self.prompts, self.scenes, strict=True):
            h.update(repr(row).encode())
        return h.hexdigest()[:16]

    def index(self, label: str) -> int:
        return self.labels.index(label)


def readable(label: str) -> str:
    """A label as words: `apartment_building/outdoor` -> `outdoor apartment building`."""
    head, sep, qualifier = label.partition("/")
    head = head.replace("_", " ").strip()
    if not sep:
        return head
    phrase = QUALIFIER_PHRASES.get(qualifier.strip(), None)
    if phrase is None:  # a name may hold braces (`room/{x}`): never run it through str.format
        return f"{qualifier.replace('_', ' ').strip()} {head}".strip()
    return phrase.replace("{head}", head).strip()


def load_label_set(spec: str | Path) -> LabelSet:
    """A packaged set by name (`places205`) or a user file (.txt, .csv, .tsv)."""
    if str(spec) in BUILTIN:
        return _places205()
    path = Path(spec).expanduser()
    if not path.is_file():
        raise LabelSetError(
            f"no label set '{spec}': give a packaged set ({', '.join(BUILTIN)}) or a file "
            "(one label a line, or CSV with a `label` and an optional `prompt` column)")
    text = read_text_any(path)
    if path.suffix.lower() in (".csv", ".tsv"):
        rows = _read_table(text, "\t" if path.suffix.lower() == ".tsv" else ",")
    else:
        rows = [(line.strip(), None, None) for line in text.splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    return _build(str(spec), rows)


def read_text_any(path: Path) -> str:
    """A text file as an editor or spreadsheet saved it: UTF-8 (BOM or not), UTF-16 with a BOM,
    else the Windows code page (cp1252), which decodes any byte."""
    raw = path.read_bytes()
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return raw.decode("utf-16")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


def check_labels(wanted: Iterable[str], known: Sequence[str]) -> list[str]:
    """Return `wanted` if every name is in `known`; otherwise raise with the closest names."""
    wanted = list(wanted)
    known_set = set(known)
    missing = [w for w in wanted if w not in known_set]
    if not missing:
        return wanted
    # match against the names and their readable forms ("bakery shop" finds bakery/shop)
    forms = {k: k for k in known} | {readable(k): k for k in known}
    parts = []
    for m in missing:
        close = difflib.get_close_matches(m, list(forms), n=6, cutoff=0.5)
        names = list(dict.fromkeys(forms[c] for c in close))[:3]
        parts.append(f"'{m}'" + (f" (closest: {', '.join(names)})" if names else ""))
    raise UnknownLabel(f"unknown label{'s' if len(missing) > 1 else ''} {'; '.join(parts)}; "
                       "`curate labels` lists the label set")


def match_labels(wanted: Iterable[str], known: Sequence[str]) -> list[tuple[str, str]]:
    """Each wanted name with the label it means: itself when it is one, else the one label it
    names up to case and separators (`Skyscraper`, `bakery shop` and `bakery_shop` for `bakery/shop`,
    also by its readable form, `outdoor apartment building`). (name, label) pairs, in order;
    UnknownLabel when a name matches none (with the closest) or several (with them)."""
    known = list(known)
    exact = set(known)
    by_key: dict[str, list[str]] = {}
    for k in known:
        for form in dict.fromkeys((_loose(k), _loose(readable(k)))):
            by_key.setdefault(form, []).append(k)
    out, unknown, ambiguous = [], [], []
    for w in wanted:
        if w in exact:
            out.append((w, w))
            continue
        hits = list(dict.fromkeys(by_key.get(_loose(w), [])))
        if len(hits) == 1:
            out.append((w, hits[0]))
        elif hits:
            ambiguous.append(f"'{w}' matches {len(hits)} labels ({', '.join(hits)}): give one of them as written")
        else:
            unknown.append(w)
    if ambiguous:
        raise UnknownLabel("; ".join(ambiguous))
    if unknown:
        check_labels(unknown, known)  # raises, naming the closest labels
    return out


def _loose(name: str) -> str:
    """A label name up to case and separators: `Bakery_Shop`, `bakery/shop`, `bakery  shop` alike."""
    return " ".join(re.split(r"[\s_/\-]+", name.casefold())).strip()


def _places205() -> LabelSet:
    pkg = files("curate.labelsets")
    names = [n.strip() for n in pkg.joinpath("places205.txt").read_text(encoding="utf-8").splitlines() if n.strip()]
    scenes = {}
    for row in csv.DictReader(io.StringIO(pkg.joinpath("places205_indoor_outdoor.tsv").read_text(encoding="utf-8")),
                              delimiter="\t"):
        scenes[row["category"]] = row["indoor_outdoor_from_IO_places365"]
    return _build("places205", [(n, None, scenes.get(n)) for n in names])


def _read_table(text: str, delimiter: str) -> list[tuple[str, str | None, str | None]]:
    rows = [r for r in csv.reader(io.StringIO(text), delimiter=delimiter) if any(c.strip() for c in r)]
    if not rows:
        return []
    header = [c.strip().lower() for c in rows[0]]
    if "label" in header:
        li = header.index("label")
        pi = header.index("prompt") if "prompt" in header else None
        si = header.index("scene") if "scene" in header else None
        body = rows[1:]
    else:  # no header: label, then prompt, by position
        li, pi, si, body = 0, 1, None, rows

    def cell(r: list[str], i: int | None) -> str | None:
        if i is None or i >= len(r):
            return None
        return r[i].strip() or None

    return [(cell(r, li) or "", cell(r, pi), cell(r, si)) for r in body]


def _build(name: str, rows: list[tuple[str, str | None, str | None]]) -> LabelSet:
    rows = [r for r in rows if r[0]]
    if not rows:
        raise LabelSetError(f"label set '{name}' has no labels")
    seen: set[str] = set()
    dups = [r[0] for r in rows if r[0] in seen or seen.add(r[0])]
    if dups:
        raise LabelSetError(f"label set '{name}' names a label twice: {', '.join(sorted(set(dups))[:5])}")
    if len(rows) > 65535:  # label indexes are USMALLINT in the database
        raise LabelSetError(f"label set '{name}' has {len(rows)} labels; at most 65535 are supported")
    scenes = tuple((s or "unknown").lower() for _, _, s in rows)
    return LabelSet(name=name, labels=tuple(r[0] for r in rows), prompts=tuple(r[1] for r in rows), scenes=scenes)
