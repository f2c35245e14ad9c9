"""curate's errors: one base class, mapped once by the CLI to a one-line message and an exit status.

Raise a `CurateError` (or a subclass) for anything a user can act on: a bad input file, a
busy or damaged workspace, a full disk. The message names the item and the reason and,
where there is one, what to do. The CLI prints `curate: <message>` and exits with the
class's `exit_code`; `curate -v` adds the traceback. Anything else that escapes is a bug
in curate and is reported as one (exit 70), never as a bare traceback unless -v.

Exit statuses (documented in the README):
    1   the command could not do what was asked (bad input, nothing to do, not ready)
    2   usage error (click's own: unknown option, bad value)
    3   build-index --strict and something was rejected
    4   the workspace is missing, damaged or from another model
    5   the workspace is busy: another curate process (or a duckdb shell) holds it
    6   partial result: the command ran but did less than asked (it says what)
    70  internal error (a bug in curate: please report it with `curate -v ...`)
    74  I/O error writing an output (disk full, permission denied)
    130 interrupted (Ctrl-C); what was committed is kept
"""

from __future__ import annotations


class CurateError(Exception):
    """An error a person can act on; str(e) is the whole message."""

    exit_code = 1


class InputError(CurateError):
    """A file, column, label or value the user gave cannot be used."""


class WorkspaceError(CurateError):
    """The workspace is missing, damaged, or does not fit the request."""

    exit_code = 4


class WorkspaceBusy(CurateError):
    """Another process holds the workspace's database."""

    exit_code = 5


class PartialResult(CurateError):
    """The command did its work but less than was asked; the message says what."""

    exit_code = 6


class OutputError(CurateError):
    """An output could not be written (disk full, permission); nothing half-written is left."""

    exit_code = 74


EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130
