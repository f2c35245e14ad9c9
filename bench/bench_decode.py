"""Draft (reduced-scale) JPEG decoding against the exact path: its deviation and its speed-up.

    python bench/bench_decode.py [--model curate-tiny] [--crops 40] [--synthetic 40]

The exact path is open_clip's own preprocessing of the full decode (curate's default);
the draft path is `--draft-decode`. Photos: the 5 CC0 sample photos (1280 px), random
crops of them re-saved as JPEG (500-1280 px), and synthetic 640x480 JPEGs like
bench_embed's. Prints min / mean cosine between the two vectors of each image, how many
images' nearest sample photo changes, and decode+preprocess images/s both ways (ratio
measured in the same run). Appends to bench/results/decode.jsonl.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_embed import make_jpegs  # noqa: E402
from common import WORK, machine, record  # noqa: E402

from curate.ingest.images import open_rgb, resize_rule  # noqa: E402
from curate.ingest.model import load_encoder  # noqa: E402

SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "images"


def photos(n_crops: int, n_synth: int) -> list[Path]:
    out = sorted(SAMPLES.glob("*.jpg"))
    crops = WORK / "decode-crops"
    crops.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n_crops):
        src = Image.open(out[i % len(out)]).convert("RGB")
        w, h = src.size
        cw, ch = int(rng.integers(500, w + 1)), int(rng.integers(500, h + 1))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        p = crops / f"crop_{i:03d}.jpg"
        src.crop((x, y, x + cw, y + ch)).save(p, quality=int(rng.integers(80, 96)))
        out.append(p)
    synth = WORK / "jpegs"
    make_jpegs(synth, n_synth)
    return out + sorted(synth.glob("*.jpg"))[:n_synth]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="curate-tiny")
    ap.add_argument("--crops", type=int, default=40)
    ap.add_argument("--synthetic", type=int, default=40)
    args = ap.parse_args()
    print(f"machine: {machine()}")
    enc = load_encoder(args.model, "none", "cpu")
    rule = resize_rule(enc.preprocess, enc.image_size)
    files = photos(args.crops, args.synthetic)

    def tensors(draft: bool) -> tuple[torch.Tensor, float]:
        t = time.perf_counter()
        x = torch.stack([enc.preprocess(open_rgb(str(f), resize=rule, draft=draft)) for f in files])
        return x, len(files) / (time.perf_counter() - t)

    # interleaved, best of three each: the machine is shared and noisy
    runs = [(d, *tensors(d)) for _ in range(3) for d in (False, True)]
    x_exact, x_draft = runs[0][1], runs[1][1]
    ips_exact = max(r[2] for r in runs if not r[0])
    ips_draft = max(r[2] for r in runs if r[0])
    a = np.concatenate([enc.encode_image_tensor(x_exact[s : s + 64]) for s in range(0, len(files), 64)])
    b = np.concatenate([enc.encode_image_tensor(x_draft[s : s + 64]) for s in range(0, len(files), 64)])
    cos = (a * b).sum(1)
    # a stand-in for "top label": the nearest of the 5 sample photos' exact vectors
    anchors = a[:5]
    flips = int(((a @ anchors.T).argmax(1) != (b @ anchors.T).argmax(1)).sum())

    f = "decode.jsonl"
    n_draft = sum(1 for p in files if min(Image.open(p).size) >= 2 * enc.image_size)
    print(f"\n{args.model} (random weights), {len(files)} JPEGs ({n_draft} large enough for a draft decode): "
          f"5 CC0 photos 1280 px, {args.crops} crops of them, {args.synthetic} synthetic 640x480")
    record(f, f"decode.draft_vs_exact_min_cosine.{args.model}", float(cos.min()), "cos")
    record(f, f"decode.draft_vs_exact_mean_cosine.{args.model}", float(cos.mean()), "cos")
    record(f, f"decode.draft_nearest_sample_flips.{args.model}", flips, "images")
    print(f"min cosine {cos.min():.5f}, mean {cos.mean():.5f}")
    record(f, "decode.exact_images_per_s", ips_exact, "img/s")
    record(f, "decode.draft_images_per_s", ips_draft, "img/s", ips_draft / ips_exact, "exact decode")


if __name__ == "__main__":
    main()
