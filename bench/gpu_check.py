"""The GPU path measured in one run: one step per call, so bench/gpu_check.sh can give each its own timeout.

    python bench/gpu_check.py env
    python bench/gpu_check.py jpegs     [--n 10000]
    python bench/gpu_check.py accuracy  [--n 64]          # --decode gpu's pixels and vectors vs Pillow's, on the device
    python bench/gpu_check.py model     [--n 2048]        # model-only images/s: pre-decoded tensors on the device
    python bench/gpu_check.py build     --decode cpu|gpu [--n 10000]   # build-index end to end
    python bench/gpu_check.py faiss     [--vectors 1000000]            # IVF training and search, GPU if faiss has one
    add --dry to any: tiny sizes on the CPU (proves the script runs on a machine without a GPU)

ViT-B-32 with random weights (a forward pass costs the same whatever the weights), fp16
autocast on CUDA (build-index's default there), synthetic 640x480 JPEGs with captions.
Figures are printed and appended to bench/results/gpu.jsonl (bench/work/gpu_dry.jsonl with
--dry, which is never a figure to keep).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import WORK, machine, record  # noqa: E402

PHOTOS = WORK / "gpu-jpegs"


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("step", choices=("env", "jpegs", "accuracy", "model", "build", "faiss"))
    ap.add_argument("--dry", action="store_true", help="tiny sizes on the CPU: checks the script, measures nothing")
    ap.add_argument("--n", type=int, default=None, help="images (jpegs, build: 10000; model: 2048; accuracy: 64)")
    ap.add_argument("--decode", choices=("cpu", "gpu"), default="cpu", help="build: build-index --decode")
    ap.add_argument("--batch-size", type=int, default=256, help="images per forward pass (build-index's CUDA default)")
    ap.add_argument("--workers", type=int, default=-1, help="loader workers (-1: one per core, at most 16)")
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--vectors", type=int, default=1_000_000, help="faiss: vectors in the index")
    ap.add_argument("--dim", type=int, default=512)
    return ap.parse_args()


def _results(args) -> str:
    return "../work/gpu_dry.jsonl" if args.dry else "gpu.jsonl"


def _device(args) -> str:
    import torch

    if args.dry:
        return "cpu"
    if not torch.cuda.is_available():
        sys.exit("gpu_check: torch sees no CUDA device (run with --dry to check the script on a CPU)")
    return "cuda"


def step_env(args) -> None:
    import torch
    import torchvision

    print(f"machine: {machine()}")
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
          f"CUDA {torch.version.cuda}, cuda available {torch.cuda.is_available()}")
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        print(f"GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs")
    for mod in ("open_clip", "duckdb", "faiss", "PIL"):
        try:
            m = __import__(mod)
            extra = ""
            if mod == "faiss":
                extra = f", GPUs seen by faiss: {m.get_num_gpus() if hasattr(m, 'get_num_gpus') else 0}"
            print(f"{mod} {getattr(m, '__version__', '?')}{extra}")
        except ImportError as e:
            print(f"{mod}: MISSING ({e})")


def _one_jpeg(i: int) -> None:
    from PIL import Image

    f = PHOTOS / f"{i:06d}.jpg"
    if f.exists():
        return
    rng = np.random.default_rng(i)
    yy, xx = np.mgrid[0:480, 0:640]
    # smooth structure plus noise: compresses like a photo (~60-120 KB), not like flat colour (bench_embed.py's)
    base = np.stack([(xx * (1 + i % 5) / 3 + yy) % 256, (yy * (1 + i % 3) + xx / 2) % 256,
                     ((xx + yy) * (i % 7 + 1) / 4) % 256], -1)
    img = np.clip(base + rng.normal(0, 18, base.shape), 0, 255).astype(np.uint8)
    tmp = f.with_suffix(".tmp")
    Image.fromarray(img).save(tmp, "JPEG", quality=90)
    tmp.rename(f)
    f.with_suffix(".txt").write_text(f"photo {i} of the city at night #nyc #travel")


def step_jpegs(args) -> None:
    from multiprocessing import Pool

    n = args.n or (40 if args.dry else 10_000)
    PHOTOS.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    with Pool(os.cpu_count() or 1) as pool:
        pool.map(_one_jpeg, range(n), chunksize=64)
    for extra in sorted(PHOTOS.glob("*.jpg"))[n:]:  # a folder left by a larger run: exactly n
        extra.unlink()
        extra.with_suffix(".txt").unlink(missing_ok=True)
    mb = sum(f.stat().st_size for f in PHOTOS.glob("*.jpg")) / 1e6
    print(f"{n} JPEGs 640x480 in {PHOTOS} ({mb:.0f} MB) in {time.perf_counter() - t:.1f} s")


def _encoder(args, device: str):
    from curate.ingest.model import load_encoder

    return load_encoder("curate-tiny" if args.dry else args.model, "none", device, "auto")


def _files(n: int) -> list[Path]:
    files = sorted(PHOTOS.glob("*.jpg"))[:n]
    if len(files) < n:
        sys.exit(f"gpu_check: {len(files)} JPEGs in {PHOTOS}, {n} needed: run the jpegs step first")
    return files


def step_accuracy(args) -> None:
    """--decode gpu against Pillow + open_clip's preprocess, on the device: pixel levels and cosine."""
    import torch

    from curate.ingest.device_decode import DeviceDecoder, Pending
    from curate.ingest.images import JpegFile, open_rgb, read_jpeg, resize_rule

    device = _device(args)
    enc = _encoder(args, device)
    files = _files(args.n or (8 if args.dry else 64))
    rule = resize_rule(enc.preprocess, enc.image_size)
    reads = [read_jpeg(str(f), resize=rule) for f in files]
    assert all(isinstance(r, JpegFile) for r in reads)
    dec = DeviceDecoder(enc.preprocess, enc.image_size, device, 89_478_485)
    _ids, x, bad = dec(np.arange(len(files)), Pending.collate(reads))
    assert not bad, bad
    cpu = torch.stack([enc.preprocess(open_rgb(str(f), resize=rule)) for f in files]).to(device)
    std = torch.tensor(dec.plan.std, device=device).view(1, 3, 1, 1)
    levels = ((x - cpu).abs() * std * 255).float()
    cos = (enc.encode_image_tensor(x) * enc.encode_image_tensor(cpu)).sum(axis=1)
    base = f"{len(files)} JPEGs 640x480, {enc.identity.model} {enc.precision}, device {device}"
    f = _results(args)
    record(f, "gpu.decode_gpu_max_levels", levels.max().item(), "levels", baseline=base)
    record(f, "gpu.decode_gpu_values_off_fraction", (levels > 0.5).float().mean().item(), "fraction", baseline=base)
    record(f, "gpu.decode_gpu_min_cosine", float(cos.min()), "cosine", baseline="Pillow + open_clip preprocess")


