"""``streamrec-archive``: keep every valid event and catalog record, as Parquet, beyond Kafka's retention.

A long-running process with its own consumer group (``STREAMREC_ARCHIVE_GROUP``, never the
workers'), reading the events and items topics with the worker's settings (topics, TLS/SASL,
pseudonymisation). Each message goes through the worker's ingest stage (``streamer.ingest``): an
invalid one is counted (``outcome="invalid"``) and not archived (the worker dead-letters it).
Valid records are buffered per Kafka partition and written (``schemas.archive.write_batch``: one
file per date) when a buffer holds ``STREAMREC_ARCHIVE_FLUSH_RECORDS`` records or its oldest
message is ``STREAMREC_ARCHIVE_FLUSH_S`` seconds old.

Exactly once, file by file:

* a file is written under a temporary name, fsynced, renamed into place and its folder fsynced
  (``schemas.archive.write_file``): a crash leaves a whole file or none; a leftover temporary
  file is removed at start;
* the partition's offset is committed to Kafka only after all files of the batch are durable,
  so a crash before the commit re-reads the batch, never skips it;
* a batch re-read after a crash between rename and commit is not written twice: at assignment
  the archiver reads the offsets (and ids) held by the files that reach past the committed
  offset, and drops those records as ``already_archived``. The files, not the commit, are the
  proof of what was written.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import ConsumerRebalanceListener
from prometheus_client import Counter, Histogram

from schemas import DeadLetter, Event
from schemas.archive import EVENTS, ITEMS, Located, archived_ids, clean_temp, write_batch
from schemas.kafka_settings import kafka_client_kwargs, kafka_ssl_context
from streamer.ingest import Pseudonymizer, RawMessage, parse_event, parse_item
from streamer.metrics import REGISTRY, ProbeServer
from streamer.settings import Settings, SettingsError

log = logging.getLogger("streamrec.archiver")

RECORDS = Counter(
    "streamrec_archive_records_total",
    "Messages seen by the archiver, by topic and outcome (archived, invalid, already_archived)",
    ["topic", "outcome"],
    registry=REGISTRY,
)
FILES = Counter("streamrec_archive_files_total", "Archive files written, by topic", ["topic"], registry=REGISTRY)
FLUSH = Histogram(
    "streamrec_archive_flush_seconds",
    "Time to write (and fsync) one partition's batch",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)


@dataclass
class _Buffer:
    """What the archiver holds for one assigned partition."""

    kind: str
    records: list[Located] = field(default_factory=list)
    next_offset: int | None = None  # position after the last message taken
    committed: int | None = None  # last offset committed (or found committed at assignment)
    since: float | None = None  # monotonic time of the first message not yet committed
    archived: dict[int, str] = field(default_factory=dict)  # offset -> id, held by files past `committed`


def load_settings(env: dict[str, str] | None = None) -> Settings:
    """The worker's settings; the archiver needs no Redis, so REDIS_URL may be unset."""
    env = dict(os.environ if env is None else env)
    env.setdefault("REDIS_URL", "redis://unused:6379/0")
    return Settings.from_env(env)


