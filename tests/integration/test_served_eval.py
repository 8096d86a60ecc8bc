"""Served = offline: a real worker's published lists, graded with the job's evaluator, equal the
offline served-list evaluation of the same version on the same cases (fp32 ranker: the int8 one is
quantised per call, so its scores move with the batch's other rows)."""

from __future__ import annotations

import numpy as np
import pytest

from exporters.dataset import build_interactions
from exporters.job import run
from exporters.served import evaluate_served_replay
from streamer import served_replay
from tests.unit.exporters.test_retrain_job import config, shop

pytestmark = pytest.mark.integration


def test_served_metrics_equal_offline_on_a_small_replay(stack, tmp_path) -> None:
    data = shop()
    cfg = config(tmp_path / "models", publish=False)
    version = run(cfg, dataset=data).version_dir
    inter = build_interactions(data, cfg.split)

    def replay(events, model_root, out, **kw):
        return served_replay.run(events, model_root, out, stack=stack, **kw)

    res = evaluate_served_replay(inter, ("next-item", "next-new"), version, users=15, replay=replay,
                                 work_dir=tmp_path / "work", timeout=180, ranker_variant="fp32")
    assert res.cases == 15 and res.events > 100
    assert res.identical_lists == 1.0, res.as_dict()
    for protocol, per_mode in res.offline.items():
        for mode, offline in per_mode.items():
            served = res.served[protocol][mode]
            assert served.cases == offline.cases > 0
            assert (served.hr, served.ndcg, served.mrr, served.cov) == (offline.hr, offline.ndcg, offline.mrr, offline.cov), (protocol, mode)
    # the lists are not trivially empty: the version's list holds items and hits some targets
    assert res.served["next-item"]["in"].cov > 0
    assert np.isfinite(res.served["next-item"]["in"].ndcg)
