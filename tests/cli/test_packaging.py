"""An installed wheel must carry everything the package loads at run time."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_wheel_carries_code_sql_recipes_and_static_files(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("curate-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"curate/{p.relative_to(ROOT / 'curate').as_posix()}" for p in (ROOT / "curate").rglob("*")
                if p.is_file() and "__pycache__" not in p.parts}
    expected |= {f"curate/queries/{p.name}" for p in (ROOT / "queries").glob("*.sql")}
    expected |= {f"curate/indexes/{p.name}" for p in (ROOT / "indexes").glob("*.json")}
    missing = sorted(expected - names)
    assert not missing, f"missing from the wheel: {missing}"


def test_make_demo_installs_the_main_job_only_and_make_test_adds_the_test_tools(tmp_path):
    """`make demo` installs what the main job needs (torch, curate, one FAISS); the test tools
    (pytest, playwright, Ray ...) come with `make test` (and `.ci/run`, which runs it). Read from
    make's own plan (-n: nothing runs; -B: as on a fresh clone)."""
    import shutil

    if shutil.which("make") is None:
        pytest.skip("no make here")

    def pip_lines(target: str) -> list[str]:
        plan = subprocess.run(["make", "-n", "-B", target, f"VENV={tmp_path / 'venv'}"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout
        return [line for line in plan.splitlines() if "pip install" in line]

    demo = pip_lines("demo")
    assert demo[-1].endswith("-e '.[cpu]'") and not any("test]" in line for line in demo)
    assert pip_lines("test")[-1].endswith("-e '.[cpu,test]'")
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_make_test_and_ci_run_the_slow_tests_too():
    """`pytest -m "not slow"` is the quick loop; `make test` (what .ci/run runs) deselects nothing."""
    import tomllib

    make = (ROOT / "Makefile").read_text(encoding="utf-8")
    recipe = make.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    pytest_args = recipe.split("-m pytest", 1)[1].split("\n", 1)[0].split()
    assert "-m" not in pytest_args and "slow" not in recipe
    opts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["pytest"]["ini_options"]
    assert "-m" not in opts.get("addopts", "").split() and any(m.startswith("slow:") for m in opts["markers"])
    assert "make test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