def check_archive_dir(s: Settings) -> Path:
    root = Path(s.archive_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SettingsError(f"STREAMREC_ARCHIVE_DIR: cannot create {root}: {exc.strerror or exc}") from None
    if not root.is_dir() or not os.access(root, os.W_OK | os.X_OK):
        raise SettingsError(f"STREAMREC_ARCHIVE_DIR: {root} is not a writable folder")
    return root


class Archiver:
    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.root = check_archive_dir(settings)
        self.pseudonymize = Pseudonymizer(settings.pseudonymize_key)
        self.kinds = {settings.events_topic: EVENTS, settings.items_topic: ITEMS}
        self.buffers: dict = {}  # TopicPartition -> _Buffer
        self.counts: dict[str, int] = {"archived": 0, "invalid": 0, "already_archived": 0, "files": 0}
        self.consumer = None
        self._stop = asyncio.Event()
        self._writing = asyncio.Lock()  # an assignment reads the files only after a write in flight

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        from aiokafka import AIOKafkaConsumer

        removed = clean_temp(self.root)
        if removed:
            log.warning("removed %d temporary file(s) left by an interrupted write", len(removed))
        s = self.s
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap,
            group_id=s.archive_group,
            client_id=f"streamrec-archive-{s.worker_id}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=16 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
            fetch_max_wait_ms=s.fetch_max_wait_ms,
            session_timeout_ms=int(s.session_timeout_s * 1000),
            heartbeat_interval_ms=max(100, int(s.session_timeout_s * 1000) // 3),
            **kafka_client_kwargs(s),
        )
        self.consumer.subscribe([s.events_topic, s.items_topic], listener=_Listener(self))
        await self.consumer.start()
        log.info("archiving %s and %s to %s (group %s)", s.events_topic, s.items_topic, self.root, s.archive_group)
        try:
            while not self._stop.is_set():
                batch = await self.consumer.getmany(timeout_ms=200, max_records=10_000)
                for tp, messages in batch.items():
                    self._take(tp, messages)
                await self._flush_due()
            await self._flush_due(force=True)
        finally:
            await self.consumer.stop()
            log.info("stopped: %s", self.counts)

    # -- per message ------------------------------------------------------------------------------

    def _take(self, tp, messages) -> None:
        buf = self.buffers.get(tp)
        if buf is None:
            # Fetched before the assignment callback has read this partition's files (aiokafka
            # fetches while the callback runs), or revoked meanwhile: take nothing, and read the
            # messages again later if the partition is still ours.
            if messages and tp in self.consumer.assignment():
                self.consumer.seek(tp, messages[0].offset)
            return
        topic = tp.topic
        worker = self.s.worker_id
        counts = {"archived": 0, "invalid": 0, "already_archived": 0}
        for m in messages:
            raw = RawMessage(m.topic, m.partition, m.offset, m.key, m.value, m.timestamp)
            value = parse_event(raw, self.pseudonymize, worker) if buf.kind == EVENTS else parse_item(raw, worker)
            if isinstance(value, DeadLetter):
                counts["invalid"] += 1
                continue
            if buf.archived and buf.archived.get(m.offset) == _record_id(value):
                counts["already_archived"] += 1
                continue
            buf.records.append(Located(value, m.partition, m.offset, m.timestamp))
        if messages:
            buf.next_offset = messages[-1].offset + 1
            if buf.since is None:
                buf.since = time.monotonic()
        for outcome, n in counts.items():
            if n:
                RECORDS.labels(topic, outcome).inc(n)
                if outcome != "archived":
                    self.counts[outcome] += n

    # -- flushing -----------------------------------------------------------------------------------

    async def _flush_due(self, force: bool = False) -> None:
        now = time.monotonic()
        for tp, buf in list(self.buffers.items()):
            if buf.since is None:
                continue
            if force or len(buf.records) >= self.s.archive_flush_records or now - buf.since >= self.s.archive_flush_s:
                await self._flush(tp, buf)

    async def _flush(self, tp, buf: _Buffer) -> None:
        from aiokafka.errors import KafkaError

        records, next_offset = buf.records, buf.next_offset
        started = time.perf_counter()
        paths = []
        if records:
            async with self._writing:
                paths = await asyncio.to_thread(write_batch, self.root, buf.kind, tp.topic, records)
            FILES.labels(tp.topic).inc(len(paths))
            RECORDS.labels(tp.topic, "archived").inc(len(records))
            self.counts["archived"] += len(records)
            self.counts["files"] += len(paths)
        seconds = time.perf_counter() - started
        FLUSH.observe(seconds)
        log.debug(
            "flushed %s:%d up to offset %s: %d records, %d files, %.3f s",
            tp.topic,
            tp.partition,
            next_offset,
            len(records),
            len(paths),
            seconds,
        )
        buf.records, buf.since = [], None
        if self.buffers.get(tp) is not buf:
            return  # revoked meanwhile: the files are durable, the next owner skips them
        try:
            await self.consumer.commit({tp: next_offset})
            buf.committed = next_offset
            buf.archived = {o: i for o, i in buf.archived.items() if o >= next_offset}
        except KafkaError as exc:  # the files prove what was written; a restart skips it
            log.warning(
                "commit of %s:%d at %d failed (%r); the archive files cover it",
                tp.topic,
                tp.partition,
                next_offset,
                exc,
            )

    # -- rebalancing --------------------------------------------------------------------------------

    async def assigned(self, tps) -> None:
        if not tps:
            return
        begin = await self.consumer.beginning_offsets(list(tps))
        for tp in tps:
            committed = await self.consumer.committed(tp)
            start = committed if committed is not None else begin[tp]
            kind = self.kinds[tp.topic]
            async with self._writing:
                archived = await asyncio.to_thread(archived_ids, self.root, kind, tp.topic, tp.partition, start)
            self.buffers[tp] = _Buffer(kind, committed=committed, archived=archived)
            if archived:
                log.info(
                    "%s:%d: files hold %d records past the committed offset %s; they will not be written again",
                    tp.topic,
                    tp.partition,
                    len(archived),
                    committed,
                )
        log.info("assigned partitions: %s", ", ".join(f"{tp.topic}:{tp.partition}" for tp in sorted(tps)))

    def revoked(self, tps) -> None:
        # Unwritten records are simply dropped: their offsets are not committed, the next owner reads them.
        for tp in tps:
            self.buffers.pop(tp, None)


def _record_id(value) -> str:
    return value.event_id if isinstance(value, Event) else value.item_id


class _Listener(ConsumerRebalanceListener):
    """Hands aiokafka's rebalance callbacks to the archiver."""

    def __init__(self, archiver: Archiver) -> None:
        self.archiver = archiver

    async def on_partitions_revoked(self, revoked) -> None:
        self.archiver.revoked(revoked)

    async def on_partitions_assigned(self, assigned) -> None:
        await self.archiver.assigned(assigned)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="streamrec-archive",
        description="Archive every valid event and catalog record of the deployment's topics to Parquet "
        "(STREAMREC_ARCHIVE_DIR), exactly once, with its own consumer group. Configured by the worker's "
        "environment variables (see the README's settings table).",
    )
    parser.parse_args(argv)
    level = os.environ.get("STREAMREC_LOG_LEVEL", "INFO")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings()
        kafka_ssl_context(settings)
        archiver = Archiver(settings)
    except SettingsError as exc:
        print(f"streamrec-archive: bad configuration: {exc}", file=sys.stderr)
        return 2
    for warning in settings.warnings():
        log.warning("settings: %s", warning)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, archiver.stop)
        probes = ProbeServer(settings.metrics_port)
        await probes.start()
        probes.ready = True
        try:
            await archiver.run()
        finally:
            await probes.stop()

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
