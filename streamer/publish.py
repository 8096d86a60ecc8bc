"""Stage 6 — publish: turn scored candidates into the wire list, then write Redis and Kafka.

Redis layout (one GET for the front end): ``<prefix><user_id>`` (default ``rec:<user_id>``) holds
exactly the JSON of the ``recommendations`` topic message, with a TTL. Writes for one micro-batch
go in one pipeline. The Kafka message (key = user id) goes through the ``send`` callable the app
passes in, so this module knows no Kafka client.

Every item carries a short reason built from the evidence that found it ("bought together with
WHITE METAL LANTERN", "similar to your search 'lantern'", "you bought this 3 times").
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Awaitable, Callable

import numpy as np

from schemas import RecItem, Recommendation, encode
from streamer.candidates import Candidates
from streamer.items import ItemIndex
from streamer.state import UserState

log = logging.getLogger(__name__)


def _title(index: ItemIndex, row: int) -> str:
    t = index.titles[row]
    return t if t else f"item {index.ids[row]}"


def _clip(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def reason_for(source: str, evidence, row: int, user: UserState, index: ItemIndex) -> str:
    if source == "history":
        prof = user.items.get(index.ids[row])
        if prof and prof[2] > 0:
            day = datetime.fromtimestamp(prof[1] / 1000, tz=timezone.utc).strftime("%Y-%m-%d")
            times = "once" if prof[2] == 1 else f"{prof[2]} times"
            return f"you bought this {times}, last on {day}"
        return "you looked at this recently"
    if source == "search" and evidence:
        return _clip(f"similar to your search '{evidence}'", 200)
    if source == "covis" and evidence is not None:
        return _clip(f"bought together with {_title(index, int(evidence))}", 200)
    if source == "ann" and evidence is not None:
        return _clip(f"similar to {_title(index, int(evidence))}", 200)
    if source == "ann":
        return "matches your interests"
    return "trending now"


def build_list(
    user_id: str,
    user: UserState,
    cands: Candidates,
    scores: np.ndarray,
    index: ItemIndex,
    *,
    size: int,
    model_version: str,
    variant: str,
    event_id: str,
    event_ts: int,
) -> Recommendation:
    order = np.argsort(-scores, kind="stable")[:size]
    items = []
    for j in order:
        row = int(cands.rows[j])
        items.append(
            RecItem(
                item_id=index.ids[row],
                score=round(float(scores[j]), 6),
                reason=reason_for(cands.sources[j], cands.evidence[j], row, user, index),
                title=index.titles[row],
                source=cands.sources[j],
            )
        )
    return Recommendation(
        user_id=user_id,
        items=tuple(items),
        model_version=model_version,
        variant=variant,
        event_id=event_id,
        event_ts=event_ts,
        published_ts=int(time.time() * 1000),
    )


@dataclass
class Publisher:
    """Writes lists to Redis (pipelined, with retry and backoff) and to the recommendations topic."""

    redis: object  # redis.asyncio.Redis
    send: Callable[[bytes, bytes], Awaitable[object]]
    prefix: str = "rec:"
    ttl_s: int = 604800
    max_backoff_s: float = 5.0

    async def publish(self, recs: list[Recommendation]) -> list[bytes]:
        """Write every list; returns the encoded payloads. Retries Redis until it answers: a list
        is never dropped because Redis was briefly away (the batch is not acked meanwhile)."""
        payloads = [encode(r) for r in recs]
        await self._write_redis(recs, payloads)
        for rec, payload in zip(recs, payloads):
            await self.send(rec.user_id.encode(), payload)
        return payloads

    async def _write_redis(self, recs: list[Recommendation], payloads: list[bytes]) -> None:
        from redis.exceptions import ConnectionError as RedisConnectionError, TimeoutError as RedisTimeout

        delay = 0.1
        while True:
            try:
                pipe = self.redis.pipeline(transaction=False)
                for rec, payload in zip(recs, payloads):
                    pipe.set(self.prefix + rec.user_id, payload, ex=self.ttl_s)
                await pipe.execute()
                return
            except (RedisConnectionError, RedisTimeout, OSError) as exc:
                log.warning("redis unavailable (%s); retrying in %.1f s", type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff_s)

    async def erase(self, user_id: str) -> None:
        await self.redis.delete(self.prefix + user_id)
