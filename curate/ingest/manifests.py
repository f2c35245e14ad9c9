"""Manifests (CSV, TSV, JSONL, parquet) read exactly as written.

Ids, paths and captions are text, always. A CSV/TSV/JSONL column is kept as the text
the file holds (no type guessing: `01/02/2023`, `007`, `1.10`, `true` stay as written;
a JSON number, bool, object or array is kept as its JSON text); parquet columns keep
the types the file declares. `infer_types` (build-index --infer-types) asks for types
instead: DuckDB's CSV sniffer, and JSON's own value types. An empty value is NULL in
every format (CSV cannot tell the two apart).

Files are read by DuckDB, so a manifest of any size streams. A file that is not UTF-8
(UTF-16 with a BOM, or cp1252 lines) is first copied to a UTF-8 temporary file; each
line that is not UTF-8 is read as cp1252 and the scan says how many were.
"""

from __future__ import annotations

import codecs
import posixpath
import re
import tempfile
from pathlib import Path

import duckdb

from ..core.sql import quote_identifier
from .sources import (
    MANIFEST_EXTENSIONS,
    ScanResult,
    Source,
    SourceError,
    clean_sql,
    column_targets,
    record_rejects,
)

ROLES = ("id", "path", "caption")
_NOT_NORMAL = r"(^|/)\.\.?(/|$)|//"


def scan_manifest(con: duckdb.DuckDBPyConnection, src: Source, source_no: int, run_id: int,
                  infer_types: bool = False) -> ScanResult:
    m = src.manifest
    assert m is not None
    fmt = MANIFEST_EXTENSIONS[m.suffix.lower()]
    res = ScanResult()
    with tempfile.TemporaryDirectory(prefix="curate-manifest-") as tmp:
        try:
            names, types = _load(con, m, fmt, infer_types, res, Path(tmp))
        except duckdb.Error as e:
            raise SourceError(f"{m}: cannot read as {fmt}: {str(e).splitlines()[0]}") from None
    try:
        return _ingest(con, src, m, source_no, run_id, names, types, res)
    finally:
        con.execute("DROP TABLE IF EXISTS manifest_raw; DROP TABLE IF EXISTS manifest_rows")


def roles_of(names: list[str]) -> dict[str, int]:
    """Which column is the id, the path, the caption: the one named exactly so, else the first
    whose name is the same in another case or with spaces around (`Caption`, ` PATH`)."""
    out = {}
    for role in ROLES:
        exact = [i for i, n in enumerate(names) if n == role]
        loose = [i for i, n in enumerate(names) if n.strip().lower() == role]
        if exact or loose:
            out[role] = (exact or loose)[0]
    return out


# -- reading: every format becomes TEMP TABLE manifest_raw(_row, c0, c1, ... [, _bad]) ---------

def _load(con, m: Path, fmt: str, infer: bool, res: ScanResult, tmp: Path) -> tuple[list[str], list[str]]:
    if fmt == "parquet":
        desc = con.execute("DESCRIBE SELECT * FROM read_parquet(?)", [str(m)]).fetchall()
        names, types = [r[0] for r in desc], [r[1] for r in desc]
        roles = set(roles_of(names).values())
        cols = ", ".join(
            (f"CAST({quote_identifier(n)} AS VARCHAR)" if i in roles else quote_identifier(n)) + f" AS c{i}"
            for i, n in enumerate(names))
        con.execute(f"CREATE OR REPLACE TEMP TABLE manifest_raw AS "
                    f"SELECT row_number() OVER () AS _row, {cols}, false AS _bad FROM read_parquet(?)", [str(m)])
        return names, ["VARCHAR" if i in roles else t for i, t in enumerate(types)]
    path = _utf8_file(m, tmp, res, lambda p: _try_read(con, p, fmt, m))
    if fmt == "csv":
        return _load_csv(con, path, m.suffix.lower() == ".tsv", infer)
    return _load_jsonl(con, path, infer)


