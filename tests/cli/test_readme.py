"""The README's demo output is what the demo's commands print today (timings and paths aside)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _demo_commands() -> list[list[str]]:
    """The `curate ...` lines of the Makefile's demo recipe, as argument lists."""
    make = (REPO / "Makefile").read_text(encoding="utf-8")
    recipe = make.split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    out = []
    for line in recipe.splitlines():
        line = line.strip()
        if line.startswith("$(VENV)/bin/curate "):
            out.append(shlex.split(line.replace("$(VENV)/bin/curate ", "").replace("$(DEMO_WS)", "demo-ws")))
    return out


def _normalise(text: str, root: str) -> list[str]:
    text = text.replace(root, "<repo>")
    text = re.sub(r"\b\d+\.\d s\b", "<t> s", text)          # run times
    text = re.sub(r"[\d.]+ ms a query, [\d,]+ q/s batched", "<t> ms a query, <n> q/s batched", text)  # index speed
    # why the hub cannot be had: offline here (HF_HUB_OFFLINE, as in tests), no network in the README's run
    # (and where that cache is: under the test's own HOME)
    text = re.sub(r"Hugging Face cache \([^)]*\) and [^;]*;", "Hugging Face cache (<cache>) and <why>;", text)
    # a step that runs longer than progress.LOG_EVERY_S (a loaded machine) logs plain progress lines
    # ("scoring: 10/10 vectors (100%), 1.0 vectors/s, 0s left" and a closing "... in 12s (...)"):
    # how long a step takes is not what this test pins
    progress = re.compile(r"^\S[^:]*: .*\d \w+s/s(, \S+ left|\))?$")
    return [ln.rstrip() for ln in text.splitlines() if ln.strip() and not progress.match(ln.rstrip())]


@pytest.mark.slow
def test_readme_demo_block_is_the_real_output(tmp_path):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = readme.split("```\nthe weights of ViT-B-32", 1)[1].split("```", 1)[0]
    block = "the weights of ViT-B-32" + block
    shutil.copytree(REPO / "samples", tmp_path / "samples")
    commands = _demo_commands()
    assert [c[0] for c in commands] == ["build-index", "classify", "classify", "sql", "filter", "compare"]
    got = ""
    for args in commands:
        r = subprocess.run([sys.executable, "-m", "curate.cli", *args], cwd=tmp_path, capture_output=True,
                           text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
                                           "HOME": str(tmp_path), "PYTHONPATH": str(REPO)})
        assert r.returncode == 0, r.stderr
        got += r.stderr + r.stdout
    # filter itself says the vectors come from random weights (every results command does)
    assert "NOTE: demo-ws was embedded with random weights" in block
    want = _normalise(block, "/work/main")
    assert _normalise(got, str(tmp_path)) == want


@pytest.mark.slow
def test_the_rejected_hint_runs_as_printed(tmp_path):
    """build-index's `reasons: duckdb ...` hint is a command that works as printed (venv on PATH)."""
    from conftest import make_folder

    src = make_folder(tmp_path / "photos", n=2)
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    env = {"HF_HUB_OFFLINE": "1", "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "curate.cli", "build-index", str(src), "-w", str(tmp_path / "ws"),
                        "--model", "curate-tiny", "--pretrained", "none", "--workers", "0"],
                       capture_output=True, text=True, env=env, check=True)
    hint = re.search(r"reasons: (duckdb .*)\)$", r.stdout, re.M).group(1)
    shown = subprocess.run(hint, shell=True, capture_output=True, text=True, env=env, cwd=tmp_path, check=True)
    assert "broken.jpg" in shown.stdout
