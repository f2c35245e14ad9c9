"""The review set as a CSV sheet: exact round trip, bad rows reported by line."""

from __future__ import annotations

import csv
import shutil

import pytest
from conftest import run_cli
from review_support import copy_workspace, fake_workspace

from curate.validate import sampling
from curate.validate.review import marks, sheet

CAPTIONS = {
    0: 'comma, "quotes" and\na newline',
    1: "東京タワー at night 🌃",
    2: "=SUM(A1:A3) looks like a formula",
    3: "",
    4: "café au lait ☕",
}


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """Made once for the module, never written: each test gets its own copy (ws)."""
    preds = [(i, "bridge" if i < 4 else "bakery shop", [0.1, 0.30000000000000004, 0.5, 1 / 3, 0.9, 0.25][i])
             for i in range(6)]
    ws = fake_workspace(tmp_path_factory.mktemp("sheet") / "my ws", preds, captions=CAPTIONS, images=False)
    con = ws.connect()
    sampling.draw(con, top_classes=2, per_class=10, seed=0, name="s")
    con.close()
    return ws.root


@pytest.fixture()
def ws(template, tmp_path):
    return copy_workspace(template, tmp_path / "my ws")


def _state(con):
    return [(r.id, r.label, r.prob, r.mark) for r in marks.rows(con, "s")]


def test_export_has_the_columns_and_exact_values(ws, tmp_path):
    con = ws.connect()
    marks.set_mark(con, 0, "bridge", "hit")
    marks.set_mark(con, 5, "bakery shop", "skip")
    out = tmp_path / "sheet.csv"
    assert sheet.export_sheet(con, "s", out) == 6
    raw = out.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")  # BOM: spreadsheets then read the captions right
    with open(out, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["id", "path", "caption", "label", "prob", "mark", "review_set"]
    assert {r["review_set"] for r in rows} == {"s"}  # the sheet names its set
    by_id = {int(r["id"]): r for r in rows}
    assert by_id[0]["caption"] == CAPTIONS[0] and by_id[1]["caption"] == CAPTIONS[1]
    assert by_id[0]["mark"] == "hit" and by_id[5]["mark"] == "skip" and by_id[2]["mark"] == ""
    # probabilities survive as the same doubles
    assert float(by_id[1]["prob"]) == 0.30000000000000004 and float(by_id[3]["prob"]) == 1 / 3
    assert " " in by_id[0]["path"]  # a path with a space


def test_round_trip_is_exact(ws, tmp_path):
    con = ws.connect()
    for item_id, label, m in [(0, "bridge", "hit"), (1, "bridge", "miss"), (4, "bakery shop", "skip")]:
        marks.set_mark(con, item_id, label, m)
    first = tmp_path / "a.csv"
    sheet.export_sheet(con, "s", first)
    before = _state(con)

    # into a second workspace with the same set and no marks: the same marks come back
    other = tmp_path / "copy"
    con.close()
    shutil.copytree(ws.root, other)
    con = ws.connect()
    from curate.core.workspace import Workspace
    con2 = Workspace(other).connect()
    con2.execute("DELETE FROM judgments")
    res = sheet.import_sheet(con2, "s", first)
    assert (res.changed, res.unchanged, res.empty, res.problems) == (3, 0, 3, [])
    assert _state(con2) == before
    second = tmp_path / "b.csv"
    sheet.export_sheet(con2, "s", second)
    assert second.read_bytes().replace(str(other).encode(), str(ws.root).encode()) == first.read_bytes()

    # and into the same workspace: nothing changes, not even the time of the marks
    stamps = con.execute("SELECT id, marked_at FROM judgments ORDER BY id").fetchall()
    res = sheet.import_sheet(con, "s", first)
    assert (res.changed, res.unchanged) == (0, 3)
    assert con.execute("SELECT id, marked_at FROM judgments ORDER BY id").fetchall() == stamps


def test_bad_rows_are_reported_by_line_and_skipped(ws, tmp_path):
    con = ws.connect()
    path = tmp_path / "edited.csv"
    sheet.export_sheet(con, "s", path)
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f))
    header, data = rows[0], rows[1:]
    by_id = {int(r[0]): r for r in data}
    by_id[0][5] = "Hit "       # case and spaces forgiven
    by_id[1][5] = "yes"         # unknown mark
    by_id[2][5] = "miss"
    by_id[3][3] = "tower"       # not the label that was shown
    by_id[4][5] = "skip"
    extra = [["999", "", "", "bridge", "0.5", "hit"], ["abc", "", "", "bridge", "0.5", "hit"],
             list(by_id[2][:5]) + ["hit"]]  # id 2 again
    ordered = [by_id[i] for i in range(6)] + extra
    with open(path, "w", encoding="utf-8", newline="") as f:  # written back without a BOM: also fine
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(ordered)
    # lines: header 1; id 0 spans lines 2-3 (its caption has a newline); id 1 is on line 4 ...
    res = sheet.import_sheet(con, "s", path)
    assert res.problems == [
        "line 4: unknown mark 'yes' (use hit, miss, skip or leave it empty)",
        "line 6: id 3 was shown as 'bridge', the sheet says 'tower'",
        "line 9: unknown id 999 (not in review set 's')",
        "line 10: id 'abc' is not a whole number",
        "line 11: id 2 again (first on line 5); kept the first",
    ]
    assert res.changed == 3
    assert {r.id: r.mark for r in marks.rows(con, "s")} == {0: "hit", 1: None, 2: "miss", 3: None, 4: "skip", 5: None}


