"""The CLI starts without torch, open_clip, faiss or matplotlib: they load where they are used.

Each check runs in a fresh interpreter (the test process itself has long imported torch), so
`sys.modules` there says what the command really pulled in.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli

HEAVY = ("torch", "open_clip", "faiss", "matplotlib", "starlette", "uvicorn")

# Runs the given CLI invocations in-process (click's runner), then prints the heavy modules loaded.
PROBE = """
import json, sys
from click.testing import CliRunner
import curate.cli
codes = [CliRunner().invoke(curate.cli.cli, args, catch_exceptions=False).exit_code
         for args in json.loads(sys.argv[1])]
print(json.dumps({"codes": codes, "loaded": [m for m in sys.argv[2:] if m in sys.modules]}))
"""


def _probe(runs: list[list[str]]) -> dict:
    root = Path(__file__).resolve().parents[2]
    p = subprocess.run([sys.executable, "-c", PROBE, json.dumps(runs), *HEAVY], capture_output=True, text=True, cwd=root,
                       check=False)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_importing_the_cli_loads_no_heavy_library():
    assert _probe([]) == {"codes": [], "loaded": []}


@pytest.fixture(scope="module")
def classified(built_workspace, tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("startup") / "ws"
    shutil.copytree(built_workspace, ws)
    run_cli("classify", "-w", ws, "--set", "places205", "--prompts", "natural")
    run_cli("sample", "-w", ws, "--per-class", "1")
    return ws


def test_help_sql_sample_list_and_filter_load_no_heavy_library(classified, tmp_path):
    ws = str(classified)
    runs = [["--help"], ["build-index", "--help"], ["sql", "-w", ws, "select count(*) from items"],
            ["sample", "-w", ws, "--list"],
            ["filter", "-w", ws, "--min-prob", "0", "--out", str(tmp_path / "out.csv")]]
    assert _probe(runs) == {"codes": [0] * len(runs), "loaded": []}
