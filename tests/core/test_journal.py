"""The review journal (ws/marks.jsonl) is input like any other: every line is checked when
it is folded into `judgments` (a writer) or merged into it (a reader); a bad one is set
aside in marks.rejected.jsonl with its line number and reason, named in one NOTE, and
never stops a command or keeps the good marks out.

Real workspaces (review_support.fake_workspace: a DuckDB file with items, predictions
and a drawn review set), real journal files, the real CLI in-process.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta

import pytest
from conftest import open_db, run_cli
from review_support import fake_workspace

from curate.core.workspace import Workspace
from curate.validate import sampling
from curate.validate.review import journal

NOW = datetime.now().replace(microsecond=0)


def _at(minutes: int) -> str:
    return (NOW - timedelta(hours=1) + timedelta(minutes=minutes)).isoformat(sep=" ", timespec="microseconds")


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    preds = [(i, ["bridge", "skyscraper"][i % 2], 0.2 + i / 100) for i in range(40)]
    ws = fake_workspace(tmp_path_factory.mktemp("journal") / "ws", preds, images=False)
    con = ws.connect()
    sampling.draw(con, top_classes=2, per_class=20, seed=3, name="s")
    pairs = con.execute("SELECT id, label FROM review_items ORDER BY position").fetchall()
    con.close()
    return ws.root, pairs


@pytest.fixture()
def ws(template, tmp_path):
    root, pairs = template
    shutil.copytree(root, tmp_path / "ws")
    return tmp_path / "ws", pairs


def _good(pair, mark: str, minutes: int) -> bytes:
    return json.dumps({"id": pair[0], "label": pair[1], "mark": mark, "marked_at": _at(minutes)}).encode()


def _stored(root) -> dict[tuple[int, str], str]:
    """`judgments` as the file holds it (plain duckdb: no journal merged)."""
    con = open_db(str(root / "curate.duckdb"))
    try:
        return {(i, label): m for i, label, m in con.execute("SELECT id, label, mark FROM judgments").fetchall()}
    finally:
        con.close()


def _rejected(root) -> list[dict]:
    p = root / journal.REJECTED
    return [json.loads(line) for line in p.read_text(encoding="ascii").splitlines()] if p.exists() else []


def _mark(pair, mark="hit", at=None, **extra) -> bytes:
    return json.dumps({"id": pair[0], "label": pair[1], "mark": mark, "marked_at": at or _at(30), **extra}).encode()


def _note(output: str) -> str:
    """The one NOTE line that names line 3 of the journal."""
    [line] = [x for x in output.splitlines() if x.startswith("NOTE: ") and "marks.jsonl line 3: " in x]
    return line


# (name, the bad line as bytes given two review pairs and an id that is no item's, reason words)
HOSTILE = {
    "unknown mark": (lambda p: _mark(p, "maybe"), 'mark "maybe" is not hit, miss or skip'),
    "mark not a string": (lambda p: _mark(p, 1), "mark is a number, not a string"),
    "mark NULL": (lambda p: _mark(p, None), "mark is null, not a string"),
    "bad timestamp": (lambda p: _mark(p, at="yesterday"), 'marked_at "yesterday" is not a timestamp'),
    "impossible date": (lambda p: _mark(p, at="2024-02-30 10:00:00"), "is not a timestamp"),
    "timestamp out of range": (lambda p: _mark(p, at="294247-01-10 04:00:55"), "is not a timestamp"),
    "timestamp a number": (lambda p: _mark(p, at=1700000000), "marked_at is a number, not a string"),
    "absent timestamp": (lambda p: json.dumps({"id": p[0], "label": p[1], "mark": "hit"}).encode(),
                         "no marked_at"),
    "far future": (lambda p: _mark(p, at="2999-01-01 00:00:00"), "is in the future"),
    "infinity": (lambda p: _mark(p, at="infinity"), "is in the future"),
    "id a string": (lambda p: json.dumps({"id": str(p[0]), "label": p[1], "mark": "hit",
                                          "marked_at": _at(30)}).encode(), "id is a string, not an integer"),
    "id a float": (lambda p: json.dumps({"id": p[0] + 0.5, "label": p[1], "mark": "hit",
                                         "marked_at": _at(30)}).encode(), "id is a number, not an integer"),
    "id a bool": (lambda p: json.dumps({"id": True, "label": p[1], "mark": "hit",
                                        "marked_at": _at(30)}).encode(), "id is a boolean, not an integer"),
    "id negative": (lambda p: _mark((-1, p[1])), "no item has id -1"),
    "id over int64": (lambda p: _mark((2 ** 64, p[1])), f"id {2 ** 64} is out of range"),
    "id of no item": (lambda p: _mark((10 ** 6, p[1])), "no item has id 1000000"),
    "label not in the set": (lambda p: _mark((p[0], "not-a-label")), 'was drawn with no label "not-a-label"'),
    "label of another item": (lambda p: _mark((p[0], "skyscraper" if p[1] == "bridge" else "bridge")),
                              "was drawn with no label"),
    "label a list": (lambda p: _mark((p[0], [p[1]])), "label is an array, not a string"),
    "not UTF-8": (lambda p: _mark(p).replace(b'"hit"', b'"h\xffit"'), "not UTF-8 text"),
    "a JSON array": (lambda p: json.dumps([p[0], p[1], "hit", _at(30)]).encode(), "an array, not a JSON object"),
    "a JSON string": (lambda p: b'"hit"', "a string, not a JSON object"),
    "null": (lambda p: b"null", "null, not a JSON object"),
    "not JSON": (lambda p: b"hello, journal", "not JSON"),
    "a 10 MB line": (lambda p: _mark(p, note="x" * (10 * 2 ** 20)), "a line of 10,"),
    "NUL bytes": (lambda p: _mark(p).replace(b'"hit"', b'"h\x00it"'), "holds NUL bytes"),
    "escaped NUL": (lambda p: _mark((p[0], p[1] + "\x00")), "label holds a NUL character"),
    "lone surrogate": (lambda p: _mark((p[0], p[1] + "\ud800")), "label holds a lone surrogate"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_bad_line_is_set_aside_and_every_command_goes_on(ws, case, capfd):
    root, pairs = ws
    make, reason = HOSTILE[case]
    bad = make(pairs[2])
    # good marks before and after the bad line (line 3), one of them on the bad line's pair
    lines = [_good(pairs[0], "hit", 1), _good(pairs[1], "miss", 2), bad, _good(pairs[2], "skip", 3),
             _good(pairs[3], "hit", 4)]
    (root / journal.NAME).write_bytes(b"\n".join(lines) + b"\n")
    want = {tuple(pairs[0]): "hit", tuple(pairs[1]): "miss", tuple(pairs[2]): "skip", tuple(pairs[3]): "hit"}

    # a reader sees every good mark, and says which line it left out and why
    r = run_cli("sql", "-w", root, "--format", "csv",
                "SELECT count(*) AS n, count(*) FILTER (mark = 'hit') AS hits FROM judgments")
    assert "n,hits\n4,2\n" in r.output, r.output
    assert reason in _note(r.output) and "left out" in _note(r.output), r.output
    assert len(r.output) < 5000  # the 10 MB line is named, not printed

    # a writer folds the good marks, sets the bad line aside, and says so
    # (every writing command's connect: the CLI's own writers run in the test below)
    capfd.readouterr()
    Workspace(root).connect().close()
    note = _note(capfd.readouterr().err)
    assert reason in note and f"set aside in {root / journal.REJECTED}" in note, note
    assert _stored(root) == want
    assert (root / journal.NAME).read_bytes() == b""
    [kept] = _rejected(root)
    assert kept["line"] == 3 and reason in kept["reason"]
    assert kept["text"].encode("utf-8", "surrogateescape") == bad  # byte for byte, whatever it held

    # afterwards both kinds of command work and say nothing more
    r = run_cli("sql", "-w", root, "SELECT count(*) FROM judgments")
    assert "NOTE" not in r.output


def test_every_bad_line_at_once_through_the_cli(ws):
    """All the hostile lines in one journal, each after a good one: `curate sql` (a reader)
    and `curate sample` (a writer) run, keep every good mark, and name five bad lines."""
    root, pairs = ws
    good = [_good(pairs[k], "hit", k) for k in range(len(HOSTILE))]
    bad = [make(pairs[k]) for k, (make, _) in enumerate(HOSTILE.values())]
    (root / journal.NAME).write_bytes(b"\n".join(x for pair in zip(good, bad, strict=True) for x in pair) + b"\n")
    want = {tuple(pairs[k]): "hit" for k in range(len(HOSTILE))}

    r = run_cli("sql", "-w", root, "--format", "csv", "SELECT count(*) FILTER (mark = 'hit') AS n FROM judgments")
    assert f"n\n{len(want)}\n" in r.output, r.output
    assert r.output.count("NOTE:") == journal.NOTE_LINES + 1, r.output  # five named, the rest counted
    assert f"{len(HOSTILE) - journal.NOTE_LINES} more bad lines left out" in r.output

    r = run_cli("sample", "-w", root, "--top-classes", "2", "--per-class", "3", "--seed", "1", "--name", "t")
    assert f"{len(HOSTILE) - journal.NOTE_LINES} more bad lines set aside" in r.output, r.output
    assert _stored(root) == want and journal.pending(root) == 0
    assert [r["line"] for r in _rejected(root)] == list(range(2, 2 * len(HOSTILE) + 1, 2))
    run_cli("sql", "-w", root, "SELECT * FROM review_sheet")


def test_duplicate_marks_the_latest_wins_for_readers_and_writers_alike(ws):
    """Two marks on one pair: the later one in time, whatever the line order; at the same
    time, the later line. A reader (overlay) and the fold agree."""
    root, pairs = ws
    lines = [_good(pairs[0], "miss", 20), _good(pairs[0], "hit", 10),      # later line, earlier time
             _good(pairs[1], "hit", 10), _good(pairs[1], "miss", 10),      # same time: later line
             _good(pairs[2], "skip", 5), _good(pairs[2], "skip", 5)]       # the same mark twice
    (root / journal.NAME).write_bytes(b"\n".join(lines) + b"\n")
    want = {tuple(pairs[0]): "miss", tuple(pairs[1]): "miss", tuple(pairs[2]): "skip"}
    con = Workspace(root).connect(read_only=True)
    seen = {(i, label): m for i, label, m in con.execute("SELECT id, label, mark FROM judgments").fetchall()}
    con.close()
    assert seen == want
    Workspace(root).connect().close()
    assert _stored(root) == want and _rejected(root) == []


def test_extra_keys_and_a_torn_last_line(ws):
    """Extra keys do not spoil a mark (a later curate may write more); a last line torn by a
    crash was never acknowledged: neither folded nor set aside, and no note."""
    root, pairs = ws
    torn = _good(pairs[2], "hit", 3)[:-9]
    (root / journal.NAME).write_bytes(_mark(pairs[0], "hit", set="s", by="me") + b"\n"
                                      + _good(pairs[1], "miss", 2) + b"\n" + torn)
    r = run_cli("sample", "-w", root, "--top-classes", "2", "--per-class", "3", "--seed", "1", "--name", "t")
    assert "NOTE: " + str(root) not in r.output, r.output
    assert _stored(root) == {tuple(pairs[0]): "hit", tuple(pairs[1]): "miss"}
    assert _rejected(root) == []


def test_a_mark_over_a_stored_one_and_a_journal_that_cannot_be_read(ws, capfd):
    root, pairs = ws
    (root / journal.NAME).write_bytes(_good(pairs[0], "hit", 1) + b"\n")
    Workspace(root).connect().close()
    # an older journal mark never replaces a newer stored one; a bad one never touches it
    (root / journal.NAME).write_bytes(_good(pairs[0], "miss", 0) + b"\n" + _mark(pairs[0], "maybe", at=_at(50))
                                      + b"\n")
    Workspace(root).connect().close()
    assert _stored(root) == {tuple(pairs[0]): "hit"}
    # a journal that is a folder: commands go on, saying so
    (root / journal.NAME).unlink()
    (root / journal.NAME).mkdir()
    capfd.readouterr()
    Workspace(root).connect(read_only=True).close()
    Workspace(root).connect().close()
    err = capfd.readouterr().err
    assert err.count("marks.jsonl") == 2 and "Traceback" not in err, err
