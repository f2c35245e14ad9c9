"""Options shared by several commands: the workspace folder, how long to wait for it, the label
set and prompt wording (labels, classify), the review set (sample, review, report), and old
spellings kept as hidden aliases for one release."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import click

from ..api import must_exist
from ..core.workspace import DEFAULT_LOCK_WAIT, set_lock_wait

# ctx.meta key (shared by every context of one run): the workspace the command was given, for the
# error messages that tell the user what to run next (cli.py names it in them as `-w WS`)
WORKSPACE_META = "curate.workspace"


def remember_workspace(ctx: click.Context, _param: click.Parameter, value: Path | None) -> Path | None:
    if value is not None:
        ctx.meta[WORKSPACE_META] = value
    return value


def _check(ctx: click.Context, param: click.Parameter, value: Path) -> Path:
    remember_workspace(ctx, param, value)
    # Checked before the command runs, so that no command creates an empty workspace by opening it.
    return must_exist(value)


def workspace_option(help: str = "Workspace folder (made by `curate build-index`).", must_exist: bool = True):
    return click.option("-w", "--workspace", "ws_path", type=click.Path(path_type=Path), default=Path("ws"),
                        show_default=True, callback=_check if must_exist else remember_workspace, help=help)


def _set_wait(_ctx: click.Context, _param: click.Parameter, value: float | None) -> None:
    if value is not None:
        set_lock_wait(value)


# DuckDB lets one process write a workspace, or any number read it: a command that finds
# it held waits this long for it, then says which process holds it (exit 5).
wait_option = click.option(
    "--wait", type=click.FloatRange(0), default=None, expose_value=False, callback=_set_wait, metavar="SECONDS",
    help=f"If another process holds the workspace, wait up to this long for it [default: {DEFAULT_LOCK_WAIT:g}, "
         "or $CURATE_WAIT].")


label_set_option = click.option(
    "--label-set", "label_set", default="places205", show_default=True,
    help="Label set: places205, or a file (one label a line, or CSV with label and optional prompt columns).")
prompts_option = click.option(
    "--prompts", default="natural", show_default=True,
    help="Wording: raw, natural, ensemble, a templates file, or one template ('a photo of {a} {label}.').")

classification_option = click.option(
    "--classification", default=None, metavar="NAME",
    help="Which named classification to read [default: the active one; `curate classify --list` shows them].")

DEFAULT_SET_HELP = "the most recently drawn (`curate sample --list` shows them)"
review_set_option = click.option("--set", "set_name", default=None, metavar="NAME",
                                 help=f"Review set [default: {DEFAULT_SET_HELP}].")


def old_spelling(old: str, dest: str, new: str, **kwargs) -> Callable:
    """Keep `old` working as a hidden alias of the option `new` (stored in `dest`) for one
    release: the command sees one value, and giving both is refused."""
    hidden_dest = f"_old_{dest}"

    def decorate(f: Callable) -> Callable:
        @functools.wraps(f)
        def wrapper(*args, **params):
            value = params.pop(hidden_dest)
            if value is not None:
                ctx = click.get_current_context()
                if ctx.get_parameter_source(dest) == click.core.ParameterSource.COMMANDLINE:
                    raise click.UsageError(f"give {new} or {old} (its old spelling), not both")
                params[dest] = value
            return f(*args, **params)

        return click.option(old, hidden_dest, default=None, hidden=True,
                            help=f"Old spelling of {new} (kept for one release).", **kwargs)(wrapper)

    return decorate


old_label_set = old_spelling("--set", "label_set", "--label-set")
