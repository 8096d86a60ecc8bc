"""The worker end to end on the real embedded broker and a real Redis (no mocks)."""

from __future__ import annotations

import asyncio

import orjson
import pytest
import redis

from schemas import decode_dead_letter, decode_recommendation
from tests.conftest import wait_until
from tests.integration.helpers import WorkerProcess, event, produce, read_all, unique_topics

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def model_root(tmp_path_factory):
    from exporters.bootstrap import export_bootstrap
    from tests.unit.streamer.conftest import CATALOG

    root = tmp_path_factory.mktemp("models")
    export_bootstrap(root, dataset=None, tiny=True, items=CATALOG)
    return root


def test_events_in_lists_out_dlq_and_catalog(stack, model_root, tmp_path):
    topics = unique_topics(stack, "wk1")
    r = redis.Redis.from_url(stack.redis_url)
    items = [
        (b"71053", orjson.dumps({"item_id": "71053", "title": "WHITE METAL LANTERN"})),
        (b"NEW1", orjson.dumps({"item_id": "NEW1", "title": "RED PAPER LANTERN", "available": True})),
        (b"GONE", orjson.dumps({"item_id": "GONE", "title": "SOLD OUT THING", "available": False})),
    ]
    asyncio.run(produce(stack.bootstrap, topics["items"], items))
    w = WorkerProcess(stack, model_root, tmp_path / "s1", app_id="wk1", topics=topics).start()
    try:
        w.wait_ready()
        users = [f"user{i}" for i in range(30)]
        evs = [event(i, u, ["71053", "85123A", "22633", "GONE", "UNANNOUNCED"][i % 5]) for i, u in enumerate(users)]
        bad = [
            (b"x", b"{nope"),
            (b"x", orjson.dumps({"event_id": "b1", "user_id": "u", "type": "purchase", "item_id": "1", "ts": 5})),
            (
                b"x",
                orjson.dumps(
                    {"event_id": "b2", "user_id": ["u"], "type": "view", "item_id": "1", "ts": 1_320_000_000_000}
                ),
            ),
            (b"x", b"[" * 5000 + b"]" * 5000),
        ]
        asyncio.run(produce(stack.bootstrap, topics["events"], evs[:15] + bad + evs[15:]))
        key = topics["prefix"]
        wait_until(lambda: all(r.exists(key + u) for u in users))
        for u in users:
            rec = decode_recommendation(r.get(key + u))
            scores = [i.score for i in rec.items]
            assert scores == sorted(scores, reverse=True)
            assert "GONE" not in [i.item_id for i in rec.items]  # unavailable items are filtered
            assert all(i.reason for i in rec.items)
            assert 0 < r.ttl(key + u) <= 604800
        # the topic carries the same lists, keyed by user
        recs = asyncio.run(read_all(stack.bootstrap, topics["recs"], expect=len(users)))
        assert {m.key.decode() for m in recs} >= set(users)
        # malformed messages are dead letters with reasons; the worker kept going
        dls = [decode_dead_letter(m.value) for m in asyncio.run(read_all(stack.bootstrap, topics["dlq"], expect=4))]
        assert sorted(d.error_code for d in dls) == sorted(["bad_json", "out_of_range", "wrong_type", "too_deep"])
        assert all(d.source_topic == topics["events"] and d.offset >= 0 for d in dls)
        # an item announced only by an event exists, and is enriched when its record arrives
        asyncio.run(
            produce(
                stack.bootstrap,
                topics["items"],
                [(b"UNANNOUNCED", orjson.dumps({"item_id": "UNANNOUNCED", "title": "BLUE LANTERN"}))],
            )
        )
        asyncio.run(produce(stack.bootstrap, topics["events"], [event(99, "late", "UNANNOUNCED", etype="view")]))
        wait_until(lambda: r.exists(key + "late"))
        # a brand-new user with no history (a search) gets a list too
        asyncio.run(
            produce(stack.bootstrap, topics["events"], [event(100, "fresh", None, etype="search", query="lantern")])
        )
        rec = decode_recommendation(wait_until(lambda: r.get(key + "fresh")))
        assert rec.items
        m = w.metrics()
        assert 'streamrec_events_total{outcome="dead_letter",topic="events"} 4.0' in m
        assert "streamrec_event_to_publish_seconds_count" in m
    finally:
        code = w.stop()
    assert code in (0, -15), w.tail()
