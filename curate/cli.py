"""`curate` command line: one click group; each stage's commands live beside their code."""

from __future__ import annotations

import logging
import os
import sys

import click

from . import __version__


class _PipelineOrder(click.Group):
    """`curate --help` lists the commands in the order a user runs them, not alphabetically."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


@click.group(cls=_PipelineOrder, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="curate")
@click.option("-v", "--verbose", is_flag=True, help="Show library logs.")
def cli(verbose: bool) -> None:
    """Turn a raw photo+caption collection into a clean, labelled, searchable dataset."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")
    if not verbose:
        # open_clip and the hub client log their own fallbacks; we say it once, in our words.
        # open_clip logs its download failures on the root logger: silence it, keep ours.
        logging.getLogger().setLevel(logging.CRITICAL)
        logging.getLogger("huggingface_hub").setLevel(logging.CRITICAL)
        logging.getLogger("curate").setLevel(logging.WARNING)


def _register() -> None:
    from .commands import COMMANDS

    for cmd in COMMANDS:
        cli.add_command(cmd)


_register()


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        cli(standalone_mode=True)
    except KeyboardInterrupt:  # pragma: no cover
        click.echo("interrupted; what was committed is kept, run the same command again to resume", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
