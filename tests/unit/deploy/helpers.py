"""Shared helpers of the devtools.deploycheck tests: the checker, its CLI, file edits."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
if str(REPO) not in sys.path:  # `deploy` is not an installed package in every setup
    sys.path.insert(0, str(REPO))

import devtools.deploycheck as cc  # noqa: E402

HAS_K8S_SCHEMAS = importlib.util.find_spec("kubernetes_validate") is not None
HAS_KUBECTL = cc.find_tool("kubectl") is not None or cc.find_tool("kustomize") is not None


def run(compose: Path, *extra: str, capsys) -> tuple[int, str]:
    rc = cc.main(["--compose", str(compose), *extra])
    out = capsys.readouterr().out
    return rc, out


def edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert old in text, f"test fixture out of date: {old!r} not in {path.name}"
    path.write_text(text.replace(old, new, count))


FAST = ("--skip-k8s", "--skip-hadolint")
