"""`curate search`: text and image queries against the image and caption indexes, checked
against brute force; the hits written in filter's formats and read back; the queries refused;
the terminal table aligned by terminal cells."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import faiss
import numpy as np
import pytest
from classify_support import read_out
from conftest import open_db, run_cli, write_jpeg

from curate.commands.search import CAPTION_CELLS, table
from curate.core import store
from curate.core.termwidth import clip, pad, width
from curate.core.workspace import Workspace
from curate.select.search import Hit, SearchQuery, encode_image_file, search, search_images

COLUMNS = ["rank", "id", "score", "label", "prob", "path", "caption"]


def brute_force(ws_path: Path, kind: str, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest ids of one kind's stored vectors to `q` (exact, float64) and their cosines."""
    ws = Workspace(ws_path)
    con = ws.connect(read_only=True)
    ids, vecs = store.load_all(ws, con, kind)
    con.close()
    sims = vecs.astype(np.float64) @ q.astype(np.float64).ravel()
    order = np.argsort(-sims, kind="stable")[:k]
    return ids[order], sims[order]


def predictions(ws_path: Path, view: str) -> dict[int, tuple[str, float]]:
    con = open_db(str(Path(ws_path) / "curate.duckdb"))
    try:
        return {i: (label, prob) for i, label, prob in con.execute(f"SELECT id, label, prob FROM {view}").fetchall()}
    finally:
        con.close()


def test_search_matches_brute_force(classified, tiny_encoder):
    ws = Workspace(classified)
    con = ws.connect(read_only=True)
    ids, _ = store.load_all(ws, con, "image")
    con.close()
    assert faiss.read_index(str(ws.index_path("image"))).ntotal == len(ids)
    want, sims = brute_force(classified, "image", tiny_encoder.encode_text(["a rooftop bar at night"]), 5)
    hits = search_images(classified, "a rooftop bar at night", k=5, encoder=tiny_encoder)
    assert [h.id for h in hits] == want.tolist()
    assert [h.score for h in hits] == pytest.approx(sims.tolist(), abs=1e-5)
    assert all(h.path and Path(h.path).is_file() for h in hits)
    # each hit with its top label and probability under the active classification
    preds = predictions(classified, "predictions")
    assert [(h.label, h.prob) for h in hits] == [preds[h.id] for h in hits]
    # the command prints the same three hits, in rank order, each with its score, id, label, prob and path
    out = run_cli("search", "-w", classified, "a rooftop bar at night", "-k", "3").output
    lines = [ln.split() for ln in out.strip().splitlines() if ln.split() and ln.split()[0].isdigit()]
    assert [int(ln[0]) for ln in lines] == [1, 2, 3]
    assert [int(ln[2]) for ln in lines] == want[:3].tolist()
    assert [float(ln[1]) for ln in lines] == pytest.approx(sims[:3].tolist(), abs=1e-4)
    assert [(ln[3], float(ln[4])) for ln in lines] == [(h.label, pytest.approx(h.prob, abs=1e-4)) for h in hits[:3]]
    assert [ln[5] for ln in lines] == [h.path for h in hits[:3]]
    assert "no classification named 'x'" in run_cli("search", "-w", classified, "a bar", "--classification", "x",
                                                   expect=1).output


def test_search_refuses_another_model(tmp_path, tiny_encoder):
    from classify_support import hand_workspace

    from curate.core.workspace import ModelIdentity, ModelMismatch

    other = ModelIdentity("ViT-B-32", "laion2b_s34b_b79k", 64, False)
    v = np.eye(64, dtype=np.float32)[:3]
    root = hand_workspace(tmp_path / "ws", {i: v[i] for i in range(3)}, {}, other)
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(64))
    index.add_with_ids(v, np.arange(3, dtype=np.int64))
    Workspace(root).indexes_dir.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(Workspace(root).index_path("image")))
    with pytest.raises(ModelMismatch, match="ViT-B-32"):
        search_images(root, "a street", encoder=tiny_encoder)


def test_an_image_of_the_collection_finds_itself_first(classified, tiny_encoder):
    """A collection photo as the query: its own vector is the one build-index stored (the
    same decode and transform), so it comes first at cosine 1."""
    con = open_db(str(classified / "curate.duckdb"))
    item, path = con.execute("SELECT id, path FROM items WHERE status = 'embedded' ORDER BY id LIMIT 1 OFFSET 3"
                             ).fetchall()[0]
    con.close()
    hits = search(classified, SearchQuery(image=path), k=4, encoder=tiny_encoder)
    assert hits[0].id == item and hits[0].score == pytest.approx(1.0, abs=1e-4)
    want, sims = brute_force(classified, "image", encode_image_file(tiny_encoder, path), 4)
    assert [h.id for h in hits] == want.tolist()
    assert [h.score for h in hits] == pytest.approx(sims.tolist(), abs=1e-5)


