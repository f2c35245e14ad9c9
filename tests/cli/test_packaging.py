"""An installed wheel must carry everything the package loads at run time."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


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
