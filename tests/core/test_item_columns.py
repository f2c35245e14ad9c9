"""The two owners queries/workspace.sql gives items: the view item_extras (the source's own
columns, what filter writes after its own) and the macro next_item_id() (id allocation)."""

from __future__ import annotations

from curate.core.workspace import Workspace


def test_item_extras_is_id_and_the_sources_own_columns_in_order(tmp_path):
    con = Workspace(tmp_path / "ws").connect()
    con.execute("ALTER TABLE items ADD COLUMN city VARCHAR")
    con.execute("ALTER TABLE items ADD COLUMN src_Status VARCHAR")  # a source's `Status`, kept apart
    con.execute("INSERT INTO items (id, source_id, path, caption, status, run_id, source_no, city, src_Status) "
                "VALUES (4, 'a', '/a.jpg', 'c', 'embedded', 1, 1, 'paris', 'x')")
    rel = con.execute("SELECT * FROM item_extras")
    assert [d[0] for d in rel.description] == ["id", "source_id", "city", "src_Status"]
    assert rel.fetchall() == [(4, "a", "paris", "x")]
    con.close()


def test_next_item_id_is_dense_from_zero(tmp_path):
    con = Workspace(tmp_path / "ws").connect()
    assert con.execute("SELECT next_item_id()").fetchall()[0][0] == 0
    con.execute("INSERT INTO items (id, source_id, path) "
                "SELECT next_item_id() - 1 + row_number() OVER (ORDER BY r), 's' || r, '/p' || r FROM range(3) t(r)")
    assert [r[0] for r in con.execute("SELECT id FROM items ORDER BY id").fetchall()] == [0, 1, 2]
    assert con.execute("SELECT next_item_id()").fetchall()[0][0] == 3
    con.close()
