"""The worker process: a faust-streaming app (aiokafka driver) wiring the pipeline to Kafka and Redis.

* ``events`` agent: micro-batches (``take_events``: at most STREAMREC_MAX_BATCH events or
  STREAMREC_MAX_WAIT_MS), runs ``Pipeline.process`` and writes its results; events are acked (and
  so committed) only after their lists reached Redis and the producer: at-least-once, with
  idempotent state making redelivery harmless. The broker needs no transactions.
* per-user state: a faust ``Table`` (RocksDB via rocksdict on local disk + a changelog topic), so
  state survives a restart and follows a partition that moves to another worker.
* ``items`` feed: every worker reads the whole catalog (all partitions, no group).
* ``model-updates`` feed: verified hot swap between batches; a bad version is refused, logged and
  counted, and the current one keeps serving.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import sys
import time
import weakref
from pathlib import Path

import faust
import numpy as np
from faust.streams import _current_event

from schemas import DeadLetter, ValidationError, decode_model_update, encode
from streamer import metrics, state_lock, watchdog
from streamer.attribution import write_stats
from streamer.ingest import RawMessage, parse_item
from streamer.model import ModelBundle, ModelRefused, latest_version_dir
from streamer.pipeline import Pipeline
from streamer.publish import Publisher
from streamer.security import faust_credentials, kafka_client_kwargs, kafka_ssl_context, redis_client_kwargs
from streamer.settings import Settings, SettingsError
from streamer.variants import missing_versions, start_variant_poller, wait_first_poll

log = logging.getLogger("streamrec.worker")


def _patch_fetch_wait(max_wait_ms: int) -> None:
    """faust's aiokafka driver hard-codes fetch_max_wait_ms=1500 for the worker consumer; apply
    STREAMREC_FETCH_MAX_WAIT_MS instead (before the consumer starts its fetcher)."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    original = getattr(AIOKafkaConsumerThread._create_worker_consumer, "__wrapped__", AIOKafkaConsumerThread._create_worker_consumer)

    def create(self, transport):
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = max_wait_ms
        return consumer

    create.__wrapped__ = original
    AIOKafkaConsumerThread._create_worker_consumer = create


