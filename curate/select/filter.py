"""Filter outputs: the kept items as parquet, CSV or JSONL, and their files copied or linked.

The selection is the SQL macro `subset(...)` of queries/subsets.sql; every value a
user gives (labels, threshold, weights, the output file name) reaches DuckDB as a
bound parameter. The output format comes from the file's extension, or `fmt_name`
(webdataset shards, embeddings and the provenance: exports.py).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np

from ..classify import calibrated, registry, state
from ..classify.labels import check_labels
from ..classify.scoring import ENSEMBLE_TEXT_MIN, ENSEMBLE_TEXT_WEIGHT
from ..core import check, sql
from ..core.outputs import (
    PARTIAL,
    SUFFIXES,
    WRITERS,
    RowWriter,
    check_output,
    partial_path,
    write_atomic,
    writer_for,
)
from ..core.workspace import Workspace
from ..errors import InputError, OutputError
from . import dedup, exports

# the extensions a subset file may have; --format NAME: a row writer's name, or webdataset (a folder of tar shards)
FORMATS = tuple(SUFFIXES)
FORMAT_NAMES = (*WRITERS, "webdataset")
MODES = tuple(state.PREDICTION_VIEWS)


class FilterError(InputError, ValueError):
    """A filter that cannot run as asked (bad options, nothing classified yet)."""


@dataclass(frozen=True)
class FilterSpec:
    """What `curate filter` selects: its options, checked as given (one label string is one
    label; `where` takes "COLUMN=VALUE" strings or (column, value) pairs)."""
    labels: tuple[str, ...] = ()       # empty: any label
    min_prob: float = 0.5
    mode: str = "image"                # image | caption | ensemble
    unmatched: bool = False            # keep what no label claims at min_prob instead
    text_weight: float = ENSEMBLE_TEXT_WEIGHT   # ensemble only, as in ensemble_with
    text_min: float = ENSEMBLE_TEXT_MIN
    image_min: float = 0.0
    image_max: float = 1.0
    renormalize: bool = True
    calibrated: bool = False           # calibrated probabilities and per-class thresholds (curate report)
    where: tuple[tuple[str, str], ...] = ()   # (items column, text value): one column's values OR, columns AND
    classification: str | None = None  # a named classification (registry.py); None: the active one
    dedup: bool = False                # one image per duplicate group (dedup.py); with unmatched: what it removes

    def __post_init__(self) -> None:
        check.fields(self, labels=check.names(), min_prob=check.probability(), mode=check.text(),
                     unmatched=check.flag(), text_weight=check.probability(), text_min=check.probability(),
                     image_min=check.probability(), image_max=check.probability(), renormalize=check.flag(),
                     calibrated=check.flag(), where=check.conditions(), classification=check.text(none=True),
                     dedup=check.flag())
        object.__setattr__(self, "where", tuple(p for w in self.where
                                                for p in (parse_where((w,)) if isinstance(w, str) else (w,))))

    def sql_mode(self, settings: dict) -> str:
        """The SQL mode: the stored `ensemble` when its parameters are the study's, else ensemble_with."""
        if self.mode != "ensemble":
            return self.mode
        stored = (settings["ensemble_text_weight"], settings["ensemble_text_min"], 0.0, 1.0, True)
        asked = (self.text_weight, self.text_min, self.image_min, self.image_max, self.renormalize)
        return "ensemble" if asked == stored else "ensemble_with"

    def params(self, settings: dict) -> list:
        """The bound parameters of `subset(...)` / `subset_predictions(...)`, in order."""
        return [self.sql_mode(settings), list(self.labels), float(self.min_prob), self.unmatched and not self.dedup,
                float(self.text_weight), float(self.text_min), float(self.image_min), float(self.image_max),
                self.renormalize]


SUBSET_CALL = ("(?, ?, ?, unmatched := ?, text_weight := ?, text_min := ?, image_min := ?, image_max := ?, "
               "renormalize := ?)")


