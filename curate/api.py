"""curate as Python functions: the same steps as the commands, for a notebook or a script.

    from curate import api
    api.build_index("photos/", "ws", model="ViT-B-32")
    api.classify("ws")
    api.filter("ws", api.FilterSpec(labels=["skyscraper"], min_prob=0.6), api.FilterOutput(out="sky.parquet"))

Each function takes a workspace path, opens and closes its own connection, takes the
options of the command of the same name (keyword arguments, the same defaults; filter's and
search's query, sample's and report's settings as options objects: FilterSpec, FilterOutput,
SearchQuery, SampleSpec, ReportOptions) and returns
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
from dataclasses import dataclass, field, replace
from pathlib import Path

from .classify import registry
from .classify.calibrated import Calibration, for_workspace
from .classify.registry import Classification
from .classify.run import ClassifyOptions, ClassifyResult
from .classify.state import NotReady
from .core import check
from .core.progress import Progress
from .core.sql import has_relation
from .core.textout import safe
from .core.workspace import Workspace
from .errors import CurateError, InputError, WorkspaceBusy
from .ingest import build, engines
from .ingest import recheck as recheck_files
from .ingest.build import BuildOptions, BuildResult
from .ingest.precision import PRECISIONS
from .select.dedup import BY as DEDUP_BY
from .select.dedup import DedupResult
from .select.exports import command_line
from .select.filter import (
    FilterOutput,
    FilterResult,
    FilterSpec,
    write_subset,
)
from .select.search import Hit, SearchQuery
from .validate import calibration, collection, compare_render, ppi, report_render, sampling
from .validate import compare as compare_mod
from .validate import report as report_mod
from .validate.report import ReportOptions
from .validate.review import marks as marks_mod
from .validate.sampling import SampleSpec

__all__ = ["build_index", "classify", "classifications", "use_classification", "drop_classification",
           "filter", "search", "dedup", "sample", "report", "compare", "labels", "must_exist", "BuildResult",
           "Compared", "ClassifyResult", "DedupResult", "Filtered", "Hit", "Sample", "ReportResult",
           "LabelRow", "FilterSpec", "FilterOutput", "SearchQuery", "SampleSpec", "ReportOptions"]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _enabled(quiet: bool | None) -> bool | None:
    return None if quiet is None else not quiet


@check.params(workspace=check.path())
def must_exist(workspace: str | Path) -> Path:
    """Refuse a folder without a workspace database, the same way for every step (exit 4)."""
    value = Path(workspace)
    Workspace(value).require()
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
    with Workspace(ws_path).reading() as con:
        if not has_relation(con, "labels"):
            raise NotReady(f"the workspace {ws_path} is not classified yet: it has no label set; run "
                           f"`curate classify -w {ws_path}` first (or `curate labels --label-set NAME` to see a set)")
        rows = con.execute("SELECT label_idx, label, prompts, scene FROM labels ORDER BY label_idx").fetchall()
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
    with Workspace(must_exist(workspace)).reading() as con:
        return registry.list_classifications(con)


@check.params(workspace=check.path(), name=check.text())
def use_classification(workspace: str | Path, name: str) -> None:
    """Make a complete classification the active one: the plain views show it (`classify --use`)."""
    with Workspace(must_exist(workspace)).writing() as con:
        registry.use(con, name)


@check.params(workspace=check.path(), name=check.text())
def drop_classification(workspace: str | Path, name: str) -> str | None:
    """Remove a classification and its scores (`classify --drop`); returns the active one after.

    Review sets drawn from it stay (their marks judge (image, label) pairs, which count
    for every classification); a calibration fitted on it goes with it."""
    ws = Workspace(must_exist(workspace))
    with ws.writing() as con:
        return registry.drop(ws, con, name)


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


@check.params(workspace=check.path(), spec=check.options(FilterSpec, none=True),
              output=check.options(FilterOutput, none=True), level=check.number(0, 1, lo_open=True, hi_open=True))
def filter(workspace: str | Path = "ws", spec: FilterSpec | None = None,  # noqa: A001
           output: FilterOutput | None = None, *, level: float = 0.95) -> Filtered:
    """Cut a labelled subset (or what cleaning drops) out of a classified workspace.

    `spec` is what `curate filter` selects (labels, thresholds, mode, --where, the
    classification, dedup), `output` where it writes (a file, a webdataset folder, the
    embeddings beside it, files copied or linked): both `curate filter`'s options, checked
    when made. None: every label at the default threshold; counted only.
    `precision` on the result: the subset's precision estimated from random review marks, with
    its interval at `level`.
    """
    spec = spec or FilterSpec()
    output = output or FilterOutput()
    ws_path = must_exist(workspace)
    with Workspace(ws_path).reading():  # one connection for every step below
        return _filter(ws_path, spec, output, level)


def _filter(ws_path: Path, spec: FilterSpec, output: FilterOutput, level: float) -> Filtered:
    taken = _match_labels(ws_path, spec.labels, spec.classification)
    spec = replace(spec, labels=tuple(label for _given, label in taken))
    o = output
    command = command_line(ws_path, [
        ("--classification", spec.classification), ("--label", spec.labels),
        ("--min-prob", None if spec.calibrated else spec.min_prob), ("--mode", spec.mode),
        ("--unmatched", spec.unmatched),
        *([("--text-weight", spec.text_weight), ("--text-min", spec.text_min), ("--image-max", spec.image_max)]
          if spec.mode == "ensemble" else []),
        ("--calibrated", spec.calibrated), ("--where", spec.where), ("--dedup", spec.dedup), ("--format", o.format),
        ("--out", o.out),
        ("--shard-size", o.shard_size if o.format == "webdataset" else None),
        ("--with-embeddings", o.with_embeddings), ("--copy-to", o.copy_to), ("--link-to", o.link_to),
        ("--clean", o.clean)])
    est: list[collection.SubsetPrecision] = []
    r = write_subset(ws_path, spec, output, command=command,
                     inspect=lambda con: est.append(collection.for_filter(con, spec, level)))
    return Filtered(spec, r, _explain_calibrated_nothing(ws_path, spec) if spec.calibrated and r.kept == 0 else None,
                    [(given, label) for given, label in taken if given != label], est[0] if est else None)


def _match_labels(ws_path: Path, labels: Iterable[str], classification: str | None) -> list[tuple[str, str]]:
    """The labels asked for, each with the one it names in the classification's label set (case
    and separators forgiven where that leaves one: classify/labels.py match_labels)."""
    from .classify.labels import match_labels
    from .select.filter import scored

    labels = tuple(labels)
    if not labels:
        return []
    with scored(ws_path, classification) as con:
        known = [r[0] for r in con.execute("SELECT label FROM labels ORDER BY label_idx").fetchall()]
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


def _query(name: str, value: object) -> object:
    """search's query: a SearchQuery, or a text (the image index)."""
    return value if value is None or isinstance(value, SearchQuery) else check.text(empty=True)(name, value)


