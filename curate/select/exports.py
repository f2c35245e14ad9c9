"""What a training pipeline reads from a filter: webdataset shards, embeddings beside a subset,
and the provenance every output carries.

`write_subset` (filter.py) selects the kept rows into the TEMP table `kept`; this module
writes them out in the forms training code loads without curate:

- webdataset: tar shards of `{id}.jpg` (the file's original bytes), `{id}.txt` (caption)
  and `{id}.json` (every column of the row, with the runner-up label), `--shard-size`
  samples per shard, in id order, plus `curate.json` (the provenance) in the folder;
- embeddings: the stored image and caption vectors of the kept rows, aligned to them, as
  `.npy` beside the subset (float32 [rows, d], L2-normalised; a row with no caption
  vector is NaN). npy, not a parquet list column: it is the workspace's own format (no
  conversion, no loss), memory-maps, works beside CSV/JSONL too, and clip-retrieval's
  tools read embedding folders of npy files; a 512-float list per row would also make
  every reader of the parquet load vectors it may not want.
"""

from __future__ import annotations

import io
import json
import shlex
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np

from .. import __version__
from ..core import store
from ..core.output_folder import replace_folder
from ..core.workspace import Workspace

SHARD_SIZE = 10_000           # samples per tar shard (webdataset's own ShardWriter default is 100,000)
SHARD_NAME = "shard-{:06d}.tar"
PROVENANCE_FILE = "curate.json"
KINDS = ("image", "caption")


@dataclass
class Exported:
    shards: list[Path] = field(default_factory=list)   # webdataset tar files, in order
    samples: int = 0                                   # written to the shards
    missing: int = 0                                   # kept rows whose file is gone (not in the shards)
    bytes: int = 0                                     # the shards' size on disk
    embeddings: list[Path] = field(default_factory=list)   # .npy files written


# -- provenance ---------------------------------------------------------------------------

def provenance(con: duckdb.DuckDBPyConnection, settings: dict, *, mode: str, classification: str | None,
               thresholds: dict, command: str) -> dict[str, str]:
    """The key-value metadata of a filter output: what made it, every value as text.

    Keys are `curate.<name>`: version, model, pretrained, label_set, prompts (the wording),
    logit_scale, mode, ensemble (its parameters, JSON; ensemble modes only),
    thresholds (JSON), classification, command.
    """
    model = _meta_json(con, "model") or {}
    prov = {
        "version": __version__,
        "model": model.get("model") or settings.get("model"),
        "pretrained": model.get("pretrained"),
        "label_set": settings.get("label_set"),
        "prompts": settings.get("prompts"),
        "logit_scale": settings.get("logit_scale"),
        "mode": mode,
        "thresholds": json.dumps(thresholds, sort_keys=True),
        "classification": classification,
        "command": command,
    }
    if mode.startswith("ensemble"):
        prov["ensemble"] = json.dumps({k: v for k, v in thresholds.items() if k != "min_prob"}
                                      | {"stored_text_weight": settings.get("ensemble_text_weight"),
                                         "stored_text_min": settings.get("ensemble_text_min")},
                                      sort_keys=True, default=str)
    return {f"curate.{k}": "" if v is None else str(v) for k, v in prov.items()}


def command_line(ws_path: str | Path, options: list[tuple[str, object]]) -> str:
    """The `curate filter` command that makes the same output, for the provenance: options
    given as (flag, value) pairs, a value of True a bare flag, None/False/() left out."""
    words = ["curate", "filter", "-w", str(ws_path)]
    for flag, value in options:
        if value is None or value is False or value == ():
            continue
        if value is True:
            words.append(flag)
        elif isinstance(value, (list, tuple)):
            for v in value:
                words += [flag, "=".join(v) if isinstance(v, tuple) else str(v)]
        else:
            words += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    return shlex.join(words)


def _meta_json(con: duckdb.DuckDBPyConnection, key: str) -> dict | None:
    raw = Workspace.get_meta(con, key)
    try:
        return json.loads(raw) if raw is not None else None
    except (TypeError, ValueError):
        return None


# -- embeddings ---------------------------------------------------------------------------

def embedding_paths(out: Path, folder: bool = False) -> dict[str, Path]:
    """Where the vectors of a subset go: beside a file `x.parquet` as `x.image.npy` and
    `x.caption.npy`; inside a webdataset folder as `image.npy`, `caption.npy`."""
    if folder:
        return {k: out / f"{k}.npy" for k in KINDS}
    return {k: out.with_name(f"{out.stem}.{k}.npy") for k in KINDS}


