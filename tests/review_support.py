"""Test helpers for the validation stage (sample / review / report / calibration).

`fake_workspace` builds a real DuckDB workspace with items (real JPEG files) and a real
classification whose scores a test chooses (classify_by_hand: the registry, the tables of
queries/scores_tables.sql, the views classify installs). It stands in for build-index +
classify where a test needs predictions it chooses itself (exact frequencies, probabilities
in exact bins); the end-to-end test in test_report_pipeline.py goes through the real pipeline.
"""

from __future__ import annotations

import csv
from pathlib import Path

from PIL import Image

from curate.classify import registry
from curate.classify.scoring import ENSEMBLE_TEXT_MIN, ENSEMBLE_TEXT_WEIGHT
from curate.core import sql
from curate.core.workspace import Workspace

# The study's section 5 (Table 2 and the threshold table), for tests that reproduce it.
STUDY_CLASSES = [  # class, frequency in the 100K, accuracy in the 1K sample (%)
    ("skyscraper", 7410, 96), ("clothing store", 4681, 43), ("art gallery", 4329, 53),
    ("beauty salon", 3879, 24), ("hospital", 3806, 0), ("shower", 2729, 6),
    ("crosswalk", 2599, 63), ("gift shop", 2155, 45), ("bakery shop", 2003, 36),
    ("bridge", 1763, 94),
]
STUDY_KEPT = [1000, 999, 967, 887, 772, 644, 507, 371, 264, 158, 0]
STUDY_HITS = [460, 460, 455, 442, 396, 335, 270, 194, 137, 89, 0]
STUDY_ERRORS = [540, 539, 512, 445, 376, 309, 237, 177, 127, 69, 0]
# As printed in the study (4 decimals, truncated); None where it printed nothing.
STUDY_HIT_RATE = ["1", "1", "0.9891", "0.9608", "0.8608", "0.7282", "0.5869", "0.4217", "0.2978", "0.1934", "0"]
STUDY_ERROR_RATE = ["1", "0.9981", "0.9481", "0.8240", "0.6962", "0.5722", "0.4388", "0.3277", "0.2351", "0.1277", "0"]
STUDY_RATIO = ["1", "1.0018", "1.0432", "1.1659", "1.2363", "1.2726", "1.3373", "1.2866", "1.2663", "1.5141", None]
STUDY_MEAN_HIT, STUDY_MEAN_MISS = 0.6579, 0.5676


