"""bf16 against float32: fidelity of the embeddings and of a 205-label classification, and speed.

    python bench/bench_precision.py [--n 2000] [--model ViT-B-32] [--batch-size 64]

The 5 bundled photos (samples/) and `--n` synthetic JPEGs (tests/conftest.write_jpeg-style
gradients + noise), embedded by the image tower in float32 and under bf16 autocast, the same
model (open_clip ViT-B-32, RANDOM weights, seeded) in the same run; the Places205 labels'
natural prompts encoded by the text tower in each precision. Reported: min / median cosine
between the two embeddings of each image (and of each label vector), top-1 agreement and the
largest probability difference of the classification at logit scale 100 (each precision's
images against its own label vectors), model-only images/s and text sentences/s. JSON lines
are appended to bench/results/precision.jsonl; the work files are removed at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import WORK, machine  # noqa: E402

from curate.classify.labels import load_label_set  # noqa: E402
from curate.classify.prompts import prompts_for, resolve  # noqa: E402
from curate.ingest.model import Encoder, load_encoder  # noqa: E402

FILE = "precision.jsonl"


def record(file: str, name: str, value: float, unit: str, ratio: float | None = None,
           baseline: str | None = None) -> None:
    """common.record with every digit kept: 0.99994 and 0.99996 are different answers here."""
    row = common.record(file, name, value, unit, ratio, baseline)
    lines = (common.RESULTS / file).read_text().splitlines()
    row["value"] = float(f"{value:.7g}")
    lines[-1] = json.dumps(row)
    (common.RESULTS / file).write_text("\n".join(lines) + "\n")


def write_jpeg(path: Path, size: tuple[int, int], seed: int) -> None:
    """tests/conftest.write_jpeg's picture: gradients plus noise, different for each seed."""
    Image.fromarray(common.synthetic_picture(size, seed), "RGB").save(path, "JPEG", quality=90)


def embed_images(enc: Encoder, x: torch.Tensor, bs: int) -> tuple[np.ndarray, float]:
    enc.encode_image_tensor(x[:bs])  # warm-up (oneDNN picks its kernels on the first call)
    t = time.perf_counter()
    out = np.concatenate([enc.encode_image_tensor(x[s:s + bs]) for s in range(0, len(x), bs)])
    return out, len(x) / (time.perf_counter() - t)


def label_vectors(enc: Encoder, prompts: list[list[str]]) -> tuple[np.ndarray, float]:
    """As curate/classify/label_vectors.py: each label's prompts encoded, averaged, normalised."""
    flat = [p for ps in prompts for p in ps]
    enc.encode_text(flat[:64])
    t = time.perf_counter()
    emb = enc.encode_text(flat).astype(np.float64)
    rate = len(flat) / (time.perf_counter() - t)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    out, start = [], 0
    for ps in prompts:
        v = emb[start:start + len(ps)].mean(axis=0)
        out.append(v / np.linalg.norm(v))
        start += len(ps)
    return np.array(out), rate


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a.astype(np.float64) * b, axis=1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000, help="synthetic JPEGs (besides the 5 bundled photos)")
    ap.add_argument("--size", type=int, nargs=2, default=(320, 240), help="synthetic JPEG width height")
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--scale", type=float, default=100.0, help="logit scale of the classification")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    print(f"machine: {machine()}; torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}")

    f32 = load_encoder(args.model, "none", "cpu", "fp32")
    b16 = dataclasses.replace(f32, precision="bf16")  # the same weights, under bf16 autocast

    work = WORK / "precision"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        for i in range(args.n):
            write_jpeg(work / f"{i:06d}.jpg", tuple(args.size), seed=i)
        samples = sorted(p for p in (ROOT / "samples" / "images").iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        files = samples + sorted(work.glob("*.jpg"))
        x = torch.stack([f32.preprocess(Image.open(p).convert("RGB")) for p in files])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ns = len(samples)

    # the same run, one precision after the other (on a shared machine the speed ratio is noisy)
    img32, rate32 = embed_images(f32, x, args.batch_size)
    img16, rate16 = embed_images(b16, x, args.batch_size)
    ls = load_label_set("places205")
    prompts = prompts_for(ls, resolve("natural"))
    lab32, txt32 = label_vectors(f32, prompts)
    lab16, txt16 = label_vectors(b16, prompts)

    cos = cosines(img32, img16)
    lcos = cosines(lab32, lab16)
    p32 = softmax(args.scale * img32.astype(np.float64) @ lab32.T)
    p16 = softmax(args.scale * img16.astype(np.float64) @ lab16.T)
    top32, top16 = p32.argmax(axis=1), p16.argmax(axis=1)
    agree = top32 == top16
    dprob = np.abs(p32 - p16)
    # how decided the float32 top-1 is: a flip can only happen where the top two are close
    srt = np.sort(p32, axis=1)
    margin = srt[:, -1] - srt[:, -2]

    base = (f"{args.model} random weights, bf16 autocast vs fp32, {ns} samples/ photos + {args.n} synthetic "
            f"JPEGs {args.size[0]}x{args.size[1]}, {len(ls)} labels ({sum(map(len, prompts))} prompts), "
            f"logit scale {args.scale:g}, batch {args.batch_size}")
    print(f"\n{base}")
    record(FILE, "precision.image_cosine_min", float(cos.min()), "cos", baseline=base)
    record(FILE, "precision.image_cosine_median", float(np.median(cos)), "cos", baseline=base)
    record(FILE, "precision.samples_image_cosine_min", float(cos[:ns].min()), "cos", baseline=base)
    record(FILE, "precision.label_vector_cosine_min", float(lcos.min()), "cos", baseline=base)
    record(FILE, "precision.label_vector_cosine_median", float(np.median(lcos)), "cos", baseline=base)
    record(FILE, "precision.top1_agreement", float(agree.mean()), "fraction", baseline=base)
    record(FILE, "precision.samples_top1_agreement", float(agree[:ns].mean()), "fraction", baseline=base)
    record(FILE, "precision.max_prob_diff", float(dprob.max()), "prob", baseline=base)
    record(FILE, "precision.median_top1_prob_diff", float(np.median(np.abs(p32.max(1) - p16.max(1)))), "prob",
           baseline=base)
    record(FILE, "precision.fp32_top1_margin_median", float(np.median(margin)), "prob", baseline=base)
    if (~agree).any():
        record(FILE, "precision.fp32_top1_margin_max_where_flipped", float(margin[~agree].max()), "prob",
               baseline=base)
    record(FILE, "precision.image_tower_fp32_images_per_s", rate32, "img/s", baseline=base)
    record(FILE, "precision.image_tower_bf16_images_per_s", rate16, "img/s", rate16 / rate32, "fp32, same run")
    record(FILE, "precision.text_tower_fp32_sentences_per_s", txt32, "sent/s", baseline=base)
    record(FILE, "precision.text_tower_bf16_sentences_per_s", txt16, "sent/s", txt16 / txt32, "fp32, same run")


if __name__ == "__main__":
    main()
