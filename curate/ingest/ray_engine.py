"""build-index's embedding step on a Ray cluster (`--engine ray`).

The same work as curate/ingest/embed.py, spread over Ray Data:

    driver: pending items, in id order, FETCH_CHUNK at a time (as the local engine)
      -> Ray Dataset of (id, path, caption) rows
      -> decode tasks (map_batches with a function, CPU): embed.decode_item per row, so a bad
         file gets the local engine's reason word for word
      -> model actors (map_batches with a class, a fixed pool): one actor per GPU with
         num_gpus=1, else one CPU actor per node; each loads the encoder with the run's
         model, pretrained and precision (load_encoder), images and captions encoded there
      -> vectors stream back to the driver (iter_batches), which commits shards through
         embed.commit -> store.commit_shards: the one writer of the DuckDB file.

Why the driver writes the shards rather than the workers: vectors are small (2 KB an image
at 512-d, the same again for a caption) next to the pixels that stay on the workers, so
sending them back costs little, and in return the workspace need not be on a filesystem
every node sees (only the images must be), shard numbering stays a single counter, and
"committed exactly once" is the driver's rule alone: a row whose id is not the next one
expected is dropped (a block Ray ran twice), and a gap ends the stream (see below). The
driver's bound (about 4 KB an item received and written, one transaction a shard) is
measured by bench/bench_ray.py and discussed in the README.

Order: Ray Data runs with preserve_order, so rows come back in id order and shards are
written in id order, which readers rely on (classify/vector_stream.py) and which makes a
resumed run end with the same index as an uninterrupted one.

Faults: Ray retries a lost decode task and restarts a lost actor by itself. If the stream
fails anyway (or skips an item), what arrived is committed, and the rest of the chunk, from
the first item not received, is sent again, up to RETRIES times without progress; after that
the run stops (exit status 6) with the rest pending, and a rerun goes on from there. A killed driver loses only the shard in
flight, exactly like the local engine: pending items are those not committed.

Ray is optional: nothing here imports it at module level, and `connect` turns its absence
into one line with the install command.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import duckdb
import numpy as np

from ..core import store
from ..core.workspace import Workspace
from ..errors import CurateError, InputError, PartialResult
from .embed import (
    EmbedOptions,
    EmbedStats,
    ShardWork,
    caption_vectors,
    commit,
    decode_item,
    pending_chunks,
)
from .images import resize_rule
from .model import Encoder, load_encoder

INSTALL = "pip install 'curate[ray]' (or make install RAY=1)"

# Memory a decode task holds: its process (Python, torch, PIL: ~0.5 GB measured by Ray Data's
# own check) plus, per image of its batch, a 640x480 picture decoded, its tensor and slack.
DECODE_BASE_BYTES = 512 * 2**20
DECODE_BYTES_PER_IMAGE = 2 * 2**20

# How often the rest of a chunk is sent again after the stream failed or skipped items.
RETRIES = 3


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401 - Ray Data is the part curate uses: ray[data]
    except ImportError:
        raise InputError(f"--engine ray needs Ray Data, which is not installed here: {INSTALL}") from None
    return ray


@dataclass
class RaySession:
    """A connection to a Ray cluster (started here when no address was given); a context
    manager: leaving it disconnects (and stops a local Ray it started)."""

    ray: object
    owned: bool        # connected by curate: disconnected (and a local Ray stopped) by close()

    def resources(self) -> dict[str, float]:
        return dict(self.ray.cluster_resources())

    def nodes(self) -> list[dict]:
        return [n for n in self.ray.nodes() if n.get("Alive")]

    def gpus(self) -> int:
        return int(self.resources().get("GPU", 0))

    def device(self, asked: str) -> str:
        """The actors' device: cuda where the cluster has GPUs (auto), else cpu."""
        if asked == "auto":
            return "cuda" if self.gpus() else "cpu"
        if asked.startswith("cuda"):
            if not self.gpus():
                raise InputError(f"--device {asked}: the Ray cluster has no GPU; use --device cpu or auto")
            return "cuda"  # each actor sees only the GPU Ray gave it
        return asked

    def close(self) -> None:
        if self.owned:
            self.ray.shutdown()

    def __enter__(self) -> RaySession:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def connect(address: str | None) -> RaySession:
    """Join the cluster at `address` (auto, ray://host:port, host:port), or start a local Ray.

    A session already open in this process (a test, a notebook) is used as it is.
    """
    ray = _import_ray()
    if address is not None:
        _check_reachable(address)
    if ray.is_initialized():
        return RaySession(ray, owned=False)
    kw: dict = {"logging_level": logging.WARNING, "log_to_driver": False}
    if address is None:
        kw["include_dashboard"] = False
    try:
        ray.init(address=address, **kw)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = address or "a local Ray"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"--address {where}: cannot connect to the Ray cluster: {first}") from None
    return RaySession(ray, owned=True)


