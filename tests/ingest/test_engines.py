"""The engines share one interface, chosen by name: build-index calls whichever with the same arguments."""

from __future__ import annotations

import inspect

import pytest

from curate.ingest.embed import embed_pending
from curate.ingest.engines import ENGINES, Engine, LocalEngine, open_engine
from curate.ingest.ray_engine import RayEngine


def test_local_and_ray_have_the_same_signature():
    for name in ("device", "driver", "embed"):
        want = inspect.signature(getattr(Engine, name))
        assert inspect.signature(getattr(LocalEngine, name)) == want, name
        assert inspect.signature(getattr(RayEngine, name)) == want, name
    # the local engine's module function takes what Engine.embed takes, without self
    assert list(inspect.signature(embed_pending).parameters) == list(want.parameters)[1:]


def test_an_engine_is_chosen_by_name():
    assert ENGINES == ("local", "ray")
    with open_engine("local") as engine:
        assert isinstance(engine, LocalEngine) and engine.device("cpu") == "cpu"
        assert engine.driver("cpu", "bf16") == ("cpu", "bf16")


@pytest.mark.parametrize("name", ENGINES)
def test_every_engine_name_is_one_the_command_offers(name):
    from curate.commands.build_index import build_index_cmd

    engine = next(p for p in build_index_cmd.params if p.name == "engine")
    assert name in engine.type.choices
