"""Read a deployment's own log: contract events and catalog records, from Kafka or the archive.

``read_log(source, since_ms, until_ms)`` returns a :class:`schemas.sources.Dataset` whatever the
source:

* ``kafka://HOST:PORT[,HOST:PORT]``: the events and items topics of a running deployment, from
  the earliest retained offset up to the end of each partition as seen at start. Topic names and
  Kafka security (TLS, SASL) come from the same environment variables as the worker's
  (``STREAMREC_EVENTS_TOPIC``, ``KAFKA_SECURITY_PROTOCOL``, ...: ``schemas.kafka_settings``).
  Partitions are assigned by hand: no consumer group, so the workers' group and its offsets are
  never touched. Every message is validated by the contract (``schemas.models``); an invalid one
  is skipped and counted (``stats.dropped["invalid_<reason>"]``), never raised.
* a folder: an archive written by ``streamrec-archive`` (``schemas.archive``).

Both give the same result for the same messages: events with ``since_ms <= ts < until_ms``,
ordered by (ts, Kafka partition, offset), de-duplicated by event_id (the first in that order
stays; the rest counted as ``duplicate_event_id``); the catalog as the last valid record of
each item.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Mapping

from tqdm import tqdm

from schemas.archive import log_dataset, read_archive
from schemas.kafka_settings import KafkaSettings, kafka_client_kwargs, parse_bootstrap
from schemas.models import Event, Item, ValidationError, decode_event, decode_item
from schemas.sources import Dataset, SourceStats

log = logging.getLogger("streamrec.logsource")

KAFKA_SCHEME = "kafka://"
#: Per-partition fetch size: large, so that a 260k-event log arrives in few round trips.
MAX_PARTITION_FETCH_BYTES = 16 * 1024 * 1024


class LogSourceError(RuntimeError):
    """The log could not be read (unknown topic, broker unreachable, no progress); says which."""


def read_log(
    source: str,
    since_ms: int | None = None,
    until_ms: int | None = None,
    *,
    env: Mapping[str, str] | None = None,
    progress: bool = True,
    stall_s: float = 60.0,
) -> Dataset:
    """Events and catalog of ``source`` (``kafka://HOST:PORT[,...]`` or an archive folder).

    ``since_ms`` (inclusive) and ``until_ms`` (exclusive) bound the event time. ``env`` replaces
    ``os.environ`` for the Kafka settings; ``progress`` shows a bar on a terminal (never in logs
    or pipes). Reading Kafka fails with :class:`LogSourceError` when
    a partition makes no progress for ``stall_s`` seconds.
    """
    if since_ms is not None and until_ms is not None and since_ms >= until_ms:
        raise ValueError(f"since ({since_ms}) must be before until ({until_ms})")
    if source.startswith(KAFKA_SCHEME):
        bootstrap = parse_bootstrap("--source", source[len(KAFKA_SCHEME) :])
        settings = KafkaSettings.from_env(env, kafka_bootstrap=bootstrap)
        return asyncio.run(read_kafka(settings, since_ms, until_ms, progress=progress, stall_s=stall_s))
    if "://" in source:
        raise LogSourceError(f"unknown source {source!r}: use kafka://HOST:PORT[,HOST:PORT] or an archive folder")
    return read_archive(source, since_ms, until_ms)


async def read_kafka(
    settings: KafkaSettings,
    since_ms: int | None = None,
    until_ms: int | None = None,
    *,
    progress: bool = False,
    stall_s: float = 60.0,
) -> Dataset:
    """``read_log`` for Kafka, inside a running event loop."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.errors import KafkaError

    name = f"kafka://{settings.kafka_bootstrap}"
    stats = SourceStats(name=name)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        client_id="streamrec-retrain-logsource",
        max_partition_fetch_bytes=MAX_PARTITION_FETCH_BYTES,
        fetch_max_bytes=4 * MAX_PARTITION_FETCH_BYTES,
        fetch_max_wait_ms=50,
        request_timeout_ms=30_000,
        **kafka_client_kwargs(settings),
    )
    located_events: list[tuple[int, int, int, Event]] = []
    located_items: list[tuple[int, int, int, Item]] = []
    try:
        await consumer.start()
        topics = await consumer.topics()
        if settings.events_topic not in topics:
            raise LogSourceError(f"{name}: no topic {settings.events_topic!r} (STREAMREC_EVENTS_TOPIC)")
        wanted = [settings.events_topic] + ([settings.items_topic] if settings.items_topic in topics else [])
        if settings.items_topic not in topics:
            stats.notes["items_topic_missing"] += 1
        tps = [TopicPartition(t, p) for t in wanted for p in sorted(consumer.partitions_for_topic(t) or ())]
        consumer.assign(tps)
        begin = await consumer.beginning_offsets(tps)
        end = await consumer.end_offsets(tps)
        pending = {tp for tp in tps if end[tp] > begin[tp]}
        for tp in tps:
            consumer.seek(tp, begin[tp])
        for tp in set(tps) - pending:
            consumer.pause(tp)
        # The end offsets taken now are the target; a broker that under-reports them (Tansu
        # answers ListOffsets with the last batch's base offset + 1) is corrected by the high
        # watermark of the first fetch response, which it states right.
        target: dict = {}
        bar = tqdm(
            total=sum(end[tp] - begin[tp] for tp in pending),
            unit="msg",
            desc=f"read {name}",
            disable=None if progress else True,
            mininterval=1.0,
        )
        last_progress = time.monotonic()
        try:
            while pending:
                batch = await consumer.getmany(timeout_ms=500)
                for tp in pending:
                    if tp not in target:
                        hw = consumer.highwater(tp)
                        if hw is not None:
                            target[tp] = max(end[tp], hw)
                            bar.total += target[tp] - end[tp]
                for tp, messages in batch.items():
                    if tp not in pending:
                        continue
                    stop = target.get(tp, end[tp])
                    is_events = tp.topic == settings.events_topic
                    for msg in messages:
                        if msg.offset >= stop:
                            break
                        if is_events:
                            _take_event(msg, stats, located_events)
                        else:
                            _take_item(msg, stats, located_items)
                    bar.update(len(messages))
                    last_progress = time.monotonic()
                for tp in list(pending):
                    if tp in target and await consumer.position(tp) >= target[tp]:
                        pending.discard(tp)
                        consumer.pause(tp)
                if pending and time.monotonic() - last_progress > stall_s:
                    where = ", ".join(f"{tp.topic}:{tp.partition}" for tp in sorted(pending))
                    raise LogSourceError(f"{name}: no progress for {stall_s:.0f} s on {where}")
        finally:
            bar.close()
    except KafkaError as exc:
        raise LogSourceError(f"{name}: {exc!r}") from exc
    finally:
        await consumer.stop()
    return log_dataset(stats, located_events, located_items, since_ms, until_ms)


def _take_event(msg, stats: SourceStats, out: list) -> None:
    stats.rows += 1
    try:
        event = decode_event(msg.value if msg.value is not None else b"")
    except ValidationError as exc:
        stats.dropped[f"invalid_{exc.reason}"] += 1
        return
    out.append((event.ts, msg.partition, msg.offset, event))


def _take_item(msg, stats: SourceStats, out: list) -> None:
    try:
        item = decode_item(msg.value if msg.value is not None else b"")
    except ValidationError as exc:
        stats.notes[f"invalid_item_{exc.reason}"] += 1
        return
    out.append((msg.timestamp, msg.partition, msg.offset, item))
