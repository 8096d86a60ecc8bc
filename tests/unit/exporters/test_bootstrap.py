"""The bootstrap version's list mix: a fresh deployment serves rebuys *and* new items."""

from __future__ import annotations

import json

import numpy as np

from exporters.bootstrap import BOOTSTRAP_MIN_NEW
from schemas.serving import LIST_PARAMS_KEY, ListParams, assemble


def test_bootstrap_manifest_reserves_new_items(tiny_version):
    manifest = json.loads((tiny_version / "manifest.json").read_text())
    assert manifest[LIST_PARAMS_KEY] == {"min_new": BOOTSTRAP_MIN_NEW}
    params = ListParams.from_manifest(manifest, 20)
    assert params.min_new == BOOTSTRAP_MIN_NEW == 10
    assert ListParams.from_manifest(manifest, 5).min_new == 5  # never more than the list holds


def test_bootstrap_list_mix_keeps_the_best_rebuys_on_top(tiny_version):
    params = ListParams.from_manifest(json.loads((tiny_version / "manifest.json").read_text()), 20)
    # a wholesale buyer: 30 own items whose frequency terms outscore every one of 170 new candidates
    scores = np.concatenate([np.linspace(5.0, 3.0, 30), np.linspace(1.0, 0.0, 170)])
    new = np.arange(200) >= 30
    chosen = assemble(scores, new, params)
    assert len(chosen) == 20
    assert int(new[chosen].sum()) == 10  # without min_new all 20 would be rebuys
    assert chosen[:10] == list(range(10))  # the ten best rebuys, in score order, first
    assert chosen[10:] == list(range(30, 40))  # then the ten best new items
