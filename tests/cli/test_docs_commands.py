"""The commands shown in README.md and docs/*.md cannot drift from the CLI (issue 15).

Every fenced block is read; each `curate ...` line (bare, or after a `$ ` prompt) must name a
command of the real `cli` group and use only options that command has, with a value its
choices allow; each `duckdb ...` line must open the workspace read-only (`-readonly`), as the README
documents.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from curate.cli import cli

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL_ENDS = {"|", "||", "&&", ";", ">", ">>", "<", "2>&1", "&"}


def _command_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, command) for every curate/duckdb line in the file's fenced blocks."""
    out, fence, pending = [], False, ""
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("```"):
            fence, pending = not fence, ""
            continue
        if not fence:
            continue
        text = pending + (line[2:] if line.startswith("$ ") and not pending else line)
        if text.rstrip().endswith("\\"):  # a command continued on the next line
            pending = text.rstrip()[:-1] + " "
            continue
        pending = ""
        if text.startswith(("curate ", "duckdb ")):
            out.append((no, text))
    return out


def _cases():
    for path in DOCS:
        for no, line in _command_lines(path):
            yield pytest.param(line, id=f"{path.relative_to(REPO)}:{no}")


def _words(line: str) -> list[str]:
    words = shlex.split(line, comments=True)
    for i, w in enumerate(words):
        if w in SHELL_ENDS:
            return words[:i]
    return words


def _params(cmd: click.Command) -> dict[str, click.Parameter]:
    names = {"--help": None}
    for p in cmd.params:
        if isinstance(p, click.Option):
            for o in (*p.opts, *p.secondary_opts):
                names[o] = p
    return names


def test_docs_show_commands():
    assert sum(1 for _ in _cases()) > 20  # the parser finds the README's and docs' commands


@pytest.mark.parametrize("line", list(_cases()))
def test_documented_command_exists_with_its_options(line: str):
    words = _words(line)
    if words[0] == "duckdb":
        # -c too: a shell that runs one command still locks curate out while it runs (issue 26)
        assert "-readonly" in words, f"{line}: open the workspace -readonly"
        assert any(w.endswith("curate.duckdb") for w in words), f"{line}: no workspace database named"
        return
    top = _params(cli)
    rest = words[1:]
    while rest and rest[0].startswith("-"):  # the group's own options (--version, --help)
        assert rest[0] in top, f"{line}: curate has no option {rest[0]}"
        rest = rest[1:]
    if not rest:
        return
    name = rest[0]
    cmd = cli.commands.get(name)
    assert cmd is not None, f"{line}: no command {name!r} (curate has {', '.join(sorted(cli.commands))})"
    known = _params(cmd)
    args = rest[1:]
    for i, w in enumerate(args):
        if not w.startswith("-") or w == "-" or re.fullmatch(r"-\d[\d.]*", w):
            continue
        opt, _, inline = w.partition("=")
        assert opt in known, f"{line}: `curate {name}` has no option {opt}"
        p = known[opt]
        if p is None or p.is_flag or p.count:
            continue
        value = inline or (args[i + 1] if i + 1 < len(args) else None)
        assert value is not None, f"{line}: {opt} needs a value"
        if isinstance(p.type, click.Choice):
            assert value in p.type.choices, f"{line}: {opt} {value!r} is not one of {p.type.choices}"


def test_default_review_set_names_in_docs_use_the_default_seed():
    """docs name the set `curate sample` draws by default: its seed is the option's default."""
    sample = cli.commands["sample"]
    seed = next(p.default for p in sample.params if p.name == "seed")
    source = next(p.default for p in sample.params if p.name == "mode")  # sample --mode (was --source)
    named = [(path.name, m) for path in DOCS
             for m in re.findall(r"\b(\w+)-top\d+x\d+-seed(\d+)\b", path.read_text(encoding="utf-8"))]
    assert named, "the docs name no default review set"
    for where, (src, s) in named:
        assert (src, int(s)) == (source, seed), f"{where}: {src}-...-seed{s}, but the default is {source}, seed {seed}"
