"""Text from the collection, made safe to print on a terminal.

Captions, paths, labels and SQL results come from files we do not control. A caption
holding ESC sequences could move the cursor, recolour or clear the screen, set the window
title, or ring the bell; a bidi override (U+202E) makes a path read backwards. Every
printer passes such text through `safe` (or prints with `echo`): control characters (C0,
DEL, C1), bidi controls and line/paragraph separators are shown escaped (`\\x1b`, `\\u202e`),
so the terminal shows what the data holds instead of obeying it.
"""

from __future__ import annotations

import re

import click

# C0, DEL, C1; the bidi embeddings/overrides/isolates and marks; line and paragraph separators.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_UNSAFE_KEEP_NL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(m: re.Match) -> str:
    c = m.group()
    if c in _SHORT:
        return _SHORT[c]
    o = ord(c)
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}"


def safe(text: object, keep_newlines: bool = False) -> str:
    """`text` as a string that cannot drive the terminal (newlines escaped unless kept)."""
    s = "" if text is None else str(text)
    return (_UNSAFE_KEEP_NL if keep_newlines else _UNSAFE).sub(_escape, s)


def echo(text: object = "", err: bool = False) -> None:
    """click.echo of `text` made safe; its own line breaks are kept."""
    click.echo(safe(text, keep_newlines=True), err=err)