@dataclass(frozen=True)
class FilterOutput:
    """Where `curate filter` writes the selection: a file (format by extension, or `format`; with
    format "webdataset" a folder of tar shards of `shard_size` samples), the kept rows' embeddings
    beside it, the files copied or linked into a folder (`clean`: first remove what earlier runs
    of curate placed there). Nothing given: the selection is counted only."""
    out: str | Path | None = None
    format: str | None = None
    shard_size: int = exports.SHARD_SIZE
    with_embeddings: bool = False
    copy_to: str | Path | None = None
    link_to: str | Path | None = None
    clean: bool = False

    def __post_init__(self) -> None:
        check.fields(self, out=check.path(none=True), format=check.text(none=True), shard_size=check.integer(1),
                     with_embeddings=check.flag(), copy_to=check.path(none=True), link_to=check.path(none=True),
                     clean=check.flag())
        if self.clean and not (self.copy_to or self.link_to):
            raise FilterError("--clean empties a --copy-to or --link-to folder: give one")


@dataclass(frozen=True)
class FilterResult:
    kept: int
    total: int
    out: Path | None
    files_done: int = 0                # copied or linked
    files_missing: int = 0             # source file gone
    inexact: int = 0                   # ensemble rows whose top label is not provably the full argmax
    unscored: int = 0                  # embedded items classify has not seen (run it again)
    removed: int = 0                   # files of earlier runs removed from the folder (--clean)
    others: int = 0                    # files in the folder that curate did not place there
    earlier: int = 0                   # files placed by earlier runs that this run did not place
    exported: exports.Exported | None = None   # webdataset shards, embeddings written
    refused: int = 0                   # lines of the folder's record left alone (outside it, through a link)

    def summary(self, spec: FilterSpec) -> str:
        rule = (f"calibrated {spec.mode} prob >= its class threshold" if spec.calibrated
                else f"{spec.mode} prob >= {spec.min_prob:g}")
        if spec.unmatched and spec.dedup:
            what = ", ".join(spec.labels) or "any label"
            line = (f"dedup removed {self.kept:,} of {self.total:,} images ({what}, prob >= {spec.min_prob:g}"
                    f"{describe_where(spec.where)}: the duplicates --dedup leaves out, with their group)")
        elif spec.unmatched:
            line = (f"unmatched: {self.kept:,} of {self.total:,} images (no label with {rule}"
                    f"{describe_where(spec.where)}: what cleaning drops)")
        else:
            what = ", ".join(spec.labels) or "any label"
            line = (f"kept {self.kept:,} of {self.total:,} images ({what}, {rule}{describe_where(spec.where)}"
                    f"{', one per duplicate group' if spec.dedup else ''})")
        if self.out is not None:
            line += f" -> {self.out}"
        return line


def validate(spec: FilterSpec) -> None:
    if spec.mode not in MODES:
        raise FilterError(f"mode must be one of {', '.join(MODES)}, not {spec.mode!r}")
    if spec.unmatched and spec.labels and not spec.dedup:
        raise FilterError("--unmatched keeps what no label claims: it takes no --label")
    for name in ("min_prob", "text_weight", "text_min", "image_min", "image_max"):
        v = getattr(spec, name)
        if not 0.0 <= v <= 1.0:
            raise FilterError(f"{name.replace('_', '-')} must lie in [0, 1], not {v}")


