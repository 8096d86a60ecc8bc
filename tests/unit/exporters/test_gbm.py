"""exporters.gbm: the candidate-aware LightGBM reference trains on the worker's candidates."""

from __future__ import annotations

import numpy as np

from exporters.dataset import build_interactions, make_split
from exporters.gbm import GBM_FEATURES, fit, stage_lists, training_table
from tests.unit.exporters.test_retrain_job import shop


def test_training_groups_hold_the_targets_and_the_model_ranks_them():
    inter = build_interactions(shop())
    val = make_split(inter, "next-line", "validation")
    vecs = np.zeros((inter.n_items, 4), np.float32)
    x, y, g = training_table(inter, val, vecs, 8, 30.0, new_groups=True)
    assert x.shape == (g.sum(), len(GBM_FEATURES)) and len(y) == len(x)
    bounds = np.r_[0, np.cumsum(g)]
    per_group = np.asarray([(y[a:b] == 2).sum() for a, b in zip(bounds[:-1], bounds[1:])])
    assert per_group.max() == 1 and per_group.mean() > 0.3  # one target per group, often among the candidates
    model = fit(x, y, g)
    splits = {p: make_split(inter, p, "validation") for p in ("next-line", "next-new")}
    res = stage_lists(
        inter,
        splits,
        vecs,
        8,
        {"gbm": lambda t: model.predict(t, validate_features=False), "frequency": lambda t: t[:, 0]},
        (0, 10),
    )
    # favourites are rebought: both rank next-line targets; the learned ranker is not worse than counting
    assert res[("frequency", 0)]["next-line"]["in"].hr > 0.2
    assert res[("gbm", 0)]["next-line"]["in"].ndcg >= 0.8 * res[("frequency", 0)]["next-line"]["in"].ndcg
    assert res[("gbm", 10)]["next-new"]["ex"].cases == len(splits["next-new"])
