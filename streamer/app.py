"""The worker process: a faust-streaming app (aiokafka driver) wiring the pipeline to Kafka and Redis.

* ``events``: micro-batches handed over by the consumer's fetch loop (``faust_compat.BatchSink``:
  at most STREAMREC_MAX_BATCH events or STREAMREC_MAX_WAIT_MS), runs ``Pipeline.process`` and writes its results; events are acked (and
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
import contextlib
import gc
import logging
import os
import sys
import time
from pathlib import Path

import faust

from schemas import DeadLetter, ValidationError, decode_model_update, encode
from streamer import consumers, faust_compat, metrics, state_lock, watchdog
from streamer.dlq import bounded_dead_letter
from streamer.feeds import Feed, SideFeeds
from streamer.ingest import RawMessage, parse_item
from streamer.model import ModelBundle, ModelLoader
from streamer.pipeline import BatchResult, Pipeline
from streamer.publish import Publisher
from streamer.security import (
    check_redis_credentials,
    faust_credentials,
    kafka_client_kwargs,
    kafka_ssl_context,
    redis_client_kwargs,
)
from streamer.settings import Settings, SettingsError
from streamer.variants import missing_versions, start_variant_poller, wait_first_poll

log = logging.getLogger("streamrec.worker")


class _PartitionRecord:
    """What faust's table and RocksDB store read from the current event's message: its topic and
    partition (changelog partition, partition database)."""

    __slots__ = ("topic", "partition")

    def __init__(self, topic: str, partition: int) -> None:
        self.topic, self.partition = topic, partition


class FaustTableStore:
    """``StateStore`` over a faust Table, keyed by the events partition. faust picks the changelog
    partition *and* the RocksDB partition database from its current event, so each read and write
    first makes a record of that partition current (``faust_compat.attribute_to``)."""

    def __init__(self, table, topic: str) -> None:
        self.table = table
        self.topic = topic
        self._records: dict[int, _PartitionRecord] = {}
        self._holder = None

    def _as_current(self, partition: int) -> None:
        record = self._records.get(partition)
        if record is None:
            record = self._records[partition] = _PartitionRecord(self.topic, partition)
        self._holder = faust_compat.attribute_to(record)

    def get(self, partition: int, user_id: str) -> bytes | None:
        self._as_current(partition)  # the RocksDB store also picks the partition database from it
        return self.table.get(user_id.encode())

    def put(self, partition: int, user_id: str, value: bytes) -> None:
        self._as_current(partition)
        self.table[user_id.encode()] = value

    def delete(self, partition: int, user_id: str) -> None:
        self._as_current(partition)
        key = user_id.encode()
        if key in self.table:
            del self.table[key]


EXIT_BATCH_FAILED = 70  # EX_SOFTWARE: a batch raised; nothing of it was committed


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
        self.models = ModelLoader(settings)
        self._preloaded: ModelBundle | None = None  # verified by main() before faust starts
        self._last_seen: dict = {}  # (topic, partition) -> (offset, fingerprint) of the last event handled
        self._processing = False  # a batch in ``Pipeline.process``
        self._publishing: asyncio.Task | None = None  # the previous batch's publication (``_consume``)
        self._last_batch_end = time.monotonic()
        self.app = self._build_app()

    # ---- faust wiring ---------------------------------------------------------------------
    def _build_app(self) -> faust.App:
        s = self.s
        faust_compat.check_version()
        faust_compat.patch_fetch_wait(s.fetch_max_wait_ms)
        faust_compat.patch_recovery(s)
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
        events = app.topic(
            s.events_topic,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=s.partitions,
        )
        self.recs_topic = app.topic(s.recs_topic, key_serializer="raw", value_serializer="raw")
        self.dlq_topic = app.topic(s.dlq_topic, key_serializer="raw", value_serializer="raw")
        self.table = app.Table("user-state", default=None, key_type=bytes, value_type=bytes, partitions=s.partitions)
        self.store = FaustTableStore(self.table, s.events_topic)

        # The events topic is read in micro-batches straight from the consumer's fetch loop
        # (``faust_compat.install_batch_delivery``), not through a faust agent's per-event stream.
        self.sink = faust_compat.BatchSink(app, capacity=4 * s.max_batch)
        faust_compat.install_batch_delivery(app, events, self.sink)
        # Every commit waits until the broker acknowledged the changelog writes and the messages
        # sent for the events it covers (faust's own flush may return before: faust_compat.Deliveries).
        self.deliveries = faust_compat.install_delivery_guard(app, self._lost_write)

        @app.task
        async def on_events() -> None:
            await self._consume()

        @app.task
        async def startup() -> None:
            await self._startup()

        app.service(_Shutdown(self))
        return app

    # ---- lifecycle ------------------------------------------------------------------------
    async def _startup(self) -> None:
        import redis.asyncio as aioredis

        self.redis = aioredis.from_url(
            self.s.redis_url,
            **redis_client_kwargs(self.s),
            socket_timeout=5,
            socket_connect_timeout=5,
            health_check_interval=10,
        )
        await self.probe.start()
        bundle, self._preloaded = self._preloaded, None
        if bundle is None:
            bundle = await asyncio.get_running_loop().run_in_executor(None, self.models.load_latest)
        self.pipeline = Pipeline(self.s, bundle)
        self.publisher = Publisher(self.redis, self._send_rec, prefix=self.s.redis_prefix, ttl_s=self.s.redis_ttl_s)
        # runtime A/B split from Redis; the versions it names are loaded with ``ModelLoader.load`` (streamer.variants)
        self._variant_poller = start_variant_poller(self.redis, self.pipeline, self.s, load=self.models.load)
        log.info(
            "serving model %s (%s on %s), %d catalog items",
            bundle.version,
            bundle.ranker_file,
            bundle.provider,
            len(self.pipeline.index),
        )
        self.feeds = self._side_feeds()
        self._spawn(self.feeds.run())
        self._consumer_handle = consumers.FaustConsumerHandle(self.app.consumer, [self.s.events_topic])
        self._watchdog = None
        # The lost-log watchdog (streamer/watchdog.py) exists for a memory-only broker that loses
        # its logs on restart: wired only when STREAMREC_LOST_LOG_CHECK_S > 0 (the embedded stack).
        if self.s.lost_log_check_s > 0:
            self._record_probe = watchdog.RecordProbe(self.s.kafka_bootstrap, **kafka_client_kwargs(self.s))
            view = watchdog.FaustLogView(self._consumer_handle, last_seen=self._last_seen, probe=self._record_probe)
            self._watchdog = watchdog.start(view, self.s.lost_log_check_s)
        for task in (self._variant_poller, self._watchdog):
            if task is not None:
                self._spawn(task)
        self._spawn(self._lag_monitor())
        await wait_first_poll(self._variant_poller)  # the split's versions loaded before the first batch
        self.ready.set()
        await self.feeds.wait_positioned()  # /readyz: the catalog and model-updates feeds hold positions
        quiet_root_logger()
        settle_heap()
        self.probe.ready = True

    async def _send_rec(self, key: bytes, value: bytes) -> None:
        self.deliveries.track(await self.recs_topic.send(key=key, value=value))

    # ---- the hot path -----------------------------------------------------------------------
    @property
    def _in_batch(self) -> bool:
        """For the stalled-partition check: a busy agent (a batch processing or publishing, e.g.
        retrying through a Redis outage) is never "stalled"."""
        return self._processing or (self._publishing is not None and not self._publishing.done())

    async def _consume(self) -> None:
        """Micro-batches of at most STREAMREC_MAX_BATCH records (or what arrived within
        STREAMREC_MAX_WAIT_MS), each acked only after its lists reached Redis and the producer.

        Two batches deep on a backlog: when a full batch is already waiting, batch n+1 is
        processed (state, candidates, ranker: CPU on this thread and the ranker's) while batch n's
        results are published (Redis round trip, producer hand-over: waits, and CPU that fills the
        waits for the ranker of n+1) by ``_publish_and_ack`` in a task of its own; otherwise (the
        worker keeps up) batch n is published before the next is taken, for its latency. Publications run strictly in batch order (a user's list of batch n is written
        before that of n+1, an ``erase_user`` after the list before it), at most one while the next
        batch is processed; each batch is acked after its own publication, so acks stay in order.
        A failure of either stage ends the process without committing (``_fail``: exit 70), so
        nothing of the batches in flight is acked.
        """
        await self.ready.wait()
        try:
            while True:
                batch = await self.sink.take(self.s.max_batch, self.s.max_wait_ms / 1000)
                self._processing = True
                try:
                    result = await self._process(batch)
                except Exception as exc:
                    await self._fail(exc)
                    raise
                finally:
                    self._processing = False
                    self._last_batch_end = time.monotonic()
                if self._publishing is not None:
                    await self._publishing  # batch n's lists first; it acked its records itself
                self._publishing = asyncio.ensure_future(self._publish_and_ack(batch, result))
                if len(self.sink) < self.s.max_batch:
                    # Keeping up (no full batch waiting): publish before taking the next, as its
                    # processing would delay this one's lists (measured: p50 +13 ms, p95 +40 ms
                    # at 2,000 events/s). Overlap only pays, and only runs, on a backlog.
                    await self._publishing
        finally:
            # stopped (cancelled): a publication still running is cancelled with the agent, its
            # batch unacked and so redelivered, as a batch cancelled mid-way always was
            if self._publishing is not None and not self._publishing.done():
                self._publishing.cancel()

    async def _process(self, batch) -> BatchResult:
        """The pipeline's part of a batch: state, candidates, ranking, lists (under ``lock``, so
        model swaps and catalog updates fall between batches)."""
        msgs = []
        last = {}  # the last record per partition, for the lost-log watchdog's replaced-log check
        for m in batch:
            msgs.append(RawMessage(m.topic, m.partition, m.offset, m.key, m.value, int(m.timestamp * 1000)))
            last[(m.topic, m.partition)] = m
        for key, m in last.items() if self._record_probe is not None else ():
            self._last_seen[key] = (m.offset, watchdog.fingerprint(round(m.timestamp * 1000), m.key, m.value))
        async with self.lock:
            return await self.pipeline.process(msgs, self.store)

    async def _publish_and_ack(self, batch, result: BatchResult) -> None:
        """Publish a processed batch, then ack its records; a failure ends the process uncommitted."""
        try:
            await self._publish(result)
        except Exception as exc:
            await self._fail(exc)
            raise
        finally:
            self._last_batch_end = time.monotonic()
        ack = self.app.consumer.ack
        for m in batch:
            ack(m)

    async def _publish(self, result: BatchResult) -> None:
        """Dead letters, erasures, then the lists and the batch's A/B counters (one Redis round
        trip) and the lists to the producer."""
        for dl in result.dead_letters:
            await self._send_dead_letter(dl)
        for user_id in result.erased:
            await self.publisher.erase(user_id)
        if result.recs:
            t0 = time.perf_counter()
            # the lists, and the per-variant online metrics for `streamrec-report` in the same round trip
            await self.publisher.publish(result.recs, result.stats, self.s.redis_meta_prefix)
            metrics.STAGE.labels("publish").observe(time.perf_counter() - t0)
            wall = time.time() * 1000
            for rec in result.recs:
                metrics.LISTS.labels(rec.variant).inc()
                metrics.LATENCY.observe(max(wall - result.trigger_ts[rec.user_id], 0) / 1000)

    async def _fail(self, exc: BaseException) -> None:
        """A batch could not be processed: end the process at once with exit code 70.

        faust only logs a crashed agent or task; measured in tests/integration/test_fuzz.py (a dead
        letter over the producer's size limit), the process then stayed up and ready while
        consuming nothing: a silent stall. A hard exit rather than a graceful stop, because faust
        commits acked offsets on stop (its ``take_events``, used before, even acked a failed
        batch in a ``finally``). A hard exit
        commits nothing: the supervisor restarts the worker, everything after the last commit is
        redelivered, and the idempotent state makes the redelivery harmless.
        """
        self._exit_uncommitted("event batch failed", exc)

    def _lost_write(self, exc: BaseException) -> None:
        """The producer gave up on a changelog write or a sent message (``faust_compat.Deliveries``):
        the events it belongs to must not be committed, so end the process as for a failed batch."""
        self._exit_uncommitted("a produced message was not delivered", exc)

    def _exit_uncommitted(self, what: str, exc: BaseException) -> None:
        log.critical(
            "%s, exiting (code %d) without committing it: %s: %s", what, EXIT_BATCH_FAILED, type(exc).__name__, exc
        )
        self.probe.ready = False
        for handler in logging.getLogger().handlers + log.handlers:
            with contextlib.suppress(Exception):
                handler.flush()
        os._exit(EXIT_BATCH_FAILED)

    async def _send_dead_letter(self, dl: DeadLetter) -> None:
        sent = await self.dlq_topic.send(key=str(dl.offset).encode(), value=encode(bounded_dead_letter(dl)))
        self.deliveries.track(sent)

    # ---- side feeds -----------------------------------------------------------------------
    def _spawn(self, coro_or_task) -> asyncio.Task:
        """Keep a side feed or monitor as a task, so ``close`` can stop it (and its consumer)."""
        task = asyncio.ensure_future(coro_or_task)
        self._feeds.add(task)
        task.add_done_callback(self._feeds.discard)
        return task

    def _side_feeds(self) -> SideFeeds:
        s = self.s
        return SideFeeds(
            s,
            [
                # At least 100 ms between empty fetches: with the embedded stack's 10 ms (its broker does
                # not answer a waiting fetch early) side-feed fetches were 6 % of the event loop's py-spy
                # samples, 1 % after (BENCHMARKS.md, issue 15 step 2).
                Feed(
                    "items",
                    s.items_topic,
                    from_start=True,
                    fetch_max_wait_ms=max(s.fetch_max_wait_ms, 100),
                    handle=self._on_items,
                ),
                Feed(
                    "model-updates",
                    s.model_updates_topic,
                    from_start=False,
                    fetch_max_wait_ms=max(s.fetch_max_wait_ms, 100),
                    handle=self._on_model_updates,
                ),
            ],
        )

    async def _on_items(self, msgs) -> None:
        """Catalog records: validated (bad ones to the DLQ), encoded off the event loop, applied
        between batches."""
        items, dead = [], []
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

    async def _on_model_updates(self, msgs) -> None:
        """Each update verified, smoke-tested and switched in between batches; a bad one refused."""
        for m in msgs:
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

    async def swap(self, path: Path, manifest_sha256: str | None = None) -> bool:
        """Load ``path``; on success switch to it between batches. Returns whether it switched."""
        return await self.models.swap(self.pipeline, self.lock, path, manifest_sha256)

    async def _lag_monitor(self) -> None:
        """Every 5 s: the lag gauge; and a partition faust stopped delivering is sought back to
        its committed offset (``consumers.StallDetector``), with one WARNING line."""
        consumer = self.app.consumer
        stalls = consumers.StallDetector(after_s=30.0)
        while True:
            await asyncio.sleep(5)
            lag = 0
            now = time.monotonic()
            idle_s = 0.0 if self._in_batch else now - self._last_batch_end
            mine = [tp for tp in consumer.assignment() if tp.topic == self.s.events_topic]
            stalls.retain(mine)
            for tp in mine:
                hw = consumer.highwater(tp)
                pos = faust_compat.read_offset(consumer, tp)  # last offset handed over for processing
                if hw is not None and pos is not None:
                    lag += max(hw - pos - 1, 0)
                if not stalls.observe(tp, pos, hw, idle_s, now):
                    continue
                flags = faust_compat.delivery_flags(consumer, tp)
                if getattr(self.app, "rebalancing", False) or flags["paused"]:
                    continue  # paused on purpose (recovery, a rewind in progress): not a stall
                log.warning(
                    "partition %s:%d stalled: read offset %s, high watermark %s, no progress and an idle agent "
                    "for %.0f s (faust %s): seeking it back to the group's committed offset",
                    tp.topic,
                    tp.partition,
                    pos,
                    hw,
                    stalls.after_s,
                    " ".join(f"{k}={v}" for k, v in flags.items()),
                )
                try:
                    await self._consumer_handle.rewind(tp.topic, tp.partition, to_committed=True)
                    metrics.STALL_RESEEKS.labels(tp.topic).inc()
                except Exception as exc:  # noqa: BLE001 - broker away: tried again after another period
                    log.warning(
                        "partition %s:%d: reseek failed: %s: %s", tp.topic, tp.partition, type(exc).__name__, exc
                    )
            metrics.LAG.set(lag)

    async def close(self) -> None:
        await cancel_all(list(self._feeds))  # each feed stops its consumer in ``finally``
        if self._record_probe is not None:
            await (
                self._record_probe.close()
            )  # the lost-log watchdog's consumer (left open: "Unclosed AIOKafkaConsumer")
        await self.probe.stop()
        if self.redis is not None:
            await self.redis.aclose()


# Young-generation threshold of the cyclic garbage collector (CPython's default: 700). A batch
# allocates ~10^5 short-lived objects (decoded events, candidate arrays' wrappers, list items);
# with 700 the collector ran ~3 young collections per batch (BENCHMARKS.md, issue 15 step 5).
GC_YOUNG_THRESHOLD = 10_000


def settle_heap() -> None:
    """Once started (model, item index, faust and its clients loaded): collect, then move every
    object alive now to the collector's permanent generation (``gc.freeze``), so the full
    collections a long run still makes no longer walk the model and the index each time
    (measured 85 ms each in a draining worker before), and collect the young generation every
    ``GC_YOUNG_THRESHOLD`` allocations instead of 700. Neither changes what the worker computes."""
    gc.collect()
    gc.freeze()
    _young, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def quiet_root_logger(root: logging.Logger | None = None) -> None:
    """Undo what faust's worker does to the root logger for its start-up spinner: at a log level
    of WARN or above (the worker's default, STREAMREC_FAUST_LOG_LEVEL=warn) it adds a
    ``SpinnerHandler`` at DEBUG and sets the root logger to DEBUG, so every ``log.debug`` of faust
    and aiokafka on the hot path (one per message sent, one per response read) built a
    ``LogRecord`` and ran the handlers for nothing (py-spy of a draining worker: ~2 % of the event
    loop's thread). After start-up the spinner is finished: its handler goes, and the root logger
    is set to the lowest level its remaining handlers print. Our own loggers (``streamrec``,
    ``streamer``) have their own handler and level and are not touched; a root handler without a
    level (one that prints everything) leaves the root as it is."""
    root = logging.getLogger() if root is None else root
    for handler in list(root.handlers):
        if type(handler).__name__ == "SpinnerHandler":
            root.removeHandler(handler)
    levels = [h.level for h in root.handlers]
    if levels and logging.NOTSET not in levels:
        root.setLevel(max(root.level, min(levels)))


async def cancel_all(tasks: list[asyncio.Task], timeout_s: float = 10.0, every_s: float = 0.5) -> None:
    """Cancel ``tasks`` and wait for them, cancelling again every ``every_s`` a task that is still
    running: a cancellation can be swallowed on its way (measured: the A/B poller's Redis read
    turned one into a caught error, the poller polled on, and the worker hung on SIGTERM until
    it was killed, 3 runs in 4 of tests/integration/test_features.py). Gives up after
    ``timeout_s`` with one WARNING naming what still runs, so shutdown always completes."""
    pending = {t for t in tasks if not t.done()}
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        for task in pending:
            task.cancel()
        _done, pending = await asyncio.wait(pending, timeout=every_s)
    if pending:
        log.warning(
            "shutdown: still running after %.0f s, left behind: %s",
            timeout_s,
            ", ".join(repr(t.get_coro()) for t in pending),
        )


class _Shutdown(faust.Service):
    """Closes Redis and the probe server after faust has stopped agents, committed and flushed."""

    def __init__(self, worker: Worker, **kw) -> None:
        super().__init__(**kw)
        self.worker = worker

    async def on_stop(self) -> None:
        await self.worker.close()


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
        worker._preloaded = worker.models.load_latest()
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
