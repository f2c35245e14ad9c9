"""The app's tests share one built and classified workspace (build-index and two classify runs
take most of their time); each module copies it, since the app writes ws/app/."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from app_support import build


@pytest.fixture(scope="session")
def app_built(tmp_path_factory, tiny_encoder) -> Path:
    return build(tmp_path_factory.mktemp("app-built"), tiny_encoder)


@pytest.fixture(scope="module")
def ws(app_built, tmp_path_factory) -> Path:
    copy = tmp_path_factory.mktemp("app") / "ws"
    shutil.copytree(app_built, copy)
    return copy
