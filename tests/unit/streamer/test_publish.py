"""Stage 6, publish (streamer/publish.py), against a real redis-server (a private one on a free
port): one pipelined write per batch with the TTL, the Kafka payload equal to Redis', erase."""

from __future__ import annotations

import redis.asyncio as aioredis

from schemas import RecItem, Recommendation, decode_recommendation, encode
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
