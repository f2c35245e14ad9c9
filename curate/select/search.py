"""A query against one of the workspace's indexes: a text prompt or an example image, searched
in the image index (ws/indexes/images.faiss) or the caption index (captions.faiss), and the
hits written in filter's formats."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import numpy as np

from ..classify import registry, state
from ..classify.state import NotReady
from ..core import check, sql
from ..core.outputs import SUFFIXES, RowWriter, writer_for
from ..core.workspace import Workspace, check_same_model
from ..errors import InputError
from .filter import extras_select

if TYPE_CHECKING:  # the model module imports torch and open_clip; load it only when needed
    from ..ingest.model import Encoder

# which index a search reads -> the predictions view its hits' labels come from (as filter --mode)
MODES = {"image": "predictions", "caption": "caption_predictions"}


class SearchError(InputError, ValueError):
    """A search that cannot run as asked (no query, an empty one, an unreadable image, a bad --out)."""


@dataclass(frozen=True)
class Hit:
    rank: int
    id: int
    score: float                 # cosine of the query and the image (or, --mode caption, the caption)
    path: str | None
    caption: str | None
    label: str | None = None     # the item's top label under the classification read (None: not classified)
    prob: float | None = None


@dataclass(frozen=True)
class SearchQuery:
    """What a search asks for: a text prompt or an example image (a file), in the image index
    (`mode` image) or the caption index (`mode` caption); checked when made."""
    text: str | None = None
    image: str | Path | None = None
    mode: str = "image"

    def __post_init__(self) -> None:
        check.fields(self, text=check.text(none=True, empty=True), image=check.path(none=True), mode=check.text())
        check_query(self.text, self.image, self.mode)


def check_query(text: str | None, image: str | Path | None, mode: str = "image") -> None:
    """Refuse a search with no query, two queries, a blank text, or an unknown mode."""
    if mode not in MODES:
        raise SearchError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if text is not None and image is not None:
        raise SearchError("give a text query or --image, not both")
    if image is None and (text is None or not text.strip()):
        raise SearchError("the query is empty: give a text to search for (e.g. \"a rooftop bar at night\") "
                          "or an example image with --image PATH")


def out_writer(out: str | Path) -> type[RowWriter]:
    """The writer of an output file, from its extension (filter's formats)."""
    writer = writer_for(out)
    if writer is None:
        raise SearchError(f"cannot tell the format of {out}: use one of {', '.join(SUFFIXES)}")
    return writer


def search(ws_path: str | Path, query: SearchQuery | str, *, k: int = 50, encoder: Encoder | None = None,
           device: str | None = None, classification: str | None = None,
           search_param: int | None = None) -> list[Hit]:
    """The k items nearest to `query` (a SearchQuery, or a text prompt: the image index), by
    the model and precision that embedded the workspace. Each hit carries the item's top label under the
    classification named (default: the active one, if any): its image's label in image mode,
    its caption's in caption mode. The index is searched at the parameter its record holds
    (tuned to a recall target at build-index), or at `search_param` (nprobe, efSearch)."""
    import faiss

    from ..ingest import faiss_index, index_recall

    q = query if isinstance(query, SearchQuery) else SearchQuery(text=query)
    text, image, mode = q.text, q.image, q.mode
    ws = Workspace(ws_path)
    with ws.reading() as con:
        ident = Workspace.model_identity(con)
        path = ws.index_path(mode)
        if ident is None or not path.exists():
            what = "image index" if mode == "image" else "caption index (no captions embedded)"
            raise NotReady(f"the workspace {ws.root} has no {what}: run `curate build-index` first")
        if encoder is None:
            encoder = _load_encoder(con, ident, device)
        check_same_model(ident, encoder.identity)
        index = faiss.read_index(str(path))
        if index.d != ident.embed_dim:
            raise NotReady(f"{path} holds {index.d}-d vectors but the workspace's model makes "
                           f"{ident.embed_dim}-d ones: rebuild the index with `curate build-index`")
        tuned = faiss_index.search_setting(con, mode)
        index_recall.set_param(index, search_param or (tuned.value if tuned else None))
        vec = encode_image_file(encoder, image) if image is not None else encoder.encode_text([text])
        query = np.ascontiguousarray(vec, dtype=np.float32)
        scores, ids = index.search(query, min(k, max(index.ntotal, 1)))
        keep = ids[0] >= 0
        ids, scores = ids[0][keep].astype(np.int64), scores[0][keep]
        info, labels = {}, {}
        if len(ids):
            info = {r[0]: (r[1], r[2]) for r in con.execute(
                "SELECT id, path, caption FROM items WHERE id IN (SELECT unnest(?))", [ids.tolist()]).fetchall()}
            labels = _top_labels(con, ids, classification, MODES[mode])
        return [Hit(rank + 1, int(i), float(s), *info.get(int(i), (None, None)), *labels.get(int(i), (None, None)))
                for rank, (i, s) in enumerate(zip(ids, scores, strict=True))]


def search_images(ws_path: str | Path, text: str, k: int = 50, encoder: Encoder | None = None,
                  device: str | None = None, classification: str | None = None,
                  search_param: int | None = None) -> list[Hit]:
    """The k images nearest to `text` (`search` in image mode)."""
    return search(ws_path, SearchQuery(text=text), k=k, encoder=encoder, device=device, classification=classification,
                  search_param=search_param)


def _load_encoder(con: duckdb.DuckDBPyConnection, ident, device: str | None) -> Encoder:
    """The workspace's model in the precision classify would use for its prompts (a workspace
    that is all float32 stays float32), so a query vector is made as the indexed ones were."""
    from ..ingest import precision as precision_rules
    from ..ingest.model import load_encoder, pick_device

    device = pick_device(device)
    precision = precision_rules.resolve("auto", device, precision_rules.workspace_precisions(con))
    return load_encoder(ident.model, ident.pretrained, device, precision)


def encode_image_file(encoder: Encoder, path: str | Path) -> np.ndarray:
    """The (1, d) vector of one image file, decoded and preprocessed as build-index does
    (upright, RGB, the model's transform; full decode, never --draft-decode's)."""
    from ..ingest.images import BadImage, open_rgb, resize_rule

    try:
        im = open_rgb(str(path), resize=resize_rule(encoder.preprocess, encoder.image_size))
    except BadImage as e:
        raise SearchError(f"cannot read the query image {path}: {e}") from None
    return encoder.encode_image_tensor(encoder.preprocess(im).unsqueeze(0))


def _top_labels(con: duckdb.DuckDBPyConnection, ids: np.ndarray, classification: str | None,
                view: str) -> dict[int, tuple[str, float]]:
    """id -> (label, prob) of the items' predictions (`view`) under a classification; {} when
    the workspace has none (search needs only the index)."""
    if registry.select(con, classification) is None and not sql.has_relation(con, "predictions"):
        return {}
    if state.settings(con) is None:     # a classify run stopped half way: no labels to show
        return {}
    state.require_fresh(con)            # never a label older than the item's vector
    if not sql.has_relation(con, view):
        return {}
    return {r[0]: (r[1], r[2]) for r in con.execute(
        f"SELECT id, label, prob FROM {view} WHERE id IN (SELECT unnest(?))", [ids.tolist()]).fetchall()}


# The columns a search output starts with; the source's own columns follow (a source column
# of the same name, in any case, comes out as src_<name>, as in filter's outputs).
OUTPUT_COLUMNS = ("rank", "id", "score", "label", "prob", "path", "caption")


def write_hits(ws_path: str | Path, hits: list[Hit], out: str | Path) -> Path:
    """Write the hits to `out`, format by extension (filter's: parquet, csv, tsv, jsonl, json):
    rank, id, score, label, prob, path, caption, then the source's own columns of each item
    (a manifest's columns). The file is whole or absent (written beside it and renamed)."""
    out_path = Path(out)
    writer = out_writer(out_path)
    with Workspace(ws_path).reading() as con:
        sql.run(con, "search_hits")
        if hits:   # one statement for any k (unnest zips the lists), not one insert a hit
            con.execute("INSERT INTO hits SELECT unnest(?), unnest(?), unnest(?), unnest(?::VARCHAR[]), "
                        "unnest(?::DOUBLE[])", [[h.rank for h in hits], [h.id for h in hits],
                                                [h.score for h in hits], [h.label for h in hits],
                                                [h.prob for h in hits]])
        extras, join = "", ""
        if sql.has_relation(con, "item_extras"):
            extras, join = extras_select(con, OUTPUT_COLUMNS), "LEFT JOIN item_extras x ON x.id = h.id "
        select = (f"SELECT h.rank, h.id, h.score, h.label, h.prob, i.path, i.caption{extras} FROM hits h "
                  f"LEFT JOIN items i ON i.id = h.id {join}ORDER BY h.rank")
        writer().write(con, f"({select})", out_path)
    return out_path
