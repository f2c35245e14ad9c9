"""Scores follow the vectors (issue 21 item 1): after build-index embeds an item again (its
file changed) or rejects it (its file became unreadable), no reader ever shows a score
older than the item's vector or an item that has no vector, and the next `classify`
rescores exactly those items, to the numbers of a classification from scratch.

Real workspaces: real JPEGs written here, the real `curate build-index` with the tiny
random-weights model (shards of 4 items, so a change rewrites a shard), real DuckDB files
read by a second connection as the duckdb shell would. The kill test uses a real
`curate classify` process killed with SIGKILL while it rescores.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pytest
from classify_support import references, top2
from conftest import make_folder, open_db, run_cli, write_jpeg
from test_classify_resume import (
    DIM,
    add_vectors,
    assert_close_tables,
    assert_same_tables,
    kill_classify_after,
    label_file,
    make_workspace,
    one,
)

from curate.classify.run import classify
from curate.core import store
from curate.core.workspace import Workspace

TINY = ("--model", "curate-tiny", "--pretrained", "none", "--workers", "0", "--shard-size", "4")
N = 14
VIEWS = ("predictions", "caption_predictions", "ensemble", "coverage")


def _labels(path: Path) -> Path:
    path.write_text("label,prompt\n" + "".join(f"{w},a photo of a {w}\n" for w in (
        "kitchen", "street", "park", "bar", "subway", "gallery", "shop", "tower")), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_encoder) -> tuple[Path, Path, Path]:
    """(photos, workspace, label file): 14 JPEGs with captions, built and classified twice
    (names 'a' and 'b', two wordings)."""
    root = tmp_path_factory.mktemp("follow")
    src = make_folder(root / "photos", N)
    ws = root / "ws"
    run_cli("build-index", src, "-w", ws, *TINY)
    labels = _labels(root / "labels.csv")
    classify(ws, labels, "raw", tiny_encoder, name="b", logit_scale=60.0)
    classify(ws, labels, "natural", tiny_encoder, name="a", logit_scale=60.0)
    return src, ws, labels


def _copy(base, tmp_path: Path) -> tuple[Path, Path, Path]:
    src, ws, labels = base
    shutil.copytree(src, tmp_path / "photos")
    shutil.copytree(ws, tmp_path / "ws")
    # the items' paths are absolute: point the copy at its own photos
    con = duckdb.connect(str(tmp_path / "ws" / "curate.duckdb"))
    con.execute("UPDATE items SET path = replace(path, ?, ?)", [str(src), str(tmp_path / "photos")])
    con.execute("UPDATE sources SET location = replace(location, ?, ?), description = replace(description, ?, ?)",
                [str(src), str(tmp_path / "photos")] * 2)
    con.close()
    return tmp_path / "photos", tmp_path / "ws", labels


def _edit(photo: Path, seed: int) -> None:
    """The file edited in place: other pixels, a later mtime."""
    write_jpeg(photo, seed=seed)
    st = photo.stat()
    os.utime(photo, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000_000))


def _break(photo: Path) -> None:
    """The file became unreadable as an image (truncated to garbage)."""
    photo.write_bytes(b"not a jpeg any more")
    st = photo.stat()
    os.utime(photo, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000_000))


def _id(ws: Path, source_id: str) -> int:
    con = open_db(str(ws / "curate.duckdb"))
    try:
        return con.execute("SELECT id FROM items WHERE source_id = ?", [source_id]).fetchall()[0][0]
    finally:
        con.close()


def _refused(*args) -> str:
    r = run_cli(*args, expect=None)
    assert r.exit_code not in (0, 70), r.output       # a one-line refusal, not a crash
    return r.output


def _view_error(ws: Path, relation: str) -> str:
    """What reading a view from a plain read-only DuckDB connection (the shell) gives."""
    con = open_db(str(ws / "curate.duckdb"))
    try:
        con.execute(f"SELECT count(*) FROM {relation}").fetchall()
    except duckdb.Error as e:
        return str(e)
    finally:
        con.close()
    return ""


def _assert_equals_reference(ws: Path) -> None:
    """The active classification's image predictions are the numpy softmax of the stored vectors."""
    ref = references(ws)
    ids, p = ref["image"]
    label, prob, _l2, prob2 = top2(p)
    con = open_db(str(ws / "curate.duckdb"))
    got = con.execute("SELECT id, label_idx, prob, prob2 FROM predictions ORDER BY id").fetchall()
    con.close()
    order = np.argsort(ids)
    assert [r[0] for r in got] == ids[order].tolist()
    assert [r[1] for r in got] == label[order].tolist()
    np.testing.assert_allclose([r[2] for r in got], prob[order], rtol=0, atol=1e-9)
    np.testing.assert_allclose([r[3] for r in got], prob2[order], rtol=0, atol=1e-9)


