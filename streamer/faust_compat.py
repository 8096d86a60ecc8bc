"""Every patch of faust-streaming internals the worker needs, in one place, under one version pin.

Written against faust-streaming 0.15 (``FAUST_PIN``, pinned in pyproject.toml). Each patch names
what it replaces and why; ``tests/unit/streamer/test_faust_compat.py`` pins down the behaviour
each one relies on, so a faust upgrade that changes it fails there first.

* ``patch_fetch_wait``: the worker consumer's ``fetch_max_wait_ms`` (faust hard-codes 1500).
* ``patch_recovery``: three fixes to table recovery (the changelog's real end; a changelog shorter
  than the local state; seek before resume). Written up for upstream in docs/faust-recovery-fixes.md.
* ``install_batch_delivery``: records of the events topic go from the consumer's fetch loop
  straight into a ``BatchSink`` (one list append per record) instead of faust's per-event path
  (conductor → decode → channel queue → ``Stream`` → ``take_events`` buffer → ack), which cost
  ~0.2 ms of the worker's CPU per event (BENCHMARKS.md, issue 15). Offsets, gaps, flow control,
  generation checks and acks keep faust's own bookkeeping, so commits, rebalances and recovery
  behave as before.
* ``read_offset`` / ``delivery_flags``: faust's private per-partition bookkeeping, read by the
  worker's lag gauge and stalled-partition check.
* ``attribute_to``: table reads and writes attributed to the record that caused them (faust picks
  the changelog partition and the RocksDB partition database from the *current event*).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from importlib.metadata import version as _dist_version

from faust.streams import _current_event

from streamer import consumers
from streamer.security import kafka_client_kwargs
from streamer.settings import Settings

log = logging.getLogger("streamrec.worker")

FAUST_PIN = (0, 15)  # major, minor the patches below were written and tested against


def check_version() -> str:
    """The installed faust-streaming version; a WARNING when it is outside ``FAUST_PIN``."""
    v = _dist_version("faust-streaming")
    if tuple(int(p) for p in v.split(".")[:2]) != FAUST_PIN:
        log.warning(
            "faust-streaming %s installed; streamer/faust_compat.py was written against %d.%d: "
            "run tests/unit/streamer/test_faust_compat.py and the reliability suites",
            v,
            *FAUST_PIN,
        )
    return v


def patch_fetch_wait(max_wait_ms: int) -> None:
    """faust's aiokafka driver hard-codes fetch_max_wait_ms=1500 for the worker consumer; apply
    STREAMREC_FETCH_MAX_WAIT_MS instead (before the consumer starts its fetcher)."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    original = getattr(
        AIOKafkaConsumerThread._create_worker_consumer, "__wrapped__", AIOKafkaConsumerThread._create_worker_consumer
    )

    def create(self, transport):
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = max_wait_ms
        return consumer

    create.__wrapped__ = original
    AIOKafkaConsumerThread._create_worker_consumer = create


