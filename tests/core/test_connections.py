"""A workspace is opened one way: `Workspace.reading()` / `writing()` scopes, one refusal of a
folder without a workspace (the same line from every command and every step), and a command
that opens its workspace once (scopes inside its scope share the connection)."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pytest
from conftest import make_folder, run_cli

from curate import api
from curate.classify import calibrated
from curate.classify.run import ClassifyOptions
from curate.classify.run import run as classify_run
from curate.core import workspace
from curate.core.workspace import Workspace
from curate.errors import WorkspaceError
from curate.select.filter import FilterSpec, write_subset
from curate.select.search import search as search_items


def _refusal(where: Path) -> str:
    return f"curate: {workspace.missing(where)}"


def test_the_no_workspace_line_is_one_for_every_command(tmp_path):
    """Every command given a folder with no workspace says the same line (naming the folder and
    the -w to give), exit 4, and leaves no folder behind."""
    nowhere = tmp_path / "nowhere"
    line = _refusal(nowhere)
    assert str(nowhere) in line and f"-w {nowhere}" in line and "\n" not in line
    commands = [
        ("classify",), ("classify", "--list"), ("classify", "--use", "x"), ("classify", "--drop", "x"),
        ("filter",), ("search", "a photo"), ("dedup",), ("sample",), ("sample", "--list"),
        ("review", "--out", tmp_path / "sheet.csv"), ("report", "--out", tmp_path / "r"), ("compare", "a", "b"),
        ("labels",), ("sql", "select 1"), ("app",),
    ]
    for args in commands:
        r = run_cli(*args[:1], "-w", nowhere, *args[1:], expect=4)
        assert r.output.strip().splitlines()[-1] == line, args
    assert not nowhere.exists()


def test_the_no_workspace_line_is_one_for_every_step(tmp_path):
    """The steps below the commands (a library user calls them with a path) refuse a missing
    workspace with the commands' line, not each its own."""
    nowhere = tmp_path / "nowhere"
    steps = {
        "api.labels": lambda: api.labels(nowhere),
        "api.filter": lambda: api.filter(nowhere),
        "api.search": lambda: api.search(nowhere, "a photo"),
        "api.classifications": lambda: api.classifications(nowhere),
        "classify.run": lambda: classify_run(nowhere, ClassifyOptions()),
        "select.search": lambda: search_items(nowhere, "a photo"),
        "select.write_subset": lambda: write_subset(nowhere, FilterSpec(), None),
        "calibrated.for_workspace": lambda: calibrated.for_workspace(nowhere),
        "Workspace.reading": lambda: Workspace(nowhere).reading().__enter__(),
        "Workspace.writing": lambda: Workspace(nowhere).writing().__enter__(),
        "Workspace.connect(read_only)": lambda: Workspace(nowhere).connect(read_only=True),
    }
    for name, step in steps.items():
        with pytest.raises(WorkspaceError) as e:
            step()
        assert f"curate: {e.value}" == _refusal(nowhere), name
    assert not nowhere.exists()


def _opens(*args: object) -> int:
    before = sum(workspace.CONNECTS.values())
    run_cli(*args)
    return sum(workspace.CONNECTS.values()) - before


def test_a_command_opens_its_workspace_once(classified, tmp_path):
    """The notes a command prints (random weights, items pending), its labels check, its
    selection and its output file all read through the one connection the command opened;
    a writer's notes read through its write connection."""
    ws = tmp_path / "ws"
    shutil.copytree(classified, ws)
    label = api.labels(ws)[0].label
    once = [
        ("filter", "-w", ws, "--label", label.upper(), "--min-prob", "0", "--out", tmp_path / "kept.csv"),
        ("filter", "-w", ws, "--mode", "ensemble", "--min-prob", "0.1"),
        ("search", "-w", ws, "a photo", "-k", "3", "--out", tmp_path / "hits.parquet"),
        ("labels", "-w", ws),
        ("sql", "-w", ws, "select count(*) from items"),
        ("classify", "-w", ws, "--list"),
        ("sample", "-w", ws, "--top-classes", "2", "--per-class", "2"),
        ("sample", "-w", ws, "--list"),
        ("review", "-w", ws, "--out", tmp_path / "sheet.csv"),
        ("classify", "-w", ws, "--logit-scale", "60"),
    ]
    for args in once:
        assert _opens(*args) == 1, args


def test_build_index_reads_once_then_writes_once(tmp_path):
    """build-index reads the workspace's model before loading one (without the write lock), then
    writes: two connections on a workspace that exists, one on a new one."""
    make_folder(tmp_path / "photos", n=3)
    args = ("build-index", tmp_path / "photos", "-w", tmp_path / "ws", "--model", "curate-tiny",
            "--pretrained", "none", "--workers", "0")
    assert _opens(*args) == 1
    assert _opens(*args) == 2


def test_scopes_share_one_connection(built_workspace):
    """A scope inside another of the same workspace is the outer one's connection; a reader
    inside a writer reads through the writer; a writer inside a reader is a bug, said at once."""
    ws = Workspace(built_workspace)
    with ws.reading() as outer:
        with ws.reading() as inner:
            assert inner is outer
        with Workspace(built_workspace / ".." / built_workspace.name).reading() as same:  # spelled otherwise
            assert same is outer
        with pytest.raises(RuntimeError, match="inside a read-only scope"):
            with ws.writing():
                pass
        assert outer.execute("SELECT count(*) FROM items").fetchall()[0][0] > 0   # still open
    with pytest.raises(duckdb.ConnectionException):   # closed when the outer scope ends
        outer.execute("SELECT 1")


def test_the_core_schema_runs_at_a_write_connect_only_when_its_stamp_differs(tmp_path):
    """queries/workspace.sql and its upgrades run once per workspace and curate version: a
    workspace stamped with what they say is opened without them (a view dropped by hand stays
    dropped), one stamped otherwise (an older curate's) gets them again and the new stamp."""
    ws = Workspace(tmp_path / "ws")
    ws.connect().close()
    with ws.writing() as con:
        assert Workspace.get_meta(con, "schema_stamp") == workspace.SCHEMA_STAMP
        con.execute("DROP VIEW run_times")

    def has_run_times() -> bool:
        with ws.writing() as con:
            return con.execute("SELECT count(*) FROM duckdb_views() WHERE database_name = current_database() "
                               "AND view_name = 'run_times'").fetchall()[0][0] == 1

    assert not has_run_times()
    with ws.writing() as con:
        Workspace.set_meta(con, "schema_stamp", "from-an-older-curate")
    assert has_run_times()
    with ws.reading() as con:
        assert Workspace.get_meta(con, "schema_stamp") == workspace.SCHEMA_STAMP
