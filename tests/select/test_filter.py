"""`curate filter`: subsets against references, formats, files, thresholds, injection."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from classify_support import read_out, references
from conftest import make_folder, open_db, run_cli

from curate.classify.run import classify
from curate.core.workspace import Workspace
from curate.select.filter import FilterSpec, safe_name, write_subset


@pytest.fixture
def ws(classified, tmp_path) -> Path:
    dst = tmp_path / "ws"
    shutil.copytree(classified, dst)
    return dst


def top_by_id(ws: Path) -> dict[int, tuple[str, float]]:
    """id -> (top label, its probability) as stored, checked against the float64 reference.

    Thresholds in these tests are the stored values themselves, so that `>=` at exact
    equality is tested, not the last bit of two different summation orders.
    """
    ref = references(ws)
    ids, probs = ref["image"]
    con = open_db(str(ws / "curate.duckdb"))
    stored = {i: (lab, p) for i, lab, p in con.execute("SELECT id, label, prob FROM predictions").fetchall()}
    con.close()
    for i, row in zip(ids.tolist(), probs, strict=True):
        assert stored[i][0] == ref["labels"][int(row.argmax())] and abs(stored[i][1] - row.max()) < 1e-9
    return stored


@pytest.mark.parametrize("ext", [".parquet", ".csv", ".jsonl"])
def test_filter_writes_what_the_reference_keeps(ws, tmp_path, ext):
    top = top_by_id(ws)
    label = max({lab for lab, _ in top.values()}, key=lambda lab: sum(v[0] == lab for v in top.values()))
    cut = sorted(p for lab, p in top.values() if lab == label)[0]   # the lowest: kept, by >=
    out = tmp_path / f"subset{ext}"
    res = run_cli("filter", "-w", ws, "--label", label, "--min-prob", cut, "--out", out)
    want = sorted(i for i, (lab, p) in top.items() if lab == label and p >= cut)
    assert f"kept {len(want)} of 12 images" in res.output
    rows = read_out(out)
    assert [int(r["id"]) for r in rows] == want
    assert list(rows[0])[:6] == ["id", "path", "caption", "label", "prob", "source_id"]
    for r in rows:
        assert r["label"] == label and abs(float(r["prob"]) - top[int(r["id"])][1]) < 1e-9
        assert Path(r["path"]).is_file()


def test_thresholds_zero_one_and_complement(ws):
    n = 12
    assert write_subset(ws, FilterSpec(min_prob=0.0), None).kept == n           # 0 keeps every image
    assert write_subset(ws, FilterSpec(min_prob=1.0), None).kept == 0           # no softmax here reaches 1
    assert write_subset(ws, FilterSpec(min_prob=0.0, unmatched=True), None).kept == 0
    top = top_by_id(ws)
    for t in sorted({p for _, p in top.values()}) + [0.3, 0.5]:
        kept = write_subset(ws, FilterSpec(min_prob=t), None).kept
        dropped = write_subset(ws, FilterSpec(min_prob=t, unmatched=True), None).kept
        assert kept == sum(p >= t for _, p in top.values())
        assert kept + dropped == n


def test_unmatched_is_what_cleaning_drops(ws, tmp_path):
    top = top_by_id(ws)
    t = float(np.median([p for _, p in top.values()]))
    out = tmp_path / "discarded.jsonl"
    res = run_cli("filter", "-w", ws, "--unmatched", "--min-prob", t, "--out", out)
    rows = read_out(out)
    assert sorted(r["id"] for r in rows) == sorted(i for i, (_, p) in top.items() if p < t)
    assert f"unmatched: {len(rows)} of 12 images" in res.output


def test_caption_and_ensemble_modes(ws, tmp_path):
    out = tmp_path / "street.csv"
    res = run_cli("filter", "-w", ws, "--mode", "caption", "--min-prob", "0", "--out", out)
    assert "kept 11 of 11 images" in res.output                     # one image has no caption
    res = run_cli("filter", "-w", ws, "--mode", "ensemble", "--text-weight", "0.2", "--text-min", "0.25",
                  "--min-prob", "0", "--out", out)
    assert "kept 12 of 12 images" in res.output
    con = open_db(str(ws / "curate.duckdb"))
    want = dict(con.execute("SELECT id, prob FROM ensemble_with(0.2, 0.25)").fetchall())
    assert {int(r["id"]): float(r["prob"]) for r in read_out(out)} == pytest.approx(want, abs=1e-12)
    # the study's defaults read the stored `ensemble` view
    run_cli("filter", "-w", ws, "--mode", "ensemble", "--min-prob", "0", "--out", out)
    want = dict(con.execute("SELECT id, prob FROM ensemble").fetchall())
    assert {int(r["id"]): float(r["prob"]) for r in read_out(out)} == pytest.approx(want, abs=1e-12)
    assert want == pytest.approx(dict(con.execute("SELECT id, prob FROM ensemble_with(0.2, 0.5)").fetchall()),
                                 abs=1e-12)
    con.close()


def test_copy_and_link(ws, tmp_path):
    res = run_cli("filter", "-w", ws, "--min-prob", "0", "--out", tmp_path / "all.parquet",
                  "--copy-to", tmp_path / "copies")
    assert "copied 12 files" in res.output
    rows = read_out(tmp_path / "all.parquet")
    for r in rows:
        f = tmp_path / "copies" / safe_name(r["label"]) / f"{r['id']}_{Path(r['path']).name}"
        assert f.read_bytes() == Path(r["path"]).read_bytes()
    again = run_cli("filter", "-w", ws, "--min-prob", "0", "--copy-to", tmp_path / "copies")
    assert "copied 12 files" in again.output                          # a rerun finds them done
    run_cli("filter", "-w", ws, "--min-prob", "0", "--link-to", tmp_path / "links")
    links = list((tmp_path / "links").rglob("*.jpg"))
    assert len(links) == 12 and all(p.is_symlink() and p.resolve().is_file() for p in links)
    assert safe_name("bakery_shop") == "bakery_shop" and safe_name("bakery/shop").startswith("bakery_shop~")
    assert safe_name("../../etc").startswith("etc~")


def test_injection_through_labels_and_file_names(ws, tmp_path):
    con = open_db(str(ws / "curate.duckdb"))
    before = con.execute("SELECT count(*) FROM items").fetchall()[0][0]
    con.close()
    for evil in ["skyscraper' OR '1'='1", "x'); DROP TABLE items; --", "\"; DELETE FROM items; --"]:
        res = run_cli("filter", "-w", ws, "--label", evil, "--out", tmp_path / "x.csv", expect=1)
        assert "unknown label" in res.output
    out = tmp_path / "we'ird; DROP TABLE items; --.csv"
    run_cli("filter", "-w", ws, "--min-prob", "0", "--out", out)
    assert len(read_out(out)) == 12
    con = open_db(str(ws / "curate.duckdb"))
    assert con.execute("SELECT count(*) FROM items").fetchall()[0][0] == before


def test_injection_through_a_label_file(ws, tmp_path, tiny_encoder):
    """Labels with quotes are data: they classify, filter and come out as written."""
    f = tmp_path / "evil.txt"
    f.write_text("O'Brien's pub\nx'); DROP TABLE items; --\nplain\n", encoding="utf-8")
    classify(ws, f, "raw", tiny_encoder)
    out = tmp_path / "pub.jsonl"
    for label in ("O'Brien's pub", "x'); DROP TABLE items; --", "plain"):
        run_cli("filter", "-w", ws, "--label", label, "--min-prob", "0", "--out", out)
        assert all(r["label"] == label for r in read_out(out))
    run_cli("filter", "-w", ws, "--min-prob", "0", "--out", out)
    assert len(read_out(out)) == 12


def test_bad_requests(ws, tmp_path):
    assert "takes no --label" in run_cli("filter", "-w", ws, "--unmatched", "--label", "bridge", expect=1).output
    assert "format" in run_cli("filter", "-w", ws, "--out", tmp_path / "x.xlsx", expect=1).output
    assert "not both" in run_cli("filter", "-w", ws, "--copy-to", tmp_path / "a", "--link-to", tmp_path / "b",
                                 expect=1).output
    bare = tmp_path / "bare"
    Workspace(bare).connect().close()
    assert "curate classify" in run_cli("filter", "-w", bare, expect=1).output


def test_extra_columns_of_a_manifest(tmp_path, tiny_encoder):
    photos = make_folder(tmp_path / "photos", n=4)
    manifest = tmp_path / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "caption", "city", "likes"])
        for i in range(4):
            w.writerow([str(photos / f"img_{i:03d}.jpg"), f"photo {i}", "New York", i * 10])
    ws = tmp_path / "ws"
    run_cli("build-index", manifest, "-w", ws, "--model", "curate-tiny", "--pretrained", "none", "--workers", "0")
    classify(ws, encoder=tiny_encoder)
    out = tmp_path / "out.parquet"
    run_cli("filter", "-w", ws, "--min-prob", "0", "--out", out)
    rows = read_out(out)
    assert len(rows) == 4
    assert {"city", "likes"} <= set(rows[0]) and rows[0]["city"] == "New York"


def test_threshold_one_is_reachable(ws, tmp_path, tiny_encoder):
    """With a single label every probability is exactly 1: >= 1.0 keeps all, and nothing is unmatched."""
    f = tmp_path / "one.txt"
    f.write_text("street\n", encoding="utf-8")
    classify(ws, f, "raw", tiny_encoder)
    assert write_subset(ws, FilterSpec(min_prob=1.0), None).kept == 12
    assert write_subset(ws, FilterSpec(min_prob=1.0, unmatched=True), None).kept == 0
    assert write_subset(ws, FilterSpec(min_prob=1.0, mode="ensemble", text_min=0.0), None).kept == 12
    con = open_db(str(ws / "curate.duckdb"))
    assert con.execute("SELECT classified FROM coverage WHERE threshold = 1.0").fetchall() == [(12,)]


def test_a_label_in_another_case_or_separator_is_the_one_label_it_names(classified, tmp_path):
    """`--label Skyscraper`, `--label "bakery shop"`: the one label that matches up to case and
    separators is taken, and said; the rows are the exact name's."""
    top = top_by_id(classified)
    label = max({lab for lab, _ in top.values()}, key=lambda lab: sum(v[0] == lab for v in top.values()))
    spelled = label.replace("/", " ").replace("_", " ").upper()
    assert spelled != label
    exact = run_cli("filter", "-w", classified, "--label", label, "--min-prob", "0", "--out", tmp_path / "a.csv")
    loose = run_cli("filter", "-w", classified, "--label", spelled, "--min-prob", "0", "--out", tmp_path / "b.csv")
    assert f"note: --label '{spelled}' taken as the label {label}" in loose.output
    assert "taken as" not in exact.output
    assert read_out(tmp_path / "a.csv") == read_out(tmp_path / "b.csv") and len(read_out(tmp_path / "a.csv"))
    r = run_cli("filter", "-w", classified, "--label", "bakery", "--min-prob", "0", expect=1)
    assert "unknown label 'bakery' (closest: bakery/shop" in r.output   # a part of a name is not a match
