"""Names say what a thing is: each command's function is `<module>_cmd`, so the package's
`curate.commands.<name>` is the command's module, never its click command in the module's place."""

from __future__ import annotations

import inspect

import curate.commands as commands


def test_each_command_function_is_named_after_its_module():
    for cmd in commands.COMMANDS:
        module = cmd.callback.__module__.rpartition(".")[2]
        assert cmd.callback.__name__ == f"{module}_cmd", cmd.callback.__module__
        assert inspect.ismodule(getattr(commands, module)), module


def test_the_cli_docstring_names_where_the_commands_are():
    import curate.cli

    assert "curate/commands/" in curate.cli.__doc__ and "beside their code" not in curate.cli.__doc__