def test_re_embedded_items_refuse_readers_then_are_rescored_to_a_fresh_classification(base, tmp_path, tiny_encoder):
    src, ws, labels = _copy(base, tmp_path)
    _edit(src / "img_005.jpg", 500)
    _edit(src / "img_010.jpg", 501)
    assert "2 changed (embedded again)" in run_cli("build-index", src, "-w", ws, *TINY).output

    # every reader refuses the stale scores, naming how many items and the command
    out = _refused("filter", "-w", ws, "--min-prob", "0", "--out", tmp_path / "kept.csv")
    assert "2 items changed since classification 'a' was scored" in out and "curate classify" in out
    assert not (tmp_path / "kept.csv").exists()
    assert "2 items changed" in _refused("sample", "-w", ws, "--top-classes", "2", "--per-class", "2")
    assert "2 items changed" in _refused("compare", "-w", ws, "a", "b", "--out", tmp_path / "cmp")
    for view in VIEWS:       # and so does every view, in the shell as in curate
        assert "older than the vectors" in _view_error(ws, view), view
        assert "older than the vectors" in _view_error(ws, f'"cls_a".{view}'), view
    assert "older than the vectors" in _view_error(ws, "ensemble_with(0.3, 0.2)")
    assert "older than the vectors" in _view_error(ws, "subset('image', [], 0.0)")

    # a plain rerun rescores exactly those two, and says so in one line
    lines: list[str] = []
    r = classify(ws, labels, "natural", tiny_encoder, name="a", logit_scale=60.0, log=lines.append)
    assert lines == ["2 items re-embedded since a was last classified: rescored"]
    assert r.resumed_vectors == r.images + r.captions - 4       # 2 images + 2 captions scored again

    # equal to a classification from scratch (--restart) and to numpy
    fresh = tmp_path / "fresh"
    shutil.copytree(ws, fresh)
    classify(fresh, labels, "natural", tiny_encoder, name="a", logit_scale=60.0, restart=True)
    _assert_equals_reference(ws)
    _assert_close_schema(ws, fresh, "cls_a")
    assert run_cli("filter", "-w", ws, "--min-prob", "0", "--out", tmp_path / "kept.csv").exit_code == 0
    assert f"{N} of {N}" in run_cli("filter", "-w", ws, "--min-prob", "0", "--out", tmp_path / "k2.csv").output

    # and the next rerun has nothing to do (issue 26: not a resume)
    lines = []
    r = classify(ws, labels, "natural", tiny_encoder, name="a", logit_scale=60.0, log=lines.append)
    assert lines == ["a: already classified, nothing to do"] and not r.interrupted
    out = run_cli("classify", "-w", ws, "--label-set", labels, "--prompts", "natural", "--name", "a",
                  "--logit-scale", "60").output
    assert "already classified, nothing to do" in out and "continued" not in out and "resuming" not in out


def _assert_close_schema(a: Path, b: Path, schema: str) -> None:
    """assert_close_tables on one named classification of each workspace (copied out to main)."""
    outs = []
    for root in (a, b):
        out = root.parent / (root.name + "-flat")
        out.mkdir()
        con = duckdb.connect(str(out / "curate.duckdb"))
        con.execute(f"ATTACH '{root / 'curate.duckdb'}' AS w (READ_ONLY)")
        for t in ("item_scores", "label_scores"):
            con.execute(f'CREATE TABLE {t} AS SELECT * FROM w."{schema}".{t}')
        con.close()
        outs.append(out)
    assert_close_tables(*outs)


