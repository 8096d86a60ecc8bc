"""Served = offline: a real worker's published lists, graded with the job's evaluator, equal the
offline served-list evaluation of the same version on the same cases (fp32 ranker: the int8 one is
quantised per call, so its scores move with the batch's other rows)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from devtools import served_replay
from exporters.dataset import build_interactions, make_split
from exporters.job import run
from exporters.repeat import repeat_rates
from exporters.served import evaluate_served_replay
from schemas.repeat import REPEAT_FEATURES
from schemas.serving import ListParams
from schemas.stacking import STACK_FEATURES
from tests.unit.exporters.test_retrain_job import config, shop

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("list_params", ["as trained", "stacked", "stacked + rebuy"])
def test_served_metrics_equal_offline_on_a_small_replay(stack, tmp_path, list_params) -> None:
    data = shop()
    cfg = config(tmp_path / "models", publish=False)
    version = run(cfg, dataset=data).version_dir
    inter = build_interactions(data, cfg.split)
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["item_neighbours"]["files"]  # the knn source's lists ship with every version
    if list_params != "as trained":  # the worker's stacked-score and knn-blend path, whatever validation chose
        rng = np.random.default_rng(0)
        params = ListParams(20, 5, 0.3, tuple(rng.uniform(-1, 1, len(STACK_FEATURES))))
        if list_params == "stacked + rebuy":  # and the rebuy score over the worker's state, with the item rates
            rates = repeat_rates(inter, make_split(inter, "next-item", "test").fit)
            params = replace(params, rebuy=tuple(rng.uniform(-1, 1, len(REPEAT_FEATURES))), rebuy_rates=rates)
        manifest["list_params"] = params.as_dict()
        (version / "manifest.json").write_text(json.dumps(manifest))

    def replay(events, model_root, out, **kw):
        return served_replay.run(events, model_root, out, stack=stack, **kw)

    res = evaluate_served_replay(
        inter,
        ("next-item", "next-new"),
        version,
        users=15,
        replay=replay,
        work_dir=tmp_path / "work",
        timeout=180,
        ranker_variant="fp32",
    )
    assert res.cases == 15 and res.events > 100
    assert res.identical_lists == 1.0, res.as_dict()
    for protocol, per_mode in res.offline.items():
        for mode, offline in per_mode.items():
            served = res.served[protocol][mode]
            assert served.cases == offline.cases > 0
            assert (served.hr, served.ndcg, served.mrr, served.cov) == (
                offline.hr,
                offline.ndcg,
                offline.mrr,
                offline.cov,
            ), (protocol, mode)
    # the knn source reaches the published lists
    assert any(
        json.loads(line)["items"] and any(it.get("source") == "knn" for it in json.loads(line)["items"])
        for line in (tmp_path / "work" / "lists.jsonl").read_text().splitlines()
        if line.strip()
    )
    # the lists are not trivially empty: the version's list holds items and hits some targets
    assert res.served["next-item"]["in"].cov > 0
    assert np.isfinite(res.served["next-item"]["in"].ndcg)
