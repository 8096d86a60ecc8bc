"""Shared fixtures: tiny random models and a tiny model directory built once per session."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from exporters.bootstrap import build_models, export_bootstrap


def catalog_items() -> list[SimpleNamespace]:
    """Items shaped like ``schemas.models.Item``: with text, without text, with and without category."""
    rows = [
        ("85123A", "WHITE HANGING HEART T-LIGHT HOLDER", None),
        ("71053", "WHITE METAL LANTERN", None),
        ("22423", "REGENCY CAKESTAND 3 TIER", "kitchen"),
        ("4001", None, "2520377"),
        ("4002", None, "2520377"),
        ("4003", None, None),
        ("1", "Toy Story (1995)", "Animation Children's Comedy"),
    ]
    rows += [(f"x{i}", f"random gift number {i}", ["a", "b", None][i % 3]) for i in range(40)]
    return [SimpleNamespace(item_id=i, title=t, description=None, category=c) for i, t, c in rows]


@pytest.fixture()
def catalog() -> list[SimpleNamespace]:
    return catalog_items()


@pytest.fixture(scope="session")
def tiny_version(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    return export_bootstrap(root, dataset=None, tiny=True, version="v1-tiny", items=catalog_items(), max_seq_len=12)


@pytest.fixture()
def tiny_models():
    """(tokenizer, encoder, ranker) with the ranker's head randomised, so that the transformer
    path (gated off in the bootstrap) is part of what parity tests compare."""
    tok, encoder, ranker = build_models(tiny=True, n_layers=2, max_text_len=16, seed=3)
    torch.manual_seed(7)
    with torch.no_grad():
        for p in (ranker.gate.weight, ranker.type_emb.weight, ranker.feat_mlp[2].weight):
            p.normal_(0.0, 0.3)
    return tok, encoder, ranker
