"""Options shared by the commands that work on an existing workspace."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import WorkspaceError
from ..workspace import DB_NAME


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