def test_image_query_through_the_cli_written_to_parquet(classified, tmp_path, tiny_encoder):
    """A new JPEG (not in the collection) as the query; the hits land in a parquet file in rank order."""
    query = write_jpeg(tmp_path / "query.jpg", size=(120, 90), seed=99)
    out = tmp_path / "hits.parquet"
    res = run_cli("search", "-w", classified, "--image", query, "-k", "6", "--out", out)
    assert f"6 hits -> {out}" in res.output and "rank" not in res.output   # the file, not the table
    rows = read_out(out)
    assert list(rows[0]) == [*COLUMNS, "source_id"]   # then the source's own columns
    want, sims = brute_force(classified, "image", encode_image_file(tiny_encoder, query), 6)
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["id"] for r in rows] == want.tolist()
    assert [r["score"] for r in rows] == pytest.approx(sims.tolist(), abs=1e-5)
    preds = predictions(classified, "predictions")
    assert [(r["label"], r["prob"]) for r in rows] == [(preds[i][0], pytest.approx(preds[i][1])) for i in want]


def test_caption_mode_searches_the_caption_index(classified, tiny_encoder, tmp_path):
    text = "rooftop bar"
    want, sims = brute_force(classified, "caption", tiny_encoder.encode_text([text]), 20)
    hits = search(classified, SearchQuery(text, mode="caption"), k=20, encoder=tiny_encoder)
    assert len(hits) == len(want) == 11          # 12 images, 11 captions: every caption, none more
    assert [h.id for h in hits] == want.tolist()
    assert [h.score for h in hits] == pytest.approx(sims.tolist(), abs=1e-5)
    # the labels are the captions' predictions, as filter --mode caption reads them
    preds = predictions(classified, "caption_predictions")
    assert [(h.label, h.prob) for h in hits] == [preds[h.id] for h in hits]
    # an image query against the captions, through the CLI
    query = write_jpeg(tmp_path / "q.jpg", seed=7)
    out = tmp_path / "cap.jsonl"
    run_cli("search", "-w", classified, "--image", query, "--mode", "caption", "-k", "3", "--out", out)
    want, _ = brute_force(classified, "caption", encode_image_file(tiny_encoder, query), 3)
    assert [r["id"] for r in read_out(out)] == want.tolist()


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".tsv", ".jsonl", ".json"])
def test_every_format_reads_back_as_the_hits(classified, tmp_path, suffix, tiny_encoder):
    from curate import api

    out = tmp_path / f"hits{suffix}"
    run_cli("search", "-w", classified, "a street at night", "-k", "5", "--out", out)
    rows = read_out(out)
    assert list(rows[0]) == [*COLUMNS, "source_id"]   # then the source's own columns
    hits = api.search(classified, "a street at night", 5)
    assert len(rows) == len(hits) == 5
    for row, h in zip(rows, hits, strict=True):
        assert int(row["rank"]) == h.rank and int(row["id"]) == h.id and row["label"] == h.label
        assert float(row["score"]) == pytest.approx(h.score, abs=1e-6)
        assert float(row["prob"]) == pytest.approx(h.prob, abs=1e-6)
        assert (row["path"], row["caption"] or None) == (h.path, h.caption)


