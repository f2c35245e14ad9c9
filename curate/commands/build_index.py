"""`curate build-index` (placeholder until the ingest lands in this session)."""
import click


@click.command("build-index")
def build_index() -> None:
    """Ingest a collection and embed it (in progress)."""
    raise click.ClickException("build-index is being written")
