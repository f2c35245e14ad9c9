"""A text prompt as a query against the image index (ws/indexes/images.faiss)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..core import sql
from ..core.workspace import Workspace, check_same_model
from . import registry, state
from .state import NotReady

if TYPE_CHECKING:  # the model module imports torch and open_clip; load it only when needed
    from ..ingest.model import Encoder


@dataclass(frozen=True)
class Hit:
    rank: int
    id: int
    score: float                 # cosine of the prompt and the image
    path: str | None
    caption: str | None
    label: str | None = None     # the image's top label under the classification read (None: not classified)
    prob: float | None = None


def search_images(ws_path: str | Path, text: str, k: int = 50, encoder: Encoder | None = None,
                  device: str | None = None, classification: str | None = None,
                  search_param: int | None = None) -> list[Hit]:
    """The k images nearest to `text`, by the same model that embedded the workspace, each
    with its top label under the classification named (default: the active one, if any).
    The index is searched at the parameter its record holds (tuned to a recall target at
    build-index), or at `search_param` (nprobe, efSearch) when given."""
    import faiss

    from ..ingest import faiss_index, index_recall

    ws = Workspace(ws_path)
    if not ws.exists():
        raise NotReady(f"no workspace at {ws.root}: run `curate build-index` first")
    con = ws.connect(read_only=True)
    try:
        ident = Workspace.model_identity(con)
        path = ws.index_path("image")
        if ident is None or not path.exists():
            raise NotReady(f"the workspace {ws.root} has no image index: run `curate build-index` first")
        if encoder is None:
            from ..ingest.model import load_encoder
            encoder = load_encoder(ident.model, ident.pretrained, device)
        check_same_model(ident, encoder.identity)
        index = faiss.read_index(str(path))
        if index.d != ident.embed_dim:
            raise NotReady(f"{path} holds {index.d}-d vectors but the workspace's model makes "
                           f"{ident.embed_dim}-d ones: rebuild the index with `curate build-index`")
        tuned = faiss_index.search_setting(con, "image")
        index_recall.set_param(index, search_param or (tuned.value if tuned else None))
        query = np.ascontiguousarray(encoder.encode_text([text]), dtype=np.float32)
        scores, ids = index.search(query, min(k, max(index.ntotal, 1)))
        keep = ids[0] >= 0
        ids, scores = ids[0][keep].astype(np.int64), scores[0][keep]
        info, labels = {}, {}
        if len(ids):
            info = {r[0]: (r[1], r[2]) for r in con.execute(
                "SELECT id, path, caption FROM items WHERE id IN (SELECT unnest(?))", [ids.tolist()]).fetchall()}
            labels = _top_labels(con, ids, classification)
        return [Hit(rank + 1, int(i), float(s), *info.get(int(i), (None, None)), *labels.get(int(i), (None, None)))
                for rank, (i, s) in enumerate(zip(ids, scores, strict=True))]
    finally:
        con.close()


def _top_labels(con, ids: np.ndarray, classification: str | None) -> dict[int, tuple[str, float]]:
    """id -> (label, prob) of the images' predictions under a classification; {} when the
    workspace has none (search needs only the index)."""
    if registry.select(con, classification) is None and not sql.has_relation(con, "predictions"):
        return {}
    if state.settings(con) is None:     # a classify run stopped half way: no labels to show
        return {}
    return {r[0]: (r[1], r[2]) for r in con.execute(
        "SELECT id, label, prob FROM predictions WHERE id IN (SELECT unnest(?))", [ids.tolist()]).fetchall()}
