"""How many terminal cells a printed string takes, for tables that line up.

`len()` counts code points: a CJK character or an emoji takes two cells, a combining
accent none, so columns padded by `len()` drift. Widths here are measured on the text
as it is printed (after `textout.safe`, whose escapes are plain ASCII).
"""

from __future__ import annotations

import unicodedata

ELLIPSIS = "…"


def char_width(c: str) -> int:
    """Cells one character takes: 0 for combining marks and format characters, 2 for
    East Asian wide and fullwidth ones (CJK, most emoji), else 1."""
    if unicodedata.category(c) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(c) in ("W", "F") else 1


def width(text: str) -> int:
    """Cells `text` takes on a terminal (one line: no control characters, as `safe` leaves it)."""
    return sum(char_width(c) for c in text)


def clip(text: str, cells: int) -> str:
    """`text` cut to at most `cells` cells, ending with an ellipsis when cut; never splits a
    wide character over the limit."""
    if width(text) <= cells:
        return text
    out, used = [], 0
    for c in text:
        w = char_width(c)
        if used + w > cells - 1:
            break
        out.append(c)
        used += w
    return "".join(out) + ELLIPSIS


def pad(text: str, cells: int, right: bool = False) -> str:
    """`text` padded with spaces to `cells` cells (left-aligned, or right-aligned)."""
    fill = " " * max(cells - width(text), 0)
    return fill + text if right else text + fill
