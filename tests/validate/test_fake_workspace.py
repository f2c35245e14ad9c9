"""The validation tests' hand-scored workspace (review_support.fake_workspace) is a real
classified workspace: the same relations, of the same kind and columns, as `curate classify`
leaves, so sample / review / report tests never run on a drifted copy of the schema."""

from __future__ import annotations

from conftest import open_db
from review_support import fake_workspace

RELATIONS = ("predictions", "caption_predictions", "ensemble", "coverage", "labels", "item_scores",
             "label_scores", "score_settings")


def _shape(db) -> dict[str, tuple[str, list[tuple[str, str]]]]:
    con = open_db(str(db))
    try:
        out = {}
        for name in RELATIONS:
            kind = con.execute("SELECT table_type FROM information_schema.tables WHERE table_catalog = current_database() "
                               "AND table_schema = 'main' AND table_name = ?", [name]).fetchall()
            cols = con.execute("SELECT column_name, data_type FROM information_schema.columns "
                               "WHERE table_catalog = current_database() "
                               "AND table_schema = 'main' AND table_name = ? "
                               "ORDER BY ordinal_position",
                               [name]).fetchall()
            out[name] = (kind[0][0] if kind else None, cols)
        return out
    finally:
        con.close()


def test_the_hand_scored_workspace_has_the_real_schema(classified, tmp_path):
    ws = fake_workspace(tmp_path / "ws", [(0, "bridge", 0.7), (1, "skyscraper", 0.4)], images=False,
                        ensemble=[(0, "bridge", 0.6), (1, "bridge", 0.5)])
    real = _shape(classified / "curate.duckdb")
    assert all(kind is not None for kind, _cols in real.values())
    assert _shape(ws.db_path) == real
    con = open_db(str(ws.db_path))
    assert con.execute("SELECT id, label, prob, label2, margin FROM predictions ORDER BY id").fetchall() == [
        (0, "bridge", 0.7, "other", 0.7 - 0.15), (1, "skyscraper", 0.4, "other", 0.4 - 0.3)]
    assert con.execute("SELECT id, label, prob FROM ensemble ORDER BY id").fetchall() == [
        (0, "bridge", 0.6), (1, "bridge", 0.5)]
