"""A tiny but complete model version for worker unit tests: the checked-in ``tests/fixtures/tiny_model``
(hand-written ONNX graphs, a few KB; regenerate with ``python -m tests.fixtures.make_tiny_model``),
so these tests need neither torch nor the shared data."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from schemas import Item

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


@pytest.fixture(scope="session")
def tiny_model_root(tmp_path_factory):
    """A model root whose LATEST is the checked-in tiny version (its catalog is CATALOG)."""
    root = tmp_path_factory.mktemp("models")
    shutil.copytree(TINY_MODEL, root / TINY_MODEL.name)
    (root / "LATEST").write_text(TINY_MODEL.name + "\n")
    return root
