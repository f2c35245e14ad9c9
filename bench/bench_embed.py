"""Embedding throughput: end to end vs model-only vs a naive per-image loop, in one run.

    python bench/bench_embed.py [--n 2000] [--model ViT-B-32] [--precision fp32 bf16]
                                [--workers 0 1 2] [--threads N ...] [--prefetch N ...]

Synthetic 640x480 JPEGs (realistic size and entropy), random weights (the cost of a
forward pass does not depend on the weights). First the decode cost: ms per JPEG (open,
decode, preprocess) on one core. Then for each precision: the model-only rates
(pre-decoded tensors, the main process's torch threads = cores), the naive loop, and the
real embedding loop end to end for every combination of loader workers, torch threads of
the main process and prefetch given, each as a ratio to model-only. Printed figures are
also appended to bench/results/embed.jsonl; the workspace is removed after each run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import WORK, machine, record  # noqa: E402

from curate.core.workspace import Workspace  # noqa: E402
from curate.ingest.embed import EmbedOptions, _ChunkLoader, embed_pending  # noqa: E402
from curate.ingest.model import load_encoder  # noqa: E402
from curate.ingest.scan import scan_into  # noqa: E402
from curate.ingest.sources import detect_source  # noqa: E402


def make_jpegs(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    have = len(list(folder.glob("*.jpg")))
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:480, 0:640]
    for i in range(have, n):
        # smooth structure plus noise: compresses like a photo (~60-120 KB), not like flat colour
        base = np.stack([(xx * (1 + i % 5) / 3 + yy) % 256, (yy * (1 + i % 3) + xx / 2) % 256,
                         ((xx + yy) * (i % 7 + 1) / 4) % 256], -1)
        img = np.clip(base + rng.normal(0, 18, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i:06d}.jpg", quality=90)
        (folder / f"{i:06d}.txt").write_text(f"photo {i} of the city at night #nyc #travel")


def decode_ms(files: list[Path], preprocess) -> float:
    """ms per JPEG to open, decode and preprocess on one core (what a loader worker does)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    try:
        preprocess(Image.open(files[0]).convert("RGB"))
        t = time.perf_counter()
        for f in files:
            preprocess(Image.open(f).convert("RGB"))
        return (time.perf_counter() - t) / len(files) * 1000
    finally:
        torch.set_num_threads(threads)


def model_only(enc, pre: torch.Tensor, toks: torch.Tensor, bs: int) -> tuple[float, float]:
    """images/s of the image tower alone and of image + caption towers, pre-decoded input."""
    enc.encode_image_tensor(pre[:bs])  # warm-up
    t = time.perf_counter()
    for s in range(0, len(pre), bs):
        enc.encode_image_tensor(pre[s : s + bs])
    image_only = len(pre) / (time.perf_counter() - t)
    t = time.perf_counter()
    for s in range(0, len(pre), bs):
        enc.encode_image_tensor(pre[s : s + bs])
        enc.encode_tokens(toks[s : s + bs])
    return image_only, len(pre) / (time.perf_counter() - t)


def end_to_end(enc, photos: Path, args, workers: int) -> tuple[float, str]:
    """The real embedding loop (decode in workers, captions too, shards, commits): images/s."""
    ws_dir = WORK / "ws-embed"
    shutil.rmtree(ws_dir, ignore_errors=True)
    try:
        ws = Workspace(ws_dir)
        con = ws.connect()
        Workspace.bind_model(con, enc.identity)
        run_id = Workspace.start_run(con, "bench", str(photos), enc.identity, enc.device)
        scan_into(con, detect_source(photos), run_id)
        opts = EmbedOptions(batch_size=args.batch_size, workers=workers, limit=args.n,
                            draft_decode=args.draft_decode)
        t = time.perf_counter()
        stats = embed_pending(ws, con, enc, run_id, opts)
        ok, bad = stats.embedded, stats.rejected
        rate = ok / (time.perf_counter() - t)
        assert ok == args.n and bad == 0, (ok, bad)
        con.close()
        return rate, f"{opts.n_workers()} workers"
    finally:
        shutil.rmtree(ws_dir, ignore_errors=True)


