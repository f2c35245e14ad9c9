"""The index recipes of indexes/*.json, read and checked in one place (faiss_index.Recipe)."""

from __future__ import annotations

import json
from importlib.resources import files

import pytest

from curate.ingest import faiss_index
from curate.ingest.faiss_index import Recipe


def _shipped(name: str) -> dict:
    return json.loads(files("curate.indexes").joinpath(f"{name}.json").read_text())


def test_the_shipped_recipes_load_with_their_own_numbers():
    rs = faiss_index.recipes()
    assert set(rs) == {"flat", "hnsw", "ivf", "ivfpq"}
    for name, r in rs.items():
        raw = _shipped(name)
        assert r.raw == raw
        assert (r.nprobe, r.train_max, r.retrain_growth) == (raw.get("nprobe"), raw.get("train_max"),
                                                              raw.get("retrain_growth"))
    assert rs["flat"].factory_for(100, 512) == ("IDMap2,Flat", 0)
    assert rs["ivf"].factory_for(1_000_000, 512) == ("IVF1024,Flat", 1024)
    assert rs["ivfpq"].factory_for(4_000_000, 512) == ("IVF2048,PQ64", 2048)
    assert rs["hnsw"].factory_for(1_000_000, 512) == ("IDMap2,HNSW32,Flat", 0)


def test_training_size_comes_from_the_recipe():
    ivf = faiss_index.recipes()["ivf"]
    assert ivf.train_size(5_000, 16) == 5_000                    # never more than there is
    assert ivf.train_size(1_000_000, 1024) == 1024 * 64           # points per list
    assert ivf.train_size(10**9, 65536) == 2_000_000             # the recipe's cap, not a default in code
    assert ivf.train_size(1_000_000, 16) == 10_000               # a floor for few lists


@pytest.mark.parametrize("metric", ["l2", "L2", None])
def test_a_metric_other_than_inner_product_is_refused(metric):
    raw = {**_shipped("flat"), "metric": metric}
    with pytest.raises(ValueError, match=r"indexes/x\.json: metric .* is not supported.*inner product"):
        Recipe.from_raw(raw, "indexes/x.json")


def test_a_field_the_factory_needs_must_be_in_the_file():
    raw = {k: v for k, v in _shipped("ivfpq").items() if k not in ("nprobe", "pq_bytes_per_dim")}
    with pytest.raises(ValueError, match=r"needs nprobe, pq_bytes_per_dim"):
        Recipe.from_raw(raw, "indexes/ivfpq.json")