def test_the_source_columns_follow_and_never_take_a_search_column(classified, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(classified, ws)
    con = duckdb.connect(str(ws / "curate.duckdb"))
    con.execute("ALTER TABLE items ADD COLUMN city VARCHAR")
    con.execute("ALTER TABLE items ADD COLUMN score INTEGER")   # a manifest's own `score`
    con.execute("UPDATE items SET city = 'city' || id, score = 100 + id")
    con.close()
    out = tmp_path / "hits.parquet"
    run_cli("search", "-w", ws, "a bridge", "-k", "4", "--out", out)
    rows = read_out(out)
    assert list(rows[0]) == [*COLUMNS, "source_id", "city", "src_score"]
    assert all(r["city"] == f"city{r['id']}" and r["src_score"] == 100 + r["id"] for r in rows)
    assert all(-1.0 <= r["score"] <= 1.0 for r in rows)


def test_an_unclassified_workspace_writes_empty_labels(built_workspace, tmp_path):
    out = tmp_path / "hits.csv"
    run_cli("search", "-w", built_workspace, "a photo", "-k", "3", "--out", out)
    rows = read_out(out)
    assert len(rows) == 3 and list(rows[0]) == [*COLUMNS, "source_id"]
    assert all(r["label"] == "" and r["prob"] == "" for r in rows)


@pytest.mark.parametrize("args, message", [
    (["", ], "the query is empty"),
    (["   \t"], "the query is empty"),
    ([], "the query is empty"),
    (["a bar", "--image", "x.jpg"], "not both"),
    (["a bar", "--out", "hits.xlsx"], "cannot tell the format of hits.xlsx"),
])
def test_bad_queries_are_refused(built_workspace, args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = run_cli("search", "-w", built_workspace, *args, expect=1)
    assert message in res.output
    assert "Traceback" not in res.output and not list(tmp_path.iterdir())


def test_an_unreadable_query_image_is_a_clear_error(built_workspace, tmp_path):
    bad = tmp_path / "notanimage.jpg"
    bad.write_text("hello", encoding="utf-8")
    for path, reason in ((bad, "not an image"), (tmp_path / "missing.jpg", "file not found"),
                         (tmp_path, "is a directory")):
        res = run_cli("search", "-w", built_workspace, "--image", path, expect=1)
        assert f"cannot read the query image {path}: {reason}" in res.output


def test_a_workspace_without_a_caption_index_says_so(built_workspace, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(built_workspace, ws)
    Workspace(ws).index_path("caption").unlink()
    assert "has no caption index" in run_cli("search", "-w", ws, "a bar", "--mode", "caption", expect=1).output


# -- the terminal table ---------------------------------------------------------------

def test_terminal_cells():
    assert width("abc") == 3 and width("東京") == 4 and width("e\u0301") == 1 and width("🌉") == 2
    assert clip("東京タワーの夜景", 7) == "東京タ…" and width(clip("東京タワーの夜景", 7)) == 7
    assert clip("short", 10) == "short"
    assert pad("東京", 6) == "東京  " and pad("7", 3, right=True) == "  7"


def _starts(line: str, cells: list[str]) -> list[int]:
    """The terminal cell at which each of `cells` (in order) starts in `line`."""
    out, pos = [], 0
    for c in cells:
        pos = line.index(c, pos)
        out.append(width(line[:pos]))
        pos += len(c)
    return out


def test_the_table_lines_up_with_wide_characters_and_long_paths():
    long_path = "/data/" + "very-long-folder-name/" * 6 + "東京/img.jpg"
    hits = [Hit(1, 7, 0.91234, "/p/a.jpg", "東京タワーの夜景 " * 10, "tower", 0.812),
            Hit(2, 12345, 0.5, long_path, "a bridge", "東京の橋", 0.5),
            Hit(3, 8, -0.25, "/p/\x1b[2Jb.jpg", "evil\x07 caption", None, None)]
    lines = table(hits)
    assert lines[0].split() == ["rank", "score", "id", "label", "prob", "path", "caption"]
    cols = [_starts(lines[0], ["path", "caption"])]
    cols += [_starts(ln, [p, c[:4]]) for ln, p, c in zip(lines[1:], ["/p/a.jpg", long_path, "/p/\\x1b[2Jb.jpg"],
                                                         ["東京タワ", "a br", "evil"], strict=True)]
    assert len({tuple(c) for c in cols}) == 1, cols          # path and caption start at the same cell on every line
    assert "\x1b" not in "".join(lines) and "\x07" not in "".join(lines)
    assert all(width(ln) <= width(lines[2]) + CAPTION_CELLS for ln in lines)
    assert width(lines[1].split("  ")[-1]) <= CAPTION_CELLS and lines[1].endswith("…")
    # numbers right-aligned under their headers
    assert [ln.split()[0] for ln in lines[1:]] == ["1", "2", "3"]
    assert _starts(lines[2], ["12345"])[0] + 5 == _starts(lines[0], ["id"])[0] + 2


def test_an_unlabelled_table_has_no_label_columns():
    lines = table([Hit(1, 3, 0.5, "/p/x.jpg", None)])
    assert lines[0].split() == ["rank", "score", "id", "path", "caption"]
    assert lines[1].split() == ["1", "0.5000", "3", "/p/x.jpg"]
