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
    assert rs["ivfpq"].factory_for(4_000_000, 512) == ("IVF2048,PQ64np", 2048)
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


def test_a_recipe_is_never_built_on_fewer_vectors_than_it_trains_on():
    ivfpq = faiss_index.recipes()["ivfpq"]
    need = ivfpq.min_train()
    assert need == 256 * 39 and faiss_index.recipes()["ivf"].min_train() == 0
    named = faiss_index.choose(need - 1, 64, "ivfpq")
    assert named.recipe.name == "flat" and named.note == (
        f"recipe ivfpq needs {need:,} vectors to train its codes and there are {need - 1:,}: "
        "built flat instead, as auto would")
    assert faiss_index.choose(need, 64, "ivfpq").recipe.name == "ivfpq"
    assert faiss_index.choose(need, 64, "ivfpq").note == ""
    # under a budget only PQ codes would fit, yet they cannot be trained: a clear refusal, not a crash later
    with pytest.raises(ValueError, match="no index recipe fits"):
        faiss_index.choose(300, 512, None, 10_000)


def test_build_index_ivfpq_on_too_few_vectors_builds_the_size_s_recipe_and_says_so(tmp_path):
    import duckdb
    import faiss
    import numpy as np
    from conftest import run_cli

    src = tmp_path / "src"
    for p in ("img_emb", "metadata"):
        (src / p).mkdir(parents=True)
    np.save(src / "img_emb" / "img_emb_0.npy", np.random.default_rng(0).standard_normal((200, 64)).astype(np.float32))
    duckdb.sql(f"COPY (SELECT 'k' || i AS key, 'http://x/' || i AS url FROM range(200) t(i)) "
               f"TO '{src / 'metadata' / 'metadata_0.parquet'}' (FORMAT parquet)")
    out = run_cli("build-index", src, "-w", tmp_path / "ws", "--model", "curate-tiny", "--pretrained", "none",
                  "--index", "ivfpq").output
    assert "note: recipe ivfpq needs 9,984 vectors to train its codes and there are 200: built flat instead" in out
    assert "internal error" not in out
    index = faiss.read_index(str(tmp_path / "ws" / "indexes" / "images.faiss"))
    assert isinstance(faiss.downcast_index(index), faiss.IndexIDMap2) and index.ntotal == 200
    con = duckdb.connect(str(tmp_path / "ws" / "curate.duckdb"), read_only=True)
    assert con.execute("SELECT status FROM runs").fetchall() == [("finished",)]
    con.close()
    # a rerun keeps the index it built (the note again), nothing rebuilt
    again = run_cli("build-index", src, "-w", tmp_path / "ws", "--model", "curate-tiny", "--pretrained", "none",
                    "--index", "ivfpq").output
    assert "up to date" in again and "note: recipe ivfpq needs" in again