@contextlib.contextmanager
def scored(ws_path: str | Path, classification: str | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection to a workspace that `classify` has run on, reading the named
    classification (None: the active one): the workspace's `reading()` scope."""
    ws = Workspace(ws_path)
    with ws.reading() as con:
        registry.select(con, classification)
        state.require_complete(con, f"the workspace {ws.root}")
        # (item_extras comes with any read-write connect of this version: classify makes both)
        if not sql.has_macro(con, "subset") or not sql.has_relation(con, "item_extras"):
            raise state.NotReady(f"the workspace {ws.root} has no views yet: run `curate classify` first")
        yield con


def write_subset(ws_path: str | Path, spec: FilterSpec, output: FilterOutput | str | Path | None, *,
                 command: str | None = None,
                 inspect: Callable[[duckdb.DuckDBPyConnection], object] | None = None) -> FilterResult:
    """Select with `subset(...)`, write it where `output` says (a bare path: that file, format by
    extension; None: counted only), copy or link the files.

    The file is whole or absent: written under a temporary name beside it and renamed (a
    webdataset folder: beside it, swapped in whole). Parquet carries the provenance
    (`command`, the model, labels, thresholds...) in its key-value metadata.
    `inspect`: called with the connection while the TEMP table `kept` holds the subset
    (curate.api.filter estimates its precision from the review marks there).
    """
    o = output if isinstance(output, FilterOutput) else FilterOutput(out=output)
    out, copy_to, link_to, fmt_name = o.out, o.copy_to, o.link_to, o.format
    validate(spec)
    out_path = Path(out) if out is not None else None
    writer: type[RowWriter] | None = None
    webdataset = fmt_name == "webdataset"
    if fmt_name is not None and fmt_name not in FORMAT_NAMES:
        raise FilterError(f"unknown format {fmt_name!r}: use one of {', '.join(FORMAT_NAMES)}")
    if (fmt_name is not None or o.with_embeddings) and out_path is None:
        raise FilterError(f"{'--with-embeddings' if o.with_embeddings else '--format'} writes beside --out: give one")
    if out_path is not None and not webdataset:
        writer = WRITERS[fmt_name] if fmt_name else writer_for(out_path)
        if writer is None:
            raise FilterError(f"cannot tell the format of {out_path}: use one of {', '.join(FORMATS)}, "
                              "or --format webdataset for a folder of tar shards")
    if copy_to is not None and link_to is not None:
        raise FilterError("give --copy-to or --link-to, not both")
    # refused before any work is done (each writer checks again where it writes)
    if out_path is not None:
        check_output(out_path, "webdataset" if webdataset else "subset")
        if o.with_embeddings and not webdataset:
            for path in exports.embedding_paths(out_path).values():
                check_output(path, "embeddings")
    for folder, what in ((copy_to, "copies"), (link_to, "links")):
        if folder is not None:
            check_output(folder, what)
    with scored(ws_path, spec.classification) as con:
        known = [r[0] for r in con.execute("SELECT label FROM labels ORDER BY label_idx").fetchall()]
        check_labels(spec.labels, known)
        st = state.settings(con)
        total = _select(con, spec, st)
        if spec.where:
            _restrict(con, spec.where)
        if spec.dedup:
            dedup.restrict_kept(con, removed=spec.unmatched)
        kept = con.execute("SELECT count(*) FROM kept").fetchall()[0][0]
        exported = None
        if out_path is not None:
            prov = _provenance(con, spec, st, command)
            if webdataset:
                exported = exports.write_webdataset(ws_path, con, out_path, shard_size=o.shard_size, prov=prov,
                                                    with_embeddings=o.with_embeddings,
                                                    runner_up=_runner_up(con))
            else:
                writer(prov).write(con, "kept", out_path, "subset")
                if o.with_embeddings:
                    exported = _embeddings_beside(ws_path, con, out_path)
        placed = Placed()
        if copy_to is not None or link_to is not None:
            rows = con.execute("SELECT id, path, label FROM kept ORDER BY id").fetchall()
            placed = place_files(rows, Path(copy_to or link_to), link=link_to is not None,
                                 by_label=not spec.unmatched, clean=o.clean)
        if inspect is not None:
            inspect(con)
        return FilterResult(kept, total, out_path, placed.done, placed.missing, _inexact(con, spec, st),
                            _unscored(con), placed.removed, placed.others, placed.earlier, exported, placed.refused)


def _provenance(con: duckdb.DuckDBPyConnection, spec: FilterSpec, st: dict, command: str | None) -> dict[str, str]:
    """What made this subset, for the parquet metadata and a webdataset's curate.json."""
    name = spec.classification or registry.active(con)
    if spec.calibrated:
        cal = calibrated.load(con)
        thresholds = {"calibrated": cal.thresholds, "temperature": cal.temperature,
                      "target_precision": cal.target_precision, "unmatched": spec.unmatched}
    else:
        thresholds = {"min_prob": spec.min_prob, "unmatched": spec.unmatched}
        if spec.mode == "ensemble":
            thresholds |= {"text_weight": spec.text_weight, "text_min": spec.text_min,
                           "image_min": spec.image_min, "image_max": spec.image_max,
                           "renormalize": spec.renormalize}
    return exports.provenance(con, st, mode=spec.sql_mode(st), classification=name, thresholds=thresholds,
                              command=command or "")


def _runner_up(con: duckdb.DuckDBPyConnection) -> str:
    """A TEMP table (id, label2, prob2): each kept row's second label under the rule that kept it."""
    con.execute("CREATE OR REPLACE TEMP TABLE runner_up AS SELECT id, label2, prob2 FROM selected "
                "WHERE id IN (SELECT id FROM kept)")
    return "runner_up"


def _embeddings_beside(ws_path: str | Path, con: duckdb.DuckDBPyConnection, out: Path) -> exports.Exported:
    """The kept rows' vectors beside `out` (x.image.npy, x.caption.npy), each whole or absent."""
    ids = np.asarray([r[0] for r in con.execute("SELECT id FROM kept ORDER BY id").fetchall()], dtype=np.int64)
    res = exports.Exported()
    for kind, path in exports.embedding_paths(out).items():
        write_atomic(path, lambda tmp, kind=kind: exports.write_embeddings(ws_path, con, ids, {kind: tmp}),
                     "embeddings")
        res.embeddings.append(path)
    return res


def describe_where(where: tuple[tuple[str, str], ...]) -> str:
    """', city = newyork or boston' for the summary line; '' without --where."""
    by_col: dict[str, list[str]] = {}
    for col, value in where:
        by_col.setdefault(col, []).append(value)
    return "".join(f", {col} = {' or '.join(values)}" for col, values in by_col.items())


def parse_where(items: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """`--where COLUMN=VALUE` options as (column, value) pairs."""
    pairs = []
    for w in items:
        col, eq, value = w.partition("=")
        if not eq or not col.strip():
            raise FilterError(f"--where {w!r}: write COLUMN=VALUE, e.g. --where city=newyork")
        pairs.append((col.strip(), value))
    return tuple(pairs)


def where_clause(con: duckdb.DuckDBPyConnection, where: tuple[tuple[str, str], ...],
                 alias: str = "i") -> tuple[str, list[str]]:
    """SQL over `items AS alias` keeping the rows with one of the given values in each named column
    (compared as text), and its parameters.

    Column names come from the user: each is matched against the items table's own columns
    and quoted; values are bound parameters, never SQL text.
    """
    cols = {r[0].lower(): r[0] for r in con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_catalog = current_database() "
        "AND table_schema = 'main' AND table_name = 'items'").fetchall()}
    by_col: dict[str, list[str]] = {}
    for col, value in where:
        real = cols.get(col.lower())
        if real is None:
            own = sorted(c for c in item_columns(con) if c != "id")
            raise FilterError(f"--where {col}=...: items has no column {col!r} (its columns: {', '.join(own)})")
        by_col.setdefault(real, []).append(value)
    clause = " AND ".join(f"CAST({alias}.{sql.quote_identifier(c)} AS VARCHAR) IN ({', '.join('?' * len(v))})"
                          for c, v in by_col.items())
    return clause, [v for values in by_col.values() for v in values]


def _restrict(con: duckdb.DuckDBPyConnection, where: tuple[tuple[str, str], ...]) -> None:
    clause, params = where_clause(con, where)
    con.execute(f"DELETE FROM kept WHERE id NOT IN (SELECT i.id FROM items i WHERE {clause})", params)


def _select(con: duckdb.DuckDBPyConnection, spec: FilterSpec, st: dict) -> int:
    """The one evaluation of the selection: the TEMP table `selected` (the rows the rule keeps,
    each with its runner-up: queries/subsets.sql subset_predictions, or subset_calibrated.sql
    calibrated_selection), then `kept`, those rows as written out; returns how many items the
    mode scores (the summary's "out of")."""
    if spec.calibrated:
        _load_calibrated(con, spec)
        con.execute("CREATE OR REPLACE TEMP TABLE selected AS SELECT * FROM calibrated_selection($wanted, $unmatched)",
                    {"wanted": list(spec.labels), "unmatched": spec.unmatched and not spec.dedup})
        total = con.execute("SELECT count(*) FROM calibrated_predictions").fetchall()[0][0]
    else:
        con.execute(f"CREATE OR REPLACE TEMP TABLE selected AS SELECT * FROM subset_predictions{SUBSET_CALL}", spec.params(st))
        total = con.execute("SELECT scored_items(?)", [spec.sql_mode(st)]).fetchall()[0][0]
    threshold = ", s.class_threshold" if spec.calibrated else ""
    con.execute(f"CREATE OR REPLACE TEMP TABLE kept AS SELECT s.id, i.path, i.caption, s.label, s.prob{threshold}{extras_select(con)} "
                "FROM selected s JOIN items i ON i.id = s.id JOIN item_extras x ON x.id = s.id ORDER BY s.id")
    return total


def _load_calibrated(con: duckdb.DuckDBPyConnection, spec: FilterSpec) -> None:
    """The calibration checked against the classification read, and its macros loaded (TEMP)."""
    cal = calibrated.load(con)
    if cal is None:
        raise FilterError("no calibration in this workspace yet: mark a review set (`curate sample`, "
                          "`curate review`), then run `curate report` to fit one")
    if cal.source != spec.mode:
        raise FilterError(f"the calibration was fitted on {cal.source} predictions: use --mode {cal.source}")
    name = spec.classification or registry.active(con)
    calibrated.check_applies(con, cal, name, registry.schema(name) if name else None)
    sql.run(con, "subset_calibrated")


# The columns curate writes before the source's own; a source column of the same name
# (in any case) comes out as src_<name>, so it never takes or shifts one of curate's.
OUTPUT_COLUMNS = ("id", "path", "caption", "label", "prob", "class_threshold")


def item_columns(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The columns of the view item_extras: id, then the source's own columns of items, in order."""
    return [d[0] for d in con.execute("SELECT * FROM item_extras LIMIT 0").description]


def extras_select(con: duckdb.DuckDBPyConnection, taken: tuple[str, ...] = OUTPUT_COLUMNS) -> str:
    """The select list of the items' own columns (", x.a, x.b AS src_b" over item_extras x), each
    renamed where it would take one of the `taken` columns' names; '' when there are none."""
    out = []
    used = set(taken)
    for c in item_columns(con):
        if c == "id":
            continue
        name = c
        while name.lower() in used:  # names are case-insensitive in SQL and in most readers
            name = "src_" + name
        used.add(name.lower())
        out.append(f"x.{sql.quote_identifier(c)}" + (f" AS {sql.quote_identifier(name)}" if name != c else ""))
    return "".join(", " + x for x in out)


@dataclass
class Placed:
    done: int = 0            # copied or linked (or found in place from an earlier run)
    missing: int = 0         # source file gone
    removed: int = 0         # files of earlier runs removed first (clean)
    others: int = 0          # files in the folder curate never placed there (the user's)
    earlier: int = 0         # files curate placed in an earlier run and not in this one
    refused: int = 0         # lines of the record that lead outside the folder or through a link (left alone)


MANIFEST = ".curate-files"     # in the folder: one relative path a line, what curate placed there
RECORD_BATCH = 64              # files recorded (written and fsynced) at a time, before they are placed


def place_files(rows: list[tuple[int, str, str]], folder: Path, link: bool, by_label: bool,
                clean: bool = False) -> Placed:
    """Copy (or symlink) each item's file to folder/<label folder>/<id>_<name>.

    The id in the name keeps two photos called IMG_0001.jpg apart; an existing
    destination of the same size is taken as done, so a rerun only adds what is new.
    Each copy is written under a temporary name and renamed: a file at its final name
    is always whole.

    What curate placed is recorded in folder/.curate-files, each batch of names written
    and fsynced before those files are placed: a run killed at any moment leaves every
    file it placed recorded, so `clean` removes exactly curate's files, never the user's.
    The folder is taken as given (a link to it is followed, once: it is the user's
    choice); below it nothing is followed: a label folder or a recorded name that is now
    a link, a name leading out of the folder (`..`, absolute), is left alone and counted
    (`refused`), and a link at a recorded name is removed itself, never what it points to.
    """
    root = check_output(folder, "copies" if not link else "links")
    root.mkdir(parents=True, exist_ok=True)
    root = root.resolve()
    if not root.is_dir():
        raise OutputError(f"cannot place files in {folder}: it is not a folder")
    out = Placed()
    with _Record(root) as record:
        recorded = record.read()
        if clean:
            refused = set()
            for rel in sorted(recorded):
                status = _remove_below(record.fd, rel)
                out.removed += status == "removed"
                if status == "refused":
                    refused.add(rel)
            out.refused = len(refused)
            recorded = set()
            record.rewrite(recorded)
        placed: set[str] = set()
        label_dirs: set[str] = set()
        try:
            for start in range(0, len(rows), RECORD_BATCH):
                batch = []
                for item_id, path, label in rows[start:start + RECORD_BATCH]:
                    src = Path(path)
                    if not src.is_file():
                        out.missing += 1
                        continue
                    sub = safe_name(label) if by_label else ""
                    batch.append((src, sub, f"{sub}/{item_id}_{src.name}" if sub else f"{item_id}_{src.name}"))
                record.add(rel for _, _, rel in batch)
                for src, sub, rel in batch:
                    if sub and sub not in label_dirs:
                        _real_folder(record.fd, root, sub)
                        label_dirs.add(sub)
                    _place(src, root / rel, link, same=rel in recorded)
                    placed.add(rel)
                    out.done += 1
        finally:
            # what is recorded from now on: the earlier record and what this run placed (a
            # name recorded ahead of a failure that stopped the run is not kept)
            record.rewrite(recorded | placed)
        out.earlier = sum(1 for rel in recorded - placed if _lstat_below(record.fd, rel) is not None)
    ours = recorded | placed | {MANIFEST}
    out.others = sum(1 for rel in _entries(root) if rel not in ours)
    return out


def _place(src: Path, dst: Path, link: bool, same: bool) -> None:
    """One file at `dst`: a link to `src` or a whole copy of it (kept when an earlier run's copy
    of the same size is there already)."""
    if link:
        target = src.resolve()
        if not (dst.is_symlink() and os.readlink(dst) == str(target)):
            tmp = partial_path(dst)
            try:
                tmp.unlink(missing_ok=True)
                os.symlink(target, tmp)
                os.replace(tmp, dst)        # a link or file at dst is replaced itself, never followed
            except OSError as e:
                tmp.unlink(missing_ok=True)
                raise OutputError(f"could not link {dst}: {e.strerror or e}") from e
    elif not (same and dst.is_file() and not dst.is_symlink() and dst.stat().st_size == src.stat().st_size):
        write_atomic(dst, lambda tmp: shutil.copy2(src, tmp), checked=True)


class _Record:
    """folder/.curate-files, opened once (never through a link): read, appended batch by batch
    (fsynced), rewritten whole at the end. Every access is relative to the folder's descriptor."""

    def __init__(self, root: Path):
        self.root = root
        self.fd = -1
        self._file = -1

    def __enter__(self) -> _Record:
        self.fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            self._open()
        except BaseException:
            os.close(self.fd)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self._file)
        os.close(self.fd)

    def _open(self) -> None:
        try:
            self._file = os.open(MANIFEST, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644,
                                 dir_fd=self.fd)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.EISDIR):
                raise OutputError(f"{self.root / MANIFEST} is not curate's record of the files it placed "
                                  f"(a {'link' if e.errno == errno.ELOOP else 'folder'}): remove it, or choose "
                                  "another folder") from None
            raise OutputError(f"could not write {self.root / MANIFEST}: {e.strerror}") from e
        if not stat.S_ISREG(os.fstat(self._file).st_mode):
            raise OutputError(f"{self.root / MANIFEST} is not a regular file: remove it, or choose another folder")

    def read(self) -> set[str]:
        """The recorded names; a last line cut short by a kill (no newline) was never whole."""
        size = os.fstat(self._file).st_size
        raw = os.pread(self._file, size, 0) if size else b""
        lines = raw.decode("utf-8", errors="surrogateescape").split("\n")
        return {x for x in lines[:-1] if x}

    def add(self, rels: Iterable[str]) -> None:
        data = "".join(f"{r}\n" for r in rels).encode("utf-8", errors="surrogateescape")
        if not data:
            return
        with self._failing():
            size = os.fstat(self._file).st_size
            if size and os.pread(self._file, 1, size - 1) != b"\n":
                data = b"\n" + data         # never glue a name onto a line a kill cut short
            os.write(self._file, data)
            os.fsync(self._file)

    @contextlib.contextmanager
    def _failing(self) -> Iterator[None]:
        try:
            yield
        except OSError as e:
            full = "disk full: " if e.errno == errno.ENOSPC else ""
            raise OutputError(f"{full}could not write {self.root / MANIFEST}: {e.strerror or e}") from e

    def rewrite(self, rels: set[str]) -> None:
        with self._failing():
            self._rewrite(rels)

    def _rewrite(self, rels: set[str]) -> None:
        tmp = MANIFEST + PARTIAL
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=self.fd)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=self.fd)
        try:
            os.write(fd, "".join(f"{r}\n" for r in sorted(rels)).encode("utf-8", errors="surrogateescape"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, MANIFEST, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        os.fsync(self.fd)                   # the rename survives a crash too
        os.close(self._file)
        self._open()


def _parts(rel: str) -> list[str] | None:
    """The names of a recorded relative path; None for one that could lead out of the folder."""
    parts = rel.split("/")
    if rel.startswith("/") or "\\" in rel or any(p in ("", ".", "..") for p in parts) or "\0" in rel:
        return None
    return parts


def _walk_below(root_fd: int, rel: str) -> tuple[list[int], str] | str:
    """Descend to the folder holding `rel` without following any link: (descriptors from the
    root down, the last name), "gone" when a folder on the way is missing, "refused" when one
    is a link or not a folder (or the name could lead out of the folder)."""
    parts = _parts(rel)
    if parts is None:
        return "refused"
    fds = [root_fd]
    try:
        for name in parts[:-1]:
            fds.append(os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fds[-1]))
    except FileNotFoundError:
        _close(fds[1:])
        return "gone"
    except OSError as e:
        _close(fds[1:])
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            return "refused"
        raise
    return fds, parts[-1]


def _close(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def _lstat_below(root_fd: int, rel: str) -> os.stat_result | None:
    walked = _walk_below(root_fd, rel)
    if isinstance(walked, str):
        return None
    fds, name = walked
    try:
        return os.stat(name, dir_fd=fds[-1], follow_symlinks=False)
    except FileNotFoundError:
        return None
    finally:
        _close(fds[1:])


def _remove_below(root_fd: int, rel: str) -> str:
    """Remove the file (or link, itself) recorded at `rel` and its half-written temporary, then
    the folders it leaves empty: "removed", "gone" or "refused" (a link or a folder on the way, or
    at the name something that is neither a file nor a link)."""
    walked = _walk_below(root_fd, rel)
    if isinstance(walked, str):
        return walked
    fds, name = walked
    status = "gone"
    try:
        for i, n in enumerate((name, f".{name}{PARTIAL}")):
            try:
                st = os.stat(n, dir_fd=fds[-1], follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                if i == 0:
                    status = "refused"
                continue
            os.unlink(n, dir_fd=fds[-1])
            if i == 0:
                status = "removed"
        for depth in range(len(fds) - 1, 0, -1):    # the label folders left empty, deepest first
            try:
                os.rmdir(rel.split("/")[depth - 1], dir_fd=fds[depth - 1])
            except OSError:
                break
    finally:
        _close(fds[1:])
    return status


def _real_folder(root_fd: int, root: Path, name: str) -> None:
    """Make the label folder `name` in the folder, or check the one there is a real folder (a
    link would put copies outside the folder)."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, dir_fd=root_fd)
    st = os.stat(name, dir_fd=root_fd, follow_symlinks=False)
    if not stat.S_ISDIR(st.st_mode):
        raise OutputError(f"cannot place files in {root / name}: it is {'a link' if stat.S_ISLNK(st.st_mode) else 'not a folder'}, "
                          "and curate places files only in real folders inside the one it was given; remove it "
                          "or choose another folder")


def _entries(root: Path) -> Iterator[str]:
    """Every file and link below `root` (links not followed), as relative paths."""
    for d, dirs, files in os.walk(root):
        base = Path(d).relative_to(root)
        for name in files + [x for x in dirs if os.path.islink(os.path.join(d, x))]:
            yield (base / name).as_posix()


# Names Windows reserves for devices, with any extension (con.txt too).
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}
_PLAIN = re.compile(r"[a-z0-9][a-z0-9_.-]{0,79}")


def safe_name(label: str) -> str:
    """The folder of a label: distinct labels never share one, and every name is safe.

    A label of lowercase ASCII letters, digits, `_`, `.` and `-` (not leading with `.`
    or `-`, at most 80 characters, not a Windows device name such as `con`) is its own
    folder name. Any other label gets a readable form (other characters as `_`, cut to
    60) plus `~` and 10 hex digits of its SHA-1: `bakery/shop` -> `bakery_shop~<hash>`,
    `x y` -> `x_y~<hash>`, `..` -> `label~<hash>`. Plain names never hold `~`, so the two
    kinds never meet; upper case always takes the hashed form, so names stay distinct on
    case-insensitive file systems too.
    """
    if _PLAIN.fullmatch(label) and not label.endswith(".") and label.split(".")[0] not in _RESERVED:
        return label
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("._-")[:60].rstrip("._-") or "label"
    if readable.split(".")[0].lower() in _RESERVED:
        readable = "_" + readable
    return f"{readable}~{hashlib.sha1(label.encode('utf-8')).hexdigest()[:10]}"


def _inexact(con: duckdb.DuckDBPyConnection, spec: FilterSpec, st: dict) -> int:
    """Kept ensemble_with rows whose top label the stored top-k cannot prove (storage topk only)."""
    if spec.sql_mode(st) != "ensemble_with" or st["storage"] == "full":
        return 0
    if spec.min_prob >= 1 / st["top_k"] and not spec.unmatched:
        return 0  # at prob >= 1/k the bound on unstored labels is always cleared
    if spec.calibrated:  # the calibrated rows carry no bound: the uncalibrated rule's count, as it was
        return con.execute("SELECT count(*) FROM subset_predictions" + SUBSET_CALL + " WHERE NOT exact",
                           spec.params(st)).fetchall()[0][0]
    return con.execute("SELECT count(*) FROM selected WHERE NOT exact").fetchall()[0][0]


def _unscored(con: duckdb.DuckDBPyConnection) -> int:
    return con.execute("SELECT (SELECT count(*) FROM items WHERE status = 'embedded') - "
                       "(SELECT count(*) FROM item_scores WHERE image_label IS NOT NULL)").fetchall()[0][0]
