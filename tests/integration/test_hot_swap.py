"""Hot swap: a running worker switches model versions between batches, losing and repeating nothing."""

from __future__ import annotations

import asyncio
import functools
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
    import exporters.bootstrap as bootstrap
    from exporters.bootstrap import export_bootstrap
    from exporters.modeling import tiny_bert_config
    from tests.unit.streamer.conftest import CATALOG

    root = tmp_path_factory.mktemp("models")
    v1 = export_bootstrap(root, dataset=None, tiny=True, items=CATALOG, version="v1-bootstrap")
    v2 = export_bootstrap(root, dataset=None, tiny=True, items=CATALOG, version="v2-retrained", publish=False)
    with pytest.MonkeyPatch.context() as mp:  # another vector space: 48-d item vectors (v1's are 32-d)
        mp.setattr(bootstrap, "tiny_bert_config", functools.partial(tiny_bert_config, hidden=48))
        wide = export_bootstrap(root, dataset=None, tiny=True, items=CATALOG, version="v2-wide", publish=False)
    return root, v1, {"v2-retrained": v2, "v2-wide": wide}


def update_for(folder) -> bytes:
    manifest = (folder / "manifest.json").read_bytes()
    return encode(
        ModelUpdate(
            version=folder.name,
            location=str(folder),
            manifest_sha256=hashlib.sha256(manifest).hexdigest(),
            created_at="2026-11-23T10:00:00Z",
            metrics={},
        )
    )


def random_stream(seed: int, users: list[str], n: int) -> tuple[list[tuple[bytes, bytes]], dict[str, int]]:
    """``n`` purchases of random catalog items by ``users``, and the number of events per user."""
    rng = random.Random(seed)
    evs = [event(i, rng.choice(users), rng.choice(ITEMS), ts=1_320_000_000_000 + i * 1000) for i in range(n)]
    expected: dict[str, int] = {}
    for k, _v in evs:
        expected[k.decode()] = expected.get(k.decode(), 0) + 1
    return evs, expected


def wait_swapped_and_serving(stack, w, r, topics, user: str, version: str) -> None:
    """The worker swapped once, and an event of ``user`` sent now gets a list from ``version``."""
    deadline = time.monotonic() + 90
    while w.proc.poll() is None and "streamrec_model_swaps_total 1.0" not in w.metrics():
        assert time.monotonic() < deadline, w.tail()
        time.sleep(0.3)
    assert w.proc.poll() is None, f"worker exited with {w.proc.returncode}: {w.tail()}"
    wait_serving(stack, w, r, topics, user, version, 5000)


def wait_serving(stack, w, r, topics, user: str, version: str, event_no: int) -> None:
    """An event of ``user`` sent now gets a list from ``version``."""
    asyncio.run(produce(stack.bootstrap, topics["events"], [event(event_no, user, "71053")]))
    deadline = time.monotonic() + 30
    while True:
        raw = r.get(topics["prefix"] + user)
        if (
            raw
            and orjson.loads(raw)["model_version"] == version
            and orjson.loads(raw)["event_id"].endswith(str(event_no))
        ):
            break
        assert time.monotonic() < deadline, w.tail()
        time.sleep(0.3)


@pytest.mark.parametrize("target", ["v2-retrained", "v2-wide"])
def test_swap_mid_stream_changes_version_and_keeps_every_event_once(stack, versions, tmp_path, target):
    """Also to a version of another item-vector size (``v2-wide``): users whose stored embedding
    belongs to the old space are rebuilt in the new one and served, the worker never stops."""
    root, _v1, targets = versions
    topics = unique_topics(stack, "swap")
    r = redis.Redis.from_url(stack.redis_url)
    evs, expected = random_stream(3, [f"s{i}" for i in range(40)], 1600)
    w = WorkerProcess(stack, root, tmp_path / "w", app_id="swap", topics=topics).start()
    try:
        w.wait_ready()
        asyncio.run(produce(stack.bootstrap, topics["events"], evs[:800]))
        time.sleep(1.0)
        asyncio.run(produce(stack.bootstrap, topics["updates"], [(b"v2", update_for(targets[target]))]))
        asyncio.run(produce(stack.bootstrap, topics["events"], evs[800:]))
        # new events after the swap produce lists that carry the new version, for a user stored
        # before the swap too
        wait_swapped_and_serving(stack, w, r, topics, "after-swap", target)
        expected["after-swap"] = 1
        old_user = evs[0][0].decode()
        wait_serving(stack, w, r, topics, old_user, target, 5001)
        expected[old_user] += 1
        states = final_states(stack.bootstrap, "swap", expected)  # every event applied exactly once
        assert states.keys() == expected.keys()
        assert 'streamrec_model_info{provider="CPUExecutionProvider",ranker_file=' in w.metrics()
        assert f'version="{target}"' in w.metrics()
        assert w.proc.poll() is None, w.tail()
    finally:
        w.stop()


def test_retrain_job_publishes_and_running_worker_switches(stack, tmp_path):
    """The whole hand-off: a worker serves the bootstrap model, the retrain job (tiny BERTs, a
    synthetic shop) trains, gates, writes and announces a version on model-updates, and the
    running worker switches to it between batches with every event applied exactly once."""
    from exporters.bootstrap import export_bootstrap
    from exporters.item_training import ItemTrainConfig
    from exporters.job import JobConfig, run
    from exporters.train import RankerTrainConfig
    from tests.unit.exporters.test_retrain_job import shop
    from tests.unit.streamer.conftest import CATALOG

    root = tmp_path / "models"
    export_bootstrap(root, dataset=None, tiny=True, items=CATALOG, version="v1-bootstrap")
    topics = unique_topics(stack, "jobswap")
    r = redis.Redis.from_url(stack.redis_url)
    evs, expected = random_stream(5, [f"j{i}" for i in range(30)], 1000)
    w = WorkerProcess(stack, root, tmp_path / "w", app_id="jobswap", topics=topics).start()
    try:
        w.wait_ready()
        asyncio.run(produce(stack.bootstrap, topics["events"], evs[:500]))
        result = run(
            JobConfig(
                dataset="online_retail",
                model_root=root,
                tiny=True,
                max_seq_len=8,
                cut_step_days=30,
                min_test_cases=10,
                item=ItemTrainConfig(steps=3, batch_pairs=32),
                ranker=RankerTrainConfig(epochs=1, patience=1, batch_size=32),
                force=True,
                kafka_bootstrap=stack.bootstrap,
                kafka_topic=topics["updates"],
                version="v2-job",
            ),
            dataset=shop(),
        )
        assert result.published and (root / "LATEST").read_text().strip() == "v2-job"
        asyncio.run(produce(stack.bootstrap, topics["events"], evs[500:]))
        wait_swapped_and_serving(stack, w, r, topics, "after-job", "v2-job")
        expected["after-job"] = 1
        states = final_states(stack.bootstrap, "jobswap", expected)  # nothing lost or applied twice across the swap
        assert states.keys() == expected.keys()
        assert 'version="v2-job"' in w.metrics()
    finally:
        w.stop()
