"""Every option of every command says what it is for in --help (hidden aliases excepted)."""

from __future__ import annotations

import click

from curate.cli import cli


def _walk(cmd: click.Command, path: str):
    yield path, cmd
    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            yield from _walk(sub, f"{path} {name}")


def test_every_option_has_help_text():
    missing = []
    for path, cmd in _walk(cli, "curate"):
        assert cmd.help or isinstance(cmd, click.Group), f"{path} has no help"
        for p in cmd.params:
            if isinstance(p, click.Option) and not p.hidden and not (p.help or "").strip():
                missing.append(f"{path} {'/'.join(p.opts)}")
    assert sorted(set(missing)) == []


def test_the_walk_sees_every_command():
    names = {path for path, _ in _walk(cli, "curate")}
    assert {"curate build-index", "curate labels", "curate classify", "curate filter", "curate search",
            "curate sample", "curate review", "curate report", "curate sql", "curate compare", "curate dedup",
            "curate app"} <= names
