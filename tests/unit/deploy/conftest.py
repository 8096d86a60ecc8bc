"""Fixtures of the devtools.deploycheck tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.unit.deploy.helpers import REPO


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    """A copy of everything the checker reads, to break on purpose."""
    for name in ("docker-compose.yml", ".dockerignore", "pyproject.toml", "README.md"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, tmp_path / name)
    shutil.copytree(REPO / "deploy", tmp_path / "deploy", ignore=shutil.ignore_patterns("__pycache__"))
    for d in ("schemas", "streamer", "exporters", "devtools"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "__init__.py").write_text("")
    (tmp_path / "README.md").touch()
    return tmp_path
