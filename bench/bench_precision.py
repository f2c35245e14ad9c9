"""bf16 against float32: fidelity of the embeddings and of a 205-label classification, speed,
and the cheap wins around the model (one run, so the ratios share the machine's state).

    python bench/bench_precision.py [--n 2000] [--model ViT-B-32] [--batch-size 64]
                                    [--wins-n 384] [--no-wins] [--compile]

The 5 bundled photos (samples/) and `--n` synthetic JPEGs (tests/conftest.write_jpeg-style
gradients + noise), embedded by the image tower in float32, with the weights cast to bf16
(what `--precision bf16` does on a CPU) and under bf16 autocast (what it did before; CUDA's
way), the same model (open_clip ViT-B-32, RANDOM weights, seeded) in the same run; the
Places205 labels' natural prompts encoded by the text tower in each. Reported per bf16 way:
min / median cosine between the two embeddings of each image (and of each label vector),
top-1 agreement (all images, and those whose float32 top two are >= 0.05 apart in
probability) and the largest probability difference of the classification at logit scale
100 (each precision's images against its own label vectors); model-only images/s and text
sentences/s of all three.

Cheap wins (model only, the image tower, `--wins-n` pre-decoded images, each against its
baseline in the same run): torch.inference_mode vs no_grad, batch 32 / 64 / 128, torch
threads 1 vs all, OpenMP threads pinned to cores vs not (fresh processes), and with
`--compile` torch.compile (its compile time is reported too; 130 s on 2 loaded cores).
JSON lines are appended to bench/results/precision.jsonl; the work files are removed.
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


def fidelity(tag: str, base: str, ns: int, scale: float, img32: np.ndarray, lab32: np.ndarray,
             img16: np.ndarray, lab16: np.ndarray) -> None:
    cos = cosines(img32, img16)
    lcos = cosines(lab32, lab16)
    p32 = softmax(scale * img32.astype(np.float64) @ lab32.T)
    p16 = softmax(scale * img16.astype(np.float64) @ lab16.T)
    agree = p32.argmax(axis=1) == p16.argmax(axis=1)
    dprob = np.abs(p32 - p16)
    # how decided the float32 top-1 is: a flip can only happen where the top two are close
    srt = np.sort(p32, axis=1)
    margin = srt[:, -1] - srt[:, -2]
    decided = margin >= 0.05
    b = f"{tag} vs fp32, {base}"
    n = f"precision.{tag}"
    record(FILE, f"{n}.image_cosine_min", float(cos.min()), "cos", baseline=b)
    record(FILE, f"{n}.image_cosine_median", float(np.median(cos)), "cos", baseline=b)
    record(FILE, f"{n}.samples_image_cosine_min", float(cos[:ns].min()), "cos", baseline=b)
    record(FILE, f"{n}.label_vector_cosine_min", float(lcos.min()), "cos", baseline=b)
    record(FILE, f"{n}.label_vector_cosine_median", float(np.median(lcos)), "cos", baseline=b)
    record(FILE, f"{n}.top1_agreement", float(agree.mean()), "fraction", baseline=b)
    record(FILE, f"{n}.samples_top1_agreement", float(agree[:ns].mean()), "fraction", baseline=b)
    if decided.any():
        record(FILE, f"{n}.top1_agreement_margin_0.05", float(agree[decided].mean()), "fraction",
               baseline=f"{int(decided.sum())} images whose fp32 top two are >= 0.05 apart; {b}")
    record(FILE, f"{n}.max_prob_diff", float(dprob.max()), "prob", baseline=b)
    record(FILE, f"{n}.median_top1_prob_diff", float(np.median(np.abs(p32.max(1) - p16.max(1)))), "prob",
           baseline=b)
    record(FILE, f"{n}.fp32_top1_margin_median", float(np.median(margin)), "prob", baseline=b)
    if (~agree).any():
        record(FILE, f"{n}.fp32_top1_margin_max_where_flipped", float(margin[~agree].max()), "prob", baseline=b)


def image_rate(forward, x: torch.Tensor, bs: int, ctx=torch.inference_mode) -> float:
    """Model-only images/s of `forward` over x in batches of bs (one warm-up batch first)."""
    with ctx():
        forward(x[:bs])
        t = time.perf_counter()
        for s in range(0, len(x), bs):
            forward(x[s:s + bs])
    return len(x) / (time.perf_counter() - t)


def cheap_wins(f32: Encoder, bw: Encoder, x: torch.Tensor, bs: int, compile_too: bool, base: str) -> None:
    """The image tower on the bf16-weights path (and float32), each knob against its baseline."""
    xb = x.to(torch.bfloat16)
    threads = torch.get_num_threads()
    for tag, enc, inp in (("bf16_weights", bw, xb), ("fp32", f32, x)):
        fwd = enc.model.encode_image
        b = f"{tag}, {len(x)} images, {base}"
        r_inf = image_rate(fwd, inp, bs)
        r_ng = image_rate(fwd, inp, bs, torch.no_grad)
        record(FILE, f"precision.wins.{tag}.inference_mode_images_per_s", r_inf, "img/s", baseline=b)
        record(FILE, f"precision.wins.{tag}.no_grad_images_per_s", r_ng, "img/s", r_ng / r_inf,
               f"inference_mode, same run; {b}")
        r = {bsz: image_rate(fwd, inp, bsz) for bsz in (32, 64, 128)}
        for bsz, v in r.items():
            record(FILE, f"precision.wins.{tag}.batch_{bsz}_images_per_s", v, "img/s", v / r[32],
                   f"batch 32, same run; {b}")
        if threads > 1:
            torch.set_num_threads(1)
            try:
                r1 = image_rate(fwd, inp, bs)
            finally:
                torch.set_num_threads(threads)
            record(FILE, f"precision.wins.{tag}.threads_1_images_per_s", r1, "img/s", r1 / r_inf,
                   f"{threads} threads, same run; {b}")
        if compile_too:
            t = time.perf_counter()
            try:
                compiled = torch.compile(enc.model.visual)
                image_rate(compiled, inp[:bs], bs)  # the first calls compile
            except Exception as e:  # noqa: BLE001 - a bench reports what did not work
                print(f"torch.compile failed for {tag}: {str(e).splitlines()[0][:200]}")
                continue
            took = time.perf_counter() - t
            rc = image_rate(compiled, inp, bs)
            rv = image_rate(enc.model.visual, inp, bs)
            record(FILE, f"precision.wins.{tag}.compile_seconds", took, "s", baseline=b)
            record(FILE, f"precision.wins.{tag}.compiled_images_per_s", rc, "img/s", rc / rv,
                   f"eager visual tower, same run; {b}")


def _child_rate(model: str, n: int, bs: int) -> None:
    """--child-rate: the bf16-weights image tower's images/s on n random inputs, printed as JSON
    (run in a fresh process, so that OpenMP reads the thread-binding variables it was given)."""
    enc = load_encoder(model, "none", "cpu", "bf16")
    x = torch.rand(n, 3, enc.image_size, enc.image_size, generator=torch.Generator().manual_seed(0))
    print(json.dumps({"rate": image_rate(enc.model.encode_image, x.to(torch.bfloat16), bs)}))


def affinity(model: str, n: int, bs: int, base: str) -> None:
    """Threads pinned to cores (OMP_PROC_BIND=close, OMP_PLACES=cores) against unpinned, each in
    a fresh process, alternated twice so that a drift of the machine's load shows."""
    import subprocess

    rates: dict[bool, list[float]] = {False: [], True: []}
    for pinned in (False, True, False, True):
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_PROC_BIND", "OMP_PLACES")}
        if pinned:
            env.update(OMP_PROC_BIND="close", OMP_PLACES="cores")
        out = subprocess.run([sys.executable, __file__, "--child-rate", "--model", model, "--wins-n", str(n),
                              "--batch-size", str(bs)], env=env, capture_output=True, text=True, check=True)
        rates[pinned].append(json.loads(out.stdout.strip().splitlines()[-1])["rate"])
    free, pinned = max(rates[False]), max(rates[True])
    b = f"bf16_weights, {n} random inputs, best of 2 fresh processes each; {base}"
    record(FILE, "precision.wins.bf16_weights.unpinned_images_per_s", free, "img/s", baseline=b)
    record(FILE, "precision.wins.bf16_weights.pinned_images_per_s", pinned, "img/s", pinned / free,
           f"unpinned; {b}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000, help="synthetic JPEGs (besides the 5 bundled photos)")
    ap.add_argument("--size", type=int, nargs=2, default=(320, 240), help="synthetic JPEG width height")
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--scale", type=float, default=100.0, help="logit scale of the classification")
    ap.add_argument("--wins-n", type=int, default=384, help="pre-decoded images for the cheap-win ratios")
    ap.add_argument("--no-wins", action="store_true", help="skip the cheap-win ratios")
    ap.add_argument("--compile", action="store_true", help="also torch.compile the image tower (minutes)")
    ap.add_argument("--child-rate", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_rate:
        return _child_rate(args.model, args.wins_n, args.batch_size)
    torch.set_num_threads(os.cpu_count() or 1)
    print(f"machine: {machine()}; torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}")

    f32 = load_encoder(args.model, "none", "cpu", "fp32")
    bw = load_encoder(args.model, "none", "cpu", "bf16")   # the same seeded weights, cast to bf16
    assert bw.mode == "weights", bw.mode
    ac = dataclasses.replace(f32, precision="bf16", mode="autocast")  # the float32 weights under autocast

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

    # the same run, one after the other (on a shared machine the speed ratios are noisy)
    img32, rate32 = embed_images(f32, x, args.batch_size)
    imgw, ratew = embed_images(bw, x, args.batch_size)
    imga, ratea = embed_images(ac, x, args.batch_size)
    ls = load_label_set("places205")
    prompts = prompts_for(ls, resolve("natural"))
    lab32, txt32 = label_vectors(f32, prompts)
    labw, txtw = label_vectors(bw, prompts)
    laba, txta = label_vectors(ac, prompts)

    base = (f"{args.model} random weights, {ns} samples/ photos + {args.n} synthetic JPEGs "
            f"{args.size[0]}x{args.size[1]}, {len(ls)} labels ({sum(map(len, prompts))} prompts), "
            f"logit scale {args.scale:g}, batch {args.batch_size}, {torch.get_num_threads()} threads")
    print(f"\n{base}")
    fidelity("bf16_weights", base, ns, args.scale, img32, lab32, imgw, labw)
    fidelity("bf16_autocast", base, ns, args.scale, img32, lab32, imga, laba)
    record(FILE, "precision.logit_scale_fp32", f32.logit_scale, "scale", baseline=base)
    record(FILE, "precision.logit_scale_bf16_weights", bw.logit_scale, "scale", bw.logit_scale / f32.logit_scale,
           "fp32 (kept float32 by the cast)")
    record(FILE, "precision.image_tower_fp32_images_per_s", rate32, "img/s", baseline=base)
    record(FILE, "precision.image_tower_bf16_weights_images_per_s", ratew, "img/s", ratew / rate32, "fp32, same run")
    record(FILE, "precision.image_tower_bf16_autocast_images_per_s", ratea, "img/s", ratea / rate32, "fp32, same run")
    record(FILE, "precision.text_tower_fp32_sentences_per_s", txt32, "sent/s", baseline=base)
    record(FILE, "precision.text_tower_bf16_weights_sentences_per_s", txtw, "sent/s", txtw / txt32, "fp32, same run")
    record(FILE, "precision.text_tower_bf16_autocast_sentences_per_s", txta, "sent/s", txta / txt32, "fp32, same run")
    if not args.no_wins:
        del img32, imgw, imga
        cheap_wins(f32, bw, x[: args.wins_n], args.batch_size, args.compile, base)
        affinity(args.model, args.wins_n, args.batch_size, base)


if __name__ == "__main__":
    main()
