"""``Publisher.publish``: a batch's lists and its A/B counters in one Redis round trip (real
redis-server), every list handed to the producer, and nothing acked while Redis is away."""

from __future__ import annotations

import redis
import redis.asyncio as aioredis

from schemas import RecItem, Recommendation, decode_recommendation
from streamer.attribution import Stats, read_stats
from streamer.publish import Publisher
from tests.unit.streamer.test_reader import redis_url  # noqa: F401  (fixture: a private redis-server)


def rec(user: str, item: str) -> Recommendation:
    return Recommendation(
        user_id=user,
        items=(RecItem(item_id=item, score=1.0, reason="popular lately", title=None, source="trending"),),
        model_version="v1",
        variant="ranker",
        event_id=f"e-{user}",
        event_ts=1_764_000_000_000,
        published_ts=1_764_000_000_001,
    )


async def test_lists_and_stats_in_one_pipeline_and_every_list_sent(redis_url):  # noqa: F811
    a = aioredis.from_url(redis_url)
    sent: list[tuple[bytes, bytes]] = []

    async def send(key: bytes, value: bytes) -> None:
        sent.append((key, value))

    executed = []
    real_pipeline = a.pipeline

    def pipeline(*args, **kw):  # count round trips: the real client's pipeline, observed
        p = real_pipeline(*args, **kw)
        real_execute = p.execute

        async def execute(*a2, **kw2):
            executed.append(len(p.command_stack))
            return await real_execute(*a2, **kw2)

        p.execute = execute
        return p

    a.pipeline = pipeline
    stats = Stats()
    stats.add("ranker", "lists", 2)
    stats.add("ranker", "users", 2)
    recs = [rec("u1", "i1"), rec("u2", "i2")]
    payloads = await Publisher(a, send, prefix="p:").publish(recs, stats, "m:")
    await Publisher(a, send, prefix="p:").publish([rec("u3", "i3")])  # no stats: lists only
    await a.aclose()

    assert len(executed) == 2 and executed[0] > 2  # one round trip per batch, SETs and HINCRBYs together
    assert [k for k, _v in sent] == [b"u1", b"u2", b"u3"] and [v for _k, v in sent][:2] == payloads
    r = redis.Redis.from_url(redis_url)
    assert decode_recommendation(r.get("p:u1")).items[0].item_id == "i1"
    assert decode_recommendation(r.get("p:u3")).items[0].item_id == "i3"
    assert 0 < r.ttl("p:u2") <= 604800
    got = read_stats(r, "m:")
    assert got["ranker"]["lists"] == 2 and got["ranker"]["users"] == 2
