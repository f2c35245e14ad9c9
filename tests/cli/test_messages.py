"""What the commands say: sheets from any spreadsheet, the review set a sheet belongs to,
label files as editors save them, runs that did less than asked, and collection text that
cannot drive the terminal."""

from __future__ import annotations

import re
import shutil

import duckdb
import pytest
from conftest import make_folder, run_cli
from review_support import copy_workspace, fake_workspace

from curate.classify.labels import load_label_set
from curate.classify.prompts import prompts_for
from curate.validate import calibration, sampling
from curate.validate.review import marks, sheet

TINY = ("--model", "curate-tiny", "--pretrained", "none", "--workers", "0")
# C0 (but newline), DEL, C1 and the bidi controls: none may reach the terminal raw
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """Made once for the module, never written: each test gets its own copy (ws)."""
    preds = [(i, "bridge" if i < 4 else "bakery shop", [0.1, 0.3, 0.5, 0.7, 0.9, 0.25][i]) for i in range(6)]
    ws = fake_workspace(tmp_path_factory.mktemp("messages") / "ws", preds, captions={1: "東京 café"}, images=False,
                        ensemble=[(i, "bridge" if i < 4 else "bakery shop", 0.5) for i in range(6)])
    con = ws.connect()
    sampling.draw(con, top_classes=2, per_class=10, seed=0, name="s")
    con.close()
    return ws.root


@pytest.fixture()
def ws(template, tmp_path):
    return copy_workspace(template, tmp_path / "ws")


def _marked_export(ws, tmp_path) -> list[list[str]]:
    out = tmp_path / "sheet.csv"
    run_cli("review", "-w", ws.root, "--set", "s", "--export", out)
    import csv

    with open(out, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f))
    for r, m in zip(rows[1:], ["hit", "miss", "", "Hit", "skip", "miss"], strict=True):
        r[5] = m
    return rows


@pytest.mark.parametrize("encoding,delimiter", [("cp1252", ";"), ("utf-16", "\t"), ("utf-8", ";"),
                                                ("cp1252", ",")])
def test_sheets_saved_by_a_spreadsheet_import(ws, tmp_path, encoding, delimiter):
    rows = _marked_export(ws, tmp_path)
    if delimiter == ";":  # the locale that writes `;` writes a decimal comma too
        for r in rows[1:]:
            r[4] = r[4].replace(".", ",")
    text = "\r\n".join(delimiter.join(f'"{c}"' if (delimiter in c or "\n" in c) else c for c in r) for r in rows)
    saved = tmp_path / f"saved-{encoding}.csv"
    saved.write_bytes(text.encode(encoding, errors="replace"))  # Excel writes `?` for what cp1252 lacks
    r = run_cli("review", "-w", ws.root, "--import", saved)
    assert "imported 5 new or changed marks into review set s" in r.output, r.output
    con = ws.connect()
    got = {m.id: m.mark for m in marks.rows(con, "s")}
    con.close()
    assert sorted(v for v in got.values() if v) == ["hit", "hit", "miss", "miss", "skip"]
    # and `report --marks` reads the same file, decimal commas included
    marked, problems = sheet.read_marks(saved)
    assert problems == [] and len(marked) == 5
    assert sorted(m.prob for m in marked) == sorted(float(r[4].replace(",", ".")) for r in rows[1:] if r[5])


def test_a_sheet_goes_back_to_its_own_set(ws, tmp_path):
    out = tmp_path / "s.csv"
    run_cli("review", "-w", ws.root, "--export", out)
    text = out.read_text(encoding="utf-8-sig").replace(",bridge,0.1,,s", ",bridge,0.1,hit,s")
    out.write_text(text, encoding="utf-8-sig")
    con = ws.connect()
    sampling.draw(con, source="ensemble", top_classes=1, per_class=2, seed=3, name="later")
    con.close()
    r = run_cli("review", "-w", ws.root, "--import", out)
    assert "into review set s" in r.output and "s: 1 of 6 marked" in r.output
    bad = run_cli("review", "-w", ws.root, "--set", "later", "--import", out, expect=1).output
    assert "holds marks of review set 's', not 'later'" in bad


