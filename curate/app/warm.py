"""What a search needs, loaded once in the background while the page is already usable:
the workspace's model (its text tower encodes a query; build-index's model and precision,
as `curate search` loads it) and the image index (FAISS, searched at the parameter its
record holds: tuned at build-index to the recall target).

A text search then costs one text encoding and one index search; "more like this" reads
the item's stored vector from its shard and searches the index: no model at all.
The index is read again when its file changes (build-index ran meanwhile).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

import numpy as np

from ..core.workspace import Workspace
from ..errors import CurateError
from . import data
from .selection import Selection

K = 1000            # hits a search keeps; the grid's filters then apply to these
# Threads a search's model and index may use. One query is too little work to split: on a
# machine whose cores other work holds, OpenMP's threads spin waiting for each other, and a
# ViT-B-32 text encoding took 1.1-2.3 s on 2 threads against 0.12-0.14 s on one (a FAISS
# search of 1000 hits 7-10 ms against 0.3 ms; bench/bench_app.py's machine, loaded). The
# app's own parallelism is its requests.
THREADS = 1
_CACHE = 32         # recent queries kept (the grid asks again for each page)


class Warm:
    def __init__(self, ws: Workspace, device: str | None = "cpu", load_model: bool = True):
        self.ws = ws
        self.device = device
        self.lock = threading.Lock()
        self.state = "loading"          # loading | ready | failed
        self.error: str | None = None
        self.index_state = "loading"
        self.index_error: str | None = None
        self.encoder = None
        self._index = None
        self._index_key: tuple | None = None
        self._param: int | None = None
        self._cache: OrderedDict[tuple, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._load_model = load_model
        self.reads_done = threading.Event()     # set once the loading thread no longer reads the database
        self.thread = threading.Thread(target=self._load, name="curate-app-warm", daemon=True)

    def start(self) -> Warm:
        """Load in the background; the process's torch and FAISS threads set to THREADS until close()."""
        self._threads = _set_threads(THREADS)
        self.thread.start()
        return self

    def close(self) -> None:
        """Give the process back its thread settings (an app run inside another program, a test)."""
        if getattr(self, "_threads", None) is not None:
            _set_threads(*self._threads)
            self._threads = None

    def _load(self) -> None:
        try:
            self._read()
        finally:
            self.reads_done.set()
        self._load_encoder()

    def _read(self) -> None:
        try:    # the first grid's reads, kept (data.py): the page opens on them, naming the active one
            data.page(self.ws, Selection(), n=1)
            name = data.shown(self.ws).classification
            data.shown(self.ws, name)
            data.overview(self.ws, name)
        except Exception:  # noqa: BLE001, S110 - the page's own request says what is wrong
            pass
        try:
            self.index()
            self.index_state = "ready"
        except Exception as e:  # noqa: BLE001 - the page says it; browsing goes on
            self.index_state, self.index_error = "failed", _say(e)
        try:    # "more like this" reads the image shards' ids: kept, as the grid's reads are
            data.vector_of(self.ws, -1)
        except Exception:  # noqa: BLE001, S110 - KeyError as expected; a search says anything else
            pass
        self._model, self._model_error = None, None
        if not self._load_model:
            return
        try:    # what the model is, read here: the file is not held open while the model is built
            from ..ingest import precision as precision_rules
            from ..ingest.model import pick_device

            with self.ws.reading(wait=data.WAIT) as con:
                ident = Workspace.model_identity(con)
                if ident is None:
                    raise CurateError("the workspace has no model recorded: run `curate build-index` first")
                device = pick_device(self.device)
                # the precision classify used for its prompts, as `curate search` loads it (select/search.py)
                precision = precision_rules.resolve("auto", device, precision_rules.workspace_precisions(con))
            self._model = (ident.model, ident.pretrained, device, precision)
        except Exception as e:  # noqa: BLE001 - said when the model would have loaded
            self._model_error = e

    def _load_encoder(self) -> None:
        if not self._load_model:
            self.state, self.error = "failed", "the model is not loaded in this app (started without it)"
            return
        try:
            from ..ingest.model import load_encoder

            if self._model_error is not None:
                raise self._model_error
            encoder = load_encoder(*self._model, shared=False)   # its own: _text_only changes it
            _text_only(encoder)
            encoder.encode_text(["a photo"])    # the first encoding sets up what the next ones reuse
            self.encoder = encoder
            self.state = "ready"
        except Exception as e:  # noqa: BLE001
            self.state, self.error = "failed", _say(e)

    def status(self) -> dict:
        return {"model": self.state, "model_error": self.error, "index": self.index_state,
                "index_error": self.index_error, "search_param": self._param}

    def index(self):
        """The image index, read again if its file changed; the tuned search parameter set."""
        from ..ingest import faiss_index, index_recall

        path = self.ws.index_path("image")
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise CurateError(f"the workspace {self.ws.root} has no image index: run `curate build-index` first") \
                from None
        key = (st.st_size, st.st_mtime_ns, st.st_ino)
        with self.lock:
            if self._index is None or key != self._index_key:
                index = _read_index(str(path))
                with self.ws.reading() as con:
                    tuned = faiss_index.search_setting(con, "image")
                self._param = tuned.value if tuned else None
                index_recall.set_param(index, self._param)
                self._index, self._index_key = index, key
                self._cache.clear()
            return self._index

    def _search(self, key: tuple, vector) -> tuple[np.ndarray, np.ndarray]:
        index = self.index()
        with self.lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        scores, ids = index.search(np.ascontiguousarray(vector(), dtype=np.float32), min(K, max(index.ntotal, 1)))
        keep = ids[0] >= 0
        got = (ids[0][keep].astype(np.int64), scores[0][keep].astype(np.float64))
        with self.lock:
            self._cache[key] = got
            while len(self._cache) > _CACHE:
                self._cache.popitem(last=False)
        return got

    def text(self, query: str) -> tuple[np.ndarray, np.ndarray]:
        """Item ids and cosines of the K images nearest to a text, best first."""
        if self.state != "ready":
            raise ModelNotReady("the model is still loading" if self.state == "loading" else
                                f"the model could not be loaded: {self.error}")
        return self._search(("text", query), lambda: self.encoder.encode_text([query]))

    def like(self, item_id: int) -> tuple[np.ndarray, np.ndarray]:
        """The K images nearest to an item's own image (its stored vector: no model needed)."""
        return self._search(("like", item_id), lambda: data.vector_of(self.ws, item_id))


