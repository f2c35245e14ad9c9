"""Options shared by several commands."""

from __future__ import annotations

import click

from ..workspace import DEFAULT_LOCK_WAIT, set_lock_wait


def _set_wait(_ctx: click.Context, _param: click.Parameter, value: float | None) -> None:
    if value is not None:
        set_lock_wait(value)


# DuckDB lets one process write a workspace, or any number read it: a command that finds
# it held waits this long for it, then says which process holds it (exit 5).
wait_option = click.option(
    "--wait", type=click.FloatRange(0), default=None, expose_value=False, callback=_set_wait, metavar="SECONDS",
    help=f"If another process holds the workspace, wait up to this long for it [default: {DEFAULT_LOCK_WAIT:g}, "
         "or $CURATE_WAIT].")
