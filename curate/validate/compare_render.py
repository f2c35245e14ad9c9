"""A comparison written out: coverage, agreement, classes and marks as CSV, the coverage
curves as a PNG, one HTML page, and the few lines the terminal shows."""

from __future__ import annotations

import csv
import html
from collections.abc import Sequence
from pathlib import Path

from ..core.output_folder import replace_folder
from .compare import Comparison
from .report import fmt4, fmt_t, pct
from .report_render import MODEL_CSS, model_html


def _csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _num(x: float | None) -> str:
    """A share as a CSV cell: full precision (the page and terminal round), empty for none."""
    return "" if x is None else repr(float(x))


def coverage_table(cmp: Comparison, kind: str) -> tuple[list[str], list[list[str]]]:
    """Table 1 side by side: per threshold, each classification's share and count."""
    header = ["threshold"] + [f"{n}_{c}" for n in cmp.names for c in ("share", "classified")]
    per = cmp.coverage[kind]
    rows = []
    for i, first in enumerate(per[cmp.names[0]]):
        row = [fmt_t(first.threshold)]
        for n in cmp.names:
            r = per[n][i]
            row += [_num(r.share), str(r.classified)]
        rows.append(row)
    return header, rows


AGREEMENT_COLUMNS = ("kind", "a", "b", "images", "same_top", "share_same", "both_classified",
                     "same_top_classified", "share_same_classified", "most_changed")


def agreement_rows(cmp: Comparison) -> list[list[str]]:
    return [[g.kind, g.a, g.b, str(g.images), str(g.same_top), _num(g.share_same), str(g.both_classified),
             str(g.same_top_classified), _num(g.share_same_classified),
             "; ".join(f"{f} -> {t} ({n})" for f, t, n in g.changes)] for g in cmp.agreement]


def write(cmp: Comparison, out: str | Path) -> list[Path]:
    """Write the comparison as the folder `out` (replacing an earlier one); returns its files."""
    return replace_folder(out, lambda new: _write_into(cmp, new), "comparison")


def _write_into(cmp: Comparison, out: Path) -> list[Path]:
    files = []
    for kind in cmp.kinds:
        name = "coverage.csv" if kind == "image" else f"coverage_{kind}.csv"
        files.append(_csv(out / name, *coverage_table(cmp, kind)))
    files.append(_csv(out / "agreement.csv", AGREEMENT_COLUMNS, agreement_rows(cmp)))
    files.append(_csv(out / "classes.csv", ["label", *cmp.names],
                      [[label, *("" if n is None else str(n) for n in counts)] for label, counts in cmp.classes]))
    if cmp.marks:
        files.append(_csv(out / "marks.csv", ("classification", "kind", "marked", "hits", "misses", "hit_rate"),
                          [[m.name, m.kind, str(m.marked), str(m.hits), str(m.misses), _num(m.hit_rate)]
                           for m in cmp.marks]))
    figure = _plot(cmp, out / "coverage.png")
    files.append(figure)
    (out / "index.html").write_text(render_html(cmp, figure.name), encoding="utf-8")
    files.append(out / "index.html")
    return files


def _plot(cmp: Comparison, path: Path) -> Path:
    from . import report_figures  # matplotlib: only when a picture is drawn

    fig = report_figures.figure(5.2 * len(cmp.kinds), 4)
    axes = fig.subplots(1, len(cmp.kinds), squeeze=False)
    for ax, kind in zip(axes[0], cmp.kinds, strict=True):
        for name in cmp.names:
            rows = cmp.coverage[kind][name]
            ax.plot([r.threshold for r in rows], [100 * (r.share or 0) for r in rows], marker="o", label=name)
        ax.set(xlabel="threshold on top probability", ylabel="% classified", title=f"Coverage ({kind})",
               xlim=(0, 1), ylim=(0, 102))
        ax.grid(alpha=.3)
        ax.legend(fontsize=8)
    return report_figures.save(fig, path)


def summary_lines(cmp: Comparison) -> list[str]:
    """What the terminal shows: coverage at the working threshold, agreement, marks."""
    t = cmp.min_prob
    lines = []
    for kind in cmp.kinds:
        cells = []
        for name in cmp.names:
            row = next((r for r in cmp.coverage[kind][name] if abs(r.threshold - t) < 1e-9), None)
            if row is not None:
                cells.append(f"{name} {pct(row.share)} ({row.classified:,} of {row.images:,})")
        if cells:
            lines.append(f"{kind}: classified at p >= {t:g}: " + ", ".join(cells))
    for g in cmp.agreement:
        among = (f"{pct(g.share_same_classified)} of the {g.both_classified:,} both classify at {t:g}"
                 if g.both_classified else f"no image both classify at {t:g}")
        lines.append(f"{g.kind}: {g.a} vs {g.b}: same top label for {pct(g.share_same) or 'n/a'} of "
                     f"{g.images:,} images, {among}")
    for m in cmp.marks:
        lines.append(f"{m.kind}: {m.name}: hit rate {pct(m.hit_rate) or 'n/a'} on {m.marked:,} marked pairs it predicts")
    return lines


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(cmp: Comparison, figure: str) -> str:
    names = ", ".join(cmp.names)
    parts = [f"<h1>Classifications compared: {html.escape(names)}</h1>", model_html(cmp.model),
             _table(("classification", "label set", "prompts", "model", "logit scale", "images", "captions"),
                    [(c.name, c.label_set, c.prompts, c.model, f"{c.logit_scale:g}", f"{c.images:,}",
                      f"{c.captions:,}") for c in cmp.classifications]),
             "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in summary_lines(cmp)) + "</ul>",
             f'<img src="{html.escape(figure)}" alt="coverage by threshold, side by side">']
    for kind in cmp.kinds:
        header, rows = coverage_table(cmp, kind)
        shown = [[r[0], *(fmt4(float(c)) if c and i % 2 == 0 else c for i, c in enumerate(r[1:]))] for r in rows]
        parts += [f"<h2>Coverage ({html.escape(kind)}): share of images whose top probability reaches the "
                  "threshold</h2>", _table(header, shown)]
    parts += ["<h2>Agreement</h2>",
              _table(AGREEMENT_COLUMNS, [[*r[:5], fmt4(g.share_same), r[6], r[7], fmt4(g.share_same_classified), r[9]]
                                         for r, g in zip(agreement_rows(cmp), cmp.agreement, strict=True)])]
    if cmp.marks:
        parts += ["<h2>Hit rate on the marked pairs each predicts</h2>",
                  _table(("classification", "kind", "marked", "hits", "misses", "hit rate"),
                         [(m.name, m.kind, m.marked, m.hits, m.misses, fmt4(m.hit_rate)) for m in cmp.marks])]
    parts += [f"<h2>Images classified at p &ge; {cmp.min_prob:g}, per label (by the image)</h2>",
              _table(["label", *cmp.names], [[label, *("" if n is None else n for n in counts)]
                                             for label, counts in cmp.classes])]
    style = ("body{font-family:sans-serif;margin:2em;max-width:80em}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}td:first-child{text-align:left}"
             f"img{{max-width:100%}}{MODEL_CSS}")
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>curate compare</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")
