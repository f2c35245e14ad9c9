"""Shared fixtures: real JPEG files, real workspaces built by the real `curate build-index`.

Everything runs on `curate-tiny` (random weights, seeded): tests check mechanics
against independent computations, never meaning.
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a missing download must fail at once, not after ~46 s
# `--precision auto` is float32 in the suite, subprocesses included: the exactness tests compare
# with open_clip's float32 output (tests/ingest/test_precision.py runs bf16 on purpose)
os.environ.setdefault("CURATE_NATIVE_BF16", "0")
# One OpenMP thread for torch, FAISS and OpenBLAS, in the suite and its subprocesses (set before
# any of them loads): the suite's models and indexes are tiny, so a second thread has nothing to
# do but spin-wait at every call, and while the other core is busy (pytest-xdist's other worker,
# another process) it burns as much CPU as the work. Measured on 2 cores: ingest+classify test
# files 60 s of CPU -> 32 s, the same results. Set it in the environment to test more threads.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

# Compiled modules (pytest's rewritten test files, curate's own) are kept in __pycache__ between
# runs even where PYTHONDONTWRITEBYTECODE is set, as on the project's machines: each xdist worker
# otherwise rewrites and compiles every test file again at every run of the quick loop (~6 s of
# CPU a worker, 2-core AMD EPYC). A folder that cannot be written is skipped silently.
# Set before curate is imported: its modules are written too, and the suite's `curate`
# subprocesses (which inherit PYTHONDONTWRITEBYTECODE) read them instead of compiling them again
# (`import curate.cli` in a fresh process 0.55 s -> 0.41 s).
sys.dont_write_bytecode = False

from curate.cli import cli  # noqa: E402 - after the line above


def _scratch_on_tmpfs(root: str = "/dev/shm", room: int = 8 << 30) -> None:
    """The suite's temporary folders (tmp_path, a subprocess's TMPDIR) in memory, where there is
    a tmpfs with room and TMPDIR is not set already. On a disk the suite's small files cost:
    each one the tests make, rename and delete, each DuckDB checkpoint's fdatasync (~6 ms a
    write+fsync here, 0.4 ms on tmpfs), and pytest's deletion of an older run's folders at the end
    of a run (~11,000 files, ~2 ms an unlink on the project machine's ext4 mounted with discard).
    A passed test's folders are removed at its end (tmp_path_retention_policy in pyproject.toml:
    a whole run kept was ~1.3 GB of memory there), a failed one's kept for the last 3 runs."""
    if os.environ.get("TMPDIR") or not os.path.isdir(root) or not os.access(root, os.W_OK):
        return
    st = os.statvfs(root)
    if st.f_bavail * st.f_frsize < room:
        return
    os.environ["TMPDIR"] = root
    tempfile.tempdir = None   # gettempdir() looks again


_scratch_on_tmpfs()

SAMPLES = Path(__file__).resolve().parent.parent / "samples"

CAPTIONS = [
    "sunset over the bridge #nyc",
    "best croissant in town 🥐😍",
    "A photo of a skyscraper",
    "",
    "rooftop bar with friends, Manhattan skyline",
    "Café au lait ☕ — très bon",
    "subway platform at rush hour",
    "東京タワー at night",
    "my dog in central park",
    "art gallery opening tonight!!!",
    "crosswalk on 5th ave",
    "gift shop souvenirs",
]


