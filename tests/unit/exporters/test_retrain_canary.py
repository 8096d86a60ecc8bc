"""``streamrec-retrain train --canary SHARE``: the job writes the version, leaves LATEST alone and
starts a canary through the workers' Redis (a real redis-server) instead of publishing outright."""

from __future__ import annotations

import redis

from exporters import registry
from exporters.job import run
from streamer.rollout import Rollout
from streamer.variants import config_key
from tests.unit.exporters.test_retrain_job import config, shop


def test_job_starts_a_canary_instead_of_publishing(redis_url, tmp_path):  # noqa: F811
    from exporters.bootstrap import export_bootstrap
    from tests.unit.streamer.conftest import CATALOG

    root = tmp_path / "models"
    export_bootstrap(root, dataset=None, tiny=True, items=CATALOG, version="v1")
    result = run(
        config(root, force=True, version="v2-job", canary=0.2, redis_url=redis_url, redis_meta_prefix="job:"),
        dataset=shop(),
    )
    assert not result.published and "canary on 20.0% of users" in result.gate_reason
    assert registry.read_latest(root) == "v1"  # production unchanged
    r = redis.Redis.from_url(redis_url)
    assert r.get(config_key("job:")) == b"ranker@v2-job:0.2,ranker@production:0.8"
    state = Rollout(r, "job:", root).state()
    assert (state["status"], state["version"], state["production"]) == ("canary", "v2-job", "v1")
    assert registry.read_runs(root)[-1]["status"] == "canary"
