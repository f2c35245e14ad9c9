"""The report's pictures: matplotlib plots (Agg, no display), the calibration's reliability
diagram, and per-class image grids.

Plots are drawn on figures of their own (matplotlib.figure.Figure on an Agg canvas), not
pyplot's: nothing global to close, and nothing left behind in pyplot's registry when a
drawing fails. bench/bench_report_figures.py times them.

Grids are drawn with Pillow: one PNG of hits and one of misses per class, each tile
a thumbnail with its top probability, so a reader sees at a glance what the model
confuses (the study's Figure 2).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont, ImageOps

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from ..classify.calibrated import Calibration
    from .report import Marked, Report, SourceReport

TILE = 128
COLUMNS = 6
HIT_COLOUR = (26, 127, 55)
MISS_COLOUR = (198, 40, 40)
DPI = 110


def figure(width: float, height: float) -> Figure:
    """A figure of `width` x `height` inches at the PNG's resolution, on its own Agg canvas:
    tight_layout then measures the text with the renderer that savefig draws with, which
    reuses those measures (at another dpi, or on another canvas, every label is measured
    again for the PNG)."""
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: Path, ax: Axes | None = None) -> Path:
    """The common ending of every plot: grid and legend on `ax`, then the PNG."""
    if ax is not None:
        ax.grid(alpha=.3)
        ax.legend()
    fig.tight_layout()
    # tight_layout leaves a placeholder layout engine behind, and savefig draws a figure that
    # has an engine twice (the first draw to lay it out); the layout is done, one draw is enough
    fig.set_layout_engine(None)
    # zlib level 3, not 6: the same pixels, encoded in 55-65% of the time (encoding was about
    # a sixth of a plot's time) for files 2-9% larger
    fig.savefig(path, dpi=DPI, pil_kwargs={"compress_level": 3})
    return path


def plots(report: Report, out: Path) -> list[Path]:
    """rates.png (hit/error rate and ratio against threshold), coverage.png, class_accuracy.png."""
    files = [_rates(report, out / "rates.png"), _class_accuracy(report.main, out / "class_accuracy.png")]
    if report.coverage:
        files.append(_coverage(report.coverage, out / "coverage.png"))
    if report.calibration is not None:
        p = calibration_plot(report.calibration, out / "calibration.png")
        if p is not None:
            files.append(p)
    return files


def _rates(report: Report, path: Path) -> Path:
    fig = figure(11, 4.2)
    ax, ax2 = fig.subplots(1, 2)
    styles = ["-", "--", ":"]
    for sr, ls in zip([report.main, *report.others], styles, strict=False):
        t = [r.threshold for r in sr.thresholds]
        for attr, marker, colour, name in (("hit_rate", "o", "tab:green", "hit rate"),
                                           ("error_rate", "s", "tab:red", "error rate")):
            ax.plot(t, [getattr(r, attr) or 0 for r in sr.thresholds], ls, marker=marker, color=colour,
                    label=f"{name} ({sr.source})")
            band = [(r.threshold, getattr(r, attr + "_ci")) for r in sr.thresholds
                    if getattr(r, attr + "_ci").low is not None]
            ax.fill_between([x for x, _ in band], [e.low for _, e in band], [e.high for _, e in band],
                            color=colour, alpha=.15, linewidth=0)
        ratio = [(r.threshold, r.ratio, r.ratio_ci) for r in sr.thresholds if r.ratio is not None]
        ax2.plot([x for x, _, _ in ratio], [y for _, y, _ in ratio], ls, marker="o", color="tab:blue",
                 label=f"ratio ({sr.source})")
        band = [(x, e) for x, _, e in ratio if e.low is not None and e.high is not None]
        ax2.fill_between([x for x, _ in band], [e.low for _, e in band], [e.high for _, e in band],
                         color="tab:blue", alpha=.15, linewidth=0)
        if sr.best.threshold is not None:
            ax2.axvline(sr.best.threshold, color="tab:blue", alpha=.3, linestyle=ls)
    ax.set(xlabel="threshold on top probability", ylabel="share of the sample's hits / errors kept",
           title=f"Hit and error rate by threshold ({report.main.level:.0%} bands)", xlim=(0, 1), ylim=(0, 1.02))
    ax2.set(xlabel="threshold on top probability", ylabel="hit rate / error rate",
            title="Ratio (vertical line: best threshold)", xlim=(0, 1))
    for a in (ax, ax2):
        a.grid(alpha=.3)
        a.legend(fontsize=8)
    return save(fig, path)


def _coverage(cov: dict[str, list[tuple[float, int, float]]], path: Path) -> Path:
    fig = figure(6, 4)
    ax = fig.subplots()
    for source, rows in cov.items():
        ax.plot([t for t, _, _ in rows], [100 * s for _, _, s in rows], marker="o", label=source)
    ax.set(xlabel="threshold on top probability", ylabel="% of the collection classified",
           title="Coverage by threshold", xlim=(0, 1), ylim=(0, 102))
    return save(fig, path, ax)


def _class_accuracy(sr: SourceReport, path: Path) -> Path:
    """Bars with the interval as error bars; only classes with marks (the others have no bar).
    The figure's height has a floor: a class or two still leave room for the title and the
    axis label (below it tight_layout cannot fit them, warns, and clips the title)."""
    classes = [c for c in sr.classes if c.accuracy is not None][::-1]
    fig = figure(7, 1.6 + 0.35 * max(len(classes), 1))
    ax = fig.subplots()
    acc = np.array([100 * c.accuracy for c in classes])
    low = np.array([100 * (c.accuracy_ci.low if c.accuracy_ci.low is not None else c.accuracy) for c in classes])
    high = np.array([100 * (c.accuracy_ci.high if c.accuracy_ci.high is not None else c.accuracy)
                     for c in classes])
    ax.barh(range(len(acc)), acc, color="tab:green", xerr=np.vstack([acc - low, high - acc]) if len(acc) else None,
            error_kw={"ecolor": "#333", "capsize": 3, "linewidth": 1})
    ax.set_yticks(range(len(acc)), [c.label for c in classes])
    for i, (a, h) in enumerate(zip(acc, high, strict=True)):
        ax.text(h + 1.5, i, f"{a:.0f}%", va="center", fontsize=8)
    ax.set(xlabel=f"accuracy in the sample (%), with its {sr.level:.0%} interval", xlim=(0, 115),
           title=f"Accuracy per class ({sr.source})")
    if not len(acc):
        ax.text(55, 0, "no marks yet", ha="center", va="center", color="#777")
    return save(fig, path)


def grids(sr: SourceReport, out: Path, per_grid: int = 24) -> dict[str, tuple[Path, Path]]:
    """label -> (hits grid, misses grid); only for marks that know their image files."""
    if not any(m.path for m in sr.marks):
        return {}
    out.mkdir(parents=True, exist_ok=True)
    by_mark: dict[tuple[str, str | None], list[Marked]] = {}
    for m in sr.marks:   # one pass: a search of every mark for each class and mark is classes x marks
        by_mark.setdefault((m.label, m.mark), []).append(m)
    result = {}
    for rank, c in enumerate(sr.classes, start=1):
        if c.hits + c.misses == 0:   # nothing marked: no grids (two empty "none" tiles said nothing)
            continue
        base = f"{rank:02d}-{slug(c.label)}"
        pair = []
        for mark, colour in (("hit", HIT_COLOUR), ("miss", MISS_COLOUR)):
            chosen = by_mark.get((c.label, mark), [])[:per_grid]
            path = out / f"{base}-{mark}es.png" if mark == "miss" else out / f"{base}-{mark}s.png"
            _grid(chosen, colour, f"{c.label}: {mark}es" if mark == "miss" else f"{c.label}: {mark}s", path)
            pair.append(path)
        result[c.label] = (pair[0], pair[1])
    return result


def _grid(marks: Sequence[Marked], colour: tuple[int, int, int], title: str, path: Path) -> None:
    font = ImageFont.load_default()
    n = max(len(marks), 1)
    cols = min(COLUMNS, n)
    rows = (n + cols - 1) // cols if marks else 0   # none: the title band alone, not an empty tile
    head = 22
    sheet = Image.new("RGB", (cols * TILE, head + rows * TILE), (250, 250, 250))
    draw = ImageDraw.Draw(sheet)
    draw.text((6, 5), f"{title} ({len(marks)})" if marks else f"{title}: none", fill=colour, font=font)
    for i, m in enumerate(marks):
        x, y = (i % cols) * TILE, head + (i // cols) * TILE
        tile = _thumb(m.path)
        sheet.paste(tile, (x + 2, y + 2))
        draw.rectangle([x + 1, y + 1, x + TILE - 2, y + TILE - 2], outline=colour, width=2)
        draw.rectangle([x + 3, y + TILE - 16, x + 46, y + TILE - 4], fill=(0, 0, 0))
        draw.text((x + 5, y + TILE - 16), f"{m.prob:.3f}", fill=(255, 255, 255), font=font)
    # zlib's default level: optimize (level 9) took a third longer for files 0.2% smaller
    # (photo tiles barely compress)
    sheet.save(path, "PNG")


def _thumb(path: str | None) -> Image.Image:
    size = TILE - 4
    try:
        with Image.open(path) as im:
            im.draft("RGB", (size * 2, size * 2))  # JPEG: decode at reduced scale, much faster
            im = ImageOps.exif_transpose(im).convert("RGB")
            return ImageOps.fit(im, (size, size))
    except (OSError, ValueError, TypeError):
        tile = Image.new("RGB", (size, size), (220, 220, 220))
        ImageDraw.Draw(tile).text((8, size // 2 - 6), "image missing", fill=(90, 90, 90))
        return tile


def calibration_plot(cal: Calibration, path: Path) -> Path | None:
    """Reliability diagram: share of hits against (raw, calibrated) top probability."""
    if cal.raw is None:
        return None
    fig = figure(5.5, 4.5)
    ax = fig.subplots()
    edges = np.linspace(0, 1, 11)
    for values, name, colour in ((cal.raw, "raw", "tab:gray"), (cal.calibrated, f"T = {cal.temperature:.3g}",
                                                                   "tab:blue")):
        b = np.clip(np.digitize(values, edges) - 1, 0, 9)
        xs, ys = [], []
        for k in range(10):
            sel = b == k
            if sel.sum():
                xs.append(values[sel].mean())
                ys.append(cal.hits[sel].mean())
        ax.plot(xs, ys, marker="o", color=colour, label=name)
    ax.plot([0, 1], [0, 1], color="black", alpha=.3, linestyle=":")
    ax.set(xlabel="top probability (bin mean)", ylabel="share of hits", xlim=(0, 1), ylim=(0, 1),
           title="Reliability on the marks")
    return save(fig, path, ax)


def slug(label: str) -> str:
    """A file-name-safe form of a label ('cathedral/outdoor' -> 'cathedral-outdoor')."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-.")
    return s[:60] or "label"
