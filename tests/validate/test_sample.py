"""Review sets: top-N classes with no threshold, M per class, seeded and reproducible."""

from __future__ import annotations

import pytest
from conftest import open_db, run_cli
from review_support import copy_workspace, fake_workspace

from curate.validate import sampling
from curate.validate.review import marks

# 4 labels with frequencies 40 / 30 / 20 (x2, a tie broken by label) / 5; the probability
# plays no part in the choice (no threshold, as in the study).
COUNTS = {"skyscraper": 40, "bridge": 30, "bakery shop": 20, "art gallery": 20, "hospital": 5}


def _preds() -> list[tuple[int, str, float]]:
    out, i = [], 0
    for label, n in COUNTS.items():
        for k in range(n):
            out.append((i, label, (k % 10) / 10 + 0.01))
            i += 1
    return out


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """Made once for the module, never written: each test gets its own copy (ws)."""
    return fake_workspace(tmp_path_factory.mktemp("sample") / "ws", _preds(), images=False,
                          ensemble=[(i, "bridge" if i % 3 else "skyscraper", 0.5) for i, _l, _p in _preds()]).root


@pytest.fixture()
def ws(template, tmp_path):
    return copy_workspace(template, tmp_path / "ws")


def _ids(con, name):
    return [(r.id, r.label) for r in marks.rows(con, name)]


def test_top_classes_by_frequency_and_per_class_count(ws):
    con = ws.connect()
    rs = sampling.draw(con, top_classes=4, per_class=8, seed=7)
    assert rs.name == "image-top4x8-seed7" and rs.items == 32
    # tie at 20 between 'art gallery' and 'bakery shop': the label order decides
    assert sampling.classes(con, rs.name) == [("skyscraper", 1, 40), ("bridge", 2, 30),
                                             ("art gallery", 3, 20), ("bakery shop", 4, 20)]
    rows = marks.rows(con, rs.name)
    assert [r.position for r in rows] == list(range(32))
    # shown class by class, most frequent first
    assert [r.label for r in rows] == ["skyscraper"] * 8 + ["bridge"] * 8 + ["art gallery"] * 8 + ["bakery shop"] * 8
    # the stored probability is the prediction's
    probs = {i: p for i, _l, p in _preds()}
    assert all(r.prob == probs[r.id] for r in rows)


def test_per_class_sample_is_the_seeded_hash_order(ws):
    """Each class's sample is its M items with the smallest hash(id, seed), whatever the rest."""
    con = ws.connect()
    rs = sampling.draw(con, top_classes=2, per_class=5, seed=11)
    for label in ("skyscraper", "bridge"):
        want = [i for (i,) in con.execute(
            "SELECT id FROM predictions WHERE label = ? ORDER BY hash(id::BIGINT, 11::BIGINT), id LIMIT 5",
            [label]).fetchall()]
        assert [r.id for r in marks.rows(con, rs.name) if r.label == label] == want


def test_same_seed_same_sample_other_seed_other_sample(ws, tmp_path):
    con = ws.connect()
    a = _ids(con, sampling.draw(con, top_classes=3, per_class=6, seed=7).name)
    b = _ids(con, sampling.draw(con, top_classes=3, per_class=6, seed=8).name)
    assert a != b and len(a) == len(b) == 18
    # an independent workspace, same data, same seed: the same images in the same order
    other = fake_workspace(tmp_path / "ws2", _preds(), images=False)
    con2 = other.connect()
    assert _ids(con2, sampling.draw(con2, top_classes=3, per_class=6, seed=7).name) == a


def test_small_class_gives_all_it_has(ws):
    con = ws.connect()
    rs = sampling.draw(con, top_classes=5, per_class=10, seed=1)
    got = [r.label for r in marks.rows(con, rs.name)]
    assert got.count("hospital") == 5 and len(got) == 45


def test_named_sets_coexist_and_share_marks(ws):
    con = ws.connect()
    s1 = sampling.draw(con, top_classes=2, per_class=40, seed=1, name="first")
    s2 = sampling.draw(con, top_classes=1, per_class=40, seed=2, name="second")
    assert [s.name for s in sampling.list_sets(con)] == ["first", "second"]
    assert sampling.get_set(con).name == "second"  # the latest by default
    # a mark judges (image, label): the same pair in the other set is marked too
    item = marks.rows(con, "second")[0]
    marks.set_mark(con, item.id, item.label, "hit")
    assert marks.progress(con, "first").hits == 1 and marks.progress(con, "second").hits == 1
    assert s1.items == 70 and s2.items == 40


