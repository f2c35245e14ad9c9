"""The Python API, used as a notebook would: build_index -> classify -> filter -> search ->
sample -> report on a folder of real JPEGs, each result checked against what the CLI writes
for the same workspace. Also the old option spellings, still working and hidden from --help."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
from conftest import make_folder, run_cli

import curate
from curate import api


@pytest.fixture(scope="module")
def notebook(tmp_path_factory) -> dict:
    """Every step run through `curate.<step>`, in pipeline order, quietly."""
    root = tmp_path_factory.mktemp("api")
    photos = make_folder(root / "photos")
    ws = root / "ws"
    out = {"root": root, "photos": photos, "ws": ws}
    out["build"] = api.build_index(photos, ws, model="curate-tiny", pretrained="none", workers=0, quiet=True)
    out["classify"] = api.classify(ws, label_set="places205", prompts="natural", quiet=True)
    out["filter"] = api.filter(ws, api.FilterSpec(min_prob=0.0), api.FilterOutput(out=root / "api.csv"))
    out["search"] = api.search(ws, "a rooftop bar at night", k=5)
    out["sample"] = api.sample(ws, api.SampleSpec(top_classes=3, per_class=2))
    out["report"] = api.report(ws, out=root / "api-report", options=api.ReportOptions(grid_size=0))
    return out


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_build_index_counts_what_the_workspace_holds(notebook):
    b = notebook["build"]
    assert b.seen == b.added == 12 and b.items == {"embedded": 12}
    assert b.n_rejected == 0 and b.model.random_weights
    assert [ix.path.name for ix in b.indexes] == ["images.faiss", "captions.faiss"]
    assert all(ix.path.is_file() for ix in b.indexes)
    # a second build adds nothing, as `curate build-index` says
    again = run_cli("build-index", notebook["photos"], "-w", notebook["ws"], "--workers", "0").output
    assert "12 seen, 0 new" in again and "12 embedded" in again


def test_api_is_the_cli(notebook, tmp_path):
    ws, root = notebook["ws"], notebook["root"]
    c = notebook["classify"]
    assert (c.images, c.captions, c.n_labels, c.label_set) == (12, 11, 205, "places205")
    cli_out = run_cli("classify", "-w", ws, "--label-set", "places205", "--prompts", "natural").output
    assert "classified 12 images and 11 captions against 205 labels" in cli_out
    # filter: the same rows as the CLI's file
    f = notebook["filter"]
    run_cli("filter", "-w", ws, "--min-prob", "0", "--out", tmp_path / "cli.csv")
    assert f.kept == f.total == 12 and f.out == root / "api.csv"
    assert _rows(root / "api.csv") == _rows(tmp_path / "cli.csv")
    # search: the same hits in the same order as the CLI prints
    hits = notebook["search"]
    printed = run_cli("search", "-w", ws, "a rooftop bar at night", "-k", "5").stdout.splitlines()[1:]
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
    assert [(int(line.split()[0]), int(line.split()[2])) for line in printed] == [(h.rank, h.id) for h in hits]
    # sample: drawing the same set from the CLI finds the one the API drew
    s = notebook["sample"]
    assert s.name == "image-top3x2-seed0" and len(s.classes) == 3
    assert s.items == sum(s.drawn.values()) == sum(min(2, freq) for _label, _rank, freq in s.classes)
    assert f"review set {s.name}: {s.items} images" in run_cli("sample", "-w", ws, "--top-classes", "3",
                                                                "--per-class", "2").output
    # report: the same files as the CLI writes for that set
    r = notebook["report"]
    assert r.no_calibration and r.out == root / "api-report" and (r.out / "index.html").is_file()
    run_cli("report", "-w", ws, "--out", tmp_path / "cli-report", "--grid-size", "0")
    assert sorted(p.name for p in r.files) == sorted(p.name for p in (tmp_path / "cli-report").iterdir()
                                                     if not p.name.startswith("."))
    assert r.text.strip() in run_cli("report", "-w", ws, "--out", tmp_path / "again", "--grid-size", "0",
                                  "--no-plots").output


def test_labels_shows_the_workspace_label_set(notebook, tmp_path):
    rows = api.labels(notebook["ws"])
    assert len(rows) == 205 and [r.index for r in rows] == list(range(205))
    out = run_cli("labels", "-w", notebook["ws"])
    assert out.output.splitlines()[0].split()[1] == rows[0].label
    assert "205 labels: the set" in out.stderr
    # not classified: a clear message, exit 1
    plain = tmp_path / "plain"
    shutil.copytree(notebook["ws"], plain)
    for c in api.classifications(plain):
        api.drop_classification(plain, c.name)
    msg = run_cli("labels", "-w", plain, expect=1).output
    assert "not classified yet" in msg and "curate classify" in msg
    assert "no workspace at" in run_cli("labels", "-w", tmp_path / "none", expect=4).output
    assert "drop --label-set" in run_cli("labels", "-w", notebook["ws"], "--label-set", "x", expect=2).output


def test_errors_are_curate_errors(tmp_path):
    with pytest.raises(curate.CurateError) as e:
        api.classify(tmp_path / "nothing")
    assert e.value.exit_code == 4
    with pytest.raises(curate.CurateError):
        api.build_index(tmp_path, tmp_path / "ws", model="curate-tiny", pretrained="none")  # no images
    assert not (tmp_path / "ws").exists()


def test_old_spellings_still_work(notebook, tmp_path):
    ws = notebook["ws"]
    new = run_cli("labels", "--label-set", "places205", "--prompts", "raw").output
    assert run_cli("labels", "--set", "places205", "--prompts", "raw").output == new
    assert "not both" in run_cli("labels", "--set", "places205", "--label-set", "places205", expect=2).output
    copy = tmp_path / "ws"
    shutil.copytree(ws, copy)
    run_cli("classify", "-w", copy, "--set", "places205", "--prompts", "natural")
    out = run_cli("sample", "-w", copy, "--source", "caption", "--name", "old", "--top-classes", "2",
                  "--per-class", "1").output
    assert "review set old:" in out and "from caption predictions" in out
    assert "old (places205-natural): caption, top 2 x 1" in run_cli("sample", "-w", copy, "--list").output
    run_cli("review", "-w", copy, "--set", "old", "--export", tmp_path / "old.csv")
    run_cli("review", "-w", copy, "--set", "old", "--out", tmp_path / "new.csv")
    assert (tmp_path / "old.csv").read_bytes() == (tmp_path / "new.csv").read_bytes()


@pytest.mark.parametrize(("command", "old", "new"), [
    ("labels", "--set", "--label-set"), ("classify", "--set", "--label-set"), ("sample", "--source", "--mode"),
    ("sample", "--name", "--set"), ("review", "--export", "--out")])
def test_old_spellings_are_hidden_from_help(command, old, new):
    text = run_cli(command, "--help").output
    assert new in text and f"{old} " not in text.replace(f"{new} ", "")