def test_unreadable_file_is_rejected_and_never_read_again(base, tmp_path, tiny_encoder):
    src, ws, labels = _copy(base, tmp_path)
    gone = _id(ws, "img_007.jpg")
    _break(src / "img_007.jpg")
    run_cli("build-index", src, "-w", ws, *TINY)
    con = open_db(str(ws / "curate.duckdb"))
    assert con.execute("SELECT status FROM items WHERE id = ?", [gone]).fetchall() == [("rejected",)]
    con.close()

    # before classify runs again: refused everywhere, never "kept 14 of 14"
    out = _refused("filter", "-w", ws, "--min-prob", "0", "--out", tmp_path / "kept.csv")
    assert "1 item changed since classification 'a' was scored" in out
    assert "older than the vectors" in _view_error(ws, "predictions")

    lines: list[str] = []
    classify(ws, labels, "natural", tiny_encoder, name="a", logit_scale=60.0, log=lines.append)
    assert lines == ["1 item without vectors now (rejected or not embedded): their scores removed"]
    out = run_cli("filter", "-w", ws, "--min-prob", "0", "--out", tmp_path / "kept.csv").output
    assert f"{N - 1} of {N - 1}" in out
    assert str(gone) not in [line.split(",")[0] for line in (tmp_path / "kept.csv").read_text().splitlines()]
    con = open_db(str(ws / "curate.duckdb"))
    for view in ("predictions", "caption_predictions", "ensemble", "item_scores", "label_scores",
                 "ensemble_with(0.3, 0.2)"):
        assert con.execute(f"SELECT count(*) FROM {view} WHERE id = ?", [gone]).fetchall() == [(0,)], view
    assert con.execute("SELECT max(images) FROM coverage").fetchall() == [(N - 1,)]
    con.close()
    run_cli("sample", "-w", ws, "--top-classes", "8", "--per-class", "20", "--seed", "1")
    con = open_db(str(ws / "curate.duckdb"))
    assert con.execute("SELECT count(*) FROM review_items WHERE id = ?", [gone]).fetchall() == [(0,)]
    assert con.execute("SELECT count(*) FROM review_items").fetchall() == [(N - 1,)]
    con.close()
    _assert_equals_reference(ws)

    # b (not active, not rescored yet) is still stale: found when it is used or compared
    out = _refused("compare", "-w", ws, "a", "b", "--out", tmp_path / "cmp")
    assert "classification 'b'" in out and "--name b" in out
    out = _refused("filter", "-w", ws, "--classification", "b", "--min-prob", "0", "--out", tmp_path / "b.csv")
    assert "1 item changed since classification 'b' was scored" in out
    assert "classification 'b'" in _refused("classify", "-w", ws, "--use", "b")
    assert "older than the vectors" in _view_error(ws, "predictions_of('b')")
    # ... while a reads on
    assert "older than the vectors" not in _view_error(ws, "predictions_of('a')")
    classify(ws, labels, "raw", tiny_encoder, name="b", logit_scale=60.0)
    out = run_cli("compare", "-w", ws, "a", "b", "--out", tmp_path / "cmp").output
    con = open_db(str(ws / "curate.duckdb"))
    assert con.execute("SELECT count(*) FROM predictions_of('b') WHERE id = ?", [gone]).fetchall() == [(0,)]
    con.close()


def test_search_labels_refuse_stale_scores(base, tmp_path, tiny_encoder):
    from curate.classify.state import NotReady
    from curate.select import search

    src, ws, labels = _copy(base, tmp_path)
    _edit(src / "img_002.jpg", 900)
    run_cli("build-index", src, "-w", ws, *TINY)
    with pytest.raises(NotReady, match="1 item changed since classification 'a' was scored"):
        search.search(ws, "a kitchen", encoder=tiny_encoder)
    classify(ws, labels, "natural", tiny_encoder, name="a", logit_scale=60.0)
    classify(ws, labels, "raw", tiny_encoder, name="b", logit_scale=60.0)
    hits = search.search(ws, "a kitchen", encoder=tiny_encoder)
    assert hits and all(h.label is not None for h in hits)


# ---------------------------------------------------------------- a kill while rescoring

def _re_embed(root: Path, ids: np.ndarray, seed: int) -> None:
    """What build-index does for changed files, through the store: the items' vectors taken out
    of their shards (rewritten), new vectors committed in a new shard by a later run."""
    ws = Workspace(root)
    con = ws.connect()
    store.drop_items(ws, con, ids)
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((len(ids), DIM))
    v = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
    store.commit_shards(ws, con, 7, {"image": (ids, v), "caption": (ids[::2], v[::2][:, ::-1].copy())})
    con.close()


@pytest.mark.slow
def test_killed_rescoring_resumes_to_the_uninterrupted_rescoring(tmp_path):
    labels = label_file(tmp_path / "labels.csv", 16)
    a = tmp_path / "a"
    img, _cap = make_workspace(a, labels, 6_000, image_shard=700, caption_shard=900)
    args = ["classify", "--set", str(labels), "--storage", "topk", "--top-k", "3", "--batch-rows", "100"]
    run_cli(*args, "-w", a)
    changed = np.sort(np.random.default_rng(3).choice(img[:-200], 900, replace=False))
    _re_embed(a, changed, 11)
    add_vectors(a, "image", np.arange(20_000, 20_050, dtype=np.int64), 25, 12)   # and new items
    b, c = tmp_path / "b", tmp_path / "c"
    shutil.copytree(a, b)
    shutil.copytree(a, c)

    kill_classify_after(3, [*args, "-w", str(a)])
    # killed while rescoring: the published scores are the old ones, still refused as stale
    assert one(a, "SELECT rescore, last_id FROM next_score_progress")[0] is True
    assert "older than the vectors" in _view_error(a, "predictions")
    out = run_cli(*args, "-w", a).output
    assert "resuming after item id" in out and "continued earlier scores" in out
    assert "900 items re-embedded since" in out and "50 items embedded since" in out

    run_cli(*args, "-w", b)                       # the same rescoring, never stopped
    assert_same_tables(a, b)                      # bit for bit
    run_cli(*args, "--restart", "-w", c)          # everything from scratch
    assert_close_tables(a, c)
    assert one(a, "SELECT count(*) FROM item_scores")[0] == one(c, "SELECT count(*) FROM item_scores")[0]