def test_review_export_and_report_pick_the_same_default_set(ws, tmp_path):
    con = ws.connect()
    sampling.draw(con, source="ensemble", top_classes=2, per_class=10, seed=0, name="ens")
    marks.set_mark(con, 0, "bridge", "hit")
    con.close()
    out = tmp_path / "x.csv"
    assert "of review set ens" in run_cli("review", "-w", ws.root, "--export", out).output
    assert out.read_text(encoding="utf-8-sig").splitlines()[1].endswith(",ens")
    run_cli("report", "-w", ws.root, "--out", tmp_path / "rep", "--grid-size", "0", "--no-plots")
    summary = dict(line.split(",", 1) for line in (tmp_path / "rep" / "summary.csv").read_text().splitlines())
    assert summary["review_set"] == "ens"   # the report's main set is the one review worked on
    for cmd in ("review", "report"):
        assert "most recently drawn" in run_cli(cmd, "--help").output


def test_label_files_from_any_editor_and_labels_with_braces(tmp_path):
    p = tmp_path / "labels.txt"
    p.write_bytes("café\nroom/{x}\nplace {}\n".encode("cp1252"))
    ls = load_label_set(p)
    assert ls.labels == ("café", "room/{x}", "place {}")
    assert [t[0] for t in prompts_for(ls, "natural")] == ["A photo of a café", "A photo of a {x} room",
                                                          "A photo of a place {}"]
    assert prompts_for(ls, "a photo of {a} {label}, {label}.")[1] == ["a photo of a {x} room, {x} room."]
    out = run_cli("labels", "--set", p, "--prompts", "ensemble").output
    assert "a photo of a {x} room." in out
    (tmp_path / "u16.txt").write_bytes("bakery\nbridge\n".encode("utf-16"))
    assert load_label_set(tmp_path / "u16.txt").labels == ("bakery", "bridge")


def test_safe_escapes_what_drives_a_terminal():
    from curate.core.textout import safe

    assert safe("a\x1b[2Jb\x07c\u202ed\x9be\x7f") == "a\\x1b[2Jb\\x07c\\u202ed\\x9be\\x7f"
    assert safe("two\nlines\ttab") == "two\\nlines\\ttab"
    assert safe("two\nlines", keep_newlines=True) == "two\nlines"
    assert safe("東京 café 🥐") == "東京 café 🥐"


EVIL = "evil \x1b[2J\x1b]0;owned\x07 \u202etxt.exe \x9b31m"


