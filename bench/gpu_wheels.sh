#!/usr/bin/env bash
# Wheels the GPU machine lacks (it has torch, torchvision, Pillow, numpy, click; no registry),
# fetched here into .whl/ (ignored by git) for bench/gpu_check.sh, which installs them there.
# faiss-cpu, not faiss-gpu: the GPU wheels need CUDA 12 runtime wheels far over the 64 MiB a
# device call may carry, so the FAISS step measures the CPU build there and says so.
set -eu
cd "$(dirname "$0")/.."
# .whl/ kept out of git: this checkout's own ignore file (.whl/ is in .gitignore as well)
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl open_clip_torch ftfy wcwidth duckdb faiss-cpu
du -sh .whl && ls .whl
