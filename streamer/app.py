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
import dataclasses
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
from streamer import metrics, watchdog
from streamer.attribution import write_stats
from streamer.ingest import RawMessage, parse_item
from streamer.model import ModelBundle, ModelRefused, latest_version_dir
from streamer.pipeline import Pipeline
from streamer.publish import Publisher
from streamer.security import faust_credentials, kafka_client_kwargs, kafka_ssl_context, redis_client_kwargs
from streamer.settings import Settings, SettingsError
from streamer.variants import start_variant_poller

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


def _patch_recovery_after_broker_reset() -> None:
    """Recover, instead of crashing, when a changelog partition is shorter than the local state.

    The local RocksDB store remembers the last changelog offset it saw per partition. When the
    broker lost the changelog (the embedded Tansu broker keeps everything in memory, so a broker
    restart empties every topic), that offset is beyond the changelog's end and faust raised
    ``ConsistencyError`` during recovery: the worker crashed on the rebalance after the broker
    restart and on every start after it (a crash loop until the state folder was deleted;
    measured in tests/integration/test_faults.py). Such a partition is now read from the
    changelog's beginning instead, and the offsets move back in line with the broker on the next
    changelog write. Nothing changes while local offsets are consistent (the normal case, always
    on a broker that keeps its data): faust's own check stays enabled for everything else.
    """
    from faust.tables.recovery import Recovery

    original = getattr(Recovery._build_offsets, "__wrapped__", Recovery._build_offsets)

    async def build_offsets(self, consumer, tps, destination, title):
        ahead = [tp for tp in tps if destination.get(tp) is not None and destination[tp] >= 0]
        if ahead:
            highwaters = await consumer.highwaters(*ahead)
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
    return dataclasses.replace(dl, **cut, value_utf8=None, reason=dl.reason[: 2048 - len(note)] + note)


class Worker:
    """Owns the faust app, the pipeline, the Redis client and the side feeds."""

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.pipeline: Pipeline | None = None
        self.ready = asyncio.Event()
        self.lock = asyncio.Lock()  # held while a batch runs; model swaps and catalog updates wait for it
        self.probe = metrics.ProbeServer(settings.metrics_port)
        self.redis = None
        self._preloaded: ModelBundle | None = None  # verified by main() before faust starts
        self._last_seen: dict = {}  # (topic, partition) -> (offset, fingerprint) of the last event handled
        self.app = self._build_app()

    # ---- faust wiring ---------------------------------------------------------------------
    def _build_app(self) -> faust.App:
        s = self.s
        _patch_fetch_wait(s.fetch_max_wait_ms)
        _patch_recovery_after_broker_reset()
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
                try:
                    await self._handle(batch)
                except Exception as exc:
                    await self._fail(exc)
                    raise

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
        self._variant_poller = start_variant_poller(self.redis, self.pipeline, self.s)  # runtime A/B split from Redis
        log.info("serving model %s (%s on %s), %d catalog items", bundle.version, bundle.ranker_file,
                 bundle.provider, len(self.pipeline.index))
        asyncio.ensure_future(self._items_feed())
        asyncio.ensure_future(self._model_feed())
        asyncio.ensure_future(self._lag_monitor())
        # a partition whose log the broker lost (memory-only broker restarted) is rewound instead
        # of waiting for ever past the new log's end: see streamer/watchdog.py
        probe = watchdog.RecordProbe(self.s.kafka_bootstrap, **kafka_client_kwargs(self.s))
        self._watchdog = watchdog.start(watchdog.FaustConsumerHandle(self.app.consumer, [self.s.events_topic],
                                                                     last_seen=self._last_seen, probe=probe),
                                        self.s.lost_log_check_s)
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
        """A batch could not be processed: stop the whole worker with a non-zero exit.

        faust only marks a crashed agent dead; measured in tests/integration/test_fuzz.py (a dead
        letter over the producer's size limit), the process then stayed up and ready while
        consuming nothing: a silent stall. Exiting instead makes the fault visible and lets the
        supervisor restart the worker; the batch was not acked, so it is redelivered, and the
        idempotent state makes the redelivery harmless.
        """
        log.critical("event batch failed, stopping the worker: %s: %s", type(exc).__name__, exc)
        self.probe.ready = False
        await self.app.crash(exc)

    async def _send_dead_letter(self, dl: DeadLetter) -> None:
        await self.dlq_topic.send(key=str(dl.offset).encode(), value=encode(bounded_dead_letter(dl)))

    # ---- side feeds -----------------------------------------------------------------------
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
            asyncio.ensure_future(self._items_feed())
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
            asyncio.ensure_future(self._model_feed())
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
        consumer = self.app.consumer
        while True:
            await asyncio.sleep(5)
            lag = 0
            for tp in consumer.assignment():
                if tp.topic != self.s.events_topic:
                    continue
                hw = consumer.highwater(tp)
                pos = consumer._read_offset.get(tp)  # last offset handed to the stream
                if hw is not None and pos is not None:
                    lag += max(hw - pos - 1, 0)
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
    problem = check_redis_credentials(settings)
    if problem:
        log.error("%s", problem)
        print(f"streamrec-worker: bad configuration: {problem}", file=sys.stderr)
        return 2
    sys.argv = [sys.argv[0], "worker", "-l", os.environ.get("STREAMREC_FAUST_LOG_LEVEL", "warn"), "--without-web"]
    worker.app.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
