"""Side feeds: the catalog (``items``) and ``model-updates``, under one supervised loop.

Both are plain aiokafka consumers without a group (every worker needs every item and every model
version), assigned all partitions of their topic:

* ``items`` is read from its beginning; records are validated (bad ones to the DLQ with a reason)
  and applied to the pipeline's item index between batches.
* ``model-updates`` is followed from its end; each update is verified, smoke-tested and swapped
  in between batches (``ModelLoader.swap``); a bad version is refused and the current one serves on.

``SideFeeds.run`` supervises both: a feed that fails (the broker lost its topic, a decode bug) is
logged and started again after 2 s, with a fresh consumer positioned as at start. ``positioned``
is set once every feed's consumer holds a resolved position on all its partitions: the worker
reports ready (``/readyz``) only then, so an update produced after readiness is never skipped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition

from streamer import consumers, watchdog
from streamer.security import kafka_client_kwargs

log = logging.getLogger("streamrec.worker")

RESTART_AFTER_S = 2.0


@dataclass
class Feed:
    name: str
    topic: str
    from_start: bool  # True: read from the beginning; False: follow from the end
    fetch_max_wait_ms: int
    handle: Callable[[list], Awaitable[None]]  # one getmany's records, in partition order
    max_records: int = 1000


async def partitions_of(consumer, topic: str) -> list[int]:
    for _ in range(100):
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return sorted(parts)
        await consumer._client.force_metadata_update()
        await asyncio.sleep(0.2)
    raise RuntimeError(f"topic {topic!r} not found")


class SideFeeds:
    def __init__(self, settings, feeds: list[Feed]) -> None:
        self.s = settings
        self.feeds = feeds
        self._positioned = {f.name: asyncio.Event() for f in feeds}

    @property
    def positioned(self) -> bool:
        return all(e.is_set() for e in self._positioned.values())

    async def wait_positioned(self) -> None:
        await asyncio.gather(*(e.wait() for e in self._positioned.values()))

    async def run(self) -> None:
        await asyncio.gather(*(self._supervise(f) for f in self.feeds))

    async def _supervise(self, feed: Feed) -> None:
        while True:
            try:
                await self._run(feed)
            except asyncio.CancelledError:
                raise
            except Exception:
                # without this an error (e.g. the broker lost the topic) would end the feed
                # silently, and no later item or version would ever be picked up
                log.exception("%s feed failed; restarting it in %.0f s", feed.name, RESTART_AFTER_S)
                await asyncio.sleep(RESTART_AFTER_S)

    async def _run(self, feed: Feed) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.s.kafka_bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest" if feed.from_start else "latest",
            fetch_max_wait_ms=feed.fetch_max_wait_ms,
            **kafka_client_kwargs(self.s),
        )
        await consumer.start()
        guard = None
        try:
            tps = [TopicPartition(feed.topic, p) for p in await partitions_of(consumer, feed.topic)]
            consumer.assign(tps)
            await (consumer.seek_to_beginning(*tps) if feed.from_start else consumer.seek_to_end(*tps))
            for tp in tps:
                await consumer.position(tp)  # resolves the seek: records from here on are read
            self._positioned[feed.name].set()
            guard = watchdog.start(
                watchdog.FeedLogView(consumers.AIOKafkaHandle(consumer, f"{feed.name} feed")), self.s.lost_log_check_s
            )
            while True:
                records = await consumer.getmany(timeout_ms=500, max_records=feed.max_records)
                msgs = [m for batch in records.values() for m in batch]
                if msgs:
                    await feed.handle(msgs)
        finally:
            if guard is not None:
                guard.cancel()
            await consumer.stop()