def patch_recovery(settings: Settings) -> None:
    """Three fixes to faust's table recovery (written against faust-streaming 0.15, pinned in
    pyproject.toml): read each changelog to its real end; recover instead of crashing when a
    changelog is shorter than the local state; seek the stream partitions before resuming them.

    1. The real end. Recovery reads each changelog partition from the local store's offset up to
       the end that ListOffsets reports. The embedded broker (Tansu) under-states that end after
       a multi-record batch (it answers the last batch's base offset + 1; measured: 1 where 133
       records were there, tests/integration/test_crash_recovery.py). Recovery would stop early
       and the worker would go on from a stale copy of a user's state. So the end is also read
       from a fetch response's high watermark, which Tansu states correctly
       (``consumers.fetch_highwaters``), and the larger of the two is used; with it the embedded
       stack produces multi-record batches again (it forced one record per batch before). On Apache Kafka both
       agree and nothing changes.

    2. A changelog shorter than the local state. The local RocksDB store remembers the last
       changelog offset it saw per partition. When the broker lost the changelog (a memory-only
       broker restarted), that offset is beyond the changelog's end and faust raised
       ``ConsistencyError``: the worker crashed on the rebalance after the broker restart and on
       every start after it (a crash loop until the state folder was deleted; measured in
       tests/integration/test_faults.py). Such a partition is now read from the changelog's
       beginning instead, and the offsets move back in line with the broker on the next changelog
       write. faust's own check stays enabled for everything else.

    3. Seek before resume: see the comment above the replaced methods below.
    """
    from faust.tables.recovery import Recovery

    async def true_highwaters(consumer, tps) -> dict:
        listed = await consumer.highwaters(*tps)
        try:
            fetched = await consumers.fetch_highwaters(settings.kafka_bootstrap, tps, **kafka_client_kwargs(settings))
        except Exception as exc:  # noqa: BLE001 - broker away: faust's own answer, as before
            log.warning(
                "recovery: cannot read changelog high watermarks by fetch (%s: %s); using ListOffsets",
                type(exc).__name__,
                exc,
            )
            fetched = {}
        out = {}
        for tp in tps:
            a, b = listed.get(tp), fetched.get(tp)
            out[tp] = max(v for v in (a, b) if v is not None) if (a is not None or b is not None) else None
        log.info(
            "recovery: changelog ends (ListOffsets, fetch high watermark): %s",
            ", ".join(f"{tp.topic}:{tp.partition}={listed.get(tp)},{fetched.get(tp)}" for tp in sorted(tps)),
        )
        return out

    original_hw = getattr(Recovery._build_highwaters, "__wrapped__", Recovery._build_highwaters)

    async def build_highwaters(self, consumer, tps, destination, title):
        await original_hw(self, consumer, tps, destination, title)
        if tps:
            for tp, value in (await true_highwaters(consumer, tps)).items():
                if value is not None:
                    destination[tp] = max(destination.get(tp, -1), value - 1)  # faust keeps "end - 1"

    build_highwaters.__wrapped__ = original_hw
    Recovery._build_highwaters = build_highwaters

    original = getattr(Recovery._build_offsets, "__wrapped__", Recovery._build_offsets)

    async def build_offsets(self, consumer, tps, destination, title):
        ahead = [tp for tp in tps if destination.get(tp) is not None and destination[tp] >= 0]
        log.info(
            "recovery: %s changelog offsets in the local store: %s",
            title,
            ", ".join(f"{tp.topic}:{tp.partition}={destination.get(tp)}" for tp in sorted(tps)),
        )
        if ahead:
            highwaters = await true_highwaters(consumer, ahead)
            for tp in ahead:
                hw = highwaters.get(tp)
                last = (hw - 1) if hw is not None else -1
                if destination[tp] > last:
                    log.warning(
                        "changelog %s:%d ends at offset %d but local state has seen %d: the broker lost "
                        "data; reading the changelog from its start over the local state",
                        tp.topic,
                        tp.partition,
                        last,
                        destination[tp],
                    )
                    destination[tp] = None
        await original(self, consumer, tps, destination, title)

    build_offsets.__wrapped__ = original
    Recovery._build_offsets = build_offsets

    # 3. Seek the stream partitions to their committed offsets *before* resuming them.
    # faust resumes them first and seeks after, while the fetcher already runs (it was started to
    # read the changelogs, or runs on from the previous generation). Records fetched in between
    # go into the stream queue, which faust then clears without acking them, and a record of
    # that batch still being handed over after the seek raises faust's read offset again, so
    # faust drops the re-read below it: those events were never applied nor acked, the
    # partition's commits stopped at the gap, and later events were applied on a state that
    # lacked them (measured in tests/integration/test_crash_recovery.py: SIGKILL twice, restart,
    # about 1 run in 4 lost events of most users and left one partition's commit behind).
    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        consumer = self.app.consumer
        self.log.info("Restore complete!")
        await self.app.on_rebalance_complete.send()
        self._set_recovery_ended()
        callbacks = [
            asyncio.ensure_future(
                table.on_recovery_completed(self.actives_for_table[table], self.standbys_for_table[table])
            )
            for table in self.tables.values()
        ]
        if callbacks:
            await asyncio.wait(callbacks)
        assignment = consumer.assignment()
        if self.app.consumer_generation_id != generation_id:
            self.log.warning(
                "Recovery rebalancing again app id %s param %s", self.app.consumer_generation_id, generation_id
            )
            return
        if assignment:
            self.log.info("Seek stream partitions to committed offsets.")
            await self._wait(consumer.perform_seek(), timeout=self.app.conf.broker_request_timeout)
        consumer.resume_partitions({tp for tp in assignment if not self._is_changelog_tp(tp)})
        self.completed.set()
        self.app.flow_control.resume()
        consumer.resume_flow()
        await self.app._fetcher.maybe_start()
        self.tables.on_actives_ready()
        if not self.app.assignor.assigned_standbys():
            self.tables.on_standbys_ready()
        self.app.on_rebalance_end()
        self.log.info("Worker ready")

    async def resume_streams(self, generation_id: int = 0) -> None:
        app = self.app
        consumer = app.consumer
        await app.on_rebalance_complete.send()
        assignment = consumer.assignment()
        if self.app.consumer_generation_id != generation_id:
            self.log.warning("Recovery rebalancing again")
            return
        if assignment:
            self.log.info("Seek stream partitions to committed offsets.")
            await self._wait(consumer.perform_seek(), timeout=self.app.conf.broker_request_timeout)
            consumer.resume_partitions({tp for tp in assignment if not self._is_changelog_tp(tp)})
        else:
            self.log.info("Resuming streams with empty assignment")
        self.completed.set()
        self.log.info("Resuming flow...")
        app.flow_control.resume()
        consumer.resume_flow()
        await app._fetcher.maybe_start()
        self.tables.on_actives_ready()
        self.tables.on_standbys_ready()
        app.on_rebalance_end()
        self.log.info("Worker ready")

    for name, fn in (("on_recovery_completed", on_recovery_completed), ("_resume_streams", resume_streams)):
        fn.__wrapped__ = getattr(getattr(Recovery, name), "__wrapped__", getattr(Recovery, name))
        setattr(Recovery, name, fn)


