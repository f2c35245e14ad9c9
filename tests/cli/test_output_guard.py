"""Outputs never land in a workspace's own files (issue 21, item 4).

Every option of every command that names a file or folder curate writes is listed in
WRITERS and run here against the database, its WAL, the journal, the shard and index
folders, the workspace itself, a link into it and another workspace than the one read
(`-w`): each is refused with one line, and nothing of either workspace changes. A new
command or option taking a path must be listed in WRITERS or READS, so a new writer
that skips the guard (core/outputs.py) fails here.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import click
import pytest
from conftest import run_cli

from curate.classify.run import classify
from curate.cli import cli
from curate.core.outputs import check_output, workspace_entry
from curate.core.workspace import Workspace
from curate.errors import OutputError

# (command, parameter) -> argv for an output at TARGET; the workspace read is WS
WRITERS: dict[tuple[str, str], Callable[[Path, Path], list]] = {
    ("filter", "out"): lambda ws, t: ["filter", "-w", ws, "--min-prob", "0", "--format", "csv", "--out", t],
    ("filter", "copy_to"): lambda ws, t: ["filter", "-w", ws, "--min-prob", "0", "--copy-to", t],
    ("filter", "link_to"): lambda ws, t: ["filter", "-w", ws, "--min-prob", "0", "--link-to", t],
    ("search", "out"): lambda ws, t: ["search", "-w", ws, "a photo", "-k", "2", "--out", t],
    ("sql", "out"): lambda ws, t: ["sql", "-w", ws, "SELECT 1 AS x", "--format", "json", "--out", t],
    ("review", "export_path"): lambda ws, t: ["review", "-w", ws, "--out", t],
    ("review", "_old_export_path"): lambda ws, t: ["review", "-w", ws, "--export", t],
    ("report", "out"): lambda ws, t: ["report", "-w", ws, "--min-support", "1", "--grid-size", "0", "--out", t],
    ("compare", "out"): lambda ws, t: ["compare", "a", "b", "-w", ws, "--out", t],
}
# more outputs of an option listed above, in another form
VARIANTS: dict[str, Callable[[Path, Path], list]] = {
    "filter webdataset": lambda ws, t: ["filter", "-w", ws, "--min-prob", "0", "--format", "webdataset",
                                        "--out", t],
}
FOLDERS = {("filter", "copy_to"), ("filter", "link_to"), ("report", "out"), ("compare", "out"), "filter webdataset"}
# path parameters that only read
READS = {("build-index", "source"), ("build-index", "captions_dir"), ("report", "marks_path"),
         ("review", "import_path"), ("search", "image")}


def _path_params() -> set[tuple[str, str]]:
    found = set()
    for name, cmd in cli.commands.items():
        for p in cmd.params:
            if isinstance(p.type, click.Path) and p.name != "ws_path":
                found.add((name, p.name))
    return found


def test_every_path_a_command_takes_is_a_guarded_writer_or_an_input():
    found = _path_params()
    unknown = found - set(WRITERS) - READS
    assert not unknown, f"add these to WRITERS (and guard them: core/outputs.py) or to READS: {sorted(unknown)}"
    assert set(WRITERS) | READS <= found           # the lists follow the commands


@pytest.fixture(scope="module")
def two(built_workspace, tmp_path_factory, tiny_encoder) -> dict:
    """A workspace classified twice (a, b) with a marked review set, another workspace beside it,
    a link to the first and a file link to its database."""
    root = tmp_path_factory.mktemp("guard")
    ws = root / "ws"
    shutil.copytree(built_workspace, ws)
    classify(ws, encoder=tiny_encoder, logit_scale=60.0, name="b")
    classify(ws, encoder=tiny_encoder, logit_scale=60.0, name="a")
    run_cli("sample", "-w", ws, "--top-classes", "2", "--per-class", "3")
    con = Workspace(ws).connect()
    con.execute("INSERT INTO judgments (id, label, mark) SELECT id, label, 'hit' FROM review_items")
    con.close()
    (ws / "marks.jsonl").write_text("", encoding="utf-8")
    other = root / "other"
    shutil.copytree(built_workspace, other)
    (root / "wslink").symlink_to(ws, target_is_directory=True)
    (root / "dblink.csv").symlink_to(ws / "curate.duckdb")
    return {"root": root, "ws": ws, "other": other}


def _snapshot(*folders: Path) -> dict[str, str | bytes]:
    """Every entry below the folders (links not followed): its kind, or a file's bytes (compared
    as they are: hashing ~10 MB of databases at each of ~80 snapshots took ~1.4 s)."""
    out = {}
    for top in folders:
        for d, dirs, files in os.walk(top):
            for name in dirs + files:
                p = Path(d) / name
                if p.is_symlink() or p.is_dir():
                    out[str(p)] = "link" if p.is_symlink() else "dir"
                else:
                    out[str(p)] = p.read_bytes()
    return out


def _file_targets(t: dict) -> list[Path]:
    ws, root = t["ws"], t["root"]
    return [ws / "curate.duckdb", ws / "curate.duckdb.wal", ws / "marks.jsonl", ws / "embeddings" / "image" / "x.csv",
            ws / "indexes" / "images.faiss", root / "dblink.csv", root / "wslink" / "marks.jsonl",
            t["other"] / "curate.duckdb"]


def _folder_targets(t: dict) -> list[Path]:
    ws, root = t["ws"], t["root"]
    return [ws, ws / "indexes", ws / "embeddings", ws / "embeddings" / "image", root / "wslink",
            root / "wslink" / "indexes", t["other"]]


CASES = [*WRITERS, *VARIANTS]


@pytest.mark.parametrize("writer", CASES, ids=[w if isinstance(w, str) else " ".join(w) for w in CASES])
def test_no_command_writes_into_a_workspace(two, writer):
    argv = WRITERS[writer] if writer in WRITERS else VARIANTS[writer]
    targets = _folder_targets(two) if writer in FOLDERS else _file_targets(two)
    if writer == ("search", "out"):     # search tells the format from the suffix: names it can write
        targets = [two["ws"] / "marks.jsonl", two["ws"] / "indexes" / "images.csv", two["root"] / "dblink.csv",
                   two["other"] / "embeddings" / "hits.parquet"]
    before = _snapshot(two["ws"], two["other"])
    for target in targets:
        r = run_cli(*argv(two["ws"], target), expect=None)
        assert r.exit_code == 74 and "will not" in r.output, f"{target}: exit {r.exit_code}\n{r.output}"
        assert len(r.output.strip().splitlines()[-1]) < 400
        assert _snapshot(two["ws"], two["other"]) == before, f"{target} changed a workspace"
    assert not list(two["root"].glob("*partial*")) and not list(two["root"].glob(".*curate-*"))


def test_outputs_beside_a_workspace_are_written(two, tmp_path):
    """Outside its own files, a workspace folder is a folder like any other."""
    ws = two["ws"]
    try:
        run_cli("filter", "-w", ws, "--min-prob", "0", "--out", ws / "kept.csv")
        run_cli("sql", "-w", ws, "SELECT 1 AS x", "--out", ws / "one.json")
        assert (ws / "kept.csv").exists() and (ws / "one.json").exists()
    finally:
        for name in ("kept.csv", "one.json"):
            (ws / name).unlink(missing_ok=True)


def test_an_output_never_replaces_a_database(two, tmp_path):
    """A DuckDB file of any name (not a workspace: no curate.duckdb beside it) is never replaced."""
    db = tmp_path / "notes.csv"
    shutil.copy(two["other"] / "curate.duckdb", db)
    before = db.read_bytes()
    for argv in (["sql", "-w", two["ws"], "SELECT 1 AS x", "--out", db],
                 ["filter", "-w", two["ws"], "--min-prob", "0", "--out", db]):
        r = run_cli(*argv, expect=74)
        assert "is a DuckDB database" in r.output
    assert db.read_bytes() == before


def test_workspace_entry_follows_links_and_names_the_nearest_workspace(tmp_path):
    ws = tmp_path / "ws"
    (ws / "embeddings" / "image").mkdir(parents=True)
    (ws / "curate.duckdb").write_bytes(b"")
    assert workspace_entry(ws) == (ws, "")
    assert workspace_entry(ws / "curate.duckdb.wal") == (ws, "curate.duckdb.wal")
    assert workspace_entry(ws / "marks.jsonl.lock") == (ws, "marks.jsonl.lock")
    assert workspace_entry(ws / "marks.rejected.jsonl") == (ws, "marks.rejected.jsonl")  # the journal's bad lines
    assert workspace_entry(ws / "app" / "marks.jsonl") == (ws, "app")  # `curate app`'s browsing marks
    assert workspace_entry(ws / "embeddings" / "image" / "new" / "deep.csv") == (ws, "embeddings")
    assert workspace_entry(ws / "Indexes" / "x.csv") == (ws, "Indexes")     # a case-insensitive file system
    assert workspace_entry(ws / "report") is None and workspace_entry(tmp_path / "x.csv") is None
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "b").symlink_to(ws / "embeddings", target_is_directory=True)
    assert workspace_entry(tmp_path / "a" / "b" / "x.csv") == (ws, "embeddings")
    # a workspace inside another's output folder: the nearest decides
    inner = ws / "exports" / "ws2"
    inner.mkdir(parents=True)
    (inner / "curate.duckdb").write_bytes(b"")
    assert workspace_entry(ws / "exports" / "x.csv") is None
    assert workspace_entry(inner / "indexes") == (inner, "indexes")
    with pytest.raises(OutputError, match="is the workspace"):
        check_output(tmp_path / "a" / "b" / "..")      # .. of a link: the link's target's parent (the workspace)
