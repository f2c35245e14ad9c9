"""Where build-index embeds: one interface, the engines chosen by name (`--engine`).

    with open_engine("ray", address) as engine:
        device = engine.device("auto")              # the device the model runs on
        where = engine.driver(device, precision)    # where this process loads its own encoder
        stats = engine.embed(ws, con, enc, run_id, opts, progress)

- local: this machine; the encoder loaded here embeds (curate/ingest/embed.py).
- ray: a Ray cluster (curate/ingest/ray_engine.py); this process commits the shards.

Every engine's `embed` returns the same EmbedStats (items, and decode / forward / commit
seconds over its batches), which build-index records in `runs`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # torch loads with these: only when an engine runs
    import duckdb

    from ..core.workspace import Workspace
    from .embed import EmbedOptions, EmbedStats
    from .model import Encoder

ENGINES = ("local", "ray")


class Engine(Protocol):
    def device(self, asked: str) -> str:
        """The device the model runs on for --device `asked` (auto, cpu, cuda...)."""

    def driver(self, device: str, precision: str) -> tuple[str, str]:
        """The device and precision of this process's encoder, given the model's."""

    def embed(self, ws: Workspace, con: duckdb.DuckDBPyConnection, enc: Encoder, run_id: int,
              opts: EmbedOptions, progress: Callable[[int], None] | None = None) -> EmbedStats:
        """Embed every pending item (at most opts.limit) and commit it in shards."""


class LocalEngine:
    """This machine: decoding in loader processes, the model in this one."""

    def device(self, asked: str) -> str:
        from .model import pick_device

        return pick_device(asked)

    def driver(self, device: str, precision: str) -> tuple[str, str]:
        return device, precision

    def embed(self, ws: Workspace, con: duckdb.DuckDBPyConnection, enc: Encoder, run_id: int,
              opts: EmbedOptions, progress: Callable[[int], None] | None = None) -> EmbedStats:
        from .embed import embed_pending

        return embed_pending(ws, con, enc, run_id, opts, progress)


@contextmanager
def open_engine(name: str, address: str | None = None) -> Iterator[Engine]:
    """The engine called `name`, ready; a Ray session it opened is closed on leaving."""
    if name == "local":
        yield LocalEngine()
        return
    from .ray_engine import RayEngine, connect

    with connect(address) as session:  # before the model loads: a missing Ray fails at once
        yield RayEngine(session)
