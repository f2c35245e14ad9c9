"""Manifests keep values exactly as written (issue 7): the same table as CSV, TSV, JSONL and
parquet gives the same items; captions, ids and paths are text; users' columns never
shadow curate's own."""

from __future__ import annotations

import csv
import json

import duckdb
import pytest
from conftest import run_cli, write_jpeg

from curate.core.workspace import Workspace
from curate.ingest.scan import scan_into
from curate.ingest.sources import detect_source

TINY = ("--model", "curate-tiny", "--pretrained", "none", "--workers", "0")

HEADER = ["id", "path", "caption", "taken", "flag", "score", "note"]
ROWS = [
    ["007", "imgs/a.jpg", "01/02/2023", "2023-02-01", "true", "NaN", "null"],
    ["1.10", "imgs/b.jpg", 'she said "hi", then\nleft; a\tb', "2023-02-02", "yes", "1.10", "naïve 🌍 東京"],
    ["1.1", "imgs/c.jpg", "   ", "03/04/2023", "no", "007", 'x,"y"'],
    ["1e3", "imgs/d.jpg", "Crème brûlée", "", "false", "", "NULL"],
]


def _scan(ws_dir, manifest, infer_types=False):
    con = Workspace(ws_dir).connect()
    res = scan_into(con, detect_source(manifest), 1, infer_types=infer_types)
    return con, res


def _write_all(tmp_path):
    for name in "abcd":
        write_jpeg(tmp_path / "imgs" / f"{name}.jpg", seed=ord(name))
    out = {}
    for ext, delim in (("csv", ","), ("tsv", "\t")):
        p = tmp_path / f"m.{ext}"
        with p.open("w", newline="", encoding="utf-8") as f:
            csv.writer(f, delimiter=delim).writerows([HEADER, *ROWS])
        out[ext] = p
    p = tmp_path / "m.jsonl"
    p.write_text("".join(json.dumps(dict(zip(HEADER, r, strict=True)), ensure_ascii=False) + "\n" for r in ROWS),
                 encoding="utf-8")
    out["jsonl"] = p
    p = tmp_path / "m.parquet"
    con = duckdb.connect()
    con.execute("CREATE TABLE t (" + ", ".join(f"{h} VARCHAR" for h in HEADER) + ")")
    con.executemany(f"INSERT INTO t VALUES ({', '.join('?' * len(HEADER))})", ROWS)
    con.execute(f"COPY t TO '{p}' (FORMAT parquet)")
    out["parquet"] = p
    return out


def test_four_formats_give_the_same_items_as_written(tmp_path):
    files = _write_all(tmp_path)
    got = {}
    for fmt, path in files.items():
        con, res = _scan(tmp_path / f"ws-{fmt}", path)
        assert (res.seen, res.added, res.not_taken) == (4, 4, 0), fmt
        assert dict(con.execute("SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = 'items' "
                                "AND column_name IN ('taken', 'flag', 'score', 'note')").fetchall()) == dict.fromkeys(
            ["taken", "flag", "score", "note"], "VARCHAR"), fmt
        got[fmt] = con.execute("SELECT source_id, path, caption, taken, flag, score, note FROM items "
                               "ORDER BY id").fetchall()
        con.close()
    want = [(r[0], str(tmp_path / r[1]), r[2].strip() or None, *(v or None for v in r[3:])) for r in ROWS]
    for fmt, rows in got.items():
        assert rows == want, fmt
    # ids 1.1 and 1.10 are two items; 007 keeps its zeros; the caption date is not a DATE
    assert [r[0] for r in want] == ["007", "1.10", "1.1", "1e3"]
    assert want[0][2] == "01/02/2023"


def test_csv_encodings(tmp_path):
    write_jpeg(tmp_path / "a.jpg", seed=1)
    write_jpeg(tmp_path / "b.jpg", seed=2)
    text = "path,caption,place\na.jpg,Café “quoted” €5,Zürich\nb.jpg,plain,x\n"
    variants = {
        "bom": text.encode("utf-8-sig"),
        "cp1252": text.encode("cp1252"),
        "utf16": text.encode("utf-16"),
        # one line written in cp1252 inside a UTF-8 file: the UTF-8 lines stay as they are
        "mixed": b"path,caption,place\n" + "a.jpg,Café “quoted” €5,Zürich\n".encode("cp1252")
        + b"b.jpg,plain,x\n",
    }
    for name, raw in variants.items():
        p = tmp_path / f"{name}.csv"
        p.write_bytes(raw)
        con, res = _scan(tmp_path / f"ws-{name}", p)
        assert con.execute("SELECT caption, place FROM items ORDER BY id").fetchall() == [
            ("Café “quoted” €5", "Zürich"), ("plain", "x")], name
        if name in ("cp1252", "mixed"):
            assert any("read as cp1252" in n for n in res.notes)
        con.close()


