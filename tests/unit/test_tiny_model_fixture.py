"""The checked-in tiny model version (tests/fixtures/tiny_model) loads without torch and is exactly
what its generator writes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_model"
WIDE = FIXTURE.parent / "tiny_model_wide"  # the same version with 16-d item vectors
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("folder, dim", [(FIXTURE, 8), (WIDE, 16)], ids=["tiny", "wide"])
def test_fixture_loads_and_scores_without_torch(folder, dim):
    code = (
        "import sys, shutil, tempfile, pathlib\n"
        "from streamer.model import ModelBundle\n"
        f"b = ModelBundle.load(pathlib.Path({str(folder)!r}))\n"
        "v = b.encode_texts(['white metal lantern', 'hand warmer'])\n"
        f"assert v.shape == (2, b.dim) and b.dim == {dim} and b.version == {folder.name!r}\n"
        "print(sorted({'torch', 'transformers'} & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("folder, dim", [(FIXTURE, 8), (WIDE, 16)], ids=["tiny", "wide"])
def test_fixture_is_what_the_generator_writes(tmp_path, folder, dim):
    pytest.importorskip("onnx")
    from tests.fixtures.make_tiny_model import build

    out = build(tmp_path / folder.name, dim)
    mine = {p.name: p.read_bytes() for p in out.iterdir()}
    checked_in = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert mine.keys() == checked_in.keys()
    stale = sorted(name for name in mine if mine[name] != checked_in[name])
    assert not stale, f"{stale} differ: run `python -m tests.fixtures.make_tiny_model`"
