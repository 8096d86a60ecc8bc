"""A tiny but complete model version for worker unit tests: the checked-in ``tests/fixtures/tiny_model``
(hand-written ONNX graphs, a few KB; regenerate with ``python -m tests.fixtures.make_tiny_model``),
and the same version with wider item vectors (``tiny_model_wide``), so these tests need neither
torch nor the shared data."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from schemas import Item
from streamer.model import ModelBundle, latest_version_dir
from streamer.pipeline import Pipeline
from tests.unit.streamer.helpers import settings

CATALOG = [
    Item(item_id="71053", title="WHITE METAL LANTERN"),
    Item(item_id="85123A", title="WHITE HANGING HEART T-LIGHT HOLDER"),
    Item(item_id="84406B", title="CREAM CUPID HEARTS COAT HANGER"),
    Item(item_id="22633", title="HAND WARMER UNION JACK"),
    Item(item_id="21730", title="GLASS STAR FROSTED T-LIGHT HOLDER"),
    Item(item_id="84029G", title="KNITTED UNION FLAG HOT WATER BOTTLE"),
    Item(item_id="22752", title="SET 7 BABUSHKA NESTING BOXES"),
    Item(item_id="NOTEXT1", category="toys"),
]


TINY_MODEL = Path(__file__).resolve().parents[2] / "fixtures" / "tiny_model"
WIDE_MODEL = TINY_MODEL.parent / "tiny_model_wide"  # the same version with 16-d item vectors (8-d above)


@pytest.fixture(scope="session")
def tiny_model_root(tmp_path_factory):
    """A model root whose LATEST is the checked-in tiny version (its catalog is CATALOG)."""
    root = tmp_path_factory.mktemp("models")
    shutil.copytree(TINY_MODEL, root / TINY_MODEL.name)
    (root / "LATEST").write_text(TINY_MODEL.name + "\n")
    return root


@pytest.fixture()
def pipeline(tiny_model_root):
    """A pipeline on the tiny version, with the unit tests' settings."""
    bundle = ModelBundle.load(latest_version_dir(tiny_model_root))
    return Pipeline(settings(), bundle)
