"""The process's DuckDB instance (curate/core/duckdb_host.py): a workspace's database is attached
to it while a scope uses it. What other connections, threads and processes see must be what a
connection of its own would show them: the file free after the scope, one writer or many readers,
each workspace's catalog its own."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading

import duckdb
import pytest
from conftest import run_cli

from curate.core import duckdb_host, sql
from curate.core.workspace import Workspace
from curate.errors import WorkspaceBusy


@pytest.fixture
def ws(built_workspace, tmp_path) -> Workspace:
    shutil.copytree(built_workspace, tmp_path / "ws")
    return Workspace(tmp_path / "ws")


def test_after_a_scope_the_file_is_free_for_a_connection_of_any_kind(ws):
    """Nothing stays attached once a scope ends: this process opens the file read-write with a
    plain connect (DuckDB refuses a file attached twice), and so does another process."""
    with ws.reading() as con:
        n = con.execute("SELECT count(*) FROM items").fetchall()[0][0]
    with ws.writing() as con:
        con.execute("CREATE TABLE written_here AS SELECT 1 AS x")
    plain = duckdb.connect(str(ws.db_path))
    assert plain.execute("SELECT count(*) FROM items").fetchall()[0][0] == n
    assert plain.execute("SELECT x FROM written_here").fetchall() == [(1,)]   # committed and checkpointed
    plain.close()
    code = f"import duckdb; duckdb.connect({str(ws.db_path)!r}).execute('DROP TABLE written_here')"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_reader_elsewhere_holds_the_file_from_another_process_and_from_a_writer_here(ws):
    """While a reader of another thread holds the workspace: a second reader here shares it, a
    writer here waits and is refused naming this process's reader, another process cannot write;
    once the reader is done the writer gets it."""
    inside, leave = threading.Event(), threading.Event()

    def reader():
        with ws.reading() as con:
            con.execute("SELECT count(*) FROM items").fetchall()
            inside.set()
            leave.wait(30)

    t = threading.Thread(target=reader)
    t.start()
    try:
        assert inside.wait(30)
        with ws.reading() as con:
            assert con.execute("SELECT count(*) FROM items").fetchall()[0][0] > 0
        with pytest.raises(WorkspaceBusy) as e:
            with ws.writing(wait=0.1):
                pass
        assert "another connection of this process is reading it" in str(e.value)
        code = f"import duckdb; duckdb.connect({str(ws.db_path)!r})"
        other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert other.returncode != 0 and "lock" in other.stderr
    finally:
        leave.set()
        t.join()
    with ws.writing(wait=0.1) as con:
        con.execute("SELECT 1")


def test_a_file_a_plain_connection_holds_is_read_through_a_connection_of_its_own(ws):
    """A file this process opened with duckdb.connect cannot be attached too: a scope reads it
    through a connection of its own instead (sharing DuckDB's instance of the same mode), and is
    refused as busy while the plain one writes."""
    plain = duckdb.connect(str(ws.db_path), read_only=True)
    try:
        with ws.reading() as con:
            assert con.execute("SELECT count(*) FROM items").fetchall() == \
                plain.execute("SELECT count(*) FROM items").fetchall()
    finally:
        plain.close()
    writer = ws.connect()
    try:
        with pytest.raises(WorkspaceBusy, match="another connection of this process"):
            with ws.reading(wait=0.1):
                pass
    finally:
        writer.close()


def test_two_workspaces_at_once_each_read_their_own_catalog(ws, built_workspace, tmp_path):
    """Two databases attached at once (a scope of each): each connection's catalog reads, and
    unqualified names, are its own workspace's only."""
    other = Workspace(tmp_path / "other")
    shutil.copytree(built_workspace, other.root)
    with ws.writing() as con:
        con.execute("CREATE TABLE only_here AS SELECT 1 AS x")
    with ws.reading() as a, other.reading() as b:
        assert a.execute("SELECT current_database()").fetchall() != b.execute("SELECT current_database()").fetchall()
        assert sql.has_relation(a, "only_here") and sql.has_relation(a, "only_here", schema="main")
        assert not sql.has_relation(b, "only_here") and not sql.has_relation(b, "only_here", schema="main")
        with pytest.raises(duckdb.CatalogException):
            b.execute("SELECT * FROM only_here")


def test_classify_leaves_the_instances_memory_limit_as_it_was(ws):
    """classify caps DuckDB's memory while it writes scores; the cap is the instance's, shared by
    everything this process reads after (the app, a notebook): it is lifted at the end."""
    def limit() -> str:
        with ws.reading() as con:
            return con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]

    before = limit()
    run_cli("classify", "-w", ws.root)
    assert limit() == before
    assert str(ws.db_path.resolve()) not in duckdb_host._attached   # (another test's may be open)


def test_a_forked_child_reads_through_an_instance_of_its_own(ws):
    """A child forked while this process has the workspace attached (a decode worker, a notebook's
    multiprocessing) opens it through its own instance; the parent's attachment reads on."""
    with ws.reading() as con:
        pid = os.fork()
        if pid == 0:     # the child: no pytest machinery, an exit code only
            code = 3
            try:
                with ws.reading() as mine:
                    code = 0 if mine.execute("SELECT count(*) FROM items").fetchall()[0][0] > 0 else 1
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert con.execute("SELECT count(*) FROM items").fetchall()[0][0] > 0


def test_what_does_not_fit_in_memory_spills_beside_the_database_not_into_the_current_folder(ws, tmp_path):
    """A query over DuckDB's memory limit spills where a connection of its own would
    (ws/curate.duckdb.tmp), not into `.tmp` of the folder the process runs in (the in-memory
    instance's default). In a process of its own: the instance keeps the folder it first spilled
    into, and the limit is the instance's."""
    code = (
        "import sys; from curate.core.workspace import Workspace\n"
        "with Workspace(sys.argv[1]).reading() as con:\n"
        "    con.execute(\"SET memory_limit = '20MB'\"); con.execute('SET threads = 1')\n"
        "    con.execute('SELECT count(*) FROM (SELECT md5(range::VARCHAR) AS m FROM range(1000000) ORDER BY m)')\n"
        "    import os; print(sorted(os.listdir(sys.argv[1] + '/curate.duckdb.tmp')))\n")
    here = tmp_path / "cwd"
    here.mkdir()
    out = subprocess.run([sys.executable, "-c", code, str(ws.root)], cwd=here, capture_output=True, text=True,
                         check=True).stdout
    assert "duckdb_temp" in out, out     # it did spill, into the workspace
    assert list(here.iterdir()) == []