def test_redraw_same_parameters_is_a_no_op_other_parameters_need_replace(ws):
    con = ws.connect()
    rs = sampling.draw(con, top_classes=2, per_class=5, seed=3, name="s")
    item = marks.rows(con, "s")[0]
    marks.set_mark(con, item.id, item.label, "miss")
    again = sampling.draw(con, top_classes=2, per_class=5, seed=3, name="s")
    assert again == rs
    with pytest.raises(sampling.SampleError, match="--replace"):
        sampling.draw(con, top_classes=2, per_class=6, seed=3, name="s")
    new = sampling.draw(con, top_classes=2, per_class=6, seed=3, name="s", replace=True)
    assert new.items == 12 and len(sampling.list_sets(con)) == 1
    # the mark survives the redraw (it judges the pair, and the pair is drawn again)
    assert [r.mark for r in marks.rows(con, "s") if r.id == item.id] == ["miss"]


def test_ensemble_source_and_missing_views(ws, tmp_path):
    con = ws.connect()
    rs = sampling.draw(con, source="ensemble", top_classes=2, per_class=3, seed=0)
    assert rs.source == "ensemble" and {r.label for r in marks.rows(con, rs.name)} == {"bridge", "skyscraper"}
    # a workspace build-index made and classify has not run on: no prediction views yet
    bare = fake_workspace(tmp_path / "bare", _preds(), images=False, classified=False).connect()
    with pytest.raises(sampling.SampleError, match="classify"):
        sampling.draw(bare, source="caption")
    with pytest.raises(sampling.SampleError, match="unknown source"):
        sampling.draw(con, source="predictions; DROP TABLE items")


def test_a_label_with_quotes_is_data_not_sql(tmp_path):
    evil = "bar'); DROP TABLE items; --"
    ws = fake_workspace(tmp_path / "ws", [(0, evil, 0.4), (1, evil, 0.6), (2, "x", 0.1)], images=False)
    con = ws.connect()
    rs = sampling.draw(con, top_classes=1, per_class=5, seed=0, name="it's \"quoted\"")
    assert {r.label for r in marks.rows(con, rs.name)} == {evil}
    assert con.execute("SELECT count(*) FROM items").fetchall()[0][0] == 3


def test_cli_sample_prints_the_classes_and_is_reproducible(ws, tmp_path):
    r = run_cli("sample", "-w", ws.root, "--top-classes", "2", "--per-class", "4", "--seed", "7")
    assert "image-top2x4-seed7: 8 images" in r.output and "skyscraper" in r.output and "40 images" in r.output
    run_cli("sample", "-w", ws.root, "--top-classes", "2", "--per-class", "4", "--seed", "7")
    bare = fake_workspace(tmp_path / "bare", _preds(), images=False, classified=False)  # not classified yet
    bad = run_cli("sample", "-w", bare.root, "--source", "caption", expect=1)
    assert "curate classify" in bad.output
    listed = run_cli("sample", "-w", ws.root, "--list")
    # a set names the classification it was drawn from (every real workspace has one)
    assert listed.output == "image-top2x4-seed7 (by-hand): image, top 2 x 4, seed 7; 0 of 8 marked\n"
    con = open_db(str(ws.db_path))
    assert con.execute("SELECT count(*) FROM review_items").fetchall()[0][0] == 8


def test_view_is_queryable_from_the_shell(ws):
    """`review_sheet` is a plain view: the DuckDB shell sees the sets and marks too."""
    con = ws.connect()
    sampling.draw(con, top_classes=1, per_class=2, seed=0, name="s")
    con.close()
    ro = open_db(str(ws.db_path))
    rows = ro.execute("SELECT set_name, label, mark FROM review_sheet ORDER BY position").fetchall()
    assert rows == [("s", "skyscraper", None)] * 2


def test_a_spec_or_its_fields_draw_the_same_set(ws):
    """draw takes its options as one SampleSpec (or the spec's fields as keywords), never as
    ten parameters in a row; given both, it refuses rather than picking one."""
    con = ws.connect()
    spec = sampling.SampleSpec(top_classes=2, per_class=4, seed=5, mode="ensemble")
    a = sampling.draw(con, spec, name="a")
    b = sampling.draw(con, source="ensemble", top_classes=2, per_class=4, seed=5, name="b")
    assert (a.source, a.top_classes, a.per_class, a.seed) == (b.source, b.top_classes, b.per_class, b.seed)
    assert [r.id for r in marks.rows(con, "a")] == [r.id for r in marks.rows(con, "b")]
    assert sampling.draw(con, spec).name == "ensemble-top2x4-seed5"
    with pytest.raises(TypeError, match="not both"):
        sampling.draw(con, spec, seed=6)