def _try_read(con, p: Path, fmt: str, m: Path) -> None:
    if fmt == "csv":
        con.execute(f"SELECT count(*) FROM {_csv_reader(m.suffix.lower() == '.tsv')}", [str(p)]).fetchall()
    else:
        con.execute("SELECT count(*) FROM read_json_objects(?, format = 'newline_delimited')", [str(p)]).fetchall()


def _csv_reader(tsv: bool, header: bool = False, extra: str = "") -> str:
    delim = ", delim = '\\t'" if tsv else ""
    cast = "" if header else ", all_varchar = true"
    return (f"read_csv(?, header = {str(header).lower()}{cast}, sample_size = -1"
            f"{delim}{extra})")


def _load_csv(con, path: Path, tsv: bool, infer: bool) -> tuple[list[str], list[str]]:
    # header = false: the header line is read as data, so names are exactly as written
    # (DuckDB would rename `city` after `City` to `city_1`), and every value is text.
    con.execute(f"CREATE OR REPLACE TEMP TABLE manifest_all AS "
                f"SELECT row_number() OVER () AS _n, * FROM {_csv_reader(tsv)}", [str(path)])
    cols = [r[0] for r in con.execute("DESCRIBE manifest_all").fetchall()][1:]
    head = con.execute("SELECT * FROM manifest_all WHERE _n = 1").fetchall()
    names = [v or "" for v in head[0][1:]] if head else []
    if not infer:
        sel = ", ".join(f"{quote_identifier(c)} AS c{i}" for i, c in enumerate(cols))
        con.execute(f"CREATE OR REPLACE TEMP TABLE manifest_raw AS "
                    f"SELECT _n - 1 AS _row, {sel}, false AS _bad FROM manifest_all WHERE _n > 1")
        con.execute("DROP TABLE manifest_all")
        return names, ["VARCHAR"] * len(names)
    con.execute("DROP TABLE manifest_all")
    roles = set(roles_of(names).values())
    positional = [f"c{i}" for i in range(len(names))]
    forced = "{" + ", ".join(f"'c{i}': 'VARCHAR'" for i in sorted(roles)) + "}"
    extra = f", names = {positional!r}" + (f", types = {forced}" if roles else "")
    con.execute(f"CREATE OR REPLACE TEMP TABLE manifest_raw AS SELECT row_number() OVER () AS _row, *, "
                f"false AS _bad FROM {_csv_reader(tsv, header=True, extra=extra)}", [str(path)])
    types = {r[0]: r[1] for r in con.execute("DESCRIBE manifest_raw").fetchall()}
    return names, [types[c] for c in positional]


def _pointer(key: str) -> str:
    return "/" + key.replace("~", "~0").replace("/", "~1")


def _load_jsonl(con, path: Path, infer: bool) -> tuple[list[str], list[str]]:
    con.execute("CREATE OR REPLACE TEMP TABLE manifest_json AS SELECT row_number() OVER () AS _row, json "
                "FROM read_json_objects(?, format = 'newline_delimited')", [str(path)])
    # Keys in the order they first appear.
    names = [r[0] for r in con.execute(
        """
        SELECT k FROM (SELECT _row, unnest(json_keys(json)) AS k, generate_subscripts(json_keys(json), 1) AS pos
                       FROM manifest_json WHERE json_type(json) = 'OBJECT')
        GROUP BY k ORDER BY min(_row), arg_min(pos, _row)
        """).fetchall()]
    types = ["VARCHAR"] * len(names)
    roles = set(roles_of(names).values())
    if infer and names:
        kinds = con.execute("SELECT " + ", ".join(
            "list_distinct(list(json_type(json -> ?)) FILTER (WHERE json_type(json -> ?) <> 'NULL'))" for _ in names)
            + " FROM manifest_json", [p for n in names for p in (_pointer(n), _pointer(n))]).fetchall()[0]
        for i, k in enumerate(kinds):
            k = set(k or [])
            if i in roles or not k:
                continue
            if k == {"BIGINT"}:
                types[i] = "BIGINT"
            elif k <= {"BIGINT", "UBIGINT", "DOUBLE"}:
                types[i] = "DOUBLE"
            elif k == {"BOOLEAN"}:
                types[i] = "BOOLEAN"
    sel = "".join(f", CAST(json ->> ? AS {t}) AS c{i}" for i, t in enumerate(types))
    con.execute(f"CREATE OR REPLACE TEMP TABLE manifest_raw AS SELECT _row{sel}, "
                f"json_type(json) <> 'OBJECT' AS _bad FROM manifest_json", [_pointer(n) for n in names])
    con.execute("DROP TABLE manifest_json")
    return names, types