def test_jsonl_values_are_kept_as_json_text(tmp_path):
    write_jpeg(tmp_path / "a.jpg", seed=1)
    p = tmp_path / "m.jsonl"
    p.write_text('{"id": 7, "path": "a.jpg", "caption": "x", "n": 12345678901234567890123, "b": true, '
                 '"o": {"k": [1, "two"]}, "nil": null, "s": "null"}\n'
                 '[1, 2]\n', encoding="utf-8")
    con, res = _scan(tmp_path / "ws", p)
    assert con.execute("SELECT source_id, n, b, o, nil, s FROM items").fetchall() == [
        ("7", "12345678901234567890123", "true", '{"k":[1,"two"]}', None, "null")]
    assert res.not_taken == 1
    assert con.execute("SELECT reason FROM rejected").fetchall() == [(f"manifest {p} row 2: not a JSON object",)]


def test_infer_types_is_an_opt_in(tmp_path):
    write_jpeg(tmp_path / "a.jpg", seed=1)
    write_jpeg(tmp_path / "b.jpg", seed=2)
    (tmp_path / "m.csv").write_text("id,path,caption,likes,day\n007,a.jpg,01/02/2023,10,2023-01-02\n"
                                    "8,b.jpg,x,20,2023-01-03\n")
    con, _ = _scan(tmp_path / "ws", tmp_path / "m.csv", infer_types=True)
    types = dict(con.execute("SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = 'items'")
                 .fetchall())
    assert types["likes"] == "BIGINT" and types["day"] in ("DATE", "TIMESTAMP")
    assert con.execute("SELECT source_id, caption, likes FROM items ORDER BY id").fetchall() == [
        ("007", "01/02/2023", 10), ("8", "x", 20)]
    (tmp_path / "m.jsonl").write_text('{"path": "a.jpg", "caption": 5, "v": 1.5, "ok": true}\n')
    con2, _ = _scan(tmp_path / "ws2", tmp_path / "m.jsonl", infer_types=True)
    assert con2.execute("SELECT caption, v, ok FROM items").fetchall() == [("5", 1.5, True)]


def test_blank_captions_are_null_in_every_source_kind(tmp_path):
    for i in range(4):
        write_jpeg(tmp_path / "photos" / f"{i}.jpg", seed=i)
    caps = ["  \t ", "\u3000\u00a0", "  both ends\u00a0", "\n"]
    for i, c in enumerate(caps):
        (tmp_path / "photos" / f"{i}.txt").write_text(c, encoding="utf-8")
    (tmp_path / "photos" / "m.jsonl").write_text(
        "".join(json.dumps({"path": f"{i}.jpg", "caption": c}) + "\n" for i, c in enumerate(caps)))
    want = [None, None, "both ends", None]
    con, _ = _scan(tmp_path / "ws-folder", tmp_path / "photos")
    assert [r[0] for r in con.execute("SELECT caption FROM items ORDER BY id").fetchall()] == want
    con.close()
    ws = tmp_path / "ws-manifest"
    run_cli("build-index", tmp_path / "photos" / "m.jsonl", "-w", ws, *TINY)
    con = Workspace(ws).connect(read_only=True)
    assert [r[0] for r in con.execute("SELECT caption FROM items ORDER BY id").fetchall()] == want
    # only the one real caption is embedded as a caption
    assert con.execute("SELECT sum(rows) FROM shards WHERE kind = 'caption'").fetchone()[0] == 1


def test_columns_named_like_curates_own(tmp_path):
    write_jpeg(tmp_path / "a.jpg", seed=1)
    write_jpeg(tmp_path / "b.jpg", seed=2)
    header = ["ID", "Path", "caption", "Caption", "STATUS", "source_id", "rel_path", "first_row", "_row",
              "src_x", "City", "city", "source_no", ""]
    rows = [["k1", "a.jpg", "lower", "upper", "mine", "s1", "elsewhere.jpg", "99", "r1", "sx", "NYC", "nyc", "5",
             "e"],
            ["k2", "b.jpg", "lower2", "upper2", "mine2", "s2", "x.jpg", "98", "r2", "sx2", "LA", "la", "6", "f"]]
    p = tmp_path / "m.csv"
    with p.open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    con, res = _scan(tmp_path / "ws", p)
    assert res.added == 2
    got = con.execute(
        'SELECT source_id, path, caption, status, src_Caption, src_STATUS, src_source_id, rel_path, first_row, '
        '_row, src_src_x, "City", src_city, src_source_no, column14 FROM items ORDER BY id').fetchall()
    assert got == [
        ("k1", str(tmp_path / "a.jpg"), "lower", "pending", "upper", "mine", "s1", "elsewhere.jpg", "99", "r1",
         "sx", "NYC", "nyc", "5", "e"),
        ("k2", str(tmp_path / "b.jpg"), "lower2", "pending", "upper2", "mine2", "s2", "x.jpg", "98", "r2",
         "sx2", "LA", "la", "6", "f")]
    # `Caption` alone is the caption
    (tmp_path / "m2.csv").write_text("PATH,Caption\na.jpg,Upper only\n")
    con2, _ = _scan(tmp_path / "ws2", tmp_path / "m2.csv")
    assert con2.execute("SELECT caption FROM items").fetchall() == [("Upper only",)]


