"""Stage 6 — publish: turn scored candidates into the wire list, then write Redis and Kafka.

Redis layout (one GET for the front end): ``<prefix><user_id>`` (default ``rec:<user_id>``) holds
exactly the JSON of the ``recommendations`` topic message, with a TTL. Writes for one micro-batch
go in one pipeline. The Kafka message (key = user id) goes through the ``send`` callable the app
passes in, so this module knows no Kafka client.

Every item carries a short reason built from the evidence that found it ("often chosen with
WHITE METAL LANTERN (12 times)", "matches your search 'lantern'", "you bought this 3 times, last on
2011-12-01", "trending: bought 37 times in the last 7 days"). See ``reason_for``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from typing import Awaitable, Callable

import numpy as np

from schemas import RecItem, Recommendation, encode
from schemas.serving import ListParams, assemble, discovery, list_scores, order_with_search
from streamer import metrics
from streamer.candidates import Candidates
from streamer.items import ItemIndex
from streamer.state import UserState

log = logging.getLogger(__name__)


def _title(index: ItemIndex, row: int) -> str:
    t = index.titles[row]
    return t if t else f"item {index.ids[row]}"


def _clip(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


_VERBS = {1: "you viewed this", 2: "you clicked this", 3: "you added this to your cart", 4: "you saved this",
          5: "you bought this", 6: "you cancelled this", 7: "you rated this"}


def _day(ts_ms: int) -> str:
    return _utc_date(int(ts_ms) // 86_400_000)


@lru_cache(maxsize=4096)
def _utc_date(day: int) -> str:
    return datetime.fromtimestamp(day * 86_400, tz=timezone.utc).strftime("%Y-%m-%d")


def _times(n: int) -> str:
    return "once" if n == 1 else "twice" if n == 2 else f"{n} times"


def reason_for(source: str, evidence, row: int, user: UserState, index: ItemIndex) -> str:
    """A short reason from the evidence that found the candidate (see ``Candidates.evidence``):
    real counts, dates, titles and the user's own query, never a fixed slogan where evidence exists."""
    if source == "history":
        item_id = index.ids[row]
        prof = user.items.get(item_id)
        if prof and prof[2] > 0:
            return f"you bought this {_times(prof[2])}, last on {_day(prof[1])}"
        last = next((ty for i, ty, _ts in reversed(user.seq) if i == item_id), None)
        when = f" on {_day(prof[1])}" if prof else " recently"
        return _VERBS.get(last, "you looked at this") + when
    if source == "search" and evidence:
        return _clip(f"matches your search '{evidence}'", 200)
    if source == "covis" and evidence is not None:
        anchor, count = evidence if isinstance(evidence, tuple) else (evidence, 0)
        n = int(round(count))
        tail = f" ({_times(n)})" if n > 0 else ""
        return _clip(f"often chosen with {_title(index, int(anchor))}{tail}", 200)
    if source == "knn" and evidence is not None:
        return _clip(f"often chosen by the people who chose {_title(index, int(evidence))}", 200)
    if source == "ann" and evidence is not None:
        return _clip(f"similar to {_title(index, int(evidence))}", 200)
    if source == "ann":
        if user.last_query:
            return _clip(f"related to your search '{user.last_query}'", 200)
        return "close to what you looked at"
    if source == "trending" and isinstance(evidence, tuple):
        bought, other, days = evidence
        if bought:
            return f"trending: bought {_times(bought)} in the last {days} days"
        if other:
            return f"trending: viewed or picked {_times(other)} in the last {days} days"
    pop = float(index.popularity[row]) if row < len(index.popularity) else 0.0
    if pop > 0:
        return f"popular lately (recency-weighted count {pop:.1f})"
    return "new in the catalog"


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
    search_slots: int = 0,
    min_new: int = 0,
    knn_weight: float = 0.0,
    stack: tuple[float, ...] = (),
) -> Recommendation:
    """The published list: ``schemas.serving.assemble`` (the ``size`` best candidates by the
    list score of ``schemas.serving.list_scores``, at least ``min_new`` of them items the user
    never touched; with ``knn_weight`` or ``stack`` the own items keep the ranker's order and the
    new ones follow in the order of their discovery score), then the search pins."""
    new = None  # which candidates the user never touched: only needed when slots are reserved for them
    params = ListParams(size, min_new, knn_weight, stack)
    if min_new > 0 or discovery(params):
        new = np.fromiter((index.ids[int(r)] not in user.items for r in cands.rows), dtype=bool, count=len(cands.rows))
    scores = list_scores(scores, cands.knn, params, new, cands.feats, cands.src, len(user.items))
    assembled = assemble(scores, new, params)
    order, final = order_with_search(scores, cands.query_sim, assembled, size, search_slots)
    items = []
    for j in order:
        row = int(cands.rows[j])
        items.append(
            RecItem(
                item_id=index.ids[row],
                score=round(float(final[j]), 6),
                reason=reason_for(cands.source(j), cands.evidence(j), row, user, index),
                title=index.titles[row],
                source=cands.source(j),
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
        async def write() -> None:
            pipe = self.redis.pipeline(transaction=False)
            for rec, payload in zip(recs, payloads):
                pipe.set(self.prefix + rec.user_id, payload, ex=self.ttl_s)
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