def read_offset(consumer, tp):
    """The offset of the last record faust's fetch loop handed over for ``tp`` (None: none yet)."""
    return consumer._read_offset.get(tp)


def delivery_flags(consumer, tp) -> dict:
    """faust's private view of whether it delivers ``tp`` (for the stalled-partition log line)."""
    return {
        "active": tp in (consumer._active_partitions or ()),
        "buffered": tp in consumer._buffered_partitions,
        "paused": tp in consumer._paused_partitions,
        "flow_active": consumer.flow_active,
    }


class _Current:
    """What faust's tables and stores read from the current event: ``.message`` only."""

    __slots__ = ("__weakref__", "message")

    def __init__(self, message) -> None:
        self.message = message


def attribute_to(message) -> object:
    """Make ``message`` faust's current event (changelog partition, RocksDB partition database).
    Returns the holder: keep it alive while the table is used (faust keeps a weak reference)."""
    holder = _Current(message)
    _current_event.set(weakref.ref(holder))
    return holder


class BatchSink:
    """Records of one topic, handed over by the consumer's fetch loop, taken in micro-batches.

    ``put`` is a list append. ``take`` waits for a first record, then up to ``within`` seconds
    (from that record's arrival) for ``max_`` of them, and returns at most ``max_``: faust's
    ``take_events`` semantics without its per-event machinery. Records left over from a full
    batch (a backlog) are taken at once, without another wait. Registered with faust's flow
    control, so records fetched before a rebalance are cleared with its stream queues; ``take``
    also drops records of an older consumer generation, as faust's ``Stream`` does.
    """

    def __init__(self, app, capacity: int) -> None:
        self.app = app
        self.capacity = capacity
        self._records: list = []
        self._first_at = 0.0
        self._nonempty = asyncio.Event()
        self._full = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._want = 1
        self.dropped = 0  # records of an older generation, never handed out (nor acked)

    def __len__(self) -> int:
        return len(self._records)

    def put(self, message) -> None:
        records = self._records
        if not records:
            self._first_at = time.monotonic()
            self._nonempty.set()
        records.append(message)
        n = len(records)
        if n >= self._want:
            self._full.set()
        if n >= self.capacity:
            self._space.clear()

    def clear(self) -> None:
        """Called by faust's flow control on a rebalance: these records are re-read from the commit."""
        self.dropped += len(self._records)
        self._records = []
        self._nonempty.clear()
        self._full.clear()
        self._space.set()

    async def wait_for_space(self) -> None:
        await self._space.wait()

    async def take(self, max_: int, within: float) -> list:
        while True:
            while not self._records:
                self._nonempty.clear()
                await self._nonempty.wait()
            wait = self._first_at + within - time.monotonic()
            if len(self._records) < max_ and wait > 0:
                self._want = max_
                self._full.clear()
                try:
                    await asyncio.wait_for(self._full.wait(), timeout=wait)
                except TimeoutError:
                    pass
                finally:
                    self._want = 1
            batch, self._records = self._records[:max_], self._records[max_:]
            if not self._records:  # (records left over have waited at least since ``_first_at``: no new wait)
                self._nonempty.clear()
            if len(self._records) < self.capacity:
                self._space.set()
            generation = self.app.consumer_generation_id
            if not self.app.flow_control.is_active():
                self.dropped += len(batch)
                continue
            fresh = [m for m in batch if m.generation_id == generation]
            self.dropped += len(batch) - len(fresh)
            if fresh:
                return fresh