def write_jpeg(path: Path, seed: int, size: tuple[int, int] = (96, 72)) -> Path:
    """A small real JPEG with a colour of its own (so grids and screenshots show something)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    r, g, b = (seed * 67) % 256, (seed * 131 + 80) % 256, (seed * 29 + 160) % 256
    im = Image.new("RGB", size, (r, g, b))
    # a diagonal band, so that orientation and scaling are visible
    for x in range(size[0]):
        for y in range(max(0, x // 2 - 6), min(size[1], x // 2 + 6)):
            im.putpixel((x, y), (255 - r, 255 - g, 255 - b))
    im.save(path, "JPEG", quality=85)
    return path


def fake_workspace(root: Path, predictions: list[tuple[int, str, float]], captions: dict[int, str] | None = None,
                   images: bool = True, ensemble: list[tuple[int, str, float]] | None = None, *,
                   runner_up: dict[int, tuple[str, float]] | None = None, n_labels: int | None = None,
                   classified: bool = True) -> Workspace:
    """A workspace whose image `predictions` (and `ensemble`) are the given (id, label, prob).

    The scores are a real classification (classify_by_hand): the views the commands read are
    the real ones. Images are written only for ids that a test may show (all of them when
    `images`). `classified=False`: the items only, as build-index leaves them.
    """
    ws = Workspace(root)
    captions = captions or {}
    img_dir = root / "photos"
    rows = []
    for item_id, _label, _p in predictions:
        path = img_dir / f"{item_id:06d}.jpg"
        if images:
            write_jpeg(path, item_id)
        rows.append((item_id, f"src-{item_id}", str(path), captions.get(item_id, f"caption of {item_id}"), "embedded"))
    with ws.writing(create=True) as con:
        # bulk inserts through a registered relation: executemany is slow row by row
        _bulk(con, "INSERT INTO items (id, source_id, path, caption, status) SELECT * FROM src",
              ["id", "source_id", "path", "caption", "status"], rows)
        if classified:
            classify_by_hand(con, predictions, ensemble, runner_up, n_labels)
    return ws


def copy_workspace(template: Path, root: Path) -> Workspace:
    """A copy at `root` of a workspace a module made once (fake_workspace, then whatever its
    fixture drew), as if it had been made there: its items' paths (its own photos/) point
    into the copy. Copying is ~0.01 s where fake_workspace takes ~0.3 s."""
    import shutil

    import duckdb

    shutil.copytree(template, root)
    con = duckdb.connect(str(root / "curate.duckdb"))
    try:
        con.execute("UPDATE items SET path = replace(path, ?, ?)", [str(template), str(root)])
    finally:
        con.close()
    return Workspace(root)


BY_HAND = "by-hand"


def classify_by_hand(con, predictions: list[tuple[int, str, float]],
                     ensemble: list[tuple[int, str, float]] | None = None,
                     runner_up: dict[int, tuple[str, float]] | None = None, n_labels: int | None = None) -> None:
    """Publish a classification named BY_HAND whose image top label and probability are the
    given ones, as `curate classify` publishes its own: registered, its tables made by
    queries/scores_tables.sql in its schema (storage topk, k = 2), its views installed,
    active. Each item's runner-up is `runner_up[id]` (default: the label 'other' with
    (1 - prob) / 2); the label set is every label named, padded with fillers to `n_labels`.
    """
    import numpy as np

    runner_up = runner_up or {i: ("other", (1 - p) / 2) for i, _l, p in predictions}
    ens = {i: (label, p) for i, label, p in ensemble or []}
    names = list(dict.fromkeys([label for _i, label, _p in predictions] + [label for label, _p in ens.values()]
                               + [label for label, _p in runner_up.values()]))
    names += [f"filler {k}" for k in range(max(0, (n_labels or 0) - len(names)))]
    idx = {label: k for k, label in enumerate(names)}
    n = len(names)
    registry.register(con, BY_HAND, label_set=BY_HAND, prompts=BY_HAND, model="curate-tiny", logit_scale=100.0,
                      storage="topk")
    with sql.search_path(con, f"{registry.schema(BY_HAND)},main"):
        sql.run(con, "scores_tables")
        _bulk(con, "INSERT INTO labels SELECT idx, label, label, [label], 'unknown' FROM src", ["idx", "label"],
              list(enumerate(names)))
        rows = []
        for i, label, p in predictions:
            label2, p2 = runner_up[i]
            rest = max(0.0, 1 - p - p2) / (n - 2) if n > 2 else 0.0
            e_label, e_p = ens.get(i, (None, None))
            rows.append((i, idx[label], p, idx[label2], p2, rest,
                         None if e_label is None else idx[e_label], e_p,
                         None if e_label is None else idx[label2], None if e_p is None else (1 - e_p) / 2))
        _bulk(con, "INSERT INTO item_scores (id, image_label, image_prob, image_label2, image_prob2, image_rest, "
                   "ensemble_label, ensemble_prob, ensemble_label2, ensemble_prob2, ensemble_caption_used) "
                   "SELECT *, false FROM src",
              ["id", "l1", "p1", "l2", "p2", "rest", "el1", "ep1", "el2", "ep2"], rows)
        pairs = [(i, idx[label], p) for i, label, p in predictions] + \
                [(i, idx[runner_up[i][0]], runner_up[i][1]) for i, _l, _p in predictions]
        _bulk(con, "INSERT INTO label_scores (id, label_idx, image_prob) SELECT * FROM src", ["id", "l", "p"], pairs)
        con.execute("INSERT INTO score_settings (label_set, label_set_digest, prompts, model, pretrained, embed_dim, "
                    "logit_scale, storage, top_k, n_labels, images, captions, cache_key, ensemble_text_weight, "
                    "ensemble_text_min) VALUES (?, '', ?, 'curate-tiny', 'none', 0, 100.0, 'topk', 2, ?, ?, 0, '', "
                    "?, ?)", [BY_HAND, BY_HAND, n, len(predictions), ENSEMBLE_TEXT_WEIGHT, ENSEMBLE_TEXT_MIN])
        con.execute("INSERT INTO score_progress (fingerprint, last_id, images, captions, image_id_sum, "
                    "caption_id_sum, finished) VALUES ('{}', ?, ?, 0, 0, 0, true)",
                    [int(np.max([i for i, _l, _p in predictions])) if predictions else None, len(predictions)])
    with sql.transaction(con):
        registry.completed(con, BY_HAND)


def _bulk(con, sql: str, columns: list[str], rows: list[tuple]) -> None:
    import numpy as np

    con.register("src", {c: np.array([r[k] for r in rows], dtype=object if isinstance(rows[0][k], str) else None)
                         for k, c in enumerate(columns)})
    con.execute(sql)
    con.unregister("src")


def study_marks() -> list[tuple[str, float, str]]:
    """1000 (label, prob, mark) rows with exactly the study's counts and means.

    Hits and errors are placed in the probability bins [t, t + 0.1) that give the study's
    threshold table; inside each bin they sit at the bin's start plus one offset, chosen so
    that the mean top probability of hits is 0.6579 and of misses 0.5676 (plus 1e-6, so
    the mean is not a hair below the printed value). Hits are spread over the classes so
    that each class has the study's accuracy (100 images per class).
    """
    def per_bin(kept: list[int]) -> list[int]:
        return [kept[b] - kept[b + 1] for b in range(10)]

    out: list[tuple[str, float, str]] = []
    for mark, kept, mean in (("hit", STUDY_HITS, STUDY_MEAN_HIT), ("miss", STUDY_ERRORS, STUDY_MEAN_MISS)):
        counts = per_bin(kept)
        n = kept[0]
        lows = sum(c * b / 10 for b, c in enumerate(counts))
        offset = (mean * n + 1e-6 * n - lows) / n
        assert 0 <= offset < 0.1
        for b, c in enumerate(counts):
            out += [("", b / 10 + offset, mark)] * c
    # Give each class its number of hits (accuracy% of 100) and fill the rest with misses.
    hits = [r for r in out if r[2] == "hit"]
    misses = [r for r in out if r[2] == "miss"]
    labelled = []
    for cls, _freq, acc in STUDY_CLASSES:
        labelled += [(cls, p, m) for _, p, m in hits[:acc]]
        hits = hits[acc:]
        labelled += [(cls, p, m) for _, p, m in misses[:100 - acc]]
        misses = misses[100 - acc:]
    assert not hits and not misses
    return labelled


def write_marks_csv(path: Path, rows: list[tuple[str, float, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["label", "prob", "mark"])
        for label, p, m in rows:
            w.writerow([label, repr(p), m])
    return path