def main() -> None:
    cores = os.cpu_count() or 1
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, nargs="+", default=[-1], help="loader workers to try (-1: build-index's default)")
    ap.add_argument("--draft-decode", action="store_true", help="reduced-scale JPEG decoding (build-index option)")
    ap.add_argument("--naive", type=int, default=64, help="images for the naive one-at-a-time loop (0: skip)")
    ap.add_argument("--model-only", type=int, default=512, help="pre-decoded images for the model-only figure")
    ap.add_argument("--precision", nargs="+", default=["auto"], help="auto, fp32, bf16, fp16 (build-index --precision)")
    ap.add_argument("--threads", type=int, nargs="+", default=[cores], help="torch threads of the main process to try")
    ap.add_argument("--prefetch", type=int, nargs="+", default=[_ChunkLoader.PREFETCH], help="batches in flight per worker")
    args = ap.parse_args()
    torch.set_num_threads(cores)
    print(f"machine: {machine()}; torch threads {torch.get_num_threads()}")
    f = "embed.jsonl"

    photos = WORK / "jpegs"
    make_jpegs(photos, args.n)
    files = sorted(photos.glob("*.jpg"))[: args.n]
    default_prefetch = _ChunkLoader.PREFETCH
    try:
        for i, precision in enumerate(args.precision):
            torch.set_num_threads(cores)
            enc = load_encoder(args.model, "none", precision=precision)
            if i == 0:
                ms = decode_ms(files[:64], enc.preprocess)
                record(f, "embed.decode_ms_per_jpeg", ms, "ms", baseline="open + decode + preprocess, 640x480, one core")
            pre = torch.stack([enc.preprocess(Image.open(p).convert("RGB")) for p in files[: args.model_only]])
            toks = enc.tokenize([p.with_suffix(".txt").read_text() for p in files[: args.model_only]])
            image_only, both = model_only(enc, pre, toks, args.batch_size)
            del pre
            base = f"{args.model}, {enc.precision}, batch {args.batch_size}, {cores} torch threads, model only"
            record(f, "embed.image_tower_only_images_per_s", image_only, "img/s", baseline=base)
            record(f, "embed.model_only_images_per_s", both, "img/s", both / image_only, "image tower only")
            if args.naive:
                # open, preprocess, encode image and caption, one item at a time (the study's tooling)
                t = time.perf_counter()
                for p in files[: args.naive]:
                    enc.encode_image_tensor(enc.preprocess(Image.open(p).convert("RGB")).unsqueeze(0))
                    enc.encode_text([p.with_suffix(".txt").read_text()])
                naive = args.naive / (time.perf_counter() - t)
                record(f, "embed.naive_loop_images_per_s", naive, "img/s", baseline=base)
            for workers in args.workers:
                for threads in args.threads:
                    for prefetch in args.prefetch:
                        torch.set_num_threads(threads)
                        _ChunkLoader.PREFETCH = prefetch
                        e2e, nw = end_to_end(enc, photos, args, workers)
                        b = (f"{args.model}, {enc.precision}, batch {args.batch_size}, {nw}, {threads} torch threads, "
                             f"prefetch {prefetch}, {args.n} JPEGs 640x480, {'draft' if args.draft_decode else 'exact'} "
                             f"decode; ratio to model-only (image + caption towers, {cores} threads)")
                        record(f, "embed.end_to_end_images_per_s", e2e, "img/s", e2e / both, b)
                        if args.naive:
                            record(f, "embed.end_to_end_vs_naive", e2e / naive, "x", e2e / naive, "naive per-image loop")
    finally:
        _ChunkLoader.PREFETCH = default_prefetch
        torch.set_num_threads(cores)


if __name__ == "__main__":
    main()