# How long a head's port may take to answer before --address is called unreachable.
CONNECT_TIMEOUT_S = 5.0


def _check_reachable(address: str) -> None:
    """Fail at once where nothing listens at host:port (or ray://host:port).

    Without this, ray.init waits for the cluster's control service for a minute or more,
    printing its own retry lines, before it gives up on a mistyped address.
    """
    m = re.fullmatch(r"(?:ray://)?\[?([^\]\s]+?)\]?:(\d+)", address.strip())
    if m is None:  # auto, or a form Ray resolves itself
        return
    host, port = m.group(1), int(m.group(2))
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        why = e.strerror or type(e).__name__
        raise InputError(f"--address {address}: nothing answers at {host}:{port} ({why}); start the cluster's "
                         "head there (`ray start --head`) or give its address") from None


@dataclass(frozen=True)
class ActorPlan:
    actors: int
    num_gpus: float
    num_cpus: float
    threads: int       # torch threads in each actor
    decode_cpus: float = 1.0  # what one decode task reserves


def plan_actors(resources: dict[str, float], nodes: list[dict], device: str) -> ActorPlan:
    """How many model actors, and what each reserves.

    GPUs: one actor per GPU (num_gpus=1). CPUs only: one actor per node, running one torch
    thread per core of the smallest node (as the local engine does) and reserving all but
    an eighth of them (at least one core): decoding a 640x480 JPEG costs ~6 ms of a core
    where ViT-B-32 costs ~50 ms (bf16) to ~130 ms (float32) of core time an image, so the
    decode tasks need about a tenth of the cores. Giving the model only half of them, as
    this engine first did, ran it at 0.55x the local engine on 2 cores (bench_ray.py): one
    torch thread instead of two is 0.5x. A one-CPU node is shared half and half, so that
    decoding still has room beside the model.
    """
    if device.startswith("cuda"):
        return ActorPlan(max(1, int(resources.get("GPU", 0))), 1, 1, 1)
    cpus = [c for c in (n.get("Resources", {}).get("CPU", 0) for n in nodes) if c > 0]
    per_node = min(cpus) if cpus else max(1.0, resources.get("CPU", 1))
    if per_node < 2:
        return ActorPlan(max(1, len(nodes)), 0, 0.5, 1, decode_cpus=0.5)
    decode = max(1, -(-int(per_node) // 8))
    return ActorPlan(max(1, len(nodes)), 0, per_node - decode, int(per_node))


def decode_batch(batch: dict[str, np.ndarray], *, preprocess, resize, max_pixels: int, draft: bool,
                 hash_files: bool, image_size: int) -> dict[str, np.ndarray]:
    """A decode task: rows of (id, path, caption) -> preprocessed pixels, or the reason they are not."""
    started = time.perf_counter()
    ids = batch["id"]
    n = len(ids)
    xs: list = [None] * n
    ok = np.zeros(n, bool)
    reason = np.empty(n, dtype=object)
    size = np.full(n, -1, np.int64)
    mtime = np.full(n, -1, np.int64)
    digest = np.empty(n, dtype=object)
    for j in range(n):
        _, x, why, (sz, mt, h) = decode_item(int(ids[j]), str(batch["path"][j]), preprocess, resize, max_pixels,
                                             draft, hash_files)
        if x is not None:
            xs[j], ok[j] = x.numpy(), True
        reason[j] = why or ""
        size[j] = -1 if sz is None else sz
        mtime[j] = -1 if mt is None else mt
        digest[j] = h or ""
    shape = next((x.shape for x in xs if x is not None), (3, image_size, image_size))
    pixels = np.zeros((n, *shape), np.float32)  # a rejected row's pixels stay zero and are never encoded
    for j, x in enumerate(xs):
        if x is not None:
            pixels[j] = x
    # the task's seconds, shared out over its rows: the driver sums the rows it keeps
    spent = np.full(n, (time.perf_counter() - started) / max(n, 1))
    return {"id": ids, "caption": batch["caption"], "has_caption": batch["has_caption"], "pixels": pixels,
            "ok": ok, "reason": reason, "size": size, "mtime": mtime, "hash": digest, "decode_s": spent}


class Embedder:
    """A model actor: the encoder loaded once, then images and captions of each batch encoded."""

    def __init__(self, model: str, pretrained: str, device: str, precision: str, threads: int) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self.enc: Encoder = load_encoder(model, pretrained, device, precision)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        started = time.perf_counter()
        ids, ok = batch["id"].astype(np.int64), batch["ok"].astype(bool)
        n, d = len(ids), self.enc.identity.embed_dim
        img = np.zeros((n, d), np.float32)
        if ok.any():
            img[ok] = self.enc.encode_image_tensor(torch.from_numpy(np.ascontiguousarray(batch["pixels"][ok])))
        has_cap = ok & batch["has_caption"].astype(bool)
        cap = np.zeros((n, d), np.float32)
        tokens = np.full(n, -1, np.int32)
        truncated = np.zeros(n, bool)
        captions = {int(i): str(c) for i, c, h in zip(ids, batch["caption"], has_cap, strict=True) if h}
        got = caption_vectors(self.enc, ids[ok], captions)
        if got is not None:
            where = {int(i): j for j, i in enumerate(ids)}
            for k, (i, c, t) in enumerate(got[2]):
                cap[where[i]] = got[1][k]
                tokens[where[i]], truncated[where[i]] = c, t
        spent = np.full(n, (time.perf_counter() - started) / max(n, 1))
        return {"id": ids, "ok": ok, "reason": batch["reason"], "size": batch["size"], "mtime": batch["mtime"],
                "hash": batch["hash"], "image": img, "has_caption": has_cap, "caption": cap,
                "tokens": tokens, "truncated": truncated, "decode_s": batch["decode_s"], "forward_s": spent}


@dataclass
class _Received:
    """Where a chunk's stream stands: the next item expected."""

    ids: np.ndarray
    pos: int = 0


class RayEngine:
    """The Ray engine (curate/ingest/engines.py has the interface): the model in actors on the
    cluster's devices, the driver's encoder on its CPU only for its preprocessing and identity."""

    def __init__(self, session: RaySession, actors: int | None = None) -> None:
        self.session, self.actors = session, actors

    def device(self, asked: str) -> str:
        return self.session.device(asked)

    def driver(self, device: str, precision: str) -> tuple[str, str]:
        """The model runs on the actors: the driver's copy (for preprocessing) stays on its CPU, in fp32."""
        return "cpu", "fp32"

    def embed(self, ws: Workspace, con: duckdb.DuckDBPyConnection, enc: Encoder, run_id: int,
              opts: EmbedOptions, progress: Callable[[int], None] | None = None) -> EmbedStats:
        return _embed_pending(ws, con, self.session, enc, run_id, opts, progress, self.actors)


def _embed_pending(ws: Workspace, con: duckdb.DuckDBPyConnection, session: RaySession, enc: Encoder, run_id: int,
                   opts: EmbedOptions, progress: Callable[[int], None] | None, actors: int | None) -> EmbedStats:
    """Embed every pending item on the cluster; returns what this call did.

    The actors load `enc`'s model (its identity: a fallback model is what they load) on
    `opts.device` (RaySession.device) in `opts.precision`, already resolved for it; the decode
    tasks use `enc`'s preprocessing.
    """
    ray = session.ray
    preprocess, image_size = enc.preprocess, enc.image_size
    model, pretrained, device, precision = enc.identity.model, enc.identity.pretrained, opts.device, opts.precision
    _quiet_ray_data(ray)
    store.remove_orphans(ws, con)
    plan = plan_actors(session.resources(), session.nodes(), device)
    if actors:
        plan = ActorPlan(actors, plan.num_gpus, plan.num_cpus, plan.threads, plan.decode_cpus)
    resize = resize_rule(preprocess, image_size)
    decode_kw = {"preprocess": preprocess, "resize": resize, "max_pixels": opts.max_pixels,
                 "draft": opts.draft_decode, "hash_files": opts.hash_files, "image_size": image_size}
    actor_kw = {"model": model, "pretrained": pretrained, "device": device, "precision": precision,
                "threads": plan.threads}

    def stream(rows: list[tuple]) -> Iterator[dict[str, np.ndarray]]:
        items = [{"id": r[0], "path": r[1], "caption": r[2] or "", "has_caption": r[2] is not None} for r in rows]
        blocks = max(1, -(-len(items) // opts.batch_size))
        ds = ray.data.from_items(items, override_num_blocks=blocks)
        # A decode task's memory (full-size pictures and their tensors) is reserved; it also keeps
        # Ray Data from fusing the decoding into the model actors (same resources would), where it
        # would run between forward passes instead of beside them.
        ds = ds.map_batches(decode_batch, fn_kwargs=decode_kw, batch_size=opts.batch_size, batch_format="numpy",
                            num_cpus=plan.decode_cpus, memory=DECODE_BASE_BYTES + DECODE_BYTES_PER_IMAGE * opts.batch_size)
        ds = ds.map_batches(Embedder, fn_constructor_kwargs=actor_kw, batch_size=opts.batch_size,
                            batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=plan.actors),
                            num_gpus=plan.num_gpus, num_cpus=plan.num_cpus)
        return ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2)

    stats = EmbedStats()
    clock = time.perf_counter
    pending = ShardWork()
    left_pending = 0
    last_error = "items missing from the stream"
    for rows in pending_chunks(con, opts.limit):
        got = _Received(np.array([r[0] for r in rows], dtype=np.int64))
        tries = 0
        while got.pos < len(rows):
            before = got.pos
            try:
                for batch in stream(rows[got.pos:]):
                    gap = _take(batch, got, pending, progress, stats)
                    if pending.due(opts):
                        t = clock()
                        stats.committed(commit(ws, con, run_id, pending, opts.shard_size,
                                               whole=pending.n_images < opts.shard_size), clock() - t)
                    if gap:
                        break  # the rest is sent again, from the first item not received
            except Exception as e:  # noqa: BLE001 - a cluster failure: keep what arrived, send the rest again
                ours = _curate_error(e)
                if ours is not None:  # e.g. an actor could not load the model: the same on every retry
                    raise ours from None
                if not _is_ray_error(ray, e):
                    raise
                last_error = _first_line(e)
            if got.pos < len(rows):
                tries = tries + 1 if got.pos == before else 0
                if tries >= RETRIES:
                    left_pending = len(rows) - got.pos
                    break
        if left_pending:  # stop here: a rerun then goes on in id order, after what is committed
            break
    if pending.n_items:
        t = clock()
        stats.committed(commit(ws, con, run_id, pending, opts.shard_size), clock() - t)
    if left_pending:
        raise PartialResult(f"the Ray cluster failed {RETRIES} times in a row on the same items ({last_error}); "
                            f"the run stopped with {left_pending} items of this chunk and all later ones still "
                            "pending (everything before is committed): run build-index again to go on")
    return stats


def _take(batch: dict[str, np.ndarray], got: _Received, pending: ShardWork,
          progress: Callable[[int], None] | None, stats: EmbedStats) -> bool:
    """Add one returned batch to the shard in progress; True when an item is missing (a gap)."""
    ids = batch["id"].astype(np.int64)
    keep: list[int] = []
    gap = False
    for j, i in enumerate(ids):
        if got.pos >= len(got.ids) or i < got.ids[got.pos]:
            continue  # already received: a block Ray ran twice
        if i != got.ids[got.pos]:
            gap = True
            break
        keep.append(j)
        got.pos += 1
    if not keep:
        return gap
    k = np.array(keep)
    stats.batches += 1
    stats.decode_s += float(batch["decode_s"][k].sum())
    stats.forward_s += float(batch["forward_s"][k].sum())
    ok = batch["ok"][k].astype(bool)
    k_ids = ids[k]
    for i, sz, mt, h in zip(k_ids, batch["size"][k], batch["mtime"][k], batch["hash"][k], strict=True):
        pending.seen.append((int(i), None if sz < 0 else int(sz), None if mt < 0 else int(mt), h or None))
    if ok.any():
        pending.img_ids.append(k_ids[ok])
        pending.img_vecs.append(np.asarray(batch["image"][k][ok], np.float32))
    cap = batch["has_caption"][k].astype(bool)
    if cap.any():
        pending.cap_ids.append(k_ids[cap])
        pending.cap_vecs.append(np.asarray(batch["caption"][k][cap], np.float32))
        pending.cap_tokens.extend((int(i), int(c), bool(t)) for i, c, t in
                                  zip(k_ids[cap], batch["tokens"][k][cap], batch["truncated"][k][cap], strict=True))
    pending.rejected.extend((int(i), str(r)) for i, r in zip(k_ids[~ok], batch["reason"][k][~ok], strict=True))
    if progress:
        progress(len(k))
    return gap


def _curate_error(e: BaseException) -> CurateError | None:
    """What will fail the same way on every retry, as a CurateError, or None.

    A CurateError raised in a decode task comes back wrapped (often twice); an actor that
    could not start (the model did not load on that node: unknown name, weights missing
    there) comes back as an ActorDiedError whose message holds the traceback as text.
    """
    seen: set[int] = set()
    todo: list[BaseException] = [e]
    while todo:
        x = todo.pop()
        if id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, CurateError):
            return x
        if getattr(x, "actor_init_failed", False) or getattr(x, "_actor_init_failed", False):
            lines = [ln.strip() for ln in _ANSI.sub("", str(getattr(x, "error_msg", x))).splitlines() if ln.strip()]
            why = lines[-1] if lines else type(x).__name__
            return InputError(f"a model actor on the Ray cluster could not start: {why}")
        todo += [c for c in (x.__cause__, x.__context__, getattr(x, "cause", None)) if isinstance(c, BaseException)]
    return None


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    line = text.splitlines()[0] if text else type(e).__name__
    return line[:200]


def _is_ray_error(ray, e: BaseException) -> bool:
    """A failure of the cluster (a lost node, actor or object), as opposed to a bug or a bad workspace."""
    exc = getattr(ray, "exceptions", None)
    kinds = tuple(k for k in (getattr(exc, "RayError", None),) if k is not None)
    return isinstance(e, kinds) or type(e).__module__.startswith("ray.")


def _quiet_ray_data(ray) -> None:
    """Ray Data's own progress bars and plan logs off: the run's progress is curate's bar."""
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    detectors = getattr(ctx, "issue_detectors_config", None)
    if detectors is not None:  # its advice is about Ray Data's own knobs, set here already
        detectors.detectors = []
    for name in ("enable_progress_bars", "enable_operator_progress_bars", "print_on_execution_start"):
        if hasattr(ctx, name):
            setattr(ctx, name, False)
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled": we know
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