def write_jpeg(path: Path, size: tuple[int, int] = (96, 80), seed: int = 0, quality: int = 90,
               mode: str = "RGB") -> Path:
    """A real JPEG with some structure (gradients + noise), different for each seed."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([
        (xx * (1 + seed % 5) + yy) % 256,
        (yy * (2 + seed % 3)) % 256,
        (xx + yy * (seed % 7)) % 256,
    ], axis=-1).astype(np.float64)
    img = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(img, "RGB")
    if mode != "RGB":
        im = im.convert(mode)
    im.save(path, "JPEG", quality=quality)
    return path


def make_folder(root: Path, n: int = len(CAPTIONS), size: tuple[int, int] = (96, 80)) -> Path:
    """n JPEGs with a same-stem .txt caption beside each (empty caption: no .txt file)."""
    for i in range(n):
        write_jpeg(root / f"img_{i:03d}.jpg", size=size, seed=i)
        cap = CAPTIONS[i % len(CAPTIONS)]
        if cap:
            (root / f"img_{i:03d}.txt").write_text(cap, encoding="utf-8")
    return root


def _share_tokenizers() -> None:
    """One open_clip tokenizer per model name for the session. open_clip builds it from its 1.3 MB
    BPE vocabulary at each get_tokenizer call (~0.3 s, 70% of loading curate-tiny): a curate
    process loads it once, the suite's in-process runs would load it at every build, classify and
    search. It holds nothing a call changes (its cache only memoises BPE splits of words). Names
    with a schema (hf-hub:, local-dir:) are read from where they point each time."""
    import open_clip

    if getattr(open_clip.get_tokenizer, "shared", False):
        return
    make = open_clip.get_tokenizer
    made: dict = {}

    def get_tokenizer(model_name: str = "", *args, **kwargs):
        if args or ":" in model_name:
            return make(model_name, *args, **kwargs)
        key = (model_name, tuple(sorted(kwargs.items())))
        if key not in made:
            made[key] = make(model_name, **kwargs)
        return made[key]

    get_tokenizer.shared = True
    open_clip.get_tokenizer = get_tokenizer
    _share_random_models(open_clip)


def _share_random_models(open_clip) -> None:
    """Each random-weights model built once per RNG state. `load_encoder` builds curate-tiny
    from torch's seed 0 at every build-index, classify and search the suite runs in-process,
    and drawing its random weights is most of that (~0.1 s, 10 s over the quick loop). A build
    on the CPU without a checkpoint is a function of its arguments and of torch's RNG state
    before it: the same state again gets a copy of the model made from it (its own copy: a
    caller casts or moves it), and the RNG is left where the real build would leave it. Anything
    else (weights from a file or the hub, another device) is built every time, and so is any
    build whose log lines would be seen (root logger at INFO: curate drops open_clip's lines
    otherwise, curate/ingest/model.py _OpenClipRootLines)."""
    if getattr(open_clip.create_model_and_transforms, "shared", False):
        return
    import copy
    import logging

    import torch

    make = open_clip.create_model_and_transforms
    made: dict = {}

    def create_model_and_transforms(model_name, pretrained=None, *args, **kwargs):
        device = kwargs.get("device", "cpu")
        if (pretrained or args or str(device) != "cpu" or ":" in model_name
                or logging.getLogger().isEnabledFor(logging.INFO)):
            return make(model_name, pretrained, *args, **kwargs)
        before = torch.random.get_rng_state()
        key = (model_name, tuple(sorted((k, repr(v)) for k, v in kwargs.items())), before.numpy().tobytes())
        if key not in made:
            built = make(model_name, pretrained, **kwargs)
            made[key] = (copy.deepcopy(built), torch.random.get_rng_state())
            return built
        kept, after = made[key]
        torch.random.set_rng_state(after)
        return copy.deepcopy(kept)

    create_model_and_transforms.shared = True
    open_clip.create_model_and_transforms = create_model_and_transforms


def pytest_runtest_setup(item) -> None:
    # open_clip is imported by the first test that needs it (a light test file never pays torch's
    # import for it); from then on its tokenizers and its random-weights models are shared
    if "open_clip" in sys.modules:
        _share_tokenizers()
        if not _frozen_with_open_clip:
            _freeze_what_is_alive()


# -- the garbage collector ---------------------------------------------------------------------
# A worker holds a few million objects that live as long as it does (torch, open_clip, scipy,
# matplotlib: imported once, never freed), and Python's collector walks all of them at each of
# its full collections. Frozen (gc.freeze: after collection, and again once open_clip is
# imported) they are left out of every collection; the tests' own objects are collected as
# before. The young generation's threshold is raised from 700 allocations to 10,000: ~1,350
# collections a worker instead of 2,300-3,600. Measured on the quick loop (2-core AMD EPYC, both
# workers, four runs): the collector's time 7.5-8.7 s -> 4.3-4.7 s of CPU.

_frozen_with_open_clip = False


def _freeze_what_is_alive() -> None:
    global _frozen_with_open_clip
    gc.collect()
    gc.freeze()
    _frozen_with_open_clip = "open_clip" in sys.modules


def pytest_collection_finish(session) -> None:
    gc.set_threshold(10_000, 20, 10)
    _freeze_what_is_alive()


# -- longest test files first ----------------------------------------------------------------
# pytest-xdist hands whole files to its workers (--dist loadfile), by default the files with the
# most tests first. The number of tests says little about their time (60 one-line shell runs vs
# 6 kill-and-resume cases), and a long file handed out last keeps one worker busy while the
# other has nothing left. So each run records every file's seconds in pytest's cache, and the
# next run collects the files longest first (a greedy longest-first schedule); without a record
# (a fresh checkout, CI) xdist's own order stands.

def _seconds_key(config) -> str:
    import hashlib

    # the quick loop (-m "not slow") and the whole suite time the same file differently
    marks = hashlib.sha1(str(config.getoption("markexpr", "") or "").encode()).hexdigest()[:8]
    return f"curate/file-seconds-{marks}"


def _file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


class _FileSeconds:
    """Times each file of this run (in xdist's controller, or the one process without xdist),
    keeps them in pytest's cache at the end, and orders the next run's files by them."""

    def __init__(self, config) -> None:
        self.config = config
        self.seconds: dict[str, float] = {}
        recorded = config.cache.get(_seconds_key(config), None)
        self.recorded: dict[str, float] = recorded if isinstance(recorded, dict) else {}
        if self.recorded and hasattr(config.option, "loadscopereorder"):
            config.option.loadscopereorder = False    # the order below stands

    def pytest_collection_modifyitems(self, items) -> None:
        if self.recorded:   # a file not timed yet (new) goes first: it may be long
            items.sort(key=lambda item: -float(self.recorded.get(_file_of(item.nodeid), float("inf"))))

    def pytest_runtest_logreport(self, report) -> None:
        if not hasattr(self.config, "workerinput"):
            f = _file_of(report.nodeid)
            self.seconds[f] = self.seconds.get(f, 0.0) + report.duration

    def pytest_sessionfinish(self) -> None:
        if self.seconds and not hasattr(self.config, "workerinput"):
            self.config.cache.set(_seconds_key(self.config),
                                  {**self.recorded, **{f: round(s, 2) for f, s in self.seconds.items()}})


def pytest_configure(config) -> None:
    if getattr(config, "cache", None) is not None:    # -p no:cacheprovider: no record, xdist's order
        config.pluginmanager.register(_FileSeconds(config), "curate-file-seconds")


def run_cli(*args: str, expect: int | None = 0):
    """Run `curate ...` in-process; fail the test with its output if the exit code differs."""
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    if expect is not None:
        assert result.exit_code == expect, f"exit {result.exit_code}:\n{result.output}"
    return result


def open_db(path: str | Path):
    """A workspace's database read as `duckdb.connect(path, read_only=True)` reads it, through the
    process's DuckDB instance (curate/core/duckdb_host.py): ~5 ms an open and close instead of
    ~25-35, and the suite's checks open ~600. Nothing of curate's runs on it (no journal overlay,
    no upgrade); where this process holds the file otherwise, a connection of its own, as
    curate's scopes do. Close it, or use it as a `with` block."""
    from curate.core import duckdb_host

    return duckdb_host.Held(*duckdb_host.connect(Path(path), read_only=True))


@pytest.fixture(scope="session")
def tiny_encoder():
    from curate.ingest.model import load_encoder

    _share_tokenizers()
    return load_encoder("curate-tiny", "none", "cpu")


@pytest.fixture(scope="session")
def built_workspace(tmp_path_factory) -> Path:
    """A workspace built by `curate build-index` from 12 real JPEGs with captions (one without).

    Session-scoped and shared: tests must not write to it; copy it (shutil.copytree) first.
    """
    root = tmp_path_factory.mktemp("collection")
    make_folder(root / "photos")
    ws = root / "ws"
    run_cli("build-index", root / "photos", "-w", ws, "--model", "curate-tiny", "--pretrained", "none",
            "--workers", "0")
    return ws


@pytest.fixture(scope="session")
def classified_once(built_workspace, tmp_path_factory, tiny_encoder) -> Path:
    """The classification behind `classified`, made once per session (per xdist worker) and
    never handed to a test: each module gets a copy of it."""
    import shutil

    from curate.classify.run import classify

    ws = tmp_path_factory.mktemp("classified-once") / "ws"
    shutil.copytree(built_workspace, ws)
    classify(ws, encoder=tiny_encoder, logit_scale=60.0)
    return ws


@pytest.fixture(scope="module")
def classified(classified_once, tmp_path_factory) -> Path:
    """The shared built workspace, classified with a sharp softmax (probabilities spread over
    0..1); one per test module, read only there (tests that write copy it). Modules that need
    another classification define their own `classified`."""
    import shutil

    ws = tmp_path_factory.mktemp("classified") / "ws"
    shutil.copytree(classified_once, ws)
    return ws