def write_embeddings(ws_path: str | Path, con: duckdb.DuckDBPyConnection, ids: np.ndarray,
                     paths: dict[str, Path]) -> list[Path]:
    """Write, for each kind, the stored vectors of `ids` (row i: the vector of ids[i]) to paths[kind].

    The shards are streamed once per kind (bounded memory); the output is a memory-mapped
    npy, so no vector matrix of the whole subset is held either. A row whose item has no
    vector of that kind (no caption) is NaN.
    """
    ws = Workspace(ws_path)
    ids = np.asarray(ids, dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    written = []
    for kind, path in paths.items():
        dim = _dim(ws, con, kind)
        arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(len(ids), dim))
        arr[:] = np.nan
        if len(ids) and dim:
            for bids, vecs in store.iter_embeddings(ws, con, kind):
                pos = np.searchsorted(sorted_ids, bids)
                pos_c = np.minimum(pos, len(sorted_ids) - 1)
                hit = sorted_ids[pos_c] == bids
                arr[order[pos_c[hit]]] = vecs[hit]
        arr.flush()
        del arr
        written.append(path)
    return written


def _dim(ws: Workspace, con: duckdb.DuckDBPyConnection, kind: str) -> int:
    """The vectors' dimension: the kind's first shard, else the model's embed_dim."""
    for shard in store.shard_files(ws, con, kind):
        return int(store.open_shard(shard)[1].shape[1])
    return int((_meta_json(con, "model") or {}).get("embed_dim") or 0)


# -- webdataset ---------------------------------------------------------------------------

def write_webdataset(ws_path: str | Path, con: duckdb.DuckDBPyConnection, out: Path, *,
                     shard_size: int, prov: dict[str, str], with_embeddings: bool,
                     runner_up: str | None) -> Exported:
    """The TEMP table `kept` as webdataset tar shards in the folder `out`, written whole
    (output_folder.replace_folder: a rerun replaces the earlier shards, a killed run leaves them).

    `runner_up`: a relation (id, label2, prob2) joined for each sample's `.json` (as
    `runner_up`, `runner_up_prob`).
    A sample's key is curate's id; its image member keeps the file's extension (`.jpg` for
    .jpg/.jpeg, else as it is: `.png`, `.webp`). A row whose file is gone is left out and counted.
    """
    res = Exported()
    join = f" LEFT JOIN {runner_up} r ON r.id = k.id" if runner_up else ""
    extra = ", r.label2 AS runner_up, r.prob2 AS runner_up_prob" if runner_up else ""

    def fill(folder: Path) -> list[Path]:
        rel = con.execute(f"SELECT k.*{extra} FROM kept k{join} ORDER BY k.id")
        cols = [d[0] for d in rel.description]
        ids: list[int] = []
        tar = None
        try:
            while rows := rel.fetchmany(1024):
                for row in rows:
                    rec = dict(zip(cols, row, strict=True))
                    src = Path(rec["path"])
                    try:
                        data = src.read_bytes()
                    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                        res.missing += 1
                        continue
                    if tar is None or res.samples % shard_size == 0 and res.samples:
                        if tar is not None:
                            tar.close()
                        res.shards.append(folder / SHARD_NAME.format(len(res.shards)))
                        tar = tarfile.open(res.shards[-1], "w", format=tarfile.PAX_FORMAT)
                    key = str(rec["id"])
                    ext = src.suffix.lower()
                    ext = ".jpg" if ext in (".jpg", ".jpeg", "") else ext
                    _add(tar, key + ext, data)
                    _add(tar, key + ".txt", (rec["caption"] or "").encode("utf-8"))
                    _add(tar, key + ".json", json.dumps(rec, ensure_ascii=False, default=str).encode("utf-8"))
                    ids.append(int(rec["id"]))
                    res.samples += 1
        finally:
            if tar is not None:
                tar.close()
        files = list(res.shards)
        (folder / PROVENANCE_FILE).write_text(json.dumps(prov, indent=1, ensure_ascii=False) + "\n",
                                              encoding="utf-8")
        files.append(folder / PROVENANCE_FILE)
        if with_embeddings:
            paths = embedding_paths(folder, folder=True) | {"ids": folder / "ids.npy"}
            np.save(paths.pop("ids"), np.asarray(ids, dtype=np.int64))
            res.embeddings = write_embeddings(ws_path, con, np.asarray(ids, dtype=np.int64), paths)
            files += [folder / "ids.npy", *res.embeddings]
        return files

    replace_folder(out, fill, what="webdataset")
    res.shards = [out / p.name for p in res.shards]
    res.embeddings = [out / p.name for p in res.embeddings]
    res.bytes = sum(p.stat().st_size for p in res.shards)
    return res


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0          # the same subset gives the same bytes
    tar.addfile(info, io.BytesIO(data))


def shard_pattern(shards: list[Path]) -> str:
    """The brace pattern webdataset opens: DIR/shard-{000000..000003}.tar."""
    if not shards:
        return ""
    if len(shards) == 1:
        return str(shards[0])
    return str(shards[0].parent / f"shard-{{{0:06d}..{len(shards) - 1:06d}}}.tar")
