"""The validation report written out: the terminal's text tables, the CSV files and the HTML
page, in a report folder replaced whole (report_figures.py draws the pictures it links)."""

from __future__ import annotations

import csv
import html
import math
from collections.abc import Sequence
from pathlib import Path

from ..classify.calibrated import Calibration
from ..core.output_folder import replace_folder
from ..core.workspace import ModelIdentity
from .intervals import RESAMPLES, Estimate
from .report import (
    ClassRow,
    Report,
    SourceReport,
    ThresholdRow,
    count_ci,
    fmt4,
    fmt_t,
    num_ci,
    pct_ci,
)

# Each estimate is followed by the ends of its interval (`low`, `high`, at the report's level).
THRESHOLD_COLUMNS = ("threshold", "kept", "hits", "hit_rate", "hit_rate_low", "hit_rate_high", "errors",
                     "error_rate", "error_rate_low", "error_rate_high", "ratio", "ratio_low", "ratio_high",
                     "precision", "precision_low", "precision_high")
CLASS_COLUMNS = ("class", "frequency", "sampled", "hits", "misses", "skipped", "unmarked", "accuracy",
                 "accuracy_low", "accuracy_high", "mean_prob_hits", "mean_prob_misses",
                 "correct_in_collection", "correct_low", "correct_high")
COLLECTION_COLUMNS = ("threshold", "images", "covered", "precision", "precision_low", "precision_high",
                      "uncovered_classes")


def lo4(e: Estimate) -> str:
    """The low end with 4 decimals, rounded down (the printed interval holds the computed one)."""
    return "" if e.value is None or e.low is None else f"{math.floor(e.low * 1e4 + 1e-9) / 1e4:.4f}"


def hi4(e: Estimate) -> str:
    return "" if e.value is None or e.high is None else f"{math.ceil(e.high * 1e4 - 1e-9) / 1e4:.4f}"


def _count(x: float | None, f) -> str:
    return "" if x is None else str(int(f(x + (1e-9 if f is math.floor else -1e-9))))


# -- files out ------------------------------------------------------------------------

def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def threshold_csv_rows(rows: Sequence[ThresholdRow]) -> list[list[str]]:
    return [[fmt_t(r.threshold), str(r.kept), str(r.hits), fmt4(r.hit_rate), lo4(r.hit_rate_ci), hi4(r.hit_rate_ci),
             str(r.errors), fmt4(r.error_rate), lo4(r.error_rate_ci), hi4(r.error_rate_ci),
             fmt4(r.ratio), lo4(r.ratio_ci), hi4(r.ratio_ci),
             fmt4(r.precision), lo4(r.precision_ci), hi4(r.precision_ci)] for r in rows]


def class_csv_rows(rows: Sequence[ClassRow]) -> list[list[str]]:
    return [[c.label, "" if c.frequency is None else str(c.frequency), str(c.sampled), str(c.hits),
             str(c.misses), str(c.skipped), str(c.unmarked), fmt4(c.accuracy), lo4(c.accuracy_ci),
             hi4(c.accuracy_ci), fmt4(c.mean_prob_hits), fmt4(c.mean_prob_misses),
             "" if c.correct_ci.value is None else f"{c.correct_ci.value:.1f}",
             _count(c.correct_ci.low, math.floor), _count(c.correct_ci.high, math.ceil)] for c in rows]


def collection_rows(sr: SourceReport) -> list[list[str]]:
    return [[fmt_t(t.threshold), str(t.images), str(t.covered), fmt4(t.estimate.value), lo4(t.estimate),
             hi4(t.estimate), " ".join(t.uncovered)] for t in sr.collection]


def stability_text(sr: SourceReport) -> str:
    """'0.6: 93%, 0.5: 6%, 0.4: 1%'"""
    return ", ".join(f"{'none' if t is None else fmt_t(t)}: {100 * share:.0f}%"
                     for t, share in sr.stability.items() if share >= 0.005)