def install_batch_delivery(app, topic, sink: BatchSink) -> None:
    """Route ``topic``'s records from the app consumer's fetch loop into ``sink``.

    The topic is registered with faust's conductor (so the consumer subscribes to it and acks
    are enabled for it) but no stream reads it. ``ack`` each record after its batch was handled.
    """
    from faust.transport.consumer import Consumer

    app.topics.add(topic)
    sinks = app.__dict__.setdefault("_streamrec_batch_sinks", {})
    for name in topic.topics:
        sinks[name] = sink
    app.flow_control.manage_queue(sink)  # cleared on a rebalance with faust's own queues
    if getattr(Consumer._drain_messages, "__streamrec__", False):
        return
    Consumer._drain_messages = _drain_messages


async def _drain_messages(self, fetcher) -> None:  # pragma: no cover - exercised by the worker's integration tests
    """faust 0.15's ``Consumer._drain_messages`` with one change: a record of a topic with a
    ``BatchSink`` is tracked (``track_message``) and appended to the sink instead of being
    passed to the conductor's per-message callback. Read offsets, gaps and commits as faust's."""
    from faust.transport.consumer import CONSUMER_FETCHING

    callback = self.callback
    getmany = self.getmany
    consumer_should_stop = self._stopped.is_set
    fetcher_should_stop = fetcher._stopped.is_set
    get_read_offset = self._read_offset.__getitem__
    set_read_offset = self._read_offset.__setitem__
    set_flag = self.diag.set_flag
    unset_flag = self.diag.unset_flag
    commit_every = self._commit_every
    acks_enabled_for = self.app.topics.acks_enabled_for
    sinks = self.app.__dict__.get("_streamrec_batch_sinks", {})
    flow_control = self.app.flow_control
    track = self.track_message
    producer_buffer = self.app.producer.buffer
    yield_every = 100
    num_since_yield = 0
    sleep = asyncio.sleep
    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            set_flag(CONSUMER_FETCHING)
            ait = getmany(timeout=1.0)
            await self.sleep(0)
            if not self.should_stop:
                async for tp, message in ait:
                    num_since_yield += 1
                    if num_since_yield > yield_every:
                        await sleep(0)
                        num_since_yield = 0
                    offset = message.offset
                    r_offset = get_read_offset(tp)
                    if r_offset is None or offset >= r_offset:
                        gap = offset - (r_offset or 0)
                        if gap > 1 and r_offset and acks_enabled_for(message.topic):
                            await self._add_gap(tp, r_offset + 1, offset)
                        if commit_every is not None and self._n_acked >= commit_every:
                            self._n_acked = 0
                            await self.commit()
                        sink = sinks.get(tp.topic)
                        if sink is None:
                            await self.wait_first(callback(message), self.suspend_flow.wait())
                        else:
                            if not flow_control.is_active():
                                await flow_control.acquire()  # as the conductor does for a stream
                            if producer_buffer.size > producer_buffer.max_messages:
                                await producer_buffer.wait_until_ebb()  # changelog writes pending: as the conductor
                            if len(sink) >= sink.capacity:
                                await self.wait_first(sink.wait_for_space(), self.suspend_flow.wait())
                            message.tracked = True
                            track(message)
                            sink.put(message)
                        set_read_offset(tp, offset)
                unset_flag(CONSUMER_FETCHING)
    except self.consumer_stopped_errors:
        if self.transport.app.should_stop:
            self.log.info("Broker stopped consumer, shutting down...")
            return
        raise
    except asyncio.CancelledError:
        if self.transport.app.should_stop:
            self.log.info("Consumer shutting down for user cancel.")
            return
        raise
    except Exception:
        self.log.exception("Drain messages raised")
        raise
    finally:
        unset_flag(CONSUMER_FETCHING)