def _read_index(path: str):
    """The index with its vectors memory-mapped where FAISS can (IO_FLAG_MMAP_IFC: flat, HNSW's
    storage, and IVF's lists here), read whole otherwise: the pages searches touch are in memory,
    not the whole file (100K x 512 HNSW: RSS +35 MB instead of +240 MB, the same hits; 1M IVF1024:
    the app's RSS 1,226 MiB beside a 1,963 MiB file). build-index replaces the file (a new
    inode), never rewrites it in place, so a mapping stays whole until the next read."""
    import faiss

    try:
        return faiss.read_index(path, faiss.IO_FLAG_MMAP_IFC)
    except RuntimeError:
        return faiss.read_index(path)


def _set_threads(torch_threads: int, faiss_threads: int | None = None) -> tuple[int, int]:
    """Set torch's and FAISS's thread counts; the counts they had."""
    import faiss
    import torch

    before = (torch.get_num_threads(), faiss.omp_get_max_threads())
    torch.set_num_threads(torch_threads)
    faiss.omp_set_num_threads(faiss_threads if faiss_threads is not None else torch_threads)
    return before


def _text_only(encoder) -> None:
    """Drop the image tower: the app encodes texts only ("more like this" reads stored vectors).
    About 350 MB of ViT-B-32's 600 MB of float32 weights."""
    import gc

    import torch

    if isinstance(getattr(encoder.model, "visual", None), torch.nn.Module):
        encoder.model.visual = torch.nn.Identity()
        gc.collect()


class ModelNotReady(CurateError, RuntimeError):
    """A text search before the model has loaded (or after it failed to)."""


def _say(e: Exception) -> str:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return first