def test_collection_text_is_printed_escaped(built_workspace, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(built_workspace, ws)
    con = duckdb.connect(str(ws / "curate.duckdb"))
    con.execute("UPDATE items SET caption = ?, path = path || ? WHERE id = (SELECT min(id) FROM items)",
                [EVIL, "\x1b[31m"])
    con.close()
    labels = tmp_path / "labels.txt"
    labels.write_text("bridge\nbell\x07 ringer\nbakery\n", encoding="utf-8")
    run_cli("classify", "-w", ws, "--set", labels)
    outputs = [
        run_cli("sql", "-w", ws, "select path, caption from items order by id").output,
        run_cli("search", "-w", ws, "a photo", "-k", "12").output,
        run_cli("labels", "--set", labels).output,
        run_cli("filter", "-w", ws, "--min-prob", "0", "--out", tmp_path / "out\x1b[5m.csv").output,
        run_cli("sample", "-w", ws, "--name", "set\x1b[2J", "--top-classes", "3", "--per-class", "2").output,
        run_cli("sample", "-w", ws, "--list").output,
        run_cli("filter", "-w", ws, "--label", "bell\x07 rnger", expect=1).output,
    ]
    for out in outputs:
        assert not RAW_CONTROL.search(out), repr(out)
    # `curate sql` prints DuckDB's own table, which shows ESC and BEL as the escapes \e and \a itself
    assert "\\e[2J" in outputs[0] and "\\u202e" in outputs[0] and "\\a" in outputs[0]
    assert "evil \\x1b[2J" in outputs[1]
    assert "bell\\x07 ringer" in outputs[2]
    assert "out\\x1b[5m.csv" in outputs[3]
    assert "set\\x1b[2J" in outputs[4] and "set\\x1b[2J" in outputs[5]


def test_pending_items_and_a_short_sample_are_said(tmp_path):
    photos = make_folder(tmp_path / "photos", n=8)
    ws = tmp_path / "ws"
    run_cli("build-index", photos, "-w", ws, *TINY, "--limit", "5")
    out = run_cli("classify", "-w", ws).output
    assert "NOTE: 3 items are still pending" in out
    assert "NOTE: 3 items are still pending" in run_cli("filter", "-w", ws, "--min-prob", "0").output
    out = run_cli("sample", "-w", ws, "--top-classes", "10", "--per-class", "100").output
    found = int(re.search(r"NOTE: only (\d+) predicted class(es)? in the collection, not the 10 asked for", out)[1])
    assert found < 10
    have = "1 class has" if found == 1 else f"{found} classes have"
    assert f"NOTE: 5 images drawn, not {found} x 100 = {found * 100}: {have} fewer" in out


def test_calibrated_filter_that_keeps_nothing_names_the_unreachable_thresholds(built_workspace, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(built_workspace, ws)
    run_cli("classify", "-w", ws)
    run_cli("sample", "-w", ws, "--top-classes", "2", "--per-class", "3")
    con = duckdb.connect(str(ws / "curate.duckdb"))
    rs = sampling.get_set(con)
    top = [label for label, _r, _f in sampling.classes(con, rs.name)]
    cal = calibration.Calibration(1.0, "image", rs.name, 205, 0.9, 10, 1.0, 1.0, 6, True)
    cal.classes = [calibration.ClassThreshold(label, None, None, 0, 3, None) for label in top]
    calibration.save(con, cal)
    con.close()
    out = run_cli("filter", "-w", ws, "--calibrated", expect=6).output
    assert f"no threshold reaches precision 0.9 on the marks for {len(top)} of {len(top)} classes" in out
    assert all(label in out.splitlines()[-1] for label in top)


def test_one_short_class_is_said_in_the_singular(tmp_path):
    """'1 class has fewer', never '1 classes have fewer'."""
    from review_support import fake_workspace

    preds = [(i, "bridge" if i < 30 else "patio", 0.5) for i in range(31)]
    ws = fake_workspace(tmp_path / "ws", preds)
    out = run_cli("sample", "-w", ws.root, "--top-classes", "2", "--per-class", "2").output
    assert "NOTE: 3 images drawn, not 2 x 2 = 4: 1 class has fewer than 2 images (patio 1)" in out


def test_every_command_a_message_says_to_run_names_the_workspace_given(built_workspace, tmp_path):
    """`run `curate classify` first` from filter, sample, compare, labels, report, review: the
    command to run names `-w WS` as the user gave it, so it runs as printed; one that names its
    own workspace already, or needs none (`--label-set`), is left as it is."""
    from curate.cli import name_workspace

    ws = tmp_path / "my photos ws"     # a space: quoted as a shell would need it
    shutil.copytree(built_workspace, ws)
    quoted = f"'{ws}'"
    for args in (("filter", "--min-prob", "0.5"), ("sample",), ("compare", "a", "b")):
        r = run_cli(*args, "-w", ws, expect=1)
        assert f"run `curate classify -w {quoted}` first" in r.output, r.output
    r = run_cli("labels", "-w", ws, expect=1)   # its message names the workspace itself: left as it is
    assert f"run `curate classify -w {ws}` first" in r.output and "`curate labels --label-set NAME`" in r.output
    for args in (("report",), ("review", "--out", tmp_path / "sheet.csv")):
        assert f"run `curate sample -w {quoted}` first" in run_cli(*args, "-w", ws, expect=1).output
    # the rule itself, on the messages' other shapes
    assert name_workspace("run `curate classify --name x` again", "w") == "run `curate classify -w w --name x` again"
    assert name_workspace("run `curate build-index` first", "w") == "run `curate build-index SOURCE -w w` first"
    assert name_workspace("run `curate build-index SOURCE -w w2` first", "w") == \
        "run `curate build-index SOURCE -w w2` first"
    assert name_workspace("run `curate classify` first", None) == "run `curate classify` first"
    # "the same `curate classify` command" is the user's own command line: not rewritten
    assert name_workspace("run the same `curate classify` command again", "w") == \
        "run the same `curate classify` command again"
