"""`curate labels`: a label set and the prompts its labels become."""

from __future__ import annotations

import click

from ..classify.labels import load_label_set
from ..classify.prompts import prompts_for, resolve
from ..core.textout import safe
from . import options


@click.command("labels")
@options.label_set_option
@options.prompts_option
def labels_cmd(label_set: str, prompts: str) -> None:
    """Show each label of a set and the prompt(s) it becomes."""
    ls = load_label_set(label_set)
    texts = prompts_for(ls, resolve(prompts))
    names = [safe(x) for x in ls.labels]
    width = max(len(x) for x in names)
    for i, (lab, ps) in enumerate(zip(names, texts, strict=True)):
        click.echo(f"{i:>4}  {lab:<{width}}  {safe(ps[0])}")
        for p in ps[1:]:
            click.echo(f"{'':>4}  {'':<{width}}  {safe(p)}")
    click.echo(f"{len(ls)} labels, prompts: {safe(prompts)}", err=True)
