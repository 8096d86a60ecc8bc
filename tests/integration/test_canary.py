"""Canary rollout on the real broker and Redis, two workers of one deployment: a version served to
10 % of users by stable hash, rollback, promote without a restart, rollback of a promotion, and a
corrupted version named in the split refused while the split keeps serving the others."""

from __future__ import annotations

import asyncio
import math
import uuid

import orjson
import pytest
import redis

from streamer.rollout import Rollout, render_status
from streamer.variants import config_key, parse_split, variant_for, workers_key
from tests.conftest import wait_until
from tests.integration.helpers import WorkerProcess, event, produce, unique_topics
from tests.integration.test_crash_recovery import ITEMS
from tests.integration.test_faults import metric

pytestmark = pytest.mark.integration

N_USERS = 300


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """v1 (production, 8-d), v2 (16-d, unpublished), v3-corrupt (its checksum fails): no torch."""
    from tests.unit.streamer.test_variants import export_versions

    return export_versions(tmp_path_factory.mktemp("canary-models"))


class Phase:
    """One event per user, then every user's current list from Redis once all are in."""

    def __init__(self, stack, topics, r, workers):
        self.stack, self.topics, self.r, self.workers, self.n = stack, topics, r, workers, 0
        self.users = [f"cu{i}" for i in range(N_USERS)]

    def run(self) -> dict[str, dict]:
        self.n += 1
        base = self.n * 10_000
        evs = [event(base + k, u, ITEMS[(k + self.n) % len(ITEMS)], etype="view") for k, u in enumerate(self.users)]
        last = {u: f"ev-{u}-{base + k}" for k, u in enumerate(self.users)}
        asyncio.run(produce(self.stack.bootstrap, self.topics["events"], evs))
        keys = [self.topics["prefix"] + u for u in self.users]

        def current():
            vals = self.r.mget(keys)
            got = {u: orjson.loads(v) for u, v in zip(self.users, vals) if v is not None}
            return got if all(u in got and got[u]["event_id"] == last[u] for u in self.users) else None

        return wait_until(
            current, 120, f"lists for phase {self.n}", on_fail=lambda: "\n-----\n".join(w.tail() for w in self.workers)
        )


