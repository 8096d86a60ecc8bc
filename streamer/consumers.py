"""The worker's consumers as seen from outside their fetch loops, on any broker.

* ``FaustConsumerHandle`` / ``AIOKafkaHandle``: one consumer's assigned partitions and a rewind
  of one partition (to the beginning of its log, or to the group's committed offset); the faust
  one drains what faust already fetched and resets faust's bookkeeping of the partition.
* ``StallDetector``: when a partition faust stopped delivering is to be sought back to its
  committed offset (``streamer.app``'s lag monitor; any broker).
* ``fetch_highwaters``: the high watermarks a fetch response states (changelog recovery,
  ``streamer.faust_compat``; on Apache Kafka they equal ListOffsets' answer).

What exists only for the embedded broker's memory-only logs (the lost-log detection) is in
``streamer.watchdog``, which builds on these handles.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, Iterable, Optional

log = logging.getLogger("streamrec.consumers")


class StallDetector:
    """Decides when a partition of the worker's consumer is stalled: behind the end of its log,
    its read offset unchanged for ``after_s`` seconds, while the agent sat idle for as long
    (so nothing is being processed and nothing waits in a busy batch). A Redis outage or a long
    batch keeps the agent busy and never counts; against a broker that does not answer, the
    reseek fails and is tried again ``after_s`` later.

    Measured: after a SIGKILL and restart, 1 run in 12 left three partitions undelivered for
    good while faust held them active and unpaused (tests/integration/test_crash_recovery.py).
    """

    def __init__(self, after_s: float = 30.0) -> None:
        self.after_s = after_s
        self._since: dict = {}  # key -> (read offset, time it last moved)

    def observe(self, key, read_offset: Optional[int], highwater: Optional[int], idle_s: float, now: float) -> bool:
        prev = self._since.get(key)
        if prev is None or prev[0] != read_offset:
            self._since[key] = (read_offset, now)
            return False
        behind = highwater is not None and highwater > (read_offset + 1 if read_offset is not None else 0)
        if behind and now - prev[1] >= self.after_s and idle_s >= self.after_s:
            self._since[key] = (read_offset, now)  # at most once per ``after_s``
            return True
        return False

    def retain(self, keys: Iterable) -> None:
        keep = set(keys)
        for k in [k for k in self._since if k not in keep]:
            del self._since[k]


class ConsumerHandle:
    """One consumer, for those that watch it from outside (the stall reseek, the lost-log
    watchdog): its name, its assigned partitions, and a rewind of one partition."""

    name: str
    consumer: Any

    def assigned(self) -> list:  # pragma: no cover - interface
        raise NotImplementedError

    async def rewind(self, topic: str, partition: int) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class FaustConsumerHandle(ConsumerHandle):
    """The faust worker consumer (``app.consumer``): its aiokafka consumer lives in a thread with
    its own event loop, so every call goes through ``call_thread``; a rewind also resets faust's
    own bookkeeping of the partition (read offset: faust drops messages below it; committed offset
    and acks: faust ignores acks below the committed offset and would never commit again).

    ``on_rewind`` holds callbacks ``(topic, partition)`` run after the seek, while the partition is
    still paused: what others remember of the partition's old position (the lost-log watchdog's
    last records) is dropped there."""

    def __init__(self, consumer, topics: Iterable[str], position_timeout: float = 2.0) -> None:
        self.consumer = consumer
        self.topics = set(topics)
        self.position_timeout = position_timeout
        self.name = "worker consumer"
        self.on_rewind: list[Callable[[str, int], None]] = []
        self.drain_s = 0.3
        self.drain_timeout_s = 30.0
        self.settle_s = 2.0

    def _aio(self):
        return self.consumer._thread._ensure_consumer()

    def assigned(self) -> list:
        """The assigned partitions of ``topics``, in (topic, partition) order."""
        return sorted(
            (tp for tp in self.consumer.assignment() if tp.topic in self.topics),
            key=lambda tp: (tp.topic, tp.partition),
        )

    async def call(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """``await fn(aiokafka consumer, *args)`` on the consumer's own thread and loop."""
        return await self.consumer._thread.call_thread(fn, self._aio(), *args)

    async def _wait_delivered(self, aio, tp, ftp) -> None:
        """Wait until faust has handed every record aiokafka returned for ``tp`` to the agent.

        faust's fetch loop delivers a fetched batch record by record, each setting its read
        offset; a record of the old position delivered *after* the rewind would raise the read
        offset again and make faust drop the whole re-read below it (measured under CPU
        contention with a fixed 0.3 s drain: 91-93 of 840 events never applied). Delivered means
        read offset + 1 == position, or a read offset that stood still for ``settle_s``; bounded
        by ``drain_timeout_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.drain_timeout_s
        last, still_since = object(), loop.time()
        while loop.time() < deadline:
            try:
                pos = await self.consumer._thread.call_thread(position, aio, tp)
            except Exception:  # noqa: BLE001 - position being reset: nothing in flight to wait for
                return
            read = self.consumer._read_offset.get(ftp)
            if read is None or read + 1 >= pos:
                return
            if read != last:
                last, still_since = read, loop.time()
            elif loop.time() - still_since >= self.settle_s:
                # Tansu's batches can leave the position past the last record's offset + 1: a
                # read offset that no longer moves means faust has nothing left to deliver.
                return
            await asyncio.sleep(0.1)
        log.warning(
            "watchdog: records of %s:%d still in flight after %.0f s; rewinding anyway",
            tp.topic,
            tp.partition,
            self.drain_timeout_s,
        )

    async def rewind(self, topic: str, partition: int, to_committed: bool = False) -> None:
        """Re-read the partition: from the beginning of the log (a lost log), or from the group's
        committed offset (``to_committed``: a stalled partition; the beginning if none)."""
        from aiokafka import TopicPartition
        from faust.types import TP

        tp = TopicPartition(topic, partition)
        ftp = TP(topic, partition)
        aio = self._aio()
        c = self.consumer

        async def seek() -> None:
            if to_committed:
                committed = await aio.committed(tp)
                if committed is not None and committed >= 0:
                    aio.seek(tp, committed)
                    return
            await aio.seek_to_beginning(tp)
            # Commit the new start too: the group's committed offset is still the stale position,
            # and a rebalance before the re-read passes it would make faust seek back there.
            # A failed commit raises: the anchors stay, the next check rewinds again.
            start = (await aio.beginning_offsets([tp])).get(tp, 0)
            await aio.commit({tp: start})

        # Stop faust handing out this partition, let records already fetched from the old position
        # drain (each sets faust's read offset, below which faust drops messages), then seek and
        # clear faust's bookkeeping of the partition, and resume.
        c.pause_partitions([ftp])
        try:
            await asyncio.sleep(self.drain_s)
            await self._wait_delivered(aio, tp, ftp)
            await self.consumer._thread.call_thread(seek)
            for forget in self.on_rewind:
                forget(topic, partition)
            for table in (c._read_offset, c._committed_offset, c._acked, c._acked_index, c._gap):
                table.pop(ftp, None)
        finally:
            c.resume_partitions([ftp])


class AIOKafkaHandle(ConsumerHandle):
    """A plain aiokafka consumer on this event loop (the items and model-updates feeds)."""

    def __init__(self, consumer, name: str, position_timeout: float = 2.0) -> None:
        self.consumer = consumer
        self.name = name
        self.position_timeout = position_timeout

    def assigned(self) -> list:
        return sorted(self.consumer.assignment(), key=lambda tp: (tp.topic, tp.partition))

    async def rewind(self, topic: str, partition: int) -> None:
        from aiokafka import TopicPartition

        await self.consumer.seek_to_beginning(TopicPartition(topic, partition))


async def position(consumer, tp) -> int:
    return await consumer.position(tp)


async def fetch_highwaters(bootstrap: str, tps: Iterable[Any], timeout_s: float = 5.0, **client_kwargs: Any) -> dict:
    """{tp: high watermark} as the broker states it in *fetch* responses (``tp`` is any
    ``(topic, partition)`` pair: faust's TP or aiokafka's TopicPartition; result keys are the ones
    passed in). Missing where no fetch answer came within ``timeout_s``.

    The embedded broker (Tansu) answers ListOffsets(latest), which ``end_offsets`` and faust's
    changelog recovery use, with the *last batch's* base offset + 1: after a batched produce the
    end of the log is under-stated (measured: 1 for a 50-record batch). The high watermark in a
    fetch response is right. Each partition is fetched from one below the ListOffsets answer (the
    last batch's first record), so the answer is small.
    """
    import time

    from aiokafka import AIOKafkaConsumer, TopicPartition

    wanted = {TopicPartition(tp[0], tp[1]): tp for tp in tps}
    if not wanted:
        return {}
    c = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=50,
        max_partition_fetch_bytes=65536,
        **client_kwargs,
    )
    await c.start()
    try:
        c.assign(list(wanted))
        ends = await c.end_offsets(list(wanted))
        for atp in wanted:
            c.seek(atp, max(ends.get(atp, 0) - 1, 0))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(c.highwater(atp) is None for atp in wanted):
            await c.getmany(timeout_ms=100, max_records=1)
        return {tp: c.highwater(atp) for atp, tp in wanted.items() if c.highwater(atp) is not None}
    finally:
        await c.stop()