def _utf8_file(m: Path, tmp: Path, res: ScanResult, try_read) -> Path:
    """m itself when DuckDB reads it as UTF-8, else a UTF-8 copy in tmp."""
    with open(m, "rb") as f:
        head = f.read(4)
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        out = tmp / ("utf8" + m.suffix)
        with open(m, "rb") as f, open(out, "w", encoding="utf-8", newline="") as g:
            dec = codecs.getincrementaldecoder("utf-16")(errors="replace")
            while chunk := f.read(1 << 20):
                g.write(dec.decode(chunk))
            g.write(dec.decode(b"", final=True))
        res.notes.append(f"{m.name}: read as UTF-16")
        return out
    try:
        try_read(m)
        return m
    except duckdb.Error as e:
        if not re.search(r"unicode|utf-?8", str(e), re.IGNORECASE):
            raise
    out = tmp / ("utf8" + m.suffix)
    n = 0
    with open(m, "rb") as f, open(out, "wb") as g:
        for line in f:
            try:
                line.decode("utf-8")
                g.write(line)
            except UnicodeDecodeError:
                n += 1
                try:
                    text = line.decode("cp1252")
                except UnicodeDecodeError:  # the 5 bytes cp1252 leaves undefined
                    text = line.decode("latin-1")
                g.write(text.encode("utf-8"))
    res.notes.append(f"{m.name}: {n} line(s) not UTF-8, read as cp1252")
    return out


# -- into items ------------------------------------------------------------------------------

