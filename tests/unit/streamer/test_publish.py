"""Stage 6, publish (streamer/publish.py), against a real redis-server (a private one on a free
port): one pipelined write per batch with the TTL, the batch's A/B counters in the same round trip,
the Kafka payload equal to Redis', erase."""

from __future__ import annotations

import redis
import redis.asyncio as aioredis

from schemas import RecItem, Recommendation, decode_recommendation, encode
from streamer.attribution import Stats, read_stats
from streamer.publish import Publisher


def rec(user: str, item: str = "71053") -> Recommendation:
    return Recommendation(
        user_id=user,
        items=(RecItem(item, 1.5, "you bought it before", "WHITE METAL LANTERN", "history"),),
        model_version="tiny",
        event_id=f"ev-{user}",
        event_ts=1_800_000_000_000,
        published_ts=1_800_000_000_100,
        variant="ranker",
    )


async def test_lists_go_to_redis_with_their_ttl_and_to_kafka_in_order(redis_url):
    sent = []

    async def send(key: bytes, value: bytes) -> None:
        sent.append((key, value))

    r = aioredis.Redis.from_url(redis_url)
    try:
        pub = Publisher(r, send, prefix="pubtest:", ttl_s=600)
        payloads = await pub.publish([rec("u1"), rec("u2", "22633")])
        assert payloads == [encode(rec("u1")), encode(rec("u2", "22633"))]
        assert sent == [(b"u1", payloads[0]), (b"u2", payloads[1])]
        assert await r.get("pubtest:u1") == payloads[0]  # the front end reads the topic's message
        assert decode_recommendation(await r.get("pubtest:u2")).items[0].item_id == "22633"
        assert 300 < await r.ttl("pubtest:u1") <= 600  # the configured TTL (not the default week, not none)
        await pub.erase("u1")
        assert await r.get("pubtest:u1") is None and await r.get("pubtest:u2") == payloads[1]
    finally:
        await r.aclose()


async def test_lists_and_stats_in_one_pipeline_and_every_list_sent(redis_url):
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