def _patch_recovery(settings: Settings) -> None:
    """Three fixes to faust's table recovery (written against faust-streaming 0.15, pinned in
    pyproject.toml): read each changelog to its real end; recover instead of crashing when a
    changelog is shorter than the local state; seek the stream partitions before resuming them.

    1. The real end. Recovery reads each changelog partition from the local store's offset up to
       the end that ListOffsets reports. The embedded broker (Tansu) under-states that end after
       a multi-record batch (it answers the last batch's base offset + 1; measured: 1 where 133
       records were there, tests/integration/test_crash_recovery.py). Recovery would stop early
       and the worker would go on from a stale copy of a user's state. So the end is also read
       from a fetch response's high watermark, which Tansu states correctly
       (``watchdog.fetch_highwaters``), and the larger of the two is used; with it the embedded
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
            fetched = await watchdog.fetch_highwaters(settings.kafka_bootstrap, tps, **kafka_client_kwargs(settings))
        except Exception as exc:  # noqa: BLE001 - broker away: faust's own answer, as before
            log.warning("recovery: cannot read changelog high watermarks by fetch (%s: %s); using ListOffsets",
                        type(exc).__name__, exc)
            fetched = {}
        out = {}
        for tp in tps:
            a, b = listed.get(tp), fetched.get(tp)
            out[tp] = max(v for v in (a, b) if v is not None) if (a is not None or b is not None) else None
        log.info("recovery: changelog ends (ListOffsets, fetch high watermark): %s",
                 ", ".join(f"{tp.topic}:{tp.partition}={listed.get(tp)},{fetched.get(tp)}" for tp in sorted(tps)))
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
        log.info("recovery: %s changelog offsets in the local store: %s", title,
                 ", ".join(f"{tp.topic}:{tp.partition}={destination.get(tp)}" for tp in sorted(tps)))
        if ahead:
            highwaters = await true_highwaters(consumer, ahead)
            for tp in ahead:
                hw = highwaters.get(tp)
                last = (hw - 1) if hw is not None else -1
                if destination[tp] > last:
                    log.warning("changelog %s:%d ends at offset %d but local state has seen %d: the broker lost "
                                "data; reading the changelog from its start over the local state",
                                tp.topic, tp.partition, last, destination[tp])
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
        callbacks = [asyncio.ensure_future(table.on_recovery_completed(self.actives_for_table[table],
                                                                      self.standbys_for_table[table]))
                     for table in self.tables.values()]
        if callbacks:
            await asyncio.wait(callbacks)
        assignment = consumer.assignment()
        if self.app.consumer_generation_id != generation_id:
            self.log.warning("Recovery rebalancing again app id %s param %s", self.app.consumer_generation_id,
                             generation_id)
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


class FaustTableStore:
    """``StateStore`` over a faust Table. Each read and write is attributed to the event that caused
    it: faust picks the changelog partition *and* the RocksDB partition database from the *current
    event*, which inside a batch would otherwise be the batch's last one (another user's partition)."""

    def __init__(self, table, events_by_msg: dict) -> None:
        self.table = table
        self.events_by_msg = events_by_msg

    def get(self, user_id: str, msg: RawMessage) -> bytes | None:
        self._as_current(msg)  # the RocksDB store also picks the partition database from it
        return self.table.get(user_id.encode())

    def _as_current(self, msg: RawMessage) -> None:
        _current_event.set(weakref.ref(self.events_by_msg[(msg.partition, msg.offset)]))

    def put(self, user_id: str, value: bytes, msg: RawMessage) -> None:
        self._as_current(msg)
        self.table[user_id.encode()] = value

    def delete(self, user_id: str, msg: RawMessage) -> None:
        self._as_current(msg)
        key = user_id.encode()
        if key in self.table:
            del self.table[key]


EXIT_BATCH_FAILED = 70  # EX_SOFTWARE: a batch raised; nothing of it was committed
DLQ_VALUE_LIMIT = 256 * 1024  # bytes of the original value (and key) a dead letter carries


def bounded_dead_letter(dl: DeadLetter, limit: int = DLQ_VALUE_LIMIT) -> DeadLetter:
    """The dead letter, with the original value and key cut to their first ``limit`` bytes.

    A dead letter carries the original bytes base64-encoded (4/3 larger): an input near the
    broker's 1 MB limit made a dead letter over the producer's ``max_request_size``, whose send
    failed and took the events agent down (measured with a 900 KB event). The reason says what
    was cut, so the letter stays truthful; small messages are untouched.
    """
    cut = {}
    notes = []
    for field, get in (("value_b64", dl.value), ("key_b64", dl.key)):
        encoded = getattr(dl, field)
        if encoded is not None and len(encoded) > limit * 4 // 3 + 4:
            raw = get()
            cut[field] = base64.b64encode(raw[:limit]).decode("ascii")
            notes.append(f"{field[:-4]} truncated to its first {limit} of {len(raw)} bytes")
    if not cut:
        return dl
    note = " [" + "; ".join(notes) + "]"
    return dl.replace(**cut, value_utf8=None, reason=dl.reason[: 2048 - len(note)] + note)


class Worker:
    """Owns the faust app, the pipeline, the Redis client and the side feeds."""

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.pipeline: Pipeline | None = None
        self.ready = asyncio.Event()
        self.lock = asyncio.Lock()  # held while a batch runs; model swaps and catalog updates wait for it
        self.probe = metrics.ProbeServer(settings.metrics_port)
        self.redis = None
        self._feeds: set[asyncio.Task] = set()  # side feeds and monitors: cancelled on close
        self._record_probe: watchdog.RecordProbe | None = None  # its own consumer: closed on close
        self._preloaded: ModelBundle | None = None  # verified by main() before faust starts
        self._last_seen: dict = {}  # (topic, partition) -> (offset, fingerprint) of the last event handled
        self._in_batch = False  # for the stalled-partition check: a busy agent is never "stalled"
        self._last_batch_end = time.monotonic()
        self.app = self._build_app()

    # ---- faust wiring ---------------------------------------------------------------------
    def _build_app(self) -> faust.App:
        s = self.s
        _patch_fetch_wait(s.fetch_max_wait_ms)
        _patch_recovery(s)
        app = faust.App(
            s.app_id,
            broker=[f"kafka://{h}" for h in s.kafka_bootstrap.split(",")],
            broker_credentials=faust_credentials(s),
            store="rocksdb://",
            datadir=str(Path(s.state_dir)),
            topic_partitions=s.partitions,
            topic_allow_declare=True,
            broker_session_timeout=s.session_timeout_s,
            broker_heartbeat_interval=max(s.session_timeout_s / 10, 0.5),
            broker_commit_interval=1.0,
            consumer_auto_offset_reset="earliest",
            producer_acks=-1,
            producer_max_batch_size=s.producer_max_batch_bytes,
            web_enabled=False,
            stream_wait_empty=False,
            table_cleanup_interval=3600.0,
            key_serializer="raw",
            value_serializer="raw",
        )
        events = app.topic(s.events_topic, key_type=bytes, value_type=bytes, key_serializer="raw",
                           value_serializer="raw", partitions=s.partitions)
        self.recs_topic = app.topic(s.recs_topic, key_serializer="raw", value_serializer="raw")
        self.dlq_topic = app.topic(s.dlq_topic, key_serializer="raw", value_serializer="raw")
        self.table = app.Table("user-state", default=None, key_type=bytes, value_type=bytes, partitions=s.partitions)

        @app.agent(events, name="events")
        async def on_events(stream):
            await self.ready.wait()
            async for batch in stream.take_events(s.max_batch, within=s.max_wait_ms / 1000):
                self._in_batch = True
                try:
                    await self._handle(batch)
                except Exception as exc:
                    await self._fail(exc)
                    raise
                finally:
                    self._in_batch = False
                    self._last_batch_end = time.monotonic()

        @app.task
        async def startup() -> None:
            await self._startup()

        app.service(_Shutdown(self))
        return app

    # ---- lifecycle ------------------------------------------------------------------------
    async def _startup(self) -> None:
        import redis.asyncio as aioredis

        self.redis = aioredis.from_url(self.s.redis_url, **redis_client_kwargs(self.s),
                                       socket_timeout=5, socket_connect_timeout=5, health_check_interval=10)
        await self.probe.start()
        bundle, self._preloaded = self._preloaded, None
        if bundle is None:
            bundle = await asyncio.get_running_loop().run_in_executor(None, self._load_latest)
        self.pipeline = Pipeline(self.s, bundle)
        self.publisher = Publisher(self.redis, self._send_rec, prefix=self.s.redis_prefix, ttl_s=self.s.redis_ttl_s)
        # runtime A/B split from Redis; the versions it names are loaded with ``_load`` (streamer.variants)
        self._variant_poller = start_variant_poller(self.redis, self.pipeline, self.s, load=self._load)
        log.info("serving model %s (%s on %s), %d catalog items", bundle.version, bundle.ranker_file,
                 bundle.provider, len(self.pipeline.index))
        self._spawn(self._items_feed())
        self._spawn(self._model_feed())
        # a partition whose log the broker lost (memory-only broker restarted) is rewound instead
        # of waiting for ever past the new log's end: see streamer/watchdog.py
        self._record_probe = watchdog.RecordProbe(self.s.kafka_bootstrap, **kafka_client_kwargs(self.s))
        self._consumer_handle = watchdog.FaustConsumerHandle(self.app.consumer, [self.s.events_topic],
                                                             last_seen=self._last_seen, probe=self._record_probe)
        self._watchdog = watchdog.start(self._consumer_handle, self.s.lost_log_check_s)
        for task in (self._variant_poller, self._watchdog):
            if task is not None:
                self._spawn(task)
        self._spawn(self._lag_monitor())
        await wait_first_poll(self._variant_poller)  # the split's versions loaded before the first batch
        self.probe.ready = True
        self.ready.set()

    def _load_latest(self) -> ModelBundle:
        root = self.s.model_path
        path = latest_version_dir(root)
        if path is None:
            raise SystemExit(f"STREAMREC_MODEL_ROOT: no model version under {root} (LATEST missing): "
                             f"build one with `streamrec-bootstrap --model-root {root}`")
        try:
            return self._load(path)
        except ModelRefused as exc:
            metrics.MODEL_REFUSED.inc()
            raise SystemExit(f"STREAMREC_MODEL_ROOT: newest version refused: {exc}") from None

    def _load(self, path: Path, manifest_sha256: str | None = None) -> ModelBundle:
        """Verify and load a version; every failure is a ``ModelRefused``.

        ``ModelBundle.load`` raises ``ModelRefused`` for what it checks, but a version whose
        manifest was sealed over damaged files (a buggy export) fails in numpy or orjson instead
        (measured: a truncated ``item_vecs.npy`` raised ValueError, a corrupt ``item_ids.json``
        JSONDecodeError). Unwrapped, that crashed the start without naming the setting, and at a
        swap it killed the model-updates feed for good. Item vectors must also be finite: flipped
        bytes under a resealed manifest load fine and would turn every score into NaN.
        """
        try:
            bundle = ModelBundle.load(path, device=self.s.device, variant=self.s.ranker_variant,
                                      threads=self.s.ort_threads, manifest_sha256=manifest_sha256)
        except ModelRefused:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure to load is a refusal, never a crash
            raise ModelRefused(f"{path}: cannot load: {type(exc).__name__}: {exc}") from None
        if not np.isfinite(bundle.item_vecs).all():
            raise ModelRefused(f"{path}: item_vecs.npy holds non-finite values")
        return bundle

    async def _send_rec(self, key: bytes, value: bytes) -> None:
        await self.recs_topic.send(key=key, value=value)

    # ---- the hot path -----------------------------------------------------------------------
    async def _handle(self, batch) -> None:
        msgs, by_msg = [], {}
        for ev in batch:
            m = ev.message
            raw = RawMessage(m.topic, m.partition, m.offset, m.key, m.value, int(m.timestamp * 1000))
            msgs.append(raw)
            by_msg[(m.partition, m.offset)] = ev
        last = {}
        for ev in batch:  # the last record per partition, for the lost-log watchdog's replaced-log check
            last[(ev.message.topic, ev.message.partition)] = ev.message
        for key, m in last.items():
            self._last_seen[key] = (m.offset, watchdog.fingerprint(round(m.timestamp * 1000), m.key, m.value))
        async with self.lock:
            result = await self.pipeline.process(msgs, FaustTableStore(self.table, by_msg))
            for dl in result.dead_letters:
                await self._send_dead_letter(dl)
            for user_id in result.erased:
                await self.publisher.erase(user_id)
            if result.recs:
                t0 = time.perf_counter()
                await self.publisher.publish(result.recs)
                if result.stats:  # per-variant online metrics for `streamrec-report`
                    await self.publisher._retry(lambda: write_stats(self.redis, result.stats, self.s.redis_meta_prefix), "stats")
                metrics.STAGE.labels("publish").observe(time.perf_counter() - t0)
                wall = time.time() * 1000
                for rec in result.recs:
                    metrics.LISTS.labels(rec.variant).inc()
                    metrics.LATENCY.observe(max(wall - result.trigger_ts[rec.user_id], 0) / 1000)

    async def _fail(self, exc: BaseException) -> None:
        """A batch could not be processed: end the process at once with exit code 70.

        faust only marks a crashed agent dead; measured in tests/integration/test_fuzz.py (a dead
        letter over the producer's size limit), the process then stayed up and ready while
        consuming nothing: a silent stall. A graceful stop is not safe either: ``take_events``
        acks its batch in a ``finally`` when its generator is closed, and faust commits acked
        offsets on stop, so the batch that failed could be committed unprocessed. A hard exit
        commits nothing: the supervisor restarts the worker, everything after the last commit is
        redelivered, and the idempotent state makes the redelivery harmless.
        """
        log.critical("event batch failed, exiting (code %d) without committing it: %s: %s",
                     EXIT_BATCH_FAILED, type(exc).__name__, exc)
        self.probe.ready = False
        for handler in logging.getLogger().handlers + log.handlers:
            with contextlib.suppress(Exception):
                handler.flush()
        os._exit(EXIT_BATCH_FAILED)

    async def _send_dead_letter(self, dl: DeadLetter) -> None:
        await self.dlq_topic.send(key=str(dl.offset).encode(), value=encode(bounded_dead_letter(dl)))

    # ---- side feeds -----------------------------------------------------------------------
    def _spawn(self, coro_or_task) -> asyncio.Task:
        """Keep a side feed or monitor as a task, so ``close`` can stop it (and its consumer)."""
        task = asyncio.ensure_future(coro_or_task)
        self._feeds.add(task)
        task.add_done_callback(self._feeds.discard)
        return task

    async def _items_feed(self) -> None:
        """Read the whole catalog topic (no consumer group: every worker needs every item)."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(bootstrap_servers=self.s.kafka_bootstrap, enable_auto_commit=False,
                                    auto_offset_reset="earliest", fetch_max_wait_ms=self.s.fetch_max_wait_ms,
                                    **kafka_client_kwargs(self.s))
        await consumer.start()
        guard = None
        try:
            parts = await self._partitions(consumer, self.s.items_topic)
            tps = [TopicPartition(self.s.items_topic, p) for p in parts]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            guard = watchdog.start(watchdog.AIOKafkaHandle(consumer, "items feed"), self.s.lost_log_check_s)
            while True:
                records = await consumer.getmany(timeout_ms=500, max_records=1000)
                items, dead = [], []
                for tp, msgs in records.items():
                    for m in msgs:
                        raw = RawMessage(m.topic, m.partition, m.offset, m.key, m.value, m.timestamp)
                        parsed = parse_item(raw, self.s.worker_id)
                        (dead if isinstance(parsed, DeadLetter) else items).append(parsed)
                for dl in dead:
                    metrics.EVENTS.labels("items", "dead_letter").inc()
                    metrics.DLQ.labels(dl.error_code).inc()
                    await self._send_dead_letter(dl)
                if items:
                    metrics.EVENTS.labels("items", "valid").inc(len(items))
                    bundle = self.pipeline.bundle
                    vecs = await asyncio.get_running_loop().run_in_executor(None, self.pipeline.encode_items, items, bundle)
                    async with self.lock:
                        self.pipeline.upsert_items(items, vecs, bundle)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("items feed failed; restarting it in 2 s")
            await asyncio.sleep(2)
            self._spawn(self._items_feed())
        finally:
            if guard is not None:
                guard.cancel()
            await consumer.stop()

    async def _model_feed(self) -> None:
        """Follow ``model-updates`` from its end; verify, smoke-test and switch between batches."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(bootstrap_servers=self.s.kafka_bootstrap, enable_auto_commit=False,
                                    auto_offset_reset="latest", fetch_max_wait_ms=max(self.s.fetch_max_wait_ms, 100),
                                    **kafka_client_kwargs(self.s))
        await consumer.start()
        guard = None
        try:
            parts = await self._partitions(consumer, self.s.model_updates_topic)
            tps = [TopicPartition(self.s.model_updates_topic, p) for p in parts]
            consumer.assign(tps)
            await consumer.seek_to_end(*tps)
            guard = watchdog.start(watchdog.AIOKafkaHandle(consumer, "model-updates feed"), self.s.lost_log_check_s)
            async for m in consumer:
                try:
                    update = decode_model_update(m.value or b"")
                except ValidationError as exc:
                    log.error("model update refused: bad message: %s", exc)
                    metrics.MODEL_REFUSED.inc()
                    continue
                try:
                    await self.swap(Path(update.location), update.manifest_sha256)
                except Exception:
                    metrics.MODEL_REFUSED.inc()
                    log.exception("model update %s failed; still serving %s", update.version, self.pipeline.bundle.version)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The feed is a fire-and-forget task: without this, an error (e.g. the broker lost the
            # topic) would end it silently and no later version would ever be picked up.
            log.exception("model-updates feed failed; restarting it in 2 s")
            await asyncio.sleep(2)
            self._spawn(self._model_feed())
        finally:
            if guard is not None:
                guard.cancel()
            await consumer.stop()

    async def swap(self, path: Path, manifest_sha256: str | None = None) -> bool:
        """Load ``path``; on success switch to it between batches. Returns whether it switched."""
        loop = asyncio.get_running_loop()
        current = self.pipeline.bundle.version
        try:
            bundle = await loop.run_in_executor(None, self._load, path, manifest_sha256)
        except ModelRefused as exc:
            metrics.MODEL_REFUSED.inc()
            log.error("model version refused, still serving %s: %s", current, exc)
            return False
        if bundle.version == current:
            return False
        async with self.lock:
            index = await loop.run_in_executor(None, self.pipeline.build_index, bundle, self.pipeline.index)
            self.pipeline.install(bundle, index)
        metrics.MODEL_SWAPS.inc()
        log.info("switched model %s -> %s (%s)", current, bundle.version, bundle.ranker_file)
        return True

    async def _lag_monitor(self) -> None:
        """Every 5 s: the lag gauge; and a partition faust stopped delivering is sought back to
        its committed offset (``watchdog.StallDetector``), with one WARNING line."""
        consumer = self.app.consumer
        stalls = watchdog.StallDetector(after_s=30.0)
        while True:
            await asyncio.sleep(5)
            lag = 0
            now = time.monotonic()
            idle_s = 0.0 if self._in_batch else now - self._last_batch_end
            mine = [tp for tp in consumer.assignment() if tp.topic == self.s.events_topic]
            stalls.retain(mine)
            for tp in mine:
                hw = consumer.highwater(tp)
                pos = consumer._read_offset.get(tp)  # last offset handed to the stream
                if hw is not None and pos is not None:
                    lag += max(hw - pos - 1, 0)
                if not stalls.observe(tp, pos, hw, idle_s, now):
                    continue
                if getattr(self.app, "rebalancing", False) or tp in consumer._paused_partitions:
                    continue  # paused on purpose (recovery, a rewind in progress): not a stall
                log.warning("partition %s:%d stalled: read offset %s, high watermark %s, no progress and an idle agent "
                            "for %.0f s (faust active=%s buffered=%s paused=%s flow_active=%s): seeking it back to the "
                            "group's committed offset", tp.topic, tp.partition, pos, hw, stalls.after_s,
                            tp in (consumer._active_partitions or ()), tp in consumer._buffered_partitions,
                            tp in consumer._paused_partitions, consumer.flow_active)
                try:
                    await self._consumer_handle.rewind(tp.topic, tp.partition, to_committed=True)
                    metrics.STALL_RESEEKS.labels(tp.topic).inc()
                except Exception as exc:  # noqa: BLE001 - broker away: tried again after another period
                    log.warning("partition %s:%d: reseek failed: %s: %s", tp.topic, tp.partition, type(exc).__name__, exc)
            metrics.LAG.set(lag)

    @staticmethod
    async def _partitions(consumer, topic: str) -> list[int]:
        for _ in range(100):
            parts = consumer.partitions_for_topic(topic)
            if parts:
                return sorted(parts)
            await consumer._client.force_metadata_update()
            await asyncio.sleep(0.2)
        raise RuntimeError(f"topic {topic!r} not found")

    async def close(self) -> None:
        feeds = list(self._feeds)
        for task in feeds:
            task.cancel()
        await asyncio.gather(*feeds, return_exceptions=True)  # each feed stops its consumer in ``finally``
        if self._record_probe is not None:
            await self._record_probe.close()  # the lost-log watchdog's consumer (left open: "Unclosed AIOKafkaConsumer")
        await self.probe.stop()
        if self.redis is not None:
            await self.redis.aclose()


class _Shutdown(faust.Service):
    """Closes Redis and the probe server after faust has stopped agents, committed and flushed."""

    def __init__(self, worker: Worker, **kw) -> None:
        super().__init__(**kw)
        self.worker = worker

    async def on_stop(self) -> None:
        await self.worker.close()


def check_redis_credentials(s: Settings) -> str | None:
    """A message naming the setting when Redis refuses the configured credentials, else None.

    Wrong or missing credentials are a configuration error: without this check the worker
    started, looked ready, and retried every list write forever (redis-py's AuthenticationError
    is a ConnectionError, which the publisher rightly retries). An unreachable Redis is not an
    error at start: the publisher waits for it with backoff. Neither message contains the password.
    """
    import redis
    from redis.exceptions import AuthenticationError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeout

    client = redis.Redis.from_url(s.redis_url, **redis_client_kwargs(s), socket_timeout=5, socket_connect_timeout=5)
    try:
        client.ping()
    except AuthenticationError as exc:
        return f"REDIS_PASSWORD / REDIS_URL: Redis refused the credentials ({exc})"
    except (RedisConnectionError, RedisTimeout, OSError) as exc:
        text = str(exc)
        if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text.lower() or "hostname mismatch" in text.lower():
            return (f"REDIS_SSL_CAFILE / REDIS_SSL_CHECK_HOSTNAME / REDIS_URL: the Redis server's certificate was "
                    f"refused ({text[:300]})")
        if "SSL" in text and s.redis_url.startswith("rediss://"):
            return f"REDIS_URL / REDIS_SSL_*: TLS to Redis failed ({text[:300]})"
        log.warning("redis not reachable at start (%s); list writes will wait for it", type(exc).__name__)
    finally:
        client.close()
    return None


def main(argv: list[str] | None = None) -> int:
    level = os.environ.get("STREAMREC_LOG_LEVEL", "INFO")
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level, format=fmt)
    # faust re-configures the root handler at its own level (STREAMREC_FAUST_LOG_LEVEL, warn), so
    # every INFO line of ours after start-up ("serving model", "switched model") was dropped. Our
    # loggers get their own handler: STREAMREC_LOG_LEVEL holds for them whatever faust does.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(fmt))
    for name in ("streamrec", "streamer"):
        ours = logging.getLogger(name)
        ours.setLevel(level)
        ours.addHandler(handler)
        ours.propagate = False
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"streamrec-worker: bad configuration: {exc}", file=sys.stderr)
        return 2
    log.info("settings: %s", settings.redacted())
    for warning in settings.warnings():
        log.warning("settings: %s", warning)
    # One worker per state folder, checked before anything connects: a second worker on the same
    # folder used to join the group and die ~40 s later on RocksDB's LOCK, naming no setting.
    try:
        state_lock.acquire(settings.state_dir)  # held (the descriptor stays open) until the process ends
    except state_lock.StateDirUnusable as exc:  # in use by another worker, or not writable
        print(f"streamrec-worker: {exc}", file=sys.stderr)
        return 2
    try:
        kafka_ssl_context(settings)  # a CA or client certificate that does not load stops the start here
        worker = Worker(settings)
    except SettingsError as exc:
        print(f"streamrec-worker: bad configuration: {exc}", file=sys.stderr)
        log.error("bad configuration: %s", exc)
        return 2
    # Verify the model before connecting to anything: a missing or refused version ends the
    # process at once (exit 2, the message names STREAMREC_MODEL_ROOT) instead of after faust
    # started, joined the group and crashed with a traceback.
    try:
        worker._preloaded = worker._load_latest()
    except SystemExit as exc:
        log.error("%s", exc)
        print(f"streamrec-worker: {exc}", file=sys.stderr)
        return 2
    problem = missing_versions(settings.variants, settings.model_path) or check_redis_credentials(settings)
    if problem:
        log.error("%s", problem)
        print(f"streamrec-worker: bad configuration: {problem}", file=sys.stderr)
        return 2
    sys.argv = [sys.argv[0], "worker", "-l", os.environ.get("STREAMREC_FAUST_LOG_LEVEL", "warn"), "--without-web"]
    worker.app.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