def _ingest(con, src: Source, m: Path, source_no: int, run_id: int, names: list[str], types: list[str],
            res: ScanResult) -> ScanResult:
    names = [n if n.strip() else f"column{i}" for i, n in enumerate(names, 1)]  # position in the file
    roles = roles_of(names)
    if "path" not in roles:
        raise SourceError(f"{m}: a manifest needs a 'path' column (found: {', '.join(names) or 'no columns'})")
    extras = [i for i in range(len(names)) if i not in roles.values()]
    targets = column_targets([names[i] for i in extras])

    col = {role: f"c{i}" for role, i in roles.items()}
    path = clean_sql(col["path"])
    sid = f"coalesce({clean_sql(col['id'])}, {path})" if "id" in col else path
    cap = clean_sql(col["caption"]) if "caption" in col else "CAST(NULL AS VARCHAR)"
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE manifest_rows AS
        SELECT _row, _sid, _rel, CASE WHEN starts_with(_rel, '/') THEN _rel ELSE ? || '/' || _rel END AS _path,
               _caption, _bad, min(_row) OVER (PARTITION BY _sid) AS _first
        FROM (SELECT _row, CASE WHEN NOT _bad THEN {sid} END AS _sid, CASE WHEN NOT _bad THEN {path} END AS _rel,
                     {cap} AS _caption, _bad FROM manifest_raw)
        """,
        [str(src.root)],
    )
    _normalise_paths(con)
    res.seen = con.execute("SELECT count(*) FROM manifest_rows").fetchall()[0][0]

    # Rows not taken: not an object (JSONL), no path, or an id seen on an earlier row.
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE scan_rejects AS
        SELECT NULL::BIGINT AS item_id, _sid AS source_id, _path AS path,
               'manifest ' || ? || ' row ' || _row || ': ' ||
               CASE WHEN _bad THEN 'not a JSON object'
                    WHEN _rel IS NULL THEN 'empty path'
                    ELSE 'duplicate id "' || _sid || '" (first on row ' || _first || ')' END AS reason,
               'scan' AS stage
        FROM manifest_rows WHERE _bad OR _rel IS NULL OR _row > _first
        ORDER BY _row
        """,
        [str(m)],
    )
    res.not_taken = con.execute("SELECT count(*) FROM scan_rejects").fetchall()[0][0]
    record_rejects(con, source_no, run_id)

    exprs = _extra_columns(con, [f"c{i}" for i in extras], targets, [types[i] for i in extras], m, res)
    before = con.execute("SELECT count(*) FROM items").fetchall()[0][0]
    cols = "".join(", " + quote_identifier(t) for t in targets)
    vals = "".join(", " + e for e in exprs)
    con.execute(
        f"""
        INSERT INTO items (id, source_id, path, caption, status, run_id, source_no{cols})
        SELECT next_item_id() - 1 + row_number() OVER (ORDER BY r._row),
               r._sid, r._path, r._caption, 'pending', ?, ?{vals}
        FROM manifest_rows r JOIN manifest_raw USING (_row)
        WHERE NOT r._bad AND r._rel IS NOT NULL AND r._row = r._first
          AND NOT EXISTS (SELECT 1 FROM items i WHERE i.source_no = ? AND i.source_id = r._sid)
        """,
        [run_id, source_no, source_no],
    )
    res.added = con.execute("SELECT count(*) FROM items").fetchall()[0][0] - before
    return res


def _normalise_paths(con) -> None:
    """`a/../b`, `./a`, `a//b` resolved (lexically); only the few rows that need it go through Python."""
    odd = con.execute("SELECT _row, _path FROM manifest_rows WHERE regexp_matches(_path, ?)", [_NOT_NORMAL]).fetchall()
    if not odd:
        return
    con.execute("CREATE OR REPLACE TEMP TABLE path_fixes (_row BIGINT, p VARCHAR)")
    con.executemany("INSERT INTO path_fixes VALUES (?, ?)", [(r, posixpath.normpath(p)) for r, p in odd])
    con.execute("UPDATE manifest_rows SET _path = f.p FROM path_fixes f WHERE manifest_rows._row = f._row")
    con.execute("DROP TABLE path_fixes")


def _extra_columns(con, cols: list[str], targets: list[str], types: list[str], m: Path,
                   res: ScanResult) -> list[str]:
    """Add the manifest's own columns to `items`; the SQL that fills each one.

    A column already in `items` with another type (an earlier manifest's) becomes text,
    with the values it had as text: stored, never refused."""
    have = {r[0].lower(): (r[0], r[1]) for r in con.execute("DESCRIBE items").fetchall()}
    out = []
    for col, target, typ in zip(cols, targets, types, strict=True):
        val = f"nullif(manifest_raw.{col}, '')" if typ == "VARCHAR" else f"manifest_raw.{col}"
        if target.lower() not in have:
            con.execute(f"ALTER TABLE items ADD COLUMN {quote_identifier(target)} {typ}")
            out.append(val)
            continue
        name, existing = have[target.lower()]
        if existing == typ:
            out.append(val)
            continue
        if existing != "VARCHAR":
            con.execute(f"ALTER TABLE items ALTER COLUMN {quote_identifier(name)} TYPE VARCHAR")
            res.notes.append(f"column {name} held {existing}; {m.name} gives {typ}: it is text now")
        out.append(f"CAST({val} AS VARCHAR)")
    return out
