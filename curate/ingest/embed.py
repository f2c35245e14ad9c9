"""The embedding loop: pending items in, committed shards out.

Decoding and preprocessing run in DataLoader worker processes so that they overlap
the model's forward pass; the main process only runs the model and commits. Work is
committed shard by shard (every `shard_size` items or `commit_seconds`, whichever
comes first), each in one transaction with its items' status and rejections, so a
killed run loses at most the shard in flight and a rerun picks up where it stopped.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import duckdb
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from ..core import store
from ..core.workspace import Workspace
from . import recheck
from .device_decode import DeviceDecoder, Pending
from .images import DEFAULT_MAX_PIXELS, BadImage, ResizeRule, open_rgb, read_jpeg, resize_rule
from .images import decode_bytes as _decode_bytes
from .model import Encoder

# Pending items are fetched from the database this many at a time, so memory stays
# bounded however large the collection is (one DataLoader per chunk).
FETCH_CHUNK = 50_000


@dataclass
class EmbedOptions:
    # CPU default: ViT-B-32 ran 1.17x faster at 32 than at 64 in float32 (19.9 vs 16.9 images/s) and
    # 1.02x in bf16 (40.4 vs 39.5), 2 quiet cores (bench_precision.py); a GPU run takes 256
    batch_size: int = 32
    workers: int = -1               # -1: one per core, at most 16
    shard_size: int = 10_000
    commit_seconds: float = 60.0
    max_pixels: int = DEFAULT_MAX_PIXELS
    limit: int | None = None        # stop after this many items (smoke runs, benchmarks)
    draft_decode: bool = False      # reduced-scale JPEG decoding: faster, vectors differ slightly
    hash_files: bool = False        # also record a content hash of each file (--recheck hash)
    decode: str = "cpu"             # cpu: Pillow in the workers; gpu: JPEGs decoded on the model's device
    device: str = "cpu"             # where the model runs (the Ray engine's actors load it there)
    precision: str = "fp32"         # what it runs in, already resolved (curate/ingest/precision.py)

    def n_workers(self) -> int:
        if self.workers >= 0:
            return self.workers
        return max(1, min(16, os.cpu_count() or 1))


# Fault-injection point, for tests only: a loader worker about to decode exactly this
# path kills itself with SIGKILL, as the out-of-memory killer would, so the recovery from
# a dead worker can be tested with a real process death. Read when the dataset is built
# (so it reaches workers under any start method) and acted on only inside a worker.
FAULT_KILL_WORKER_ENV = "CURATE_FAULT_KILL_WORKER"


class _ItemImages(Dataset):
    """Worker side: decode + preprocess one image; never raises for a bad file."""

    def __init__(self, ids: np.ndarray, paths: list[str], preprocess, resize: ResizeRule, max_pixels: int,
                 draft: bool = False, hash_files: bool = False, jpeg_bytes: bool = False):
        self.ids, self.paths, self.preprocess = ids, paths, preprocess
        self.resize, self.max_pixels, self.draft = resize, max_pixels, draft
        self.jpeg_bytes = jpeg_bytes  # --decode gpu: JPEGs leave as checked bytes, decoded in the main process
        self.hash_files = hash_files
        self.kill_path = os.environ.get(FAULT_KILL_WORKER_ENV) or None

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        path = self.paths[i]
        if self.kill_path is not None and path == self.kill_path and get_worker_info() is not None:
            os.kill(os.getpid(), signal.SIGKILL)
        return decode_item(int(self.ids[i]), path, self.preprocess, self.resize, self.max_pixels, self.draft,
                           self.hash_files, self.jpeg_bytes)


def decode_item(item_id: int, path: str, preprocess, resize: ResizeRule, max_pixels: int, draft: bool = False,
                hash_files: bool = False, jpeg_bytes: bool = False) -> tuple[int, object, str | None, tuple]:
    """One item decoded and preprocessed: (id, tensor or None, reason or None, file state).

    Every engine decodes through here (the loader workers, the Ray engine's decode tasks),
    so a bad file is rejected with the same reason whichever engine ran. `jpeg_bytes`
    (--decode gpu): a JPEG comes back as its checked, undecoded bytes for the device decoder.
    """
    # The file as it is before decoding: if it changes while we decode, the next run's
    # recheck sees a newer mtime and embeds it again (never the other way round).
    seen = recheck.file_state(path, hash_files)
    try:
        if jpeg_bytes:
            read = read_jpeg(path, max_pixels=max_pixels, resize=resize)
            if not isinstance(read, bytes):
                return item_id, read, None, seen
            im = _decode_bytes(read, max_pixels, resize)
        else:
            im = open_rgb(path, max_pixels=max_pixels, resize=resize, draft=draft)
        return item_id, preprocess(im), None, seen
    except BadImage as e:
        return item_id, None, str(e), seen
    except Exception as e:  # noqa: BLE001 - one odd file must not stop a 100M-image run
        return item_id, None, f"cannot decode: {type(e).__name__}: {e}", seen


def _collate(batch):
    ok = [(i, t) for i, t, err, _ in batch if err is None]
    bad = [(i, err) for i, _, err, _ in batch if err is not None]
    ids = np.array([i for i, _ in ok], dtype=np.int64)
    x = None
    if ok:  # tensors from Pillow, or with --decode gpu a Pending batch of JPEG bytes
        x = torch.stack([t for _, t in ok]) if all(isinstance(t, torch.Tensor) for _, t in ok) else \
            Pending.collate([t for _, t in ok])
    seen = [(i, *st) for i, _, _, st in batch]
    return ids, x, bad, seen


class _WorkerDied(Exception):
    """A loader worker process ended while it held items; str(e) says how it ended."""


def _how_it_died(exitcodes: list[int | None]) -> str:
    for code in exitcodes:
        if code is None or code == 0:
            continue
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            why = {"SIGKILL": ", often the out-of-memory killer", "SIGSEGV": ", a crash in a decoder",
                   "SIGBUS": ", a crash in a decoder", "SIGABRT": ", a crash in a decoder"}.get(name, "")
            return f"killed by {name}{why}"
        return f"exited with status {code}"
    return "exited unexpectedly"


def _worker_death(e: Exception) -> bool:
    """Torch reports a dead worker as a RuntimeError once it has seen the process gone; a death
    caught a moment earlier surfaces as the result pipe closing under the read (EOFError,
    ConnectionResetError): the same event, seen sooner."""
    return (isinstance(e, RuntimeError) and "DataLoader worker" in str(e)) or isinstance(e, (EOFError, ConnectionError))


def _exit_codes(workers, wait: float = 2.0) -> list[int | None]:
    """The workers' exit codes, given a moment to be reaped (a pipe can close before the process
    is gone), so that the reason names the signal that ended it."""
    workers = list(workers)
    deadline = time.monotonic() + wait
    while True:
        codes = [w.exitcode for w in workers]
        if any(c not in (None, 0) for c in codes) or time.monotonic() >= deadline:
            return codes
        time.sleep(0.05)


def _threaded(loader: DataLoader) -> Iterator:
    """The loader's batches, pulled by a helper thread.

    Torch installs a SIGCHLD handler when a multi-worker iterator is created in the main
    thread; it raises "worker killed" inside whatever the main thread is doing (the model,
    a commit). Created in a helper thread, the iterator has no such handler and finds a dead
    worker itself, synchronously, within its status check interval (5 s); the error comes
    out here, between batches, where the caller can recover from it.
    """
    q: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        it = None
        try:
            it = iter(loader)
            for b in it:
                if not put(("batch", b)):
                    return
            put(("end", None))
        except Exception as e:  # noqa: BLE001 - handed to the consumer, which decides
            if _worker_death(e):
                e = _WorkerDied(_how_it_died(_exit_codes(getattr(it, "_workers", ()))))
            put(("error", e))
        finally:
            it = None  # shuts the workers down

    t = threading.Thread(target=run, name="curate-loader", daemon=True)
    t.start()
    try:
        while True:
            kind, val = q.get()
            if kind == "batch":
                yield val
            elif kind == "end":
                return
            else:
                raise val
    finally:
        stop.set()


class _ChunkLoader:
    """Decoded, preprocessed batches of one chunk of items, in id order.

    A worker that dies (out-of-memory killer, a segfault in a decoder) makes torch's
    DataLoader fail for the whole iteration. Batches already received are kept; the items
    that were in flight are decoded again in smaller steps, each in fresh worker
    processes: first one item per task (at most `workers` in flight), then the items of a
    failed step one at a time in one worker. An item that kills a worker on its own is
    rejected with the reason; everything else is embedded, and the run goes on.
    """

    PREFETCH = 4

    def __init__(self, ids: np.ndarray, paths: list[str], enc: Encoder, opts: EmbedOptions):
        self.ids, self.paths, self.enc, self.opts = ids, paths, enc, opts
        self.resize = resize_rule(enc.preprocess, enc.image_size)
        self.decoder = None
        if opts.decode == "gpu":
            self.decoder = DeviceDecoder(enc.preprocess, enc.image_size, enc.device, opts.max_pixels)
        nw = opts.n_workers()
        # (batch size, workers, prefetch factor) per level of recovery
        self.levels = [(opts.batch_size, nw, self.PREFETCH)]
        if nw > 1:
            self.levels.append((1, nw, 1))
        if nw > 0:
            self.levels.append((1, 1, 1))

    def __iter__(self) -> Iterator:
        if self.decoder is None:
            return self._load(0, len(self.ids), 0)
        return self._on_device(self._load(0, len(self.ids), 0))

    def _on_device(self, batches: Iterator) -> Iterator:
        for ids, x, bad, seen in batches:
            if isinstance(x, Pending):
                ids, x, more = self.decoder(ids, x)
                bad = bad + more
            yield ids, x, bad, seen

    def _loader(self, lo: int, hi: int, level: int) -> DataLoader:
        bs, nw, pf = self.levels[level]
        ds = _ItemImages(self.ids[lo:hi], self.paths[lo:hi], self.enc.preprocess, self.resize,
                         self.opts.max_pixels, self.opts.draft_decode, self.opts.hash_files,
                         jpeg_bytes=self.decoder is not None)
        return DataLoader(ds, batch_size=bs, num_workers=nw, collate_fn=_collate,
                          prefetch_factor=pf if nw > 0 else None, persistent_workers=False,
                          pin_memory=self.enc.device.startswith("cuda"))

    def _load(self, lo: int, hi: int, level: int) -> Iterator:
        bs, nw, pf = self.levels[level]
        start = lo
        while start < hi:
            done = [0]  # items received from this loader
            try:
                batches = self._counted(self._loader(start, hi, level), done)
                # level 0 batches go to the model as they are; single items are regrouped
                yield from (batches if level == 0 else self._regroup(batches))
                return
            except _WorkerDied as e:
                at = start + done[0]
                if at >= hi:
                    return
                if level == len(self.levels) - 1:
                    # one item, one fresh worker, nothing else in flight: this item did it
                    reason = f"the image decoder process died on this image ({e})"
                    seen = [(int(self.ids[at]), *recheck.file_state(self.paths[at], self.opts.hash_files))]
                    yield np.zeros(0, np.int64), None, [(int(self.ids[at]), reason)], seen
                    start = at + 1
                    continue
                in_flight = min(hi, at + bs * max(nw, 1) * pf + bs)
                yield from self._load(at, in_flight, level + 1)
                start = in_flight

    @staticmethod
    def _counted(loader: DataLoader, counter: list[int]) -> Iterator:
        for b in _threaded(loader):
            counter[0] += len(b[0]) + len(b[2])
            yield b

    def _regroup(self, batches: Iterator) -> Iterator:
        ids: list[np.ndarray] = []
        xs: list[torch.Tensor] = []
        bad: list[tuple[int, str]] = []
        seen: list[tuple] = []

        def group():
            return ((np.concatenate(ids) if ids else np.zeros(0, np.int64)), (_cat(xs) if xs else None), bad,
                    seen)

        try:
            for b_ids, x, b_bad, b_seen in batches:
                bad.extend(b_bad)
                seen.extend(b_seen)
                if x is not None:
                    ids.append(b_ids)
                    xs.append(x)
                if sum(len(a) for a in ids) >= self.opts.batch_size:
                    yield group()
                    ids, xs, bad, seen = [], [], [], []
        except _WorkerDied:
            if ids or bad:  # what decoded before the death is kept
                yield group()
            raise
        if ids or bad:
            yield group()


def _cat(xs: list) -> torch.Tensor | Pending:
    """Batches joined: Pillow's tensors, or --decode gpu's Pending batches (a mix becomes Pending)."""
    if all(isinstance(x, torch.Tensor) for x in xs):
        return torch.cat(xs)
    parts = [x if isinstance(x, Pending) else Pending.collate(list(x)) for x in xs]
    return Pending.cat(parts)


class ShardWork:
    """Embedded-but-uncommitted work of the current shard (both engines collect into one)."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.img_ids: list[np.ndarray] = []
        self.img_vecs: list[np.ndarray] = []
        self.cap_ids: list[np.ndarray] = []
        self.cap_vecs: list[np.ndarray] = []
        self.cap_tokens: list[tuple[int, int, bool]] = []
        self.rejected: list[tuple[int, str]] = []
        self.seen: list[tuple[int, int | None, int | None, str | None]] = []  # id, size, mtime_ns, hash
        self.started = time.monotonic()

    @property
    def n_items(self) -> int:
        return self.n_images + len(self.rejected)

    @property
    def n_images(self) -> int:
        return sum(len(a) for a in self.img_ids)

    def take_through(self, last: int) -> ShardWork:
        """The work of items with ids up to `last`, moved out into a ShardWork of its own (ids come
        in increasing order, so what stays is the later items)."""
        head = ShardWork()
        head.img_ids, head.img_vecs, self.img_ids, self.img_vecs = _split(self.img_ids, self.img_vecs, last)
        head.cap_ids, head.cap_vecs, self.cap_ids, self.cap_vecs = _split(self.cap_ids, self.cap_vecs, last)
        for name in ("cap_tokens", "rejected", "seen"):
            rows = getattr(self, name)
            setattr(head, name, [r for r in rows if r[0] <= last])
            setattr(self, name, [r for r in rows if r[0] > last])
        head.started = self.started
        return head

    def due(self, opts: EmbedOptions) -> bool:
        """Whether the shard is full or has waited long enough to be committed."""
        return self.n_items >= opts.shard_size or time.monotonic() - self.started >= opts.commit_seconds


