"""`curate labels`: a label set and the prompts its labels become, or the set a workspace was
classified with (-w)."""

from __future__ import annotations

from pathlib import Path

import click

from .. import api
from ..classify.labels import load_label_set
from ..classify.prompts import prompts_for, resolve
from ..core.textout import safe
from . import options


@click.command("labels")
@options.label_set_option
@options.old_label_set
@options.prompts_option
@click.option("-w", "--workspace", "ws_path", type=click.Path(path_type=Path), default=None,
              callback=options.remember_workspace, help="Show instead the label set this workspace was classified with (its `labels` table: "
                   "index, label, scene, prompts).")
def labels_cmd(label_set: str, prompts: str, ws_path: Path | None) -> None:
    """Show each label of a set and the prompt(s) it becomes."""
    if ws_path is not None:
        ctx = click.get_current_context()
        for name in ("label_set", "prompts"):
            if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE:
                raise click.UsageError(f"-w shows the workspace's own label set and prompts: drop "
                                       f"--{name.replace('_', '-')}")
        _show_workspace(ws_path)
        return
    ls = load_label_set(label_set)
    texts = prompts_for(ls, resolve(prompts))
    _print([safe(x) for x in ls.labels], texts)
    click.echo(f"{len(ls)} labels, prompts: {safe(prompts)}", err=True)


def _print(names: list[str], texts: list[list[str]], scenes: list[str] | None = None,
           indexes: list[int] | None = None) -> None:
    width = max(len(x) for x in names)
    sw = max(len(s) for s in scenes) if scenes else 0
    for i, (lab, ps) in enumerate(zip(names, texts, strict=True)):
        scene = f"{safe(scenes[i]):<{sw}}  " if scenes else ""
        click.echo(f"{indexes[i] if indexes else i:>4}  {lab:<{width}}  {scene}{safe(ps[0])}")
        for p in ps[1:]:
            click.echo(f"{'':>4}  {'':<{width}}  {'':<{len(scene)}}{safe(p)}")


def _show_workspace(ws_path: Path) -> None:
    rows = api.labels(ws_path)
    if not rows:
        click.echo(f"{ws_path}: the stored label set is empty", err=True)
        return
    _print([safe(r.label) for r in rows], [r.prompts or [""] for r in rows], [r.scene for r in rows],
           [r.index for r in rows])
    click.echo(f"{len(rows)} labels: the set {ws_path} was classified with (index, label, scene, prompts)",
               err=True)