def test_an_empty_mark_keeps_the_stored_one(ws, tmp_path):
    con = ws.connect()
    old = tmp_path / "old.csv"
    sheet.export_sheet(con, "s", old)          # exported before any mark
    marks.set_mark(con, 0, "bridge", "hit")    # then marked in the page
    res = sheet.import_sheet(con, "s", old)
    assert res.changed == 0 and res.empty == 6
    assert marks.rows(con, "s")[0].mark == "hit"


def test_missing_columns_are_refused(ws, tmp_path):
    con = ws.connect()
    p = tmp_path / "x.csv"
    p.write_text("id,label\n1,bridge\n", encoding="utf-8")
    with pytest.raises(ValueError, match="missing column"):
        sheet.import_sheet(con, "s", p)


def test_read_marks_for_any_sheet(tmp_path):
    p = tmp_path / "elsewhere.csv"
    p.write_text("label,prob,mark,note\nbridge,0.7,hit,x\nbridge,abc,hit,\nbridge,1.5,miss,\n,0.5,hit,\n"
                 "bridge,0.2,,\nbridge,0.4,MISS,\nbridge,0.9,maybe,\n", encoding="utf-8")
    rows, problems = sheet.read_marks(p)
    assert [(r.line, r.label, r.prob, r.mark) for r in rows] == [(2, "bridge", 0.7, "hit"), (7, "bridge", 0.4, "miss")]
    assert problems == ["line 3: prob 'abc' is not a number", "line 4: prob '1.5' is not between 0 and 1",
                        "line 5: empty label",
                        "line 8: unknown mark 'maybe' (use hit, miss, skip or leave it empty)"]


def test_cli_export_and_import(ws, tmp_path):
    out = tmp_path / "review.csv"
    r = run_cli("review", "-w", ws.root, "--export", out)
    assert "wrote 6 rows" in r.output and "0 of 6 marked" in r.output
    text = out.read_text(encoding="utf-8-sig").replace(",bridge,0.1,", ",bridge,0.1,hit")
    text = text.replace(",bakery shop,0.25,", ",bakery shop,0.25,nope")
    out.write_text(text, encoding="utf-8")
    r = run_cli("review", "-w", ws.root, "--import", out)
    assert "imported 1 new or changed marks" in r.output and "1 bad rows skipped" in r.output
    assert "unknown mark 'nope'" in r.output and "1 of 6 marked" in r.output
