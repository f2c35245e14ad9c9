"""`curate app`: the local web app over a workspace (curate/app/)."""

from __future__ import annotations

import webbrowser
from pathlib import Path

import click

from ..core.textout import safe
from . import options
from .shared import note_random_weights


@click.command("app")
@options.workspace_option()
@click.option("--port", type=click.IntRange(0, 65535), default=8766, show_default=True,
              help="Port on 127.0.0.1 (0: any free port; a busy port falls back to a free one).")
@click.option("--no-browser", is_flag=True, help="Print the address instead of opening a browser.")
@click.option("--device", default="cpu", show_default=True,
              help="Device for the model's text tower (the text search): cpu, cuda, auto ...")
def app_cmd(ws_path: Path, port: int, no_browser: bool, device: str) -> None:
    """Browse, search and mark the collection in the browser; export what you see."""
    # starlette, uvicorn, torch and faiss load here: `curate --help` stays fast
    from ..app.server import AppServer

    note_random_weights(ws_path)
    server = AppServer(ws_path, port, device=device)
    if server.fallback:
        click.echo(server.fallback, err=True)
    click.echo(safe(f"curate app on {server.url}   (workspace {ws_path}; Ctrl-C to stop)"))
    click.echo("the model loads in the background: browsing works at once, text search when it is ready")
    if not no_browser:
        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    if server.left:
        click.echo(f"{server.left} review marks wait in {ws_path / 'marks.jsonl'} (another process holds the "
                   "database): every curate command reads them, and the next one that writes the workspace "
                   "saves them into it", err=True)
