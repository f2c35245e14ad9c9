"""`curate` command line: one click group over the commands of curate/commands/ (one module each,
named after it), and the one place where errors become messages and exit statuses."""

from __future__ import annotations

import errno
import logging
import os
import re
import shlex
import sys
import traceback

import click

from . import __version__
from .core.textout import safe
from .errors import EXIT_INTERNAL, EXIT_INTERRUPTED, CurateError, OutputError, WorkspaceBusy

# OS errors that are about the machine, not about curate: said in one line, no traceback,
# with what to do about each.
_FREE = "free some space and run the same command again"
_PERM = "fix the permissions or write somewhere else"
_PATH = "give another path"
_OS_ERRNOS = {errno.ENOSPC: ("disk full", _FREE), errno.EDQUOT: ("disk quota exceeded", _FREE),
              errno.EACCES: ("permission denied", _PERM), errno.EPERM: ("operation not permitted", _PERM),
              errno.EROFS: ("read-only file system", _PERM), errno.EIO: ("input/output error", _FREE),
              errno.ENOTDIR: ("a part of the path is a file, not a folder", _PATH),
              errno.EEXIST: ("a file is in the way where a folder is needed", _PATH),
              errno.EISDIR: ("is a folder, not a file", _PATH)}

class _CurateGroup(click.Group):
    """The one place where errors become messages and exit statuses (curate/errors.py).

    `curate --help` lists the commands in the order a user runs them, not alphabetically.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except CurateError as e:
            _fail(ctx, str(e), e.exit_code)
        except KeyboardInterrupt:
            _fail(ctx, "interrupted; what was committed is kept, run the same command again to resume",
                  EXIT_INTERRUPTED)
        except OSError as e:
            what, todo = _OS_ERRNOS.get(e.errno or -1, (None, None))
            if what is None and e.errno is None and "requested and" in str(e) and "written" in str(e):
                what, todo = "disk full", _FREE  # numpy's short write ("16384 requested and 15328 written")
            if what is None:
                _fail(ctx, f"{e.strerror or e}" + (f": {e.filename}" if e.filename else ""), OutputError.exit_code)
            where = f" ({e.filename})" if e.filename else ""
            _fail(ctx, f"{what}{where}: nothing half-written was kept; {todo}", OutputError.exit_code)
        except Exception as e:  # noqa: BLE001 - the last line of defence: one line, not a traceback
            import duckdb

            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            low = first.lower()
            if isinstance(e, duckdb.IOException) and "lock" in low:
                _fail(ctx, f"the workspace is in use by another process ({first}); wait for it to finish "
                           "or close it, then run the command again", WorkspaceBusy.exit_code)
            if isinstance(e, duckdb.Error) and ("no space left" in low or "disk quota" in low):
                # DuckDB says it as an IOException, or as a TransactionException from a failed COMMIT
                _fail(ctx, f"disk full: {first}; what was committed before is kept; {_FREE}",
                      OutputError.exit_code)
            if isinstance(e, duckdb.IOException):
                _fail(ctx, f"cannot read or write a file: {first}", OutputError.exit_code)
            _fail(ctx, f"internal error: {type(e).__name__}: {first} (a bug in curate; run with -v for the "
                       "traceback and please report it)", EXIT_INTERNAL)


def _fail(ctx: click.Context, message: str, code: int) -> None:
    if ctx.meta.get("curate.verbose"):
        traceback.print_exc()
    message = name_workspace(str(message), ctx.meta.get("curate.workspace"))
    # one line, and nothing in it (a path, a label, a caption) can drive the terminal
    one_line = " ".join(part.strip() for part in str(message).strip().splitlines() if part.strip())
    click.echo(f"curate: {safe(one_line)}", err=True)
    ctx.exit(code)


@click.group(cls=_CurateGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="curate")
@click.option("-v", "--verbose", is_flag=True, help="Show library logs, and the traceback of an error.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output (results and errors are still printed).")
@click.option("--wait", type=click.FloatRange(0), default=None, metavar="SECONDS",
              help="If another process holds the workspace, wait up to this long for it [default: 10, "
                   "or $CURATE_WAIT]; then say which process holds it (exit 5).")
@click.pass_context
def cli(ctx: click.Context, verbose: bool, quiet: bool, wait: float | None) -> None:
    """Turn a raw photo+caption collection into a clean, labelled, searchable dataset."""
    ctx.meta["curate.verbose"] = verbose
    ctx.meta["curate.quiet"] = quiet
    from .core.workspace import set_lock_wait

    set_lock_wait(wait)  # None: $CURATE_WAIT or the default (also resets an earlier in-process run)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")
    if not verbose:
        # open_clip and the hub client log their own fallbacks; we say it once, in our words.
        # open_clip logs its download failures on the root logger: silence it, keep ours.
        logging.getLogger().setLevel(logging.CRITICAL)
        logging.getLogger("huggingface_hub").setLevel(logging.CRITICAL)
        logging.getLogger("curate").setLevel(logging.WARNING)


# a command the message tells the user to run: `curate classify`, `curate classify --name x` ...
_TOLD = re.compile(r"(?<!the same )`curate ([a-z][a-z-]*)([^`]*)`")


def name_workspace(message: str, ws: object) -> str:
    """Every `curate X` a message tells the user to run names the workspace they gave (`-w WS`),
    so that it runs as printed: the library's messages do not know how the command was called."""
    if ws is None:
        return message

    def with_ws(m: re.Match) -> str:
        cmd, rest = m.group(1), m.group(2)
        if cmd not in _ON_A_WORKSPACE or re.search(r"(^|\s)(-w|--workspace)\b", rest) or "--label-set" in rest:
            return m.group(0)
        source = " SOURCE" if cmd == "build-index" and not rest.strip() else ""
        return f"`curate {cmd}{source} -w {shlex.quote(str(ws))}{rest}`"

    return _TOLD.sub(with_ws, message)


_ON_A_WORKSPACE = ("build-index", "classify", "labels", "filter", "search", "dedup", "sample", "review", "report",
                   "compare", "sql")


def _register() -> None:
    from .commands import COMMANDS

    for cmd in COMMANDS:
        cli.add_command(cmd)


_register()


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        cli(standalone_mode=True)
    except KeyboardInterrupt:  # pragma: no cover - outside a command (e.g. while importing)
        click.echo("curate: interrupted; what was committed is kept, run the same command again to resume",
                   err=True)
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