def _split(ids: list[np.ndarray], vecs: list[np.ndarray], last: int) -> tuple[list, list, list, list]:
    """(ids, vecs) batches cut at id `last`: those up to it, then those after it."""
    head_i, head_v, tail_i, tail_v = [], [], [], []
    for i, v in zip(ids, vecs, strict=True):
        m = i <= last
        if m.any():
            head_i.append(i[m])
            head_v.append(v[m])
        if not m.all():
            tail_i.append(i[~m])
            tail_v.append(v[~m])
    return head_i, head_v, tail_i, tail_v


def pending_chunks(con: duckdb.DuckDBPyConnection, limit: int | None = None) -> Iterator[list[tuple]]:
    """The pending items as (id, path, caption) rows in id order, FETCH_CHUNK at a time, `limit` in all.

    Keyed on the last id seen, not an offset: the caller commits (and so un-pends) items
    between two fetches.
    """
    last_id = -1
    remaining = limit
    while remaining is None or remaining > 0:
        n = FETCH_CHUNK if remaining is None else min(FETCH_CHUNK, remaining)
        rows = con.execute(
            "SELECT id, path, caption FROM items WHERE status = 'pending' AND id > ? ORDER BY id LIMIT ?",
            [last_id, n],
        ).fetchall()
        if not rows:
            return
        last_id = rows[-1][0]
        if remaining is not None:
            remaining -= len(rows)
        yield rows