def step_model(args) -> None:
    """Model only: pre-decoded, preprocessed tensors already on the device; image tower, then image + caption."""
    import torch
    from PIL import Image

    device = _device(args)
    enc = _encoder(args, device)
    n = args.n or (16 if args.dry else 2048)
    files = _files(min(n, 256))
    one = torch.stack([enc.preprocess(Image.open(f).convert("RGB")) for f in files]).to(device)
    x = one.repeat((n + len(one) - 1) // len(one), 1, 1, 1)[:n]
    toks = enc.tokenize([files[i % len(files)].with_suffix(".txt").read_text() for i in range(n)])
    bs = args.batch_size
    enc.encode_image_tensor(x[:bs])  # warm-up (cuDNN/cuBLAS choices, autocast caches)
    enc.encode_tokens(toks[:bs])

    def timed(fn) -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        for s in range(0, n, bs):
            fn(s)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return n / (time.perf_counter() - t)

    image = timed(lambda s: enc.encode_image_tensor(x[s:s + bs]))
    both = timed(lambda s: (enc.encode_image_tensor(x[s:s + bs]), enc.encode_tokens(toks[s:s + bs])))
    base = f"{enc.identity.model} {enc.precision}, batch {bs}, {n} images, device {device}"
    f = _results(args)
    record(f, "gpu.model_only_image_tower_images_per_s", image, "img/s", baseline=base)
    record(f, "gpu.model_only_images_per_s", both, "img/s", both / image, "image tower only")


def step_build(args) -> None:
    """`build-index --device cuda [--decode gpu]` end to end (scan, embed images + captions, commit, index)."""
    from curate import api

    device = _device(args)
    n = args.n or (40 if args.dry else 10_000)
    files = _files(n)
    src = WORK / f"gpu-src-{n}"
    if not src.exists():  # exactly n photos, linked (not copied) from the generated folder
        tmp = src.with_suffix(".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for f in files:
            os.symlink(f, tmp / f.name)
            os.symlink(f.with_suffix(".txt"), tmp / f.with_suffix(".txt").name)
        tmp.rename(src)
    ws = WORK / f"gpu-ws-{args.decode}"
    shutil.rmtree(ws, ignore_errors=True)
    kw = dict(model="curate-tiny" if args.dry else args.model, pretrained="none", device=device,
              batch_size=args.batch_size, workers=args.workers, index="flat", quiet=True, log=print)
    if args.decode == "gpu" and args.dry:
        sys.exit("gpu_check: --decode gpu needs CUDA (the dry run checks the CPU decode only)")
    t = time.perf_counter()
    r = api.build_index(src, ws, decode=args.decode, **kw)
    wall = time.perf_counter() - t
    ok = r.items.get("embedded", 0)
    shutil.rmtree(ws, ignore_errors=True)
    assert ok == n, r.items
    from curate.ingest.embed import EmbedOptions

    workers = EmbedOptions(workers=args.workers).n_workers()
    base = (f"{kw['model']} {r.precision}, batch {args.batch_size}, {workers} loader workers, {n} JPEGs 640x480 "
            f"with captions, --decode {args.decode}, device {device}; the whole command (model load, scan, index)")
    record(_results(args), f"gpu.build_index_decode_{args.decode}_images_per_s", n / wall, "img/s", baseline=base)


def step_faiss(args) -> None:
    """curate's IVF build (k-means on the GPU when faiss has one) and search, at --vectors x --dim."""
    import faiss
    from common import vector_workspace

    n = 20_000 if args.dry else args.vectors
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    f = _results(args)
    if not gpus:
        print(f"faiss {faiss.__version__} has no GPU support here (faiss-cpu, or no GPU seen): "
              "the IVF build and search below run on the CPU")
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(1000, args.dim)).astype(np.float32)
    chunks = []
    for s in range(0, n, 100_000):
        m = min(100_000, n - s)
        v = centres[rng.integers(0, len(centres), m)] + rng.normal(0, 0.3, (m, args.dim)).astype(np.float32)
        chunks.append(v / np.linalg.norm(v, axis=1, keepdims=True))
    queries = chunks[0][:10_000].copy()
    ws_dir = WORK / "gpu-ws-faiss"
    t = time.perf_counter()
    vector_workspace(ws_dir, chunks, args.dim)
    print(f"{n} x {args.dim} clustered vectors written in {time.perf_counter() - t:.1f} s")
    del chunks
    from curate.core.workspace import Workspace
    from curate.ingest import faiss_index

    con = Workspace(ws_dir).connect()
    t = time.perf_counter()
    res = faiss_index.build_index(Workspace(ws_dir), con, "image", "ivf")
    build = time.perf_counter() - t
    con.close()
    index = faiss.read_index(str(res.path))
    where = f"{gpus} GPU(s)" if gpus else "CPU only"
    base = f"{n} x {args.dim} clustered, {res.factory}, k-means on {'GPU' if gpus else 'CPU'} ({where})"
    record(f, "gpu.faiss_ivf_build_s", build, "s", baseline=base + "; training, adds, recall tuning")
    if res.search is not None:
        print(f"tuned by build-index: {res.search.describe()}")
    ivf = faiss.extract_index_ivf(index)
    gres = faiss.StandardGpuResources() if gpus else None  # kept alive while the GPU index lives
    on_gpu = faiss.index_cpu_to_gpu(gres, 0, index) if gpus else None
    for nprobe in (1, 8, 32):
        ivf.nprobe = nprobe
        search_on = index
        if on_gpu is not None:
            search_on = on_gpu
            faiss.GpuParameterSpace().set_index_parameter(search_on, "nprobe", nprobe)
        search_on.search(queries[:100], 10)  # warm-up
        t = time.perf_counter()
        search_on.search(queries, 10)
        qps = len(queries) / (time.perf_counter() - t)
        record(f, f"gpu.faiss_ivf_search_nprobe{nprobe}_q_per_s", qps, "q/s",
               baseline=f"{base}; {len(queries)} queries, k 10, on {'GPU' if gpus else 'CPU'}")
    shutil.rmtree(ws_dir, ignore_errors=True)


def main() -> None:
    args = _args()
    if args.dry:
        os.environ.setdefault("CURATE_NATIVE_BF16", "0")
    {"env": step_env, "jpegs": step_jpegs, "accuracy": step_accuracy, "model": step_model, "build": step_build,
     "faiss": step_faiss}[args.step](args)
    sys.stdout.flush()


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