def test_a_second_manifest_with_another_type_is_stored(tmp_path):
    write_jpeg(tmp_path / "a.jpg", seed=1)
    write_jpeg(tmp_path / "b.jpg", seed=2)
    first = tmp_path / "first.parquet"
    duckdb.sql(f"COPY (SELECT 'a.jpg' AS path, 10::BIGINT AS likes) TO '{first}' (FORMAT parquet)")
    (tmp_path / "second.csv").write_text("path,likes\nb.jpg,lots\n")
    ws = tmp_path / "ws"
    con, _ = _scan(ws, first)
    assert con.execute("SELECT likes FROM items").fetchall() == [(10,)]
    res = scan_into(con, detect_source(tmp_path / "second.csv"), 2)
    assert res.added == 1 and any("likes" in n for n in res.notes)
    assert con.execute("SELECT likes FROM items ORDER BY id").fetchall() == [("10",), ("lots",)]


def test_bad_rows_recorded_per_manifest_with_absolute_paths(tmp_path):
    for i in range(3):
        write_jpeg(tmp_path / "imgs" / f"{i}.jpg", seed=i)
    m1, m2 = tmp_path / "one.csv", tmp_path / "two.csv"
    m1.write_text("id,path\na,imgs/0.jpg\na,imgs/1.jpg\n")
    m2.write_text("id,path\nb,./imgs/../imgs/2.jpg\nb,imgs/1.jpg\n,\n")
    con, _ = _scan(tmp_path / "ws", m1)
    scan_into(con, detect_source(m2), 2)
    rej = con.execute("SELECT source_id, path, reason, run_id FROM rejected ORDER BY run_id, reason").fetchall()
    assert rej == [
        ("a", str(tmp_path / "imgs" / "1.jpg"), f'manifest {m1} row 2: duplicate id "a" (first on row 1)', 1),
        ("b", str(tmp_path / "imgs" / "1.jpg"), f'manifest {m2} row 2: duplicate id "b" (first on row 1)', 2),
        (None, None, f"manifest {m2} row 3: empty path", 2),
    ]
    # paths are normalised
    assert con.execute("SELECT path FROM items WHERE source_id = 'b'").fetchone()[0] == str(tmp_path / "imgs/2.jpg")
    # again: nothing recorded twice, nothing added
    for m in (m1, m2):
        assert scan_into(con, detect_source(m), 3).added == 0
    assert con.execute("SELECT count(*) FROM rejected").fetchone()[0] == 3


@pytest.mark.parametrize("ext", ["csv", "jsonl"])
def test_build_index_summary_counts_match_rejected(tmp_path, ext):
    write_jpeg(tmp_path / "a.jpg", seed=1)
    (tmp_path / "bad.jpg").write_bytes(b"")
    p = tmp_path / f"m.{ext}"
    rows = [("a", "a.jpg"), ("a", "a.jpg"), ("b", "bad.jpg"), ("c", "")]
    if ext == "csv":
        p.write_text("id,path\n" + "".join(f"{i},{q}\n" for i, q in rows))
    else:
        p.write_text("".join(json.dumps({"id": i, "path": q}) + "\n" for i, q in rows))
    out = run_cli("build-index", p, "-w", tmp_path / "ws", *TINY).output
    con = Workspace(tmp_path / "ws").connect(read_only=True)
    stages = dict(con.execute("SELECT stage, count(*) FROM rejected GROUP BY stage").fetchall())
    assert stages == {"scan": 2, "decode": 1}
    assert "rejected this run: 3 (decode 1, scan 2;" in out
    assert "4 seen, 2 new; not taken: 2" in out
    assert all(r[0].startswith("/") for r in con.execute("SELECT path FROM rejected WHERE path IS NOT NULL")
               .fetchall())