def summary_rows(sr: SourceReport) -> list[tuple[str, str]]:
    s, b = sr.summary, sr.best
    return [
        ("review_set", sr.name), ("source", sr.source), ("sampled", str(s.sampled)), ("hits", str(s.hits)),
        ("misses", str(s.misses)), ("skipped", str(s.skipped)), ("unmarked", str(s.unmarked)),
        ("level", f"{sr.level:g}"),
        ("accuracy", fmt4(s.accuracy)), ("accuracy_low", lo4(s.accuracy_ci)), ("accuracy_high", hi4(s.accuracy_ci)),
        ("mean_class_accuracy", fmt4(sr.mean_class_accuracy)), ("mean_class_accuracy_low", lo4(sr.mean_ci)),
        ("mean_class_accuracy_high", hi4(sr.mean_ci)),
        ("weighted_precision", fmt4(sr.weighted_ci.value)), ("weighted_precision_low", lo4(sr.weighted_ci)),
        ("weighted_precision_high", hi4(sr.weighted_ci)),
        ("correct_in_collection", "" if sr.correct_ci.value is None else f"{sr.correct_ci.value:.1f}"),
        ("correct_low", _count(sr.correct_ci.low, math.floor)), ("correct_high", _count(sr.correct_ci.high, math.ceil)),
        ("mean_prob_hits", fmt4(s.mean_prob_hits)), ("mean_prob_misses", fmt4(s.mean_prob_misses)),
        ("best_threshold", "" if b.threshold is None else fmt_t(b.threshold)),
        ("best_ratio", fmt4(b.ratio)), ("best_rule", b.rule),
        ("best_threshold_stability", stability_text(sr)),
        ("max_ratio_threshold", "" if b.unconstrained_threshold is None else fmt_t(b.unconstrained_threshold)),
        ("max_ratio", fmt4(b.unconstrained_ratio)),
    ]


def comparison_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """Table 3: per threshold, what each kind of prediction keeps and how precise it is."""
    srs = [report.main, *report.others]
    header = ["threshold"]
    for sr in srs:
        header += [f"{sr.source}_{c}" for c in ("kept", "precision", "hit_rate", "error_rate", "ratio")]
    rows = []
    for i, t in enumerate(report.main.thresholds):
        row = [fmt_t(t.threshold)]
        for sr in srs:
            r = sr.thresholds[i]
            row += [str(r.kept), fmt4(r.precision), fmt4(r.hit_rate), fmt4(r.error_rate), fmt4(r.ratio)]
        rows.append(row)
    return header, rows


def write(report: Report, out: str | Path, grid_size: int = 24, plots: bool = True) -> list[Path]:
    """Write the report as the folder `out`, replacing an earlier report there; returns its files
    (core.output_folder: written beside it and swapped in; a folder of foreign files is refused).
    `plots`: the PNG plots (matplotlib: most of a report's time, ~0.5 s of CPU at 5 classes, ~2.4 s
    at 205 on a 2-core AMD EPYC); without them the tables and the page."""
    return replace_folder(out, lambda new: _write_into(report, new, grid_size, plots), "report")


