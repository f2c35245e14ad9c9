"""Every command that shows results says, in one NOTE line, when the workspace's vectors come
from random weights (issue 15): search, filter, sample, review, report."""

from __future__ import annotations

import json
import shutil

import duckdb
import pytest
from conftest import run_cli

NOTE = "was embedded with random weights (curate-tiny, no pretrained weights)"


@pytest.fixture(scope="module")
def classified(built_workspace, tmp_path_factory):
    ws = tmp_path_factory.mktemp("rw") / "ws"
    shutil.copytree(built_workspace, ws)
    run_cli("classify", "-w", ws, "--set", "places205", "--prompts", "raw")
    return ws


def _showing_commands(ws, tmp):
    """Each results command once, in the order a user runs them (sample before review and report)."""
    return [
        ("search", ["search", "-w", ws, "a photo", "-k", "3"]),
        ("filter", ["filter", "-w", ws, "--min-prob", "0", "--out", tmp / "kept.csv"]),
        ("sample", ["sample", "-w", ws, "--top-classes", "2", "--per-class", "2"]),
        ("review", ["review", "-w", ws, "--export", tmp / "sheet.csv"]),
        ("report", ["report", "-w", ws, "--out", tmp / "report", "--no-plots"]),
    ]


def test_every_results_command_notes_random_weights_once(classified, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(classified, ws)
    for name, args in _showing_commands(ws, tmp_path):
        r = run_cli(*args)
        notes = [ln for ln in r.stderr.splitlines() if NOTE in ln]
        assert len(notes) == 1, f"{name}: {r.stderr!r}"
        assert notes[0].startswith(f"NOTE: {ws} "), notes
        assert NOTE not in r.stdout, name  # stdout stays the results


def test_no_note_for_a_trained_model(classified, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(classified, ws)
    con = duckdb.connect(str(ws / "curate.duckdb"))
    ident = json.loads(con.execute("SELECT value FROM meta WHERE key = 'model'").fetchone()[0])
    ident.update(pretrained="some-checkpoint.safetensors", random_weights=False)
    con.execute("UPDATE meta SET value = ? WHERE key = 'model'", [json.dumps(ident)])
    con.close()
    # search loads the named model to encode its prompt, and there is no checkpoint here: the others
    for name, args in _showing_commands(ws, tmp_path)[1:]:
        r = run_cli(*args)
        assert "random weights" not in r.output, f"{name}: {r.output!r}"