@dataclass
class EmbedStats:
    """What an engine's run did, and where its time went, summed over its batches: seconds
    waiting for decoded pixels (decode), in the model (forward: images and captions), and
    writing shards (commit). Decode well above forward: a decode-bound run (more --workers,
    --draft-decode or --decode gpu help); forward above decode: the model is the limit.
    The Ray engine's decode and forward are the seconds its tasks and actors spent, over the
    cluster (work done, in parallel), its commit the driver's."""

    embedded: int = 0
    rejected: int = 0
    batches: int = 0
    decode_s: float = 0.0
    forward_s: float = 0.0
    commit_s: float = 0.0

    def committed(self, ok_bad: tuple[int, int], seconds: float) -> None:
        self.embedded += ok_bad[0]
        self.rejected += ok_bad[1]
        self.commit_s += seconds


def embed_pending(ws: Workspace, con: duckdb.DuckDBPyConnection, enc: Encoder, run_id: int,
                  opts: EmbedOptions, progress: Callable[[int], None] | None = None) -> EmbedStats:
    """Embed every pending item on this machine (the local engine); returns what this call did."""
    store.remove_orphans(ws, con)
    stats = EmbedStats()
    pending = ShardWork()
    clock = time.perf_counter
    for rows in pending_chunks(con, opts.limit):
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        captions = {r[0]: r[2] for r in rows if r[2] is not None}
        waited = clock()
        for batch_ids, x, bad, seen in _ChunkLoader(ids, [r[1] for r in rows], enc, opts):
            decoded = clock()
            stats.decode_s += decoded - waited
            stats.batches += 1
            pending.seen.extend(seen)
            if x is not None:
                pending.img_ids.append(batch_ids)
                pending.img_vecs.append(enc.encode_image_tensor(x))
                _embed_captions(enc, batch_ids, captions, pending)
            stats.forward_s += clock() - decoded
            pending.rejected.extend(bad)
            if progress:
                progress(len(batch_ids) + len(bad))
            if pending.due(opts):
                t = clock()
                stats.committed(commit(ws, con, run_id, pending, opts.shard_size,
                                       whole=pending.n_images < opts.shard_size), clock() - t)
            waited = clock()
    if pending.n_items:
        t = clock()
        stats.committed(commit(ws, con, run_id, pending, opts.shard_size), clock() - t)
    return stats