_drain_messages.__streamrec__ = True


class Deliveries:
    """Messages handed to the producer whose broker acknowledgement has not arrived yet.

    faust commits offsets after ``app.producer.flush()`` (``Consumer._commit_offsets``), but in
    0.15 that flush does not wait for everything: its first step, ``ProducerBuffer.flush``, returns
    as soon as 0.1 s pass without a message leaving faust's buffer (``flush_atmost``'s timeout, hit
    on a busy event loop), and a message its sender task has taken off the buffer but not yet
    handed to aiokafka is in neither the buffer nor aiokafka's accumulator. A commit could so pass
    changelog writes that were still in the process: a SIGKILL then lost them while the offsets of
    their events were committed (CI, ``test_sigkill_and_restart_equals_clean_run``: three users
    each lacked 3–4 events, found in no changelog record). Every changelog write (faust's buffer)
    and every message the worker sends (lists, dead letters) is tracked here until the broker has
    acknowledged it, and ``wait`` (run by the patched flush, so before every commit) returns only
    when none is outstanding. A message the producer gave up on is a lost write: ``on_lost`` is
    called (the worker exits without committing, as for a failed batch)."""

    def __init__(self, on_lost) -> None:
        self._pending: set = set()
        self._on_lost = on_lost

    def __len__(self) -> int:
        return len(self._pending)

    def track(self, fut) -> None:
        if fut.done():
            self._settled(fut)
            return
        self._pending.add(fut)
        fut.add_done_callback(self._settled)

    def _settled(self, fut) -> None:
        self._pending.discard(fut)
        if not fut.cancelled() and fut.exception() is not None:
            self._on_lost(fut.exception())

    async def wait(self) -> None:
        """Wait for the messages outstanding now. A commit's offsets are computed before its flush
        starts, and an event is acked only after all its writes were handed over, so what is sent
        later belongs to events the commit does not cover (and must not hold it up under load)."""
        pending = list(self._pending)
        if pending:
            await asyncio.wait(pending)


def install_delivery_guard(app, on_lost) -> Deliveries:
    """Make ``app.producer.flush()`` (and so every offset commit) wait for ``Deliveries``; returns
    the app's tracker, to which the worker adds the messages it sends itself."""
    from faust.transport.drivers.aiokafka import Producer
    from faust.transport.producer import ProducerBuffer

    deliveries = app.__dict__["_streamrec_deliveries"] = Deliveries(on_lost)
    if getattr(ProducerBuffer.put, "__streamrec__", False):
        return deliveries
    put, flush = ProducerBuffer.put, Producer.flush

    def guarded_put(self, fut) -> None:
        tracker = self.app.__dict__.get("_streamrec_deliveries") if self.app is not None else None
        if tracker is not None:
            tracker.track(fut)
        put(self, fut)

    async def guarded_flush(self) -> None:
        await flush(self)
        tracker = self.app.__dict__.get("_streamrec_deliveries")
        if tracker is not None:
            await tracker.wait()

    guarded_put.__streamrec__ = guarded_flush.__streamrec__ = True
    guarded_put.__wrapped__, guarded_flush.__wrapped__ = put, flush
    ProducerBuffer.put, Producer.flush = guarded_put, guarded_flush
    return deliveries
