"""Embedding throughput: end to end vs model-only vs a naive per-image loop, in one run.

    python bench/bench_embed.py [--n 2000] [--model ViT-B-32] [--workers N] [--precision auto|fp32|bf16|fp16]
                                [--threads N] [--prefetch N]

Synthetic 640x480 JPEGs (realistic size and entropy), random weights (the cost of a
forward pass does not depend on the weights). Printed figures are also appended to
bench/results/embed.jsonl.
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=-1)
    ap.add_argument("--draft-decode", action="store_true", help="reduced-scale JPEG decoding (build-index option)")
    ap.add_argument("--naive", type=int, default=64, help="images for the naive one-at-a-time loop")
    ap.add_argument("--model-only", type=int, default=512, help="pre-decoded images for the model-only figure")
    ap.add_argument("--precision", default="auto", help="auto, fp32, bf16, fp16 (build-index --precision)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads of the main process")
    ap.add_argument("--prefetch", type=int, default=_ChunkLoader.PREFETCH, help="batches in flight per worker")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    _ChunkLoader.PREFETCH = args.prefetch
    print(f"machine: {machine()}; torch threads {torch.get_num_threads()}")

    photos = WORK / "jpegs"
    make_jpegs(photos, args.n)
    enc = load_encoder(args.model, "none", precision=args.precision)
    files = sorted(photos.glob("*.jpg"))[: args.n]

    # 1. model only: pre-decoded, pre-processed tensors and pre-tokenized captions, same
    # batch size: the forward passes the job needs and nothing else (the bound).
    pre = torch.stack([enc.preprocess(Image.open(f).convert("RGB")) for f in files[: args.model_only]])
    toks = enc.tokenize([f.with_suffix(".txt").read_text() for f in files[: args.model_only]])
    enc.encode_image_tensor(pre[: args.batch_size])  # warm-up
    t = time.perf_counter()
    for s in range(0, len(pre), args.batch_size):
        enc.encode_image_tensor(pre[s : s + args.batch_size])
    image_only = len(pre) / (time.perf_counter() - t)
    t = time.perf_counter()
    for s in range(0, len(pre), args.batch_size):
        enc.encode_image_tensor(pre[s : s + args.batch_size])
        enc.encode_tokens(toks[s : s + args.batch_size])
    model_only = len(pre) / (time.perf_counter() - t)

    # 2. naive: open, preprocess, encode image and caption, one item at a time (the study's tooling)
    t = time.perf_counter()
    for f in files[: args.naive]:
        enc.encode_image_tensor(enc.preprocess(Image.open(f).convert("RGB")).unsqueeze(0))
        enc.encode_text([f.with_suffix(".txt").read_text()])
    naive = args.naive / (time.perf_counter() - t)

    # 3. end to end: the real embedding loop (decode in workers, captions too, shards, commits)
    ws_dir = WORK / "ws-embed"
    shutil.rmtree(ws_dir, ignore_errors=True)
    ws = Workspace(ws_dir)
    con = ws.connect()
    Workspace.bind_model(con, enc.identity)
    run_id = Workspace.start_run(con, "bench", str(photos), enc.identity, enc.device)
    scan_into(con, detect_source(photos), run_id)
    opts = EmbedOptions(batch_size=args.batch_size, workers=args.workers, limit=args.n, draft_decode=args.draft_decode)
    t = time.perf_counter()
    ok, bad = embed_pending(ws, con, enc, run_id, opts)
    e2e = ok / (time.perf_counter() - t)
    assert ok == args.n and bad == 0, (ok, bad)
    con.close()
    shutil.rmtree(ws_dir, ignore_errors=True)

    f = "embed.jsonl"
    base = (f"{args.model}, {enc.precision}, batch {args.batch_size}, {opts.n_workers()} workers, "
            f"{args.threads} torch threads, prefetch {args.prefetch}, {args.n} JPEGs 640x480, "
            f"{'draft' if args.draft_decode else 'exact'} decode")
    print(f"\n{base}")
    record(f, "embed.image_tower_only_images_per_s", image_only, "img/s", baseline=base)
    record(f, "embed.model_only_images_per_s", model_only, "img/s", model_only / image_only, "image tower only")
    record(f, "embed.naive_loop_images_per_s", naive, "img/s")
    record(f, "embed.end_to_end_images_per_s", e2e, "img/s", e2e / model_only, "model-only (image + caption towers)")
    record(f, "embed.end_to_end_vs_naive", e2e / naive, "x", e2e / naive, "naive per-image loop")


if __name__ == "__main__":
    main()