def _embed_captions(enc: Encoder, batch_ids: np.ndarray, captions: dict[int, str], pending: ShardWork) -> None:
    """Captions of the images that decoded: an item is all or nothing within a shard."""
    got = caption_vectors(enc, batch_ids, captions)
    if got is None:
        return
    with_cap, vecs, tokens = got
    pending.cap_ids.append(with_cap)
    pending.cap_vecs.append(vecs)
    pending.cap_tokens.extend(tokens)


def caption_vectors(enc: Encoder, batch_ids: np.ndarray, captions: dict[int, str]
                    ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, bool]]] | None:
    """The captions of these items that have one: (ids, vectors, (id, tokens, truncated) each), or None."""
    with_cap = [int(i) for i in batch_ids if int(i) in captions]
    if not with_cap:
        return None
    texts = [captions[i] for i in with_cap]
    counts = enc.token_counts(texts)
    limit = enc.context_length - 2  # start and end markers take two places
    return (np.array(with_cap, dtype=np.int64), enc.encode_tokens(enc.tokenize(texts)),
            [(i, c, c > limit) for i, c in zip(with_cap, counts, strict=True)])


def commit(ws: Workspace, con: duckdb.DuckDBPyConnection, run_id: int, p: ShardWork,
           shard_rows: int | None = None, whole: bool = True) -> tuple[int, int]:
    """The collected work made durable in shards of at most `shard_rows` image rows, one transaction
    each (store.commit_shards); returns (embedded, rejected).

    Full shards go first, in id order. The rest (fewer rows) is committed too when `whole`,
    else it stays in `p` to be filled by the next batches: a batch that overfills a shard
    does not leave a small shard behind every full one.
    """
    n_ok = n_bad = 0
    while shard_rows and p.n_images >= shard_rows and (p.n_images > shard_rows or not whole):
        last = int(np.concatenate(p.img_ids)[shard_rows - 1])
        ok, bad = _commit(ws, con, run_id, p.take_through(last))
        n_ok, n_bad = n_ok + ok, n_bad + bad
    if whole and p.n_items:
        ok, bad = _commit(ws, con, run_id, p)
        n_ok, n_bad = n_ok + ok, n_bad + bad
    return n_ok, n_bad


