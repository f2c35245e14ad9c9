"""Test helpers for the validation stage (sample / review / report / calibration).

`fake_workspace` builds a real DuckDB workspace with items (real JPEG files) and a
`predictions` TABLE with the exact columns `curate classify` gives its views. It stands
in for build-index + classify where a test needs predictions it chooses itself (exact
frequencies, probabilities in exact bins); the end-to-end test in test_report_pipeline.py
goes through the real pipeline.
"""

from __future__ import annotations

import csv
from pathlib import Path

from PIL import Image

from curate.core import sql
from curate.core.workspace import Workspace

PREDICTION_COLUMNS = "id BIGINT, label VARCHAR, prob DOUBLE, label2 VARCHAR, prob2 DOUBLE, margin DOUBLE"

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
                   images: bool = True, ensemble: list[tuple[int, str, float]] | None = None) -> Workspace:
    """A workspace whose `predictions` (and optionally `ensemble`) are the given (id, label, prob).

    Images are written only for ids that a test may show (all of them when `images`).
    """
    ws = Workspace(root)
    con = ws.connect()
    captions = captions or {}
    img_dir = root / "photos"
    rows = []
    for item_id, _label, _p in predictions:
        path = img_dir / f"{item_id:06d}.jpg"
        if images:
            write_jpeg(path, item_id)
        rows.append((item_id, f"src-{item_id}", str(path), captions.get(item_id, f"caption of {item_id}"), "embedded"))
    # bulk inserts through a registered relation: executemany is slow row by row
    _bulk(con, "INSERT INTO items (id, source_id, path, caption, status) SELECT * FROM src",
          ["id", "source_id", "path", "caption", "status"], rows)
    for table, preds in (("predictions", predictions), ("ensemble", ensemble)):
        if preds is None:
            continue
        con.execute(f"CREATE TABLE {table} ({PREDICTION_COLUMNS})")
        _bulk(con, f"INSERT INTO {table} SELECT id, label, prob, 'other', (1 - prob) / 2, prob - (1 - prob) / 2"
                   " FROM src", ["id", "label", "prob"], preds)
    sql.run(con, "coverage")   # Table 1's macros, as classify installs them
    con.close()
    return ws


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