def test_canary_promote_rollback_and_a_corrupted_version(stack, store, tmp_path):
    topics = unique_topics(stack, "canary")
    prefix = f"canary-{uuid.uuid4().hex[:8]}:"
    r = redis.Redis.from_url(stack.redis_url)
    env = {
        "STREAMREC_VARIANTS_POLL_S": "0.5",
        "STREAMREC_REDIS_META_PREFIX": prefix,
        "STREAMREC_VARIANTS": "ranker:1.0",
    }
    workers = [
        WorkerProcess(stack, store, tmp_path / name, app_id="canary", topics=topics, STREAMREC_WORKER_ID=name, **env)
        for name in ("w1", "w2")
    ]
    log: list[str] = []
    ro = Rollout(
        r, prefix, store, kafka=stack.bootstrap, topic=topics["updates"], default_split="ranker:1.0", out=log.append
    )
    phase = Phase(stack, topics, r, workers)
    try:
        for w in workers:
            w.start()
        for w in workers:
            w.wait_ready()
        wait_until(lambda: len(ro.workers()) == 2, 60, "both workers reporting")

        # ---- canary at 10 %: two versions in each worker, users split by stable hash
        assert ro.canary("v2", 0.1, wait_s=90) == 0, log
        split = parse_split(r.get(config_key(prefix)))
        assert split == (("ranker@v2", 0.1), ("ranker@production", 0.9))
        arm = {u: ("v2" if variant_for(u, split) == "ranker@v2" else "v1") for u in phase.users}
        first, second = phase.run(), phase.run()
        for u in phase.users:
            assert first[u]["model_version"] == second[u]["model_version"] == arm[u], u  # same arm on every event
            assert first[u]["variant"] == f"ranker@{arm[u]}"
        n_v2 = sum(v == "v2" for v in arm.values())
        assert abs(n_v2 - 0.1 * N_USERS) <= 4.5 * math.sqrt(N_USERS * 0.1 * 0.9), n_v2  # binomial bounds
        pages = [w.metrics() for w in workers]
        for page in pages:  # both workers served users of both versions, by the same hash
            assert metric(page, 'streamrec_ab_lists_total{variant="ranker@v2"}') > 0
            assert metric(page, 'streamrec_ab_lists_total{variant="ranker@v1"}') > 0
            assert 'streamrec_variant_version_loaded{version="v2"} 1.0' in page
        status = render_status(ro.status())
        assert "rollout: canary v2" in status and status.count("also loaded v2") == 2, status

        # ---- across workers: w1 stops, w2 takes all users; w1 restarts (it loads v2 before its
        # first batch) and takes its partitions back: every user keeps their arm throughout
        # SIGTERM; SIGKILL after 45 s (the graceful stop can hang in faust's shutdown, also at this
        # branch's base: tests/integration/test_features.py's runtime A/B test): the partitions move either way
        workers[0].stop(timeout=45)
        alone = phase.run()
        r.hdel(workers_key(prefix), "w1")  # the stopped worker's last report
        workers[0].start().wait_ready()
        assert "v2" in ro.workers()["w1"]["loaded"]  # reported by the new process before it was ready
        for u in phase.users:
            assert alone[u]["model_version"] == arm[u], u

        def phase_served_by_restarted_w1() -> bool:  # a phase or more, until the rebalance gave w1 partitions
            again = phase.run()
            for u in phase.users:
                assert again[u]["model_version"] == arm[u], u
            return metric(workers[0].metrics(), "streamrec_ab_lists_total") > 0

        wait_until(phase_served_by_restarted_w1, 180, "restarted w1 serving lists", interval=0)

        # ---- rollback of the canary: everyone on production at the next poll, no load
        assert ro.rollback() == 0
        wait_until(lambda: all(rep["loaded"] == [] for rep in ro.workers().values()), 30, "v2 unloaded")
        lists = phase.run()
        assert {lst["model_version"] for lst in lists.values()} == {"v1"}

        # ---- canary again, then promote: everyone on v2, v2 production, no restart
        assert ro.canary("v2", 0.1, wait_s=90) == 0, log
        pids = [w.proc.pid for w in workers]
        assert ro.promote(wait_s=120) == 0, log
        assert (store / "LATEST").read_text().strip() == "v2"
        assert r.get(config_key(prefix)) is None  # the split from before the canary (the environment's)
        lists = phase.run()
        assert {lst["model_version"] for lst in lists.values()} == {"v2"}
        assert [w.proc.pid for w in workers] == pids and all(w.proc.poll() is None for w in workers)

        # ---- rollback of the promotion: back to v1 everywhere
        assert ro.rollback(wait_s=120) == 0, log
        assert (store / "LATEST").read_text().strip() == "v1"
        wait_until(
            lambda: all(rep["production"] == "v1" and rep["loaded"] == [] for rep in ro.workers().values()),
            30,
            "v1 production everywhere",
        )
        lists = phase.run()
        assert {lst["model_version"] for lst in lists.values()} == {"v1"}

        # ---- a corrupted version named in a split: refused on both workers, the others served
        bad_split = "ranker@v3-corrupt:0.2,ranker@v2:0.3,ranker@production:0.5"
        r.set(config_key(prefix), bad_split)
        wait_until(
            lambda: all("v3-corrupt" in rep["refused"] and rep["loaded"] == ["v2"] for rep in ro.workers().values()),
            60,
            "v3-corrupt refused, v2 loaded",
            on_fail=lambda: "\n".join(w.tail() for w in workers),
        )
        split = parse_split(bad_split)
        lists = phase.run()
        for u, lst in lists.items():
            want = "v2" if variant_for(u, split) == "ranker@v2" else "v1"  # v3's band falls to production
            assert lst["model_version"] == want, (u, lst["model_version"])
        assert {lst["model_version"] for lst in lists.values()} == {"v1", "v2"}
        assert "v3-corrupt" in ro.refused() and "checksum" in ro.refused()["v3-corrupt"]
        assert "REFUSED v3-corrupt" in render_status(ro.status())
        for w in workers:
            assert 'streamrec_variant_version_refused_total{version="v3-corrupt"} 1.0' in w.metrics()
            assert w.proc.poll() is None
        # and a canary of it is refused by the tool itself
        r.delete(config_key(prefix))
        from streamer.rollout import RolloutError

        with pytest.raises(RolloutError, match="refused"):
            ro.canary("v3-corrupt", 0.1)
    finally:
        for w in workers:
            w.stop()


@pytest.mark.parametrize(
    "spec, words",
    [
        ("ranker@nope:0.1,ranker:0.9", "no version nope in the model store"),
        ("ranker@v2:0.5,ranker:0.6", "weights must sum to 1"),
        ("ranker@v2:0.5,ranker@v2:0.5", "already in the split"),
    ],
)
def test_bad_variants_stop_the_worker_at_start(stack, store, tmp_path, spec, words):
    """A bad STREAMREC_VARIANTS: exit 2 and one line naming it, before the worker joins anything."""
    import subprocess

    topics = unique_topics(stack, "badvariants")
    w = WorkerProcess(
        stack, store, tmp_path / "w", app_id="badvariants", topics=topics, STREAMREC_VARIANTS=spec
    ).start()
    try:
        code = w.proc.wait(60)
    except subprocess.TimeoutExpired:
        w.kill()
        raise AssertionError(f"worker kept running with STREAMREC_VARIANTS={spec}:\n{w.tail()}") from None
    lines = [ln for ln in w.log.read_text().splitlines() if "STREAMREC_VARIANTS" in ln and words in ln]
    assert code == 2 and lines, w.tail()
