"""Stage 6 — publish: write the lists (``streamer.lists`` builds them) to Redis and Kafka.

Redis layout (one GET for the front end): ``<prefix><user_id>`` (default ``rec:<user_id>``) holds
exactly the JSON of the ``recommendations`` topic message, with a TTL. Writes for one micro-batch
go in one pipeline. The Kafka message (key = user id) goes through the ``send`` callable the app
passes in, so this module knows no Kafka client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from schemas import Recommendation, encode
from streamer import metrics
from streamer.attribution import Stats, queue_stats

log = logging.getLogger(__name__)


@dataclass
class Publisher:
    """Writes lists to Redis (pipelined, with retry and backoff) and to the recommendations topic."""

    redis: object  # redis.asyncio.Redis
    send: Callable[[bytes, bytes], Awaitable[object]]
    prefix: str = "rec:"
    ttl_s: int = 604800
    max_backoff_s: float = 5.0

    async def publish(
        self, recs: list[Recommendation], stats: Stats | None = None, stats_prefix: str = ""
    ) -> list[bytes]:
        """Write every list; returns the encoded payloads. Retries Redis until it answers: a list
        is never dropped because Redis was briefly away (the batch is not acked meanwhile).

        One Redis round trip per batch: the lists' SETs, then the batch's A/B counters
        (``stats``, HINCRBY under ``stats_prefix``: ``streamer.attribution``) in the same pipeline
        (a retry after a lost answer may count a batch twice, as a separate stats write could).
        Then every list goes to the producer at once (one list per user per batch, so no key's
        order depends on it); the call returns once all are queued."""
        payloads = [encode(r) for r in recs]
        await self._write_redis(recs, payloads, stats, stats_prefix)
        await asyncio.gather(*(self.send(rec.user_id.encode(), payload) for rec, payload in zip(recs, payloads)))
        return payloads

    async def _write_redis(
        self, recs: list[Recommendation], payloads: list[bytes], stats: Stats | None = None, stats_prefix: str = ""
    ) -> None:
        async def write() -> None:
            pipe = self.redis.pipeline(transaction=False)
            for rec, payload in zip(recs, payloads):
                pipe.set(self.prefix + rec.user_id, payload, ex=self.ttl_s)
            if stats:
                queue_stats(pipe, stats, stats_prefix)
            await pipe.execute()

        await self._retry(write, "write")

    async def _retry(self, op: Callable[[], Awaitable[object]], what: str) -> None:
        """Run ``op`` until Redis answers: exponential backoff from 0.1 s to ``max_backoff_s``.

        Only connection-level failures are retried (refused, reset, timed out, and redis-py's
        ``AuthenticationError``, a ``ConnectionError``, which a Redis restarted with a password
        gives); a command error is a bug and propagates. While it waits the batch is not acked,
        so Kafka keeps the events. Measured against a SIGKILLed and restarted redis-server
        (tests/integration/test_faults.py): one warning per attempt, no busy loop, the lists of
        the whole outage written once Redis is back.
        """
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeout

        delay = 0.1
        while True:
            try:
                await op()
                return
            except (RedisConnectionError, RedisTimeout, OSError) as exc:
                metrics.REDIS_RETRIES.inc()
                log.warning("redis unavailable for %s (%s); retrying in %.1f s", what, type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff_s)

    async def erase(self, user_id: str) -> None:
        """Delete the user's list, retried like writes: an ``erase_user`` event must not be acked
        (and so forgotten) while its list is still readable. Before this it was a single DELETE
        whose ConnectionError escaped into the agent."""
        key = self.prefix + user_id
        await self._retry(lambda: self.redis.delete(key), "erase")
