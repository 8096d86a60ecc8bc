"""Hot swap: a running worker switches model versions between batches, losing and repeating nothing."""

from __future__ import annotations

import asyncio
import hashlib
import random
import time

import orjson
import pytest
import redis

from schemas import ModelUpdate, encode
from tests.integration.helpers import WorkerProcess, event, produce, unique_topics
from tests.integration.test_crash_recovery import ITEMS, final_states

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    from exporters.bootstrap import export_bootstrap
    from tests.unit.streamer.conftest import CATALOG

    root = tmp_path_factory.mktemp("models")
    v1 = export_bootstrap(root, dataset=None, tiny=True, items=CATALOG, version="v1-bootstrap")
    v2 = export_bootstrap(root, dataset=None, tiny=True, items=CATALOG, version="v2-retrained", publish=False)
    return root, v1, v2


def update_for(folder) -> bytes:
    manifest = (folder / "manifest.json").read_bytes()
    return encode(ModelUpdate(version=folder.name, location=str(folder), manifest_sha256=hashlib.sha256(manifest).hexdigest(),
                              created_at="2026-11-23T10:00:00Z", metrics={}))


def test_swap_mid_stream_changes_version_and_keeps_every_event_once(stack, versions, tmp_path):
    root, v1, v2 = versions
    topics = unique_topics(stack, "swap")
    r = redis.Redis.from_url(stack.redis_url)
    rng = random.Random(3)
    users = [f"s{i}" for i in range(40)]
    evs = [event(i, rng.choice(users), rng.choice(ITEMS), ts=1_320_000_000_000 + i * 1000) for i in range(1600)]
    expected: dict[str, int] = {}
    for k, _v in evs:
        expected[k.decode()] = expected.get(k.decode(), 0) + 1
    w = WorkerProcess(stack, root, tmp_path / "w", app_id="swap", topics=topics).start()
    try:
        w.wait_ready()
        asyncio.run(produce(stack.bootstrap, topics["events"], evs[:800]))
        time.sleep(1.0)
        asyncio.run(produce(stack.bootstrap, topics["updates"], [(b"v2", update_for(v2))]))
        asyncio.run(produce(stack.bootstrap, topics["events"], evs[800:]))
        deadline = time.monotonic() + 60
        while 'streamrec_model_swaps_total 1.0' not in w.metrics():
            assert time.monotonic() < deadline, w.tail()
            time.sleep(0.3)
        # new events after the swap produce lists that carry the new version
        asyncio.run(produce(stack.bootstrap, topics["events"], [event(5000, "after-swap", "71053")]))
        deadline = time.monotonic() + 30
        while True:
            raw = r.get(topics["prefix"] + "after-swap")
            if raw and orjson.loads(raw)["model_version"] == "v2-retrained":
                break
            assert time.monotonic() < deadline, w.tail()
            time.sleep(0.3)
        expected["after-swap"] = 1
        states = final_states(stack.bootstrap, "swap", expected)  # every event applied exactly once
        assert states.keys() == expected.keys()
        assert 'streamrec_model_info{provider="CPUExecutionProvider",ranker_file=' in w.metrics()
        assert 'version="v2-retrained"' in w.metrics()
    finally:
        w.stop()
