"""A tiny but complete model version (random small BERTs, real tokenizer) for worker unit tests."""

from __future__ import annotations

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


@pytest.fixture(scope="session")
def tiny_model_root(tmp_path_factory):
    from exporters.bootstrap import export_bootstrap

    root = tmp_path_factory.mktemp("models")
    export_bootstrap(root, dataset=None, tiny=True, items=CATALOG)
    return root
