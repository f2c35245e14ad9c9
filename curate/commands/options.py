"""Options shared by several commands: the workspace folder, how long to wait for it, the label
set and prompt wording (labels, classify), and the review set (review, report)."""

from __future__ import annotations

from pathlib import Path

import click

from ..core.workspace import DB_NAME, DEFAULT_LOCK_WAIT, set_lock_wait
from ..errors import WorkspaceError


def must_exist(value: Path) -> Path:
    """Refuse a folder without a workspace database, the same way for every command (exit 4)."""
    if not (value / DB_NAME).is_file():
        raise WorkspaceError(f"no workspace at {value} (no {DB_NAME} there): run `curate build-index SOURCE "
                             f"-w {value}` first, or give the right -w/--workspace")
    return value


def _check(_ctx: click.Context, _param: click.Parameter, value: Path) -> Path:
    # Checked before the command runs, so that no command creates an empty workspace by opening it.
    return must_exist(value)


def workspace_option(help: str = "Workspace folder (made by `curate build-index`).", must_exist: bool = True):
    return click.option("-w", "--workspace", "ws_path", type=click.Path(path_type=Path), default=Path("ws"),
                        show_default=True, callback=_check if must_exist else None, help=help)


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
    "--set", "label_set", default="places205", show_default=True,
    help="Label set: places205, or a file (one label a line, or CSV with label and optional prompt columns).")
prompts_option = click.option(
    "--prompts", default="natural", show_default=True,
    help="Wording: raw, natural, ensemble, a templates file, or one template ('a photo of {a} {label}.').")

DEFAULT_SET_HELP = "the most recently drawn (`curate sample --list` shows them)"
review_set_option = click.option("--set", "set_name", default=None, metavar="NAME",
                                 help=f"Review set [default: {DEFAULT_SET_HELP}].")