def _commit(ws: Workspace, con: duckdb.DuckDBPyConnection, run_id: int, p: ShardWork) -> tuple[int, int]:
    """One shard's work made durable in one transaction (store.commit_shards); returns (embedded, rejected)."""
    img_ids = np.concatenate(p.img_ids) if p.img_ids else np.zeros(0, np.int64)
    vectors = {}
    if len(img_ids):
        vectors["image"] = (img_ids, np.concatenate(p.img_vecs))
    if p.cap_ids:
        vectors["caption"] = (np.concatenate(p.cap_ids), np.concatenate(p.cap_vecs))

    def items(con: duckdb.DuckDBPyConnection) -> None:  # in the shards' transaction (store marks them embedded)
        if p.cap_tokens:
            t_id, t_n, t_trunc = zip(*p.cap_tokens, strict=True)
            con.register("cap_tok", {"id": np.array(t_id, np.int64), "n": np.array(t_n, np.int32),
                                     "trunc": np.array(t_trunc, bool)})
            con.execute("UPDATE items SET caption_tokens = c.n, caption_truncated = c.trunc "
                        "FROM cap_tok c WHERE items.id = c.id")
            con.unregister("cap_tok")
        if p.seen:
            s_id, s_size, s_mtime, s_hash = zip(*p.seen, strict=True)
            con.register("seen", {"id": np.array(s_id, np.int64), "size": np.array(s_size, dtype=object),
                                  "mtime": np.array(s_mtime, dtype=object), "hash": np.array(s_hash, dtype=object)})
            con.execute("INSERT OR REPLACE INTO item_files "
                        "SELECT id, size::BIGINT, mtime::BIGINT, hash::VARCHAR FROM seen")
            con.unregister("seen")
        if p.rejected:
            r_id, r_reason = zip(*p.rejected, strict=True)
            con.register("bad", {"id": np.array(r_id, np.int64), "reason": np.array(r_reason, dtype=object)})
            con.execute("UPDATE items SET status = 'rejected' FROM bad b WHERE items.id = b.id")
            con.execute("INSERT INTO rejected (item_id, source_id, path, reason, stage, run_id) "
                        "SELECT i.id, i.source_id, i.path, b.reason, 'decode', ? FROM bad b JOIN items i ON i.id = b.id",
                        [run_id])
            con.unregister("bad")

    store.commit_shards(ws, con, run_id, vectors, items)
    n_ok, n_bad = len(img_ids), len(p.rejected)
    p.clear()
    return n_ok, n_bad
