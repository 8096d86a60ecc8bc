"""The stacked list score: its features (schemas.stacking) and its listwise fit (exporters.stacking)."""

from __future__ import annotations

import numpy as np
import pytest

from exporters.stacking import fit_listwise
from schemas.ranking import FEATURE_NAMES
from schemas.serving import SOURCES, ListParams, list_scores
from schemas.stacking import STACK_FEATURES, stack_features, stacked_scores


def test_stack_features_flag_new_items_and_sources():
    feats = np.zeros((3, len(FEATURE_NAMES)), np.float32)
    feats[0, FEATURE_NAMES.index("personal_recency")] = 0.5  # an own item
    feats[:, FEATURE_NAMES.index("log_popularity")] = [1.0, 2.0, 3.0]
    x = stack_features(np.array([3.0, 1.0, 0.5]), feats, np.array([0.0, np.e - 1, 0.0]), np.array([0, 2, 5]), 9)
    col = {n: i for i, n in enumerate(STACK_FEATURES)}
    assert x.shape == (3, len(STACK_FEATURES))
    assert x[:, col["new"]].tolist() == [0.0, 1.0, 1.0]
    assert x[:, col["new_x_log_knn"]].tolist() == pytest.approx([0.0, 1.0, 0.0])
    assert x[:, col["new_x_log_popularity"]].tolist() == [0.0, 2.0, 3.0]
    assert x[:, col["new_x_ranker"]].tolist() == [0.0, 1.0, 0.5]
    assert x[:, col["log_profile_items"]].tolist() == pytest.approx([np.log(10)] * 3)
    assert (
        x[0, col[f"source_{SOURCES[0]}"]] == 1
        and x[1, col[f"source_{SOURCES[2]}"]] == 1
        and x[2, col[f"source_{SOURCES[5]}"]] == 1
    )
    # weights on the ranker alone give the ranker's order; the list score is that product
    w = tuple(1.0 if n == "ranker" else 0.0 for n in STACK_FEATURES)
    assert stacked_scores(w, np.array([3.0, 1.0, 0.5]), feats, None, np.array([0, 2, 5]), 9).tolist() == [3.0, 1.0, 0.5]
    new = x[:, col["new"]] > 0
    got = list_scores(np.array([3.0, 1.0, 0.5]), None, ListParams(3, 0, 0.0, w), new, feats, np.array([0, 2, 5]), 9)
    assert list(np.argsort(-got)) == [0, 1, 2] and got[0] == 3.0  # the own item keeps its score; new ones below it
    # weights preferring popularity for new items reorder the new ones only
    w_pop = tuple(1.0 if n == "new_x_log_popularity" else 0.0 for n in STACK_FEATURES)
    got = list_scores(np.array([3.0, 1.0, 0.5]), None, ListParams(3, 0, 0.0, w_pop), new, feats, np.array([0, 2, 5]), 9)
    assert list(np.argsort(-got)) == [0, 2, 1]


def test_listwise_fit_learns_which_feature_finds_the_positive():
    rng = np.random.default_rng(0)
    groups = []
    for _ in range(200):
        x = rng.normal(size=(30, len(STACK_FEATURES)))
        # the positive is the candidate with the largest popularity-for-new feature, not the largest ranker score
        groups.append((x, int(np.argmax(x[:, STACK_FEATURES.index("new_x_log_popularity")]))))
    fit = fit_listwise(groups)
    w = np.asarray(fit.weights)
    assert np.argmax(w) == STACK_FEATURES.index("new_x_log_popularity")
    hits = np.mean([np.argmax(x @ w) == p for x, p in groups])
    assert hits > 0.9 and fit.groups == 200 and fit.rows == 200 * 30


def test_manifest_with_other_stack_features_is_refused():
    with pytest.raises(ValueError, match="stack"):
        ListParams.from_manifest({"list_params": {"stack": {"features": ["x"], "weights": [1.0]}}}, 20)
    params = ListParams.from_manifest(
        {"list_params": ListParams(20, 5, 0.3, (1.0,) * len(STACK_FEATURES)).as_dict()}, 20
    )
    assert params.stack == (1.0,) * len(STACK_FEATURES) and params.min_new == 5
