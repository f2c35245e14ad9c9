"""Debian's Chromium (CI installs it), driven through playwright's Python API: what every
browser test module shares (tests/app, tests/validate)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
needs_chromium = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                    reason=f"{CHROMIUM} not installed (apt-get install chromium; CI installs it)")


def launch(p, profile: Path | str, width: int = 1280, height: int = 800, **options):
    """A browser on a fresh profile folder: nothing cached from an earlier run."""
    return p.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM, headless=True, args=FLAGS,
                                                viewport={"width": width, "height": height}, **options)
