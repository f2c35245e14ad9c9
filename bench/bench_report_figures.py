"""The report's pictures: milliseconds per matplotlib figure, per report's figures, per image grid.

    python bench/bench_report_figures.py [--repeat 5] [--classes 205] [--marks 4000]

Two synthetic reports made as `curate report` makes them (report.analyse on marks):

- large: `--classes` classes with Places365-like labels ("cathedral/outdoor"), `--marks`
  marked items spread over them, an ensemble set beside the image one (the rates plot
  draws both), coverage for three kinds of prediction and a calibration (reliability plot).
- small: five classes, 200 marks, the same extras.

Each figure function is timed `--repeat` times after one untimed warm-up that loads fonts
and caches, then `report_figures.plots` whole (the figures of one report), then the image
grids of the small report (`report_figures.grids`, its marks pointing at synthetic 640x480
JPEGs). The figure is the fastest run's CPU time of this process (cores are often shared:
the fastest run is the one least disturbed), its wall time beside it. The PNGs and JPEGs go
to a temporary folder removed at the end (`--keep DIR` copies the PNGs there to look at).
JSON lines to bench/results/report_figures.jsonl, with the load average.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record, synthetic_picture  # noqa: E402

from curate.classify.calibrated import Calibration  # noqa: E402
from curate.validate import report, report_figures  # noqa: E402
from curate.validate.report import Marked, Report  # noqa: E402

OUT = "report_figures.jsonl"
WORDS = ("abbey", "airfield", "alley", "amphitheater", "apartment_building", "aquarium", "arcade", "archive",
         "art_gallery", "assembly_line", "attic", "auditorium", "badlands", "bakery", "ballroom", "bamboo_forest",
         "banquet_hall", "bazaar", "beach", "bedroom", "boardwalk", "boathouse", "bookstore", "bridge",
         "butte", "campsite", "canyon", "castle", "cathedral", "church", "classroom", "cliff", "courtyard")
KINDS = ("outdoor", "indoor", "public", "exterior", "interior", "shop", "water")


def labels(n: int) -> list[str]:
    """n distinct labels, some "name/kind" as Places365 writes them, of 4 to ~30 characters."""
    out: list[str] = []
    for i in range(n):
        w = WORDS[i % len(WORDS)]
        k = i // len(WORDS)
        out.append(w if k == 0 else f"{w}/{KINDS[(k - 1) % len(KINDS)]}" if k <= len(KINDS) else f"{w}_{k}")
    return out


def marks_for(names: list[str], n: int, rng: np.random.Generator) -> list[Marked]:
    out = []
    for i in range(n):
        label = names[i % len(names)]
        p = float(rng.uniform(0.2, 1.0))
        hit = rng.random() < 1 / (1 + np.exp(-6 * (p - 0.6)))
        mark = "skip" if rng.random() < 0.03 else ("hit" if hit else "miss")
        out.append(Marked(label, p, mark))
    return out


def make_report(n_classes: int, n_marks: int, seed: int = 0) -> Report:
    rng = np.random.default_rng(seed)
    names = labels(n_classes)
    freq = {c: int(rng.integers(200, 8000)) for c in names}
    con = duckdb.connect()
    try:
        main = report.analyse(con, "set-image", "image", marks_for(names, n_marks, rng), freq)
        other = report.analyse(con, "set-ensemble", "ensemble", marks_for(names, n_marks, rng), freq)
    finally:
        con.close()
    ts = [k / 10 for k in range(11)]
    coverage = {src: [(t, int(10_000 * (1 - t) ** k), (1 - t) ** k) for t in ts]
                for src, k in (("image", 1.0), ("caption", 1.5), ("ensemble", 0.8))}
    raw = rng.uniform(0.2, 1.0, n_marks)
    hits = (rng.random(n_marks) < raw ** 1.3).astype(float)
    cal = Calibration(1.4, "image", "set-image", n_classes, 0.9, 10, 0.61, 0.57, n_marks, True,
                      raw=raw, calibrated=raw ** 1.3, hits=hits)
    return Report(main, [other], coverage, calibration=cal)


def figures(rep: Report) -> dict[str, object]:
    """name -> a call drawing that figure into a folder."""
    return {"rates": lambda d: report_figures._rates(rep, d / "rates.png"),
            "class_accuracy": lambda d: report_figures._class_accuracy(rep.main, d / "class_accuracy.png"),
            "coverage": lambda d: report_figures._coverage(rep.coverage, d / "coverage.png"),
            "calibration": lambda d: report_figures.calibration_plot(rep.calibration, d / "calibration.png"),
            "plots": lambda d: report_figures.plots(rep, d)}


def with_pictures(rep: Report, folder: Path, n: int = 40) -> Report:
    """`rep` with its marks pointing at `n` synthetic JPEGs (the grids' tiles)."""
    paths = []
    for i in range(n):
        paths.append(folder / f"{i}.jpg")
        Image.fromarray(synthetic_picture((640, 480), i)).save(paths[-1], quality=90)
    marks = [dataclasses.replace(m, path=str(paths[i % n])) for i, m in enumerate(rep.main.marks)]
    return dataclasses.replace(rep, main=dataclasses.replace(rep.main, marks=marks))


def timed(call, folder: Path, repeat: int) -> tuple[float, float]:
    """(CPU ms, wall ms) of the fastest of `repeat` runs, after a warm-up (fonts, glyph caches)."""
    call(folder)
    runs = []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        call(folder)
        runs.append((time.process_time() - c0, time.perf_counter() - t0))
    cpu, wall = min(runs)
    return 1000 * cpu, 1000 * wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--classes", type=int, default=205)
    ap.add_argument("--marks", type=int, default=4000)
    ap.add_argument("--keep", type=Path, help="copy the PNGs here to look at them")
    ap.add_argument("--label", default="", help="a tag for this run's rows (e.g. before / after)")
    args = ap.parse_args()
    reports = {f"{args.classes} classes": make_report(args.classes, args.marks),
               "5 classes": make_report(5, 200, seed=1)}
    load = os.getloadavg()[0]
    print(f"load average {load:.2f}; curate from {Path(report_figures.__file__).parent}")

    def measure(name: str, call, folder: Path) -> None:
        cpu, wall = timed(call, folder, args.repeat)
        record(OUT, name, cpu, "ms cpu", label=args.label, wall_ms=round(wall, 1), load=round(load, 2))

    with tempfile.TemporaryDirectory(prefix="bench-figures-") as tmp:
        for title, rep in reports.items():
            folder = Path(tmp) / title.replace(" ", "-")
            folder.mkdir()
            for name, call in figures(rep).items():
                measure(f"{title} {name}", call, folder)
            if args.keep:
                shutil.copytree(folder, args.keep / folder.name, dirs_exist_ok=True)
        pictures = Path(tmp) / "jpegs"
        pictures.mkdir()
        small = with_pictures(reports["5 classes"], pictures)
        grids = Path(tmp) / "grids"
        measure("5 classes grids (10 of 20-24 tiles)", lambda d: report_figures.grids(small.main, d), grids)
        if args.keep:
            shutil.copytree(grids, args.keep / "grids", dirs_exist_ok=True)


if __name__ == "__main__":
    main()