@check.params(
    workspace=check.path(), query=_query, k=check.integer(1), device=check.text(),
    classification=check.text(none=True), search_param=check.integer(1, none=True), out=check.path(none=True))
def search(workspace: str | Path, query: str | SearchQuery | None = None, k: int = 20, *, device: str = "auto",
           classification: str | None = None, search_param: int | None = None,
           out: str | Path | None = None) -> list[Hit]:
    """The k items nearest to `query`: a text prompt (the image index), or a SearchQuery (a
    text or an example image file, in the image or the caption index): rank, id, score,
    path, caption, with each one's top label and probability under `classification`
    (default: the active one; None when the workspace is not classified). The index is
    searched at the parameter its record holds (tuned to the recall target), or at
    `search_param` (nprobe or efSearch) when given. `out`: also write the hits to this file
    (format by extension, as filter's: parquet, csv, tsv, jsonl, json).
    """
    from .select.search import out_writer, write_hits
    from .select.search import search as search_items

    # before any model loads: an empty query is refused at once
    q = query if isinstance(query, SearchQuery) else SearchQuery(text=query)
    if out is not None:
        out_writer(out)
    ws_path = must_exist(workspace)
    with Workspace(ws_path).reading():  # one connection: the search and the file its hits go to
        hits = search_items(ws_path, q, k=k, device=device, classification=classification,
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


@check.params(workspace=check.path(), spec=check.options(SampleSpec, none=True), set_name=check.text(none=True),
              replace=check.flag())
def sample(workspace: str | Path = "ws", spec: SampleSpec | None = None, *, set_name: str | None = None,
           replace: bool = False) -> Sample:
    """Draw a review set: the study's stratified sample, reproducible from its seed.

    `spec` is how it is drawn (`curate sample`'s options: SampleSpec; None: its defaults),
    `set_name` the set's name (default: MODE-topNxM-seedS); the set remembers the
    classification it was drawn from.
    """
    spec = spec or SampleSpec()
    ws_path = must_exist(workspace)
    with Workspace(ws_path).writing() as con:
        sampling.ensure_schema(con)
        rs = sampling.draw(con, spec, name=set_name, replace=replace)
        found = sampling.classes(con, rs.name)
        drawn = dict(con.execute("SELECT label, count(*) FROM review_items WHERE set_name = ? GROUP BY label",
                                 [rs.name]).fetchall())
        done = marks_mod.progress(con, rs.name).done
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
    classification=check.text(none=True), options=check.options(ReportOptions, none=True))
