"""`curate filter` outputs a training pipeline reads: webdataset shards (read back with the
webdataset library), embeddings beside a subset, parquet provenance, the manifest's own id,
and --copy-to as a torchvision ImageFolder. Real workspaces, real files, the real CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import duckdb
import numpy as np
import pytest
from conftest import CAPTIONS, open_db, run_cli, write_jpeg
from ingest_support import stored_vectors

from curate.classify.run import classify
from curate.core.outputs import kv_metadata_option
from curate.select.exports import command_line

TINY = ("--model", "curate-tiny", "--pretrained", "none", "--workers", "0")
N = 10


@pytest.fixture(scope="module")
def manifest_ws(tmp_path_factory, tiny_encoder) -> Path:
    """A workspace built from a CSV manifest with its own ids ("post-007"...) and a `city` column,
    classified with a sharp softmax. Item 3 has no caption. Tests must not write to it."""
    root = tmp_path_factory.mktemp("exports")
    lines = ["id,path,caption,city"]
    for i in range(N):
        write_jpeg(root / "photos" / f"p{i}.jpg", seed=100 + i, size=(64 + 8 * i, 48))
        cap = CAPTIONS[i % len(CAPTIONS)].replace(",", " ").replace('"', "")
        lines.append(f"post-{i:03d},photos/p{i}.jpg,{cap},{'newyork' if i % 2 else 'paris'}")
    (root / "m.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    ws = root / "ws"
    run_cli("build-index", root / "m.csv", "-w", ws, *TINY)
    classify(ws, encoder=tiny_encoder, logit_scale=60.0)
    return ws


def _rows(con: duckdb.DuckDBPyConnection, query: str, params: list | None = None) -> list[dict]:
    rel = con.execute(query, params or [])
    cols = [d[0] for d in rel.description]
    return [dict(zip(cols, r, strict=True)) for r in rel.fetchall()]


def _stored(ws: Path, kind: str) -> dict[int, np.ndarray]:
    ids, vecs = stored_vectors(ws, kind)
    return {int(i): v for i, v in zip(ids, vecs, strict=True)}


def test_webdataset_shards_read_back_with_the_library(manifest_ws, tmp_path):
    wds = pytest.importorskip("webdataset")
    out = tmp_path / "shards"
    res = run_cli("filter", "-w", manifest_ws, "--min-prob", "0", "--format", "webdataset", "--out", out,
                  "--shard-size", "4", "--with-embeddings")
    assert f"wrote {N} samples in 3 shards" in res.output
    assert sorted(p.name for p in out.glob("*.tar")) == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]

    con = open_db(str(manifest_ws / "curate.duckdb"))
    items = {r["id"]: r for r in _rows(con, "SELECT id, source_id, path, caption, city FROM items")}
    preds = {r["id"]: r for r in _rows(con, "SELECT id, label, prob, label2, prob2 FROM predictions")}
    con.close()

    samples = list(wds.WebDataset(str(out / "shard-{000000..000002}.tar"), shardshuffle=False))
    assert len(samples) == N
    keys = []
    for s in samples:
        meta = json.loads(s["json"])
        i = meta["id"]
        keys.append(s["__key__"])
        assert s["__key__"] == str(i)
        assert s["jpg"] == Path(items[i]["path"]).read_bytes()          # the original bytes
        assert s["txt"].decode("utf-8") == (items[i]["caption"] or "")
        assert meta["source_id"] == items[i]["source_id"] == f"post-{i:03d}"  # the manifest's own id
        assert meta["city"] == items[i]["city"]                          # the manifest's columns
        assert (meta["label"], meta["runner_up"]) == (preds[i]["label"], preds[i]["label2"])
        assert meta["prob"] == pytest.approx(preds[i]["prob"], abs=1e-12)
        assert meta["runner_up_prob"] == pytest.approx(preds[i]["prob2"], abs=1e-12)
    assert keys == [str(i) for i in sorted(items)]                       # id order, shard after shard

    # embeddings aligned to the samples, as stored
    ids = np.load(out / "ids.npy")
    assert ids.tolist() == sorted(items)
    image, caption = np.load(out / "image.npy"), np.load(out / "caption.npy")
    ref_img, ref_cap = _stored(manifest_ws, "image"), _stored(manifest_ws, "caption")
    assert image.dtype == np.float32 and image.shape[0] == N
    for row, i in enumerate(ids):
        np.testing.assert_array_equal(image[row], ref_img[int(i)])
        if int(i) in ref_cap:
            np.testing.assert_array_equal(caption[row], ref_cap[int(i)])
        else:
            assert np.isnan(caption[row]).all()
    assert np.isnan(caption).all(axis=1).sum() == N - len(ref_cap) > 0   # item 3 has no caption

    prov = json.loads((out / "curate.json").read_text(encoding="utf-8"))
    assert prov["curate.mode"] == "image" and "--format webdataset" in prov["curate.command"]


def test_webdataset_rerun_replaces_shards_and_refuses_a_foreign_folder(manifest_ws, tmp_path):
    out = tmp_path / "shards"
    run_cli("filter", "-w", manifest_ws, "--min-prob", "0", "--format", "webdataset", "--out", out,
            "--shard-size", "3")
    assert len(list(out.glob("*.tar"))) == math.ceil(N / 3)
    run_cli("filter", "-w", manifest_ws, "--min-prob", "0", "--format", "webdataset", "--out", out)
    assert [p.name for p in out.glob("*.tar")] == ["shard-000000.tar"]     # no stale shard of the first run
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    res = run_cli("filter", "-w", manifest_ws, "--format", "webdataset", "--out", mine, expect=None)
    assert res.exit_code != 0 and "not from curate" in res.output
    assert (mine / "notes.txt").read_text() == "mine"


def test_parquet_carries_provenance_and_embeddings_beside(manifest_ws, tmp_path):
    out = tmp_path / "kept.parquet"
    run_cli("filter", "-w", manifest_ws, "--min-prob", "0.2", "--mode", "ensemble", "--out", out,
            "--with-embeddings")
    con = duckdb.connect()
    kv = dict(con.execute("SELECT decode(key), decode(value) FROM parquet_kv_metadata(?)", [str(out)]).fetchall())
    rows = _rows(con, "SELECT * FROM read_parquet(?)", [str(out)])
    wcon = open_db(str(manifest_ws / "curate.duckdb"))
    settings = _rows(wcon, "SELECT * FROM score_settings")[0]
    model = json.loads(wcon.execute("SELECT value FROM meta WHERE key = 'model'").fetchall()[0][0])
    name = wcon.execute("SELECT name FROM classifications WHERE active").fetchall()[0][0]
    wcon.close()
    assert kv["curate.model"] == model["model"] == "curate-tiny"
    assert kv["curate.pretrained"] == model["pretrained"]
    assert kv["curate.label_set"] == settings["label_set"] and kv["curate.prompts"] == settings["prompts"]
    assert float(kv["curate.logit_scale"]) == pytest.approx(settings["logit_scale"])
    assert kv["curate.mode"] == "ensemble" and kv["curate.classification"] == name
    assert json.loads(kv["curate.thresholds"])["min_prob"] == 0.2
    assert kv["curate.version"]
    assert kv["curate.command"].startswith("curate filter -w ")
    assert "--min-prob 0.2 --mode ensemble" in kv["curate.command"]
    assert "--with-embeddings" in kv["curate.command"]
    # curate's id and the manifest's id, side by side
    assert rows and all(r["source_id"] == f"post-{r['id']:03d}" for r in rows)
    image = np.load(tmp_path / "kept.image.npy")
    caption = np.load(tmp_path / "kept.caption.npy")
    ref_img, ref_cap = _stored(manifest_ws, "image"), _stored(manifest_ws, "caption")
    assert image.shape[0] == caption.shape[0] == len(rows)
    for row, r in enumerate(rows):
        np.testing.assert_array_equal(image[row], ref_img[r["id"]])
        if r["id"] in ref_cap:
            np.testing.assert_array_equal(caption[row], ref_cap[r["id"]])
        else:
            assert np.isnan(caption[row]).all()
    assert not list(tmp_path.glob(".*curate-partial"))


def test_csv_keeps_its_columns_and_format_names_the_format(manifest_ws, tmp_path):
    out = tmp_path / "kept.txt"
    run_cli("filter", "-w", manifest_ws, "--min-prob", "0", "--format", "csv", "--out", out)
    header = out.read_text(encoding="utf-8").splitlines()[0]
    assert header == "id,path,caption,label,prob,source_id,city"


def test_copy_to_is_an_imagefolder_torchvision_loads(manifest_ws, tmp_path):
    from torchvision.datasets import ImageFolder

    folder = tmp_path / "imagefolder"
    run_cli("filter", "-w", manifest_ws, "--min-prob", "0", "--copy-to", folder)
    con = open_db(str(manifest_ws / "curate.duckdb"))
    labels = {r[0]: r[1] for r in con.execute("SELECT id, label FROM predictions").fetchall()}
    con.close()
    ds = ImageFolder(str(folder))
    assert len(ds) == N
    assert sorted(ds.classes) == sorted(set(labels.values()))
    for path, cls in ds.samples:
        item_id = int(Path(path).name.split("_", 1)[0])
        assert ds.classes[cls] == labels[item_id]
    img, _ = ds[0]
    assert img.size[1] == 48


@pytest.mark.parametrize("args, message", [
    (("--with-embeddings",), "--with-embeddings writes beside --out"),
    (("--format", "webdataset"), "--format writes beside --out"),
])
def test_outputs_need_an_out(manifest_ws, args, message):
    res = run_cli("filter", "-w", manifest_ws, *args, expect=None)
    assert res.exit_code != 0 and message in res.output


def test_command_line_and_metadata_quoting(tmp_path):
    cmd = command_line("ws dir", [("--label", ("it's", "bar")), ("--min-prob", 0.6), ("--unmatched", False),
                                  ("--where", (("city", "new york"),)), ("--with-embeddings", True),
                                  ("--out", None)])
    assert cmd == "curate filter -w 'ws dir' --label 'it'\"'\"'s' --label bar --min-prob 0.6 " \
                  "--where 'city=new york' --with-embeddings"
    opt = kv_metadata_option({"curate.command": cmd, "curate.label_set": "x'); DROP TABLE t; --"})
    con = duckdb.connect()
    con.execute("CREATE TABLE t AS SELECT 1 AS a")
    f = str(tmp_path / "t.parquet")
    con.execute(f"COPY t TO ? (FORMAT parquet{opt})", [f])
    kv = dict(con.execute("SELECT decode(key), decode(value) FROM parquet_kv_metadata(?)", [f]).fetchall())
    assert kv == {"curate.command": cmd, "curate.label_set": "x'); DROP TABLE t; --"}
    assert con.execute("SELECT count(*) FROM t").fetchall() == [(1,)]
