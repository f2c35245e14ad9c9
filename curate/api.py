"""curate as Python functions: the same steps as the commands, for a notebook or a script.

    from curate import api
    api.build_index("photos/", "ws", model="ViT-B-32")
    api.classify("ws")
    api.filter("ws", labels=["skyscraper"], min_prob=0.6, out="sky.parquet")

Each function takes a workspace path, opens and closes its own connection, takes the
options of the command of the same name (keyword arguments, the same defaults) and returns
a small result object instead of printing; the commands (curate/commands/) only parse
options, call these and print. Errors are `curate.CurateError` subclasses. Progress bars
go to stderr through curate.core.progress; `quiet=True` turns them off (None: as
`curate --quiet` says, when called from the command line).

Heavy libraries (torch, open_clip, faiss, matplotlib) load inside the functions that need
them, so importing this module stays cheap.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .classify import registry
from .classify.calibrated import Calibration, for_workspace
from .classify.dedup import DedupResult
from .classify.exports import SHARD_SIZE, command_line
from .classify.registry import Classification
from .classify.run import ClassifyOptions, ClassifyResult
from .classify.scoring import ENSEMBLE_TEXT_MIN, ENSEMBLE_TEXT_WEIGHT
from .classify.search import Hit
from .classify.state import NotReady
from .classify.subsets import FilterError, FilterResult, FilterSpec, parse_where, write_subset
from .core import check
from .core.progress import Progress
from .core.sql import has_relation
from .core.textout import safe
from .core.workspace import DB_NAME, Workspace
from .errors import CurateError, InputError, WorkspaceBusy, WorkspaceError
from .ingest import build, engines
from .ingest import recheck as recheck_files
from .ingest.build import BuildOptions, BuildResult
from .ingest.precision import PRECISIONS
from .validate import calibration, collection, compare_render, ppi, report_render, sampling
from .validate import compare as compare_mod
from .validate import report as report_mod
from .validate.review import marks as marks_mod

__all__ = ["build_index", "classify", "classifications", "use_classification", "drop_classification",
           "filter", "search", "dedup", "sample", "report", "compare", "labels", "must_exist", "BuildResult",
           "Compared", "ClassifyResult", "DedupResult", "Filtered", "Hit", "Sample", "ReportResult",
           "LabelRow"]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _enabled(quiet: bool | None) -> bool | None:
    return None if quiet is None else not quiet


@check.params(workspace=check.path())
def must_exist(workspace: str | Path) -> Path:
    """Refuse a folder without a workspace database, the same way for every step (exit 4)."""
    value = Path(workspace)
    if not (value / DB_NAME).is_file():
        raise WorkspaceError(f"no workspace at {value} (no {DB_NAME} there): run `curate build-index SOURCE "
                             f"-w {value}` first, or give the right -w/--workspace")
    return value


# --------------------------------------------------------------------------- build-index

# where build-index embeds: this machine, or a Ray cluster (curate/ingest/engines.py)
ENGINES = engines.ENGINES


@check.params(
    BuildOptions, source=check.path(), workspace=check.path(), quiet=check.flag(none=True), log=check.function(),
    model=check.text(none=True), pretrained=check.text(none=True), fallback_model=check.text(none=True),
    captions_dir=check.path(none=True), index=check.text(), device=check.text(),
    batch_size=check.integer(1, none=True), workers=check.integer(0, none=True), shard_size=check.integer(1),
    max_pixels=check.integer(1), draft_decode=check.flag(), limit=check.integer(1, none=True),
    infer_types=check.flag(), recheck=check.choice(recheck_files.MODES), retry_rejected=check.flag(),
    repair=check.flag(), precision=check.choice(PRECISIONS), target_recall=check.number(0, 1, lo_open=True),
    max_index_memory=check.size(none=True), decode=check.choice(("cpu", "gpu")), engine=check.choice(ENGINES),
    address=check.text(none=True))
def build_index(source: str | Path, workspace: str | Path = "ws", *, quiet: bool | None = None,
                log: Callable[[str], None] = _stderr, **options: object) -> BuildResult:
    """Ingest `source` and embed it once into FAISS indexes and a DuckDB workspace.

    The keyword options are `curate build-index`'s, the fields of BuildOptions
    (curate/ingest/build.py, which runs the steps). Running it again adds only new items; a
    killed run resumes where it stopped. `log` hears the one warning that is not an error (the
    fallback model's random weights).
    """
    return build.run(Path(source), Path(workspace), BuildOptions(**options), log, quiet)


# --------------------------------------------------------------------------- labels, classify

@dataclass(frozen=True)
class LabelRow:
    index: int
    label: str
    prompts: list[str]
    scene: str


@check.params(workspace=check.path())
def labels(workspace: str | Path) -> list[LabelRow]:
    """The label set the workspace was classified with (its `labels` table), in label order."""
    ws_path = must_exist(workspace)
    con = Workspace(ws_path).connect(read_only=True)
    try:
        if not has_relation(con, "labels"):
            raise NotReady(f"the workspace {ws_path} is not classified yet: it has no label set; run "
                           f"`curate classify -w {ws_path}` first (or `curate labels --label-set NAME` to see a set)")
        rows = con.execute("SELECT label_idx, label, prompts, scene FROM labels ORDER BY label_idx").fetchall()
    finally:
        con.close()
    return [LabelRow(int(i), lab, list(ps), scene) for i, lab, ps, scene in rows]


@check.params(
    ClassifyOptions, workspace=check.path(), temperature=check.number(0, lo_open=True, none=True),
    quiet=check.flag(none=True), on_batch=check.function(none=True), log=check.function(none=True),
    label_set=check.path(), prompts=check.path(), name=check.text(none=True),
    logit_scale=check.number(0, lo_open=True, none=True), top_k=check.integer(1),
    storage=check.choice(("auto", "full", "topk")), batch_rows=check.integer(1), device=check.text(),
    restart=check.flag())
def classify(workspace: str | Path = "ws", *, temperature: float | None = None, quiet: bool | None = None,
             on_batch: Callable[[int, int], None] | None = None, log: Callable[[str], None] | None = None,
             **options: object) -> ClassifyResult:
    """Score every image and caption against every label; create the SQL views.

    The keyword options are `curate classify`'s, the fields of ClassifyOptions
    (curate/classify/run.py, which runs the step); `temperature` is 1 / logit_scale. The scores
    are the classification `name` (default: label set and wording, e.g. places205-natural),
    which becomes the active one when it completes. A run with the settings of that
    classification's scores continues them. `on_batch(vectors, so_far)` hears each committed
    batch; `log` the line said when a run resumes or starts over (default: stderr, beside the bar).
    """
    from .classify import run

    ws_path = must_exist(workspace)
    if temperature is not None:
        if options.get("logit_scale") is not None:
            raise InputError("give logit_scale or temperature, not both")
        options["logit_scale"] = 1.0 / temperature
    if log is None:
        from tqdm import tqdm

        def log(line: str) -> None:
            tqdm.write(line, file=sys.stderr)

    bar = Progress("scoring", 0, "vector", enabled=_enabled(quiet))  # drawn once classify says how many (plan)
    committed = 0

    def progress(n: int) -> None:
        nonlocal committed
        bar.update(n)
        committed += n
        if on_batch is not None:
            on_batch(n, committed)

    try:
        return run.run(ws_path, ClassifyOptions(**options), hear=run.Listeners(progress, log, bar.reset))
    except CurateError:
        raise
    except ValueError as e:  # the label set's and wording's own checks
        raise InputError(str(e)) from None
    finally:
        bar.close()


@check.params(workspace=check.path())
def classifications(workspace: str | Path = "ws") -> list[Classification]:
    """The workspace's named classifications, oldest first (`curate classify --list`)."""
    con = Workspace(must_exist(workspace)).connect(read_only=True)
    try:
        return registry.list_classifications(con)
    finally:
        con.close()


@check.params(workspace=check.path(), name=check.text())
def use_classification(workspace: str | Path, name: str) -> None:
    """Make a complete classification the active one: the plain views show it (`classify --use`)."""
    con = Workspace(must_exist(workspace)).connect()
    try:
        registry.use(con, name)
    finally:
        con.close()


@check.params(workspace=check.path(), name=check.text())
def drop_classification(workspace: str | Path, name: str) -> str | None:
    """Remove a classification and its scores (`classify --drop`); returns the active one after.

    Review sets drawn from it stay (their marks judge (image, label) pairs, which count
    for every classification); a calibration fitted on it goes with it."""
    ws = Workspace(must_exist(workspace))
    con = ws.connect()
    try:
        return registry.drop(ws, con, name)
    finally:
        con.close()


# --------------------------------------------------------------------------- filter, search

@dataclass(frozen=True)
class Filtered:
    """A subset cut by `filter`: the counts and files (`result`), and the rule that cut it."""
    spec: FilterSpec
    result: FilterResult
    # with calibrated=True and nothing kept: which classes' thresholds the marks could not reach
    unreachable: str | None = None
    # labels asked for in another spelling (case, separators): (as given, the label taken)
    labels_taken: list[tuple[str, str]] = field(default_factory=list)
    # the subset's precision estimated from the marks of random review sets (validate/collection.py)
    precision: collection.SubsetPrecision | None = None

    @property
    def kept(self) -> int:
        return self.result.kept

    @property
    def total(self) -> int:
        return self.result.total

    @property
    def out(self) -> Path | None:
        return self.result.out

    def summary(self) -> str:
        return self.result.summary(self.spec)


def _where(where: Iterable[str | tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """(column, value) pairs from check.conditions' mix of "COLUMN=VALUE" strings and pairs."""
    return tuple(p for w in where for p in (parse_where((w,)) if isinstance(w, str) else (w,)))


@check.params(
    workspace=check.path(), labels=check.names(), min_prob=check.probability(), mode=check.text(),
    unmatched=check.flag(), text_weight=check.probability(), text_min=check.probability(),
    image_max=check.probability(), calibrated=check.flag(), where=check.conditions(), out=check.path(none=True),
    copy_to=check.path(none=True), link_to=check.path(none=True), clean=check.flag(),
    classification=check.text(none=True), dedup=check.flag(), format=check.text(none=True),
    shard_size=check.integer(1), with_embeddings=check.flag(), level=check.number(0, 1, lo_open=True, hi_open=True))
def filter(workspace: str | Path = "ws", *, labels: Iterable[str] = (), min_prob: float = 0.5,  # noqa: A001
           mode: str = "image", unmatched: bool = False, text_weight: float = ENSEMBLE_TEXT_WEIGHT,
           text_min: float = ENSEMBLE_TEXT_MIN, image_max: float = 1.0, calibrated: bool = False,
           where: Iterable[str] | Iterable[tuple[str, str]] = (), out: str | Path | None = None,
           copy_to: str | Path | None = None, link_to: str | Path | None = None,
           clean: bool = False, classification: str | None = None, dedup: bool = False,
           format: str | None = None, shard_size: int = SHARD_SIZE,  # noqa: A002
           with_embeddings: bool = False, level: float = 0.95) -> Filtered:
    """Cut a labelled subset (or what cleaning drops) out of a classified workspace.

    The options are `curate filter`'s; `where` takes "COLUMN=VALUE" strings or (column,
    value) pairs. `out` is a file (.parquet, .csv, .jsonl; `format` names one when the
    extension does not), or with format="webdataset" a folder of tar shards of
    `shard_size` samples; `with_embeddings` writes the kept rows' image and caption
    vectors beside it. `copy_to`/`link_to` a folder.
    `classification`: a named classification (default: the active one). `dedup`: one image per
    duplicate group (`api.dedup` first); with `unmatched`, the selection's rows dedup leaves out.
    `precision` on the result: the subset's precision estimated from random review marks, with
    its interval at `level`.
    """
    ws_path = must_exist(workspace)
    taken = _match_labels(ws_path, labels, classification)
    spec = FilterSpec(labels=tuple(label for _given, label in taken), min_prob=min_prob, mode=mode, unmatched=unmatched,
                      text_weight=text_weight, text_min=text_min, image_max=image_max, calibrated=calibrated,
                      where=_where(where), classification=classification, dedup=dedup)
    if clean and not (copy_to or link_to):
        raise FilterError("--clean empties a --copy-to or --link-to folder: give one")
    command = command_line(ws_path, [
        ("--classification", classification), ("--label", spec.labels), ("--min-prob", None if calibrated else min_prob),
        ("--mode", mode), ("--unmatched", unmatched),
        *([("--text-weight", text_weight), ("--text-min", text_min), ("--image-max", image_max)]
          if mode == "ensemble" else []),
        ("--calibrated", calibrated), ("--where", spec.where), ("--format", format), ("--out", out),
        ("--shard-size", shard_size if format == "webdataset" else None), ("--with-embeddings", with_embeddings),
        ("--copy-to", copy_to), ("--link-to", link_to), ("--clean", clean)])
    est: list[collection.SubsetPrecision] = []
    r = write_subset(ws_path, spec, out, copy_to=copy_to, link_to=link_to, clean=clean, fmt_name=format,
                     shard_size=shard_size, with_embeddings=with_embeddings, command=command,
                     inspect=lambda con: est.append(collection.for_filter(con, spec, level)))
    return Filtered(spec, r, _explain_calibrated_nothing(ws_path, spec) if calibrated and r.kept == 0 else None,
                    [(given, label) for given, label in taken if given != label], est[0] if est else None)


def _match_labels(ws_path: Path, labels: Iterable[str], classification: str | None) -> list[tuple[str, str]]:
    """The labels asked for, each with the one it names in the classification's label set (case
    and separators forgiven where that leaves one: classify/labels.py match_labels)."""
    from .classify.labels import match_labels
    from .classify.subsets import open_scored

    labels = tuple(labels)
    if not labels:
        return []
    con = open_scored(ws_path, classification)
    try:
        known = [r[0] for r in con.execute("SELECT label FROM labels ORDER BY label_idx").fetchall()]
    finally:
        con.close()
    return match_labels(labels, known)


def _explain_calibrated_nothing(ws_path: Path, spec: FilterSpec) -> str | None:
    """`calibrated` kept nothing: name the classes whose threshold the marks could not reach."""
    cal = for_workspace(ws_path)
    if cal is None:
        return None
    wanted = set(spec.labels)
    classes = [c for c in cal.classes if not wanted or c.label in wanted]
    unreachable = [c for c in classes if c.threshold is None]
    if spec.unmatched or not unreachable:
        return None
    reached = [f"{c.label} >= {c.threshold:.4f}" for c in classes if c.threshold is not None]
    return safe(f"kept nothing: no threshold reaches precision {cal.target_precision:g} on the marks for "
                f"{len(unreachable)} of {len(classes)} classes ({', '.join(c.label for c in unreachable)})"
                + (f"; the others ({', '.join(reached)}) keep no image" if reached else "")
                + "; mark more images, or fit again with a lower --target-precision or --min-support "
                  "(`curate report`)")


@check.params(
    workspace=check.path(), text=check.text(none=True, empty=True), k=check.integer(1), image=check.path(none=True),
    mode=check.text(), device=check.text(), classification=check.text(none=True),
    search_param=check.integer(1, none=True), out=check.path(none=True))
def search(workspace: str | Path, text: str | None = None, k: int = 20, *, image: str | Path | None = None,
           mode: str = "image", device: str = "auto", classification: str | None = None,
           search_param: int | None = None, out: str | Path | None = None) -> list[Hit]:
    """The k items nearest to a text prompt, or to an example image (`image`, a file), in the
    image index (`mode="image"`) or the caption index (`mode="caption"`): rank, id, score,
    path, caption, with each one's top label and probability under `classification`
    (default: the active one; None when the workspace is not classified). The index is
    searched at the parameter its record holds (tuned to the recall target), or at
    `search_param` (nprobe or efSearch) when given. `out`: also write the hits to this file
    (format by extension, as filter's: parquet, csv, tsv, jsonl, json).
    """
    from .classify.search import check_query, out_format, write_hits
    from .classify.search import search as search_items

    check_query(text, image, mode)   # before any model loads: an empty query is refused at once
    if out is not None:
        out_format(out)
    ws_path = must_exist(workspace)
    hits = search_items(ws_path, text, image=image, mode=mode, k=k, device=device, classification=classification,
                        search_param=search_param)
    if out is not None:
        write_hits(ws_path, hits, out)
    return hits


# --------------------------------------------------------------------------- sample, report

@dataclass(frozen=True)
class Sample:
    """A review set drawn by `sample`: the set, its classes (label, rank, images in the
    collection) and how many of each were drawn, and how many were marked already."""
    set: sampling.ReviewSet
    classes: list[tuple[str, int, int]]
    drawn: dict[str, int]
    marked: int

    @property
    def name(self) -> str:
        return self.set.name

    @property
    def items(self) -> int:
        return self.set.items


@check.params(
    workspace=check.path(), top_classes=check.integer(1), per_class=check.integer(1), seed=check.integer(),
    mode=check.text(), set_name=check.text(none=True), replace=check.flag(), where=check.conditions(),
    classification=check.text(none=True), target_width=check.number(0, 1, lo_open=True, none=True))
def sample(workspace: str | Path = "ws", *, top_classes: int = 10, per_class: int = 100, seed: int = 0,
           mode: str = "image", set_name: str | None = None, replace: bool = False,
           where: Iterable[str] | Iterable[tuple[str, str]] = (), classification: str | None = None,
           target_width: float | None = None) -> Sample:
    """Draw a review set: the study's stratified sample, reproducible from its seed.

    The options are `curate sample`'s: `mode` whose predictions (image, caption, ensemble),
    `set_name` the set's name (default: MODE-topNxM-seedS), `classification` the named
    classification to draw from (default: the active one; the set remembers it).
    `target_width`: a sequential review: the page moves on from a class once its interval is
    at most this wide (0.2 = +/-10 points); `per_class` is then the most a class may take.
    """
    ws_path = must_exist(workspace)
    con = Workspace(ws_path).connect()
    try:
        sampling.ensure_schema(con)
        rs = sampling.draw(con, source=mode, top_classes=top_classes, per_class=per_class, seed=seed,
                           name=set_name, replace=replace, where=_where(where), classification=classification,
                           target_width=target_width)
        found = sampling.classes(con, rs.name)
        drawn = dict(con.execute("SELECT label, count(*) FROM review_items WHERE set_name = ? GROUP BY label",
                                 [rs.name]).fetchall())
        done = marks_mod.progress(con, rs.name).done
    finally:
        con.close()
    return Sample(rs, found, drawn, done)


@dataclass
class ReportResult:
    """A report written by `report`: the tables (`report`), the files and folder written,
    and the calibration fitted on the marks (None: `no_calibration` says why)."""
    report: report_mod.Report
    out: Path
    files: list[Path]
    calibration: Calibration | None = None
    no_calibration: str | None = None
    # the calibration could not be saved for `filter --calibrated` (another process held the workspace)
    not_saved: str | None = None
    problems: list[str] = field(default_factory=list)    # rows of a --marks sheet that were skipped

    @property
    def text(self) -> str:
        return report_render.text_tables(self.report)


@check.params(
    workspace=check.path(none=True), set_name=check.text(none=True), marks=check.path(none=True), out=check.path(),
    min_hit_rate=check.probability(), target_precision=check.number(0, 1, lo_open=True),
    min_support=check.integer(1), grid_size=check.integer(0), classification=check.text(none=True),
    level=check.number(0, 1, lo_open=True, hi_open=True), interval=check.text())
def report(workspace: str | Path | None = "ws", *, set_name: str | None = None, marks: str | Path | None = None,
           out: str | Path = "report", min_hit_rate: float = report_mod.DEFAULT_MIN_HIT_RATE,
           target_precision: float = 0.9, min_support: int = 10, grid_size: int = 24,
           classification: str | None = None, level: float = 0.95, interval: str = "wilson") -> ReportResult:
    """Accuracy per class, the threshold table, coverage and calibration from the review marks,
    written to the folder `out` (CSV, HTML, PNG; replaced whole).

    The options are `curate report`'s: the review set `set_name` (default: the latest), or a
    CSV sheet `marks` (label, prob, mark) instead of the workspace. The calibration fitted on
    the marks is saved in the workspace for `filter(calibrated=True)`. The report reads the
    classification the set was drawn from; `classification` picks the latest set drawn from it.
    Every estimate comes with its interval at `level`; `interval`: "wilson" or "exact"
    (Clopper-Pearson) for the proportions (curate/validate/intervals.py).
    """
    if not 0 < level < 1:
        raise InputError(f"--level must lie strictly between 0 and 1, not {level}")
    if interval not in report_mod.intervals.METHODS:
        raise InputError(f"--interval must be one of {', '.join(report_mod.intervals.METHODS)}, not {interval!r}")
    out = Path(out)
    cal = None
    no_cal = not_saved = None
    problems: list[str] = []
    if marks is not None:
        rep = report_mod.from_sheet(marks, min_hit_rate, level, interval)
        problems = list(rep.problems)
    else:
        ws_path = must_exist(workspace if workspace is not None else "ws")
        con = Workspace(ws_path).connect(read_only=True)  # a reader: it runs beside the review page
        try:
            rs = sampling.get_set(con, set_name, classification)
            registry.select(con, rs.classification if registry.exists(con, rs.classification or "") else None)
            rep = report_mod.from_workspace(con, rs.name, min_hit_rate, level, interval)
            try:
                cal = calibration.fit(con, rep.main.name, target_precision, min_support)
                rep.calibration = cal
            except ValueError as e:  # too few marks, or a temperature the marks do not pin down
                no_cal = str(e)
            else:
                rep.ppi = ppi.estimates(con, cal, level)
        finally:
            con.close()
        if cal is not None:  # saving it for `filter --calibrated` takes the write lock for a moment
            try:
                con = Workspace(ws_path).connect()
            except WorkspaceBusy as e:
                not_saved = str(e)
            else:
                try:
                    sampling.ensure_schema(con)
                    calibration.save(con, cal)
                finally:
                    con.close()
    files = report_render.write(rep, out, grid_size)
    return ReportResult(rep, out, files, cal, no_cal, not_saved, problems)


# --------------------------------------------------------------------------- compare

@dataclass
class Compared:
    """Classifications compared by `compare`: the tables (`comparison`) and the files written."""
    comparison: compare_mod.Comparison
    out: Path | None
    files: list[Path]

    @property
    def text(self) -> str:
        return "\n".join(compare_render.summary_lines(self.comparison))


@check.params(workspace=check.path(), names=check.names(), out=check.path(none=True),
              min_prob=check.probability())
def compare(workspace: str | Path = "ws", names: Iterable[str] = (), *, out: str | Path | None = "compare",
            min_prob: float = compare_mod.MIN_PROB) -> Compared:
    """Two or more named classifications side by side (`curate compare`): coverage per kind,
    agreement, per-label counts, and the hit rate on marked pairs, written to the folder
    `out` (CSV, PNG, HTML; replaced whole; None: compute only)."""
    ws_path = must_exist(workspace)
    con = Workspace(ws_path).connect(read_only=True)
    try:
        cmp = compare_mod.compare(con, list(names), min_prob)
    finally:
        con.close()
    files = compare_render.write(cmp, out) if out is not None else []
    return Compared(cmp, Path(out) if out is not None else None, files)


# --------------------------------------------------------------------------- dedup

@check.params(workspace=check.path(), threshold=check.number(0, 1, lo_open=True, none=True), kind=check.text(),
              fresh=check.flag(), quiet=check.flag(none=True))
def dedup(workspace: str | Path = "ws", *, threshold: float | None = None, kind: str = "image",
          fresh: bool = False, quiet: bool | None = None) -> DedupResult:
    """Find near-duplicate groups and store them in the table `duplicates` (view `duplicate_groups`).

    kind "image": images at cosine >= `threshold` (default 0.94) on their embeddings, through the
    image index; a rerun queries only vectors embedded since (`fresh`: all again). kind
    "caption-text": items whose captions are equal after normalising whitespace and case.
    """
    from .classify.dedup import DEFAULT_THRESHOLD, DedupError, find_duplicates

    ws_path = must_exist(workspace)
    if kind != "image" and threshold is not None:
        raise DedupError("--threshold is for --kind image (caption-text groups are equal texts)")
    with Progress("dedup", None, "vector", enabled=_enabled(quiet)) as bar:
        return find_duplicates(ws_path, kind, DEFAULT_THRESHOLD if threshold is None else threshold,
                               fresh=fresh, progress=bar.update)