def _write_into(report: Report, out: Path, grid_size: int, plots: bool) -> list[Path]:
    from . import report_figures

    out.mkdir(parents=True, exist_ok=True)
    main = report.main
    files = []

    def csv_file(name: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        _write_csv(out / name, header, rows)
        files.append(out / name)

    csv_file("threshold_table.csv", THRESHOLD_COLUMNS, threshold_csv_rows(main.thresholds))
    csv_file("class_accuracy.csv", CLASS_COLUMNS, class_csv_rows(main.classes))
    csv_file("summary.csv", ("key", "value"), summary_rows(main))
    if main.stability:
        csv_file("best_threshold_stability.csv", ("threshold", "share"),
                 [["none" if t is None else fmt_t(t), f"{share:.4f}"] for t, share in main.stability.items()])
    if main.collection:
        csv_file("collection_precision.csv", COLLECTION_COLUMNS, collection_rows(main))
    for sr in report.others:
        csv_file(f"threshold_table_{sr.source}.csv", THRESHOLD_COLUMNS, threshold_csv_rows(sr.thresholds))
        csv_file(f"class_accuracy_{sr.source}.csv", CLASS_COLUMNS, class_csv_rows(sr.classes))
    if report.others:
        csv_file("ensemble_vs_image.csv", *comparison_rows(report))
    if report.coverage:
        sources = list(report.coverage)
        first = report.coverage[sources[0]]
        rows = [[fmt_t(t)] + [x for s in sources for x in (str(report.coverage[s][i][1]),
                                                           fmt4(report.coverage[s][i][2]))]
                for i, (t, _n, _s) in enumerate(first)]
        csv_file("coverage.csv", ["threshold"] + [f"{s}_{c}" for s in sources for c in ("classified", "share")], rows)
    if report.ppi is not None:
        csv_file("ppi.csv", PPI_COLUMNS, ppi_rows(report))
    cal = report.calibration
    if cal is not None:
        csv_file("calibration.csv", ("key", "value"), calibration_summary_rows(cal))
        csv_file("class_thresholds.csv", CALIBRATION_COLUMNS, calibration_threshold_rows(cal))
    if report.problems:
        (out / "problems.txt").write_text("\n".join(report.problems) + "\n", encoding="utf-8")
        files.append(out / "problems.txt")
    figures = report_figures.plots(report, out) if plots else []
    grids = report_figures.grids(main, out / "grids", grid_size) if grid_size > 0 else {}
    files += figures + [p for pair in grids.values() for p in pair]
    (out / "index.html").write_text(render_html(report, figures, grids, out, plots), encoding="utf-8")
    files.append(out / "index.html")
    return files


# -- text out -------------------------------------------------------------------------

def text_tables(report: Report) -> str:
    """The tables as the terminal shows them."""
    main = report.main
    lines = [f"review set {main.name} ({main.source}): {main.summary.hits} hits, {main.summary.misses} misses, "
             f"{main.summary.skipped} skipped, {main.summary.unmarked} not marked"]
    lines.append(f"every estimate with its {main.level:.0%} interval (in brackets)")
    lines.append("")
    has_freq = any(c.frequency for c in main.classes)
    lines.append((f"{'class':<24} {'frequency':>9}  {'accuracy':<15}" + ("  correct images in the collection"
                                                                          if has_freq else "")).rstrip())
    for c in main.classes:
        lines.append((f"{c.label[:24]:<24} {'' if c.frequency is None else c.frequency:>9}  "
                      f"{pct_ci(c.accuracy_ci):<15}" + (f"  {count_ci(c.correct_ci)}" if has_freq else "")).rstrip())
    lines.append(f"{'mean of classes':<24} {'':>9}  {pct_ci(main.mean_ci)}")
    if main.weighted_ci.value is not None:
        lines.append(f"{'weighted by frequency':<24} {sum(c.frequency or 0 for c in main.classes):>9}  "
                     f"{pct_ci(main.weighted_ci):<15}  {count_ci(main.correct_ci)}")
    lines.append("")
    lines.append(f"mean top probability: hits {fmt4(main.summary.mean_prob_hits)}, misses "
                 f"{fmt4(main.summary.mean_prob_misses)}")
    for sr in [main, *report.others]:
        lines.append("")
        lines.append(f"{sr.source} predictions ({sr.name})")
        lines.append(f"{'thr':>4} {'kept':>6} {'hits':>6} {'hit_rate':>9} {'errors':>6} {'err_rate':>9} {'ratio':>7}"
                     f"  {'interval':<11}  precision")
        for r in sr.thresholds:
            ratio_iv = num_ci(r.ratio_ci)[len(fmt4(r.ratio)) + 1:] if r.ratio_ci.value is not None else ""
            lines.append(f"{fmt_t(r.threshold):>4} {r.kept:>6} {r.hits:>6} {fmt4(r.hit_rate):>9} {r.errors:>6} "
                         f"{fmt4(r.error_rate):>9} {fmt4(r.ratio):>7}  {ratio_iv:<11}  {pct_ci(r.precision_ci)}"
                         .rstrip())
        b = sr.best
        if b.threshold is not None:
            lines.append(f"best threshold {fmt_t(b.threshold)} (ratio {fmt4(b.ratio)}; {b.rule})")
        if sr.stability:
            lines.append(f"  best across {RESAMPLES:,} resamples of the marks: {stability_text(sr)}")
        if b.unconstrained_threshold is not None and b.unconstrained_threshold != b.threshold:
            lines.append(f"  (the largest ratio overall is {fmt4(b.unconstrained_ratio)} at "
                         f"{fmt_t(b.unconstrained_threshold)}, below the hit-rate floor)")
        if sr.collection:
            lines.append("  in the collection (the reviewed classes' images at or above each threshold):")
            for t in sr.collection:
                if t.images:
                    part = "" if t.covered == t.images else f" (of the {t.covered:,} with marks there)"
                    lines.append(f"  {fmt_t(t.threshold):>4} keeps {t.images:>9,}  precision "
                                 f"{pct_ci(t.estimate) or 'unknown: no marks there'}{part}")
    cal = report.calibration
    if cal is not None:
        lines.append("")
        lines += calibration_text_lines(cal)
    if report.ppi is not None:
        lines.append("")
        lines += ppi_text_lines(report)
    return "\n".join(lines)


def _table(header: Sequence[str], rows: Sequence[Sequence[object]], cls: str = "") -> str:
    e = html.escape
    head = "".join(f"<th>{e(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{e(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f'<table class="{e(cls)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


CSS = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { margin-bottom: .2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .6em 0; font-variant-numeric: tabular-nums; }
th, td { padding: .25em .7em; border-bottom: 1px solid #eee; text-align: right; }
th { background: #f4f4f6; } td:first-child, th:first-child { text-align: left; }
tr.best td { background: #e6f4ea; font-weight: 600; }
.note { color: #555; max-width: 60em; } .kpi { display: flex; gap: 2em; flex-wrap: wrap; }
.kpi div { background: #f4f4f6; padding: .6em 1em; border-radius: 6px; } .kpi b { font-size: 1.4em; display: block; }
img.plot { max-width: 100%; } .grids { display: grid; grid-template-columns: 1fr 1fr; gap: 1em; }
.grids img { max-width: 100%; border: 1px solid #ddd; } .hit { color: #1a7f37; } .miss { color: #c62828; }
"""


MODEL_CSS = ".random{background:#c0392b;color:#fff;padding:.5em 1em;border-radius:4px;font-weight:600}"


def model_html(model: ModelIdentity | None) -> str:
    """The model a workspace was embedded with, as every page of curate shows it (the app's bar,
    the report, the compare page), and a banner when its weights are random: such results look
    like results."""
    if model is None:
        return ""
    e = html.escape
    weights = "random weights" if model.random_weights else f"pretrained {model.pretrained}"
    line = f"<p class='model'>Model: <b>{e(model.model)}</b> ({e(weights)}, {model.embed_dim}-d vectors)</p>"
    if model.random_weights:
        line += ("<p class='random' role='alert'>Random weights: this workspace was embedded with an untrained "
                 "model, so these results carry no meaning; use them to test the pipeline only.</p>")
    return line


def render_html(report: Report, figures: Sequence[Path], grids: dict[str, tuple[Path, Path]], out: Path,
                plots: bool = True) -> str:
    """The report page; every piece of text from the data is escaped. `plots` False: the page
    says the plots were left out, rather than leave a reader looking for them."""
    e = html.escape
    main, s = report.main, report.main.summary
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>curate report: {e(main.name)}"
             f"</title><style>{CSS}{MODEL_CSS}</style></head><body>",
             f"<h1>Validation report</h1>{model_html(report.model)}<p class='note'>Review set <b>{e(main.name)}</b> ({e(main.source)} "
             "predictions). Accuracy, hit and error rates are measured on images a person marked as hit or "
             "miss; skipped images count nowhere. Rates have 4 decimals, truncated as in the study.</p>"]
    parts.append("<div class='kpi'>" + "".join(
        f"<div><b>{e(v)}</b>{e(k)}</div>" for k, v in [
            ("marked", f"{s.hits + s.misses + s.skipped} / {s.sampled}"), ("accuracy", pct_ci(s.accuracy_ci)),
            ("mean p of hits", fmt4(s.mean_prob_hits)), ("mean p of misses", fmt4(s.mean_prob_misses)),
            ("best threshold", "" if main.best.threshold is None else fmt_t(main.best.threshold))])
        + "</div>")
    if report.problems:
        parts.append(f"<h2>Rows skipped</h2><p class='note'>{len(report.problems)} row(s) of the sheet could "
                     "not be used:</p><ul>" + "".join(f"<li>{e(p)}</li>" for p in report.problems[:50]) + "</ul>")
    level = f"{main.level:.0%}"
    parts.append("<h2>Accuracy per class (Table 2)</h2><p class='note'>Each estimate with its "
                 f"{level} interval in brackets (Wilson's, from the marks: a class of 100 marks at 50% is known "
                 "to about &plusmn;10 points). Correct images in the collection = frequency &times; accuracy. "
                 "The mean over classes as in the study (each class counts once), and the precision of all "
                 "these classes' images in the collection (each class weighted by its frequency).</p>")
    crow = [[c.label, "" if c.frequency is None else c.frequency, c.sampled, c.hits, c.misses, c.skipped,
             pct_ci(c.accuracy_ci), count_ci(c.correct_ci), fmt4(c.mean_prob_hits), fmt4(c.mean_prob_misses)]
            for c in main.classes]
    total_freq = sum(c.frequency or 0 for c in main.classes)
    # the study's last row: frequencies summed, accuracy averaged over the classes
    crow.append(["mean of classes", total_freq or "", s.sampled, s.hits, s.misses, s.skipped,
                 pct_ci(main.mean_ci), "", fmt4(s.mean_prob_hits), fmt4(s.mean_prob_misses)])
    if main.weighted_ci.value is not None:
        crow.append(["weighted by frequency", total_freq, "", "", "", "", pct_ci(main.weighted_ci),
                     count_ci(main.correct_ci), "", ""])
    parts.append(_table(["class", "frequency in collection", "sampled", "hits", "misses", "skipped",
                         f"accuracy ({level} interval)", "correct in collection", "mean p hits", "mean p misses"],
                        crow))
    for sr in [main, *report.others]:
        what = "" if sr.source == "sheet" else f": {sr.source} predictions"
        parts.append(f"<h2>By threshold{e(what)}</h2>")
        parts.append(_threshold_html(sr))
    if report.others:
        header, rows = comparison_rows(report)
        # the page shows what Table 3 compares; ensemble_vs_image.csv has the rates too
        cols = [i for i, h in enumerate(header) if i == 0 or h.endswith(("_kept", "_precision", "_ratio"))]
        parts.append("<h2>Ensemble against image only (Table 3)</h2><p class='note'>precision = hits kept / "
                     "kept: the accuracy of the subset each threshold keeps.</p>"
                     + _table([header[i] for i in cols], [[r[i] for i in cols] for r in rows]))
    if report.coverage:
        parts.append("<h2>Coverage (Table 1)</h2><p class='note'>Share of the collection whose top probability "
                     "reaches the threshold.</p>")
        sources = list(report.coverage)
        rows = [[fmt_t(t)] + [f"{100 * report.coverage[src][i][2]:.1f}% ({report.coverage[src][i][1]})"
                              for src in sources] for i, (t, _n, _s) in enumerate(report.coverage[sources[0]])]
        parts.append(_table(["threshold"] + sources, rows))
    cal = report.calibration
    if cal is not None:
        parts.append("<h2>Calibration</h2>" + calibration_html(cal))
    if report.ppi is not None:
        parts.append("<h2>Prediction-powered estimates (PPI++)</h2><p class='note'>Each class's accuracy from "
                     "its marks alone (classical) and from its marks plus the calibrated probability of every "
                     "image of the class (PPI++: unbiased whatever the calibration, narrower the better it tells "
                     "hits from misses; &lambda; = 0 is the classical estimate). docs/validation.md says when "
                     "each is valid.</p>" + _table(PPI_COLUMNS[:2] + ("classical", "PPI++", "lambda"),
                                                    [[r[0], r[1], r[2], r[3], r[4]] for r in ppi_text_rows(report)]))
    if not plots:
        parts.append("<p class='note'>The plots were left out (<code>curate report --no-plots</code>); "
                     "the same command without it draws them.</p>")
    elif figures:
        parts.append("<h2>Plots</h2>" + "".join(
            f"<p><img class='plot' src='{e(p.relative_to(out).as_posix())}' alt='{e(p.stem)}'></p>" for p in figures))
    if grids:
        parts.append("<h2>Sample images per class</h2><p class='note'><span class='hit'>hits</span> on the left, "
                     "<span class='miss'>misses</span> on the right; the number is the top probability.</p>")
        for label, (hits, misses) in grids.items():
            parts.append(f"<h3>{e(label)}</h3><div class='grids'>"
                         f"<img src='{e(hits.relative_to(out).as_posix())}' alt='hits: {e(label)}'>"
                         f"<img src='{e(misses.relative_to(out).as_posix())}' alt='misses: {e(label)}'></div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _threshold_html(sr: SourceReport) -> str:
    e = html.escape
    best = sr.best.threshold
    head = "".join(f"<th>{e(h)}</th>" for h in ("threshold", "kept", "hits", "hit rate", "errors", "error rate",
                                                 "ratio", "precision in the sample"))
    body = []
    for t in sr.thresholds:
        cls = " class='best'" if best is not None and t.threshold == best else ""
        row = (fmt_t(t.threshold), t.kept, t.hits, num_ci(t.hit_rate_ci), t.errors, num_ci(t.error_rate_ci),
               num_ci(t.ratio_ci), pct_ci(t.precision_ci))
        body.append(f"<tr{cls}>" + "".join(f"<td>{e(str(v))}</td>" for v in row) + "</tr>")
    note = (f"<p class='note'>Best threshold <b>{e(fmt_t(best))}</b> (ratio {e(fmt4(sr.best.ratio))}): "
            f"{e(sr.best.rule)}.") if best is not None else "<p class='note'>No threshold qualifies."
    if sr.stability:
        note += (f" Across {RESAMPLES:,} bootstrap resamples of the marks (each class resampled within itself) "
                 f"the best threshold is {e(stability_text(sr))}.")
    if sr.best.unconstrained_threshold not in (None, best):
        note += (f" The largest ratio overall, {e(fmt4(sr.best.unconstrained_ratio))} at "
                 f"{e(fmt_t(sr.best.unconstrained_threshold))}, keeps too few of the hits.")
    note += "</p>"
    if sr.collection:
        rows = [[fmt_t(t.threshold), f"{t.images:,}", f"{t.covered:,}", pct_ci(t.estimate) or "no marks",
                 ", ".join(t.uncovered)] for t in sr.collection]
        note += ("<p class='note'>In the whole collection: the images of the reviewed classes each threshold "
                 "keeps, and their precision estimated from the marks (each class weighted by the images it "
                 "keeps; classes keeping images without a mark at that threshold are left out of the estimate "
                 "and named).</p>" + _table(["threshold", "images kept", "with marks", "precision",
                                             "classes without marks"], rows))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{note}"


# -- prediction-powered --------------------------------------------------------------

PPI_COLUMNS = ("class", "images", "classical", "classical_low", "classical_high", "ppi", "ppi_low", "ppi_high",
               "lambda")


def _ppi_all(report: Report) -> list[tuple[str, str, Estimate, Estimate, str]]:
    p = report.ppi
    if p is None:
        return []
    rows = [(r.label, str(r.images), r.classical, r.ppi, f"{r.lam:.3f}") for r in p.rows]
    rows.append(("mean of classes", "", p.mean_classical, p.mean_ppi, ""))
    rows.append(("weighted by frequency", str(sum(r.images for r in p.rows)), p.weighted_classical,
                 p.weighted_ppi, ""))
    return rows


def ppi_rows(report: Report) -> list[list[str]]:
    return [[label, n, fmt4(c.value), lo4(c), hi4(c), fmt4(q.value), lo4(q), hi4(q), lam]
            for label, n, c, q, lam in _ppi_all(report)]


def ppi_text_rows(report: Report) -> list[tuple[str, str, str, str, str]]:
    return [(label, n, pct_ci(c), pct_ci(q), lam) for label, n, c, q, lam in _ppi_all(report)]


def ppi_text_lines(report: Report) -> list[str]:
    out = [f"prediction-powered (PPI++, marks + the calibrated probability of every image) beside the classical "
           f"({report.main.level:.0%} intervals):",
           f"  {'class':<24} {'classical':<15} {'PPI++':<15} lambda"]
    for label, _n, c, q, lam in ppi_text_rows(report):
        out.append(f"  {label[:24]:<24} {c:<15} {q:<15} {lam}".rstrip())
    return out


# -- calibration ---------------------------------------------------------------------

CALIBRATION_COLUMNS = ("class", "threshold", "precision", "support", "marked", "kept")


def calibration_summary_rows(cal: Calibration) -> list[tuple[str, str]]:
    return [("temperature", f"{cal.temperature:.6g}"), ("source", cal.source), ("review_set", cal.set_name),
            ("labels", str(cal.n_labels)), ("marks", str(cal.marks)),
            ("nll_before", f"{cal.nll_before:.6g}"), ("nll_after", f"{cal.nll_after:.6g}"),
            ("target_precision", f"{cal.target_precision:g}"), ("min_support", str(cal.min_support)),
            ("tail", "exact" if cal.exact else "top-2 + even tail")]


def calibration_threshold_rows(cal: Calibration) -> list[list[str]]:
    def f(x: float | None) -> str:
        return "" if x is None else f"{x:.4f}"
    return [[c.label, f(c.threshold), f(c.precision), str(c.support), str(c.marked),
             "" if c.kept is None else str(c.kept)] for c in cal.classes]


def calibration_text_lines(cal: Calibration) -> list[str]:
    out = [f"calibration: temperature {cal.temperature:.4g} (NLL of the {cal.marks} marks "
           f"{cal.nll_before:.4f} -> {cal.nll_after:.4f})",
           f"per-class thresholds on the calibrated probability for precision >= {cal.target_precision:g}:"]
    for c in cal.classes:
        if c.threshold is None:
            out.append(f"  {c.label[:28]:<28} unreachable ({c.marked} marked)")
        else:
            out.append(f"  {c.label[:28]:<28} >= {c.threshold:.4f}  precision {c.precision:.3f} on "
                       f"{c.support} marked, keeps {c.kept if c.kept is not None else '?'} images")
    return out


def calibration_html(cal: Calibration) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in CALIBRATION_COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{e(v) if v else '&ndash;'}</td>" for v in row) + "</tr>"
                   for row in calibration_threshold_rows(cal))
    tail = "" if cal.exact else (" The tail beyond the top two labels is taken as even (the views "
                                  "carry prob and prob2 only), an approximation away from T = 1.")
    return (f"<p class='note'>Temperature <b>{cal.temperature:.4g}</b>, fitted by maximum likelihood on "
            f"{cal.marks} hit/miss marks (mean NLL {cal.nll_before:.4f} at T = 1, {cal.nll_after:.4f} "
            f"fitted).{e(tail)} Per-class thresholds on the calibrated probability reaching precision "
            f"{cal.target_precision:g} among at least {cal.min_support} marked images; kept = images of "
            f"the collection at or above it. <code>curate filter --calibrated</code> uses them.</p>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