def report(workspace: str | Path | None = "ws", *, set_name: str | None = None, marks: str | Path | None = None,
           out: str | Path = "report", classification: str | None = None,
           options: ReportOptions | None = None) -> ReportResult:
    """Accuracy per class, the threshold table, coverage and calibration from the review marks,
    written to the folder `out` (CSV, HTML, PNG; replaced whole).

    The options are `curate report`'s: the review set `set_name` (default: the latest), or a
    CSV sheet `marks` (label, prob, mark) instead of the workspace; `options` how the study is
    computed and drawn (ReportOptions: thresholds, calibration, grids, plots, intervals). The calibration fitted on
    the marks is saved in the workspace for `filter(calibrated=True)`. The report reads the
    classification the set was drawn from; `classification` picks the latest set drawn from it.
    Every estimate comes with its interval at `level`; `interval`: "wilson" or "exact"
    (Clopper-Pearson) for the proportions (curate/validate/intervals.py).
    """
    o = options or ReportOptions()
    min_hit_rate, target_precision, min_support, level, interval = (o.min_hit_rate, o.target_precision,
                                                                   o.min_support, o.level, o.interval)
    out = Path(out)
    cal = None
    no_cal = not_saved = None
    problems: list[str] = []
    if marks is not None:
        rep = report_mod.from_sheet(marks, min_hit_rate, level, interval)
        problems = list(rep.problems)
    else:
        ws_path = must_exist(workspace if workspace is not None else "ws")
        with Workspace(ws_path).reading() as con:  # a reader: it runs beside the review page
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
        if cal is not None:  # saving it for `filter --calibrated` takes the write lock for a moment
            try:
                with Workspace(ws_path).writing() as con:
                    sampling.ensure_schema(con)
                    calibration.save(con, cal)
            except WorkspaceBusy as e:
                not_saved = str(e)
    files = report_render.write(rep, out, o.grid_size, o.plots)
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
    with Workspace(ws_path).reading() as con:
        cmp = compare_mod.compare(con, list(names), min_prob)
    files = compare_render.write(cmp, out) if out is not None else []
    return Compared(cmp, Path(out) if out is not None else None, files)


# --------------------------------------------------------------------------- dedup

@check.params(workspace=check.path(), threshold=check.number(0, 1, lo_open=True, none=True), kind=check.text(),
              fresh=check.flag(), by=check.choice(DEDUP_BY), quiet=check.flag(none=True))
def dedup(workspace: str | Path = "ws", *, threshold: float | None = None, kind: str = "image",
          fresh: bool = False, by: str = "auto", quiet: bool | None = None) -> DedupResult:
    """Find near-duplicate groups and store them in the table `duplicates` (view `duplicate_groups`).

    kind "image": images at cosine >= `threshold` (default 0.94) on their embeddings, through the
    image index; a rerun queries only vectors embedded since (`fresh`: all again). kind
    "caption-text": items whose captions are equal after normalising whitespace and case.
    `by`: "clusters", "index" or "auto" (select/dedup.py's find_duplicates says which is used when).
    """
    from .select.dedup import DEFAULT_THRESHOLD, DedupError, find_duplicates

    ws_path = must_exist(workspace)
    if kind != "image" and threshold is not None:
        raise DedupError("--threshold is for --kind image (caption-text groups are equal texts)")
    with Progress("dedup", None, "vector", enabled=_enabled(quiet)) as bar:
        return find_duplicates(ws_path, kind, DEFAULT_THRESHOLD if threshold is None else threshold,
                               fresh=fresh, by=by, progress=bar.update)
