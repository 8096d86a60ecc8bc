"""Lost-log watchdog: find consumers whose position lies beyond a log the broker lost, and rewind them.

Embedded broker only: wired when ``STREAMREC_LOST_LOG_CHECK_S`` > 0, which the embedded stack
(``devtools.stack``) sets and production leaves at 0. What runs on every broker (the consumer
handles and their rewind, the stall reseek, fetch high watermarks) is in ``streamer.consumers``.

Apache Kafka answers a fetch past a log's end with OFFSET_OUT_OF_RANGE and the consumer resets
itself (``auto_offset_reset``). The embedded broker (Tansu, memory storage) loses every topic,
log and committed offset when it restarts and then answers such a fetch with *nothing*: a
consumer whose position was N before the restart keeps fetching at N in the new, shorter log and
never reads the events produced after the restart (measured in
``tests/integration/test_faults.py``: the running worker stalled in 1 of 3 runs, because a commit
of its pre-restart positions landed on the new broker while it rejoined and it resumed there).

The end offset alone is no proof: Tansu answers ListOffsets(latest) with the last *batch's* base
offset + 1, so after batched produces a healthy consumer's position is routinely above it. Three
signals are proof, and any one triggers a rewind:

* ``beyond the log``: the position is above the high watermark the broker itself reported in its
  latest *fetch* response for that partition (Tansu reports that one correctly: measured 50 for
  a 50-record batch whose ListOffsets answer was 1). On a healthy log, position <= high
  watermark always holds, because the consumer only advances over records that a fetch response
  returned together with a high watermark above them. Required on ``confirmations`` consecutive
  checks, so a high watermark read in the middle of an update never triggers it.
* ``record replaced``: the record this process consumed last (offset, timestamp, contents) is no
  longer in the log at its offset, or another record is (``RecordProbe``: a group-less consumer
  reads that one record back). Kafka never rewrites a record, so this proves the log was replaced,
  and it catches the case where the new log already grew past the old position and the consumer
  silently skips the start of the new log (measured: 70 of 840 events after a broker restart).
* ``committed offset gone``: the consumer group's committed offset for the partition vanished
  (the broker answers "no commit") although this process saw one before, the position did not
  move back since (the consumer did not reset itself), and the position is above the end
  offset. Brokers do not forget the commits of a live group; a broker that lost its state does.
  This catches the loss early, before the worker commits its stale position into the new log.

The rewind is a seek to the beginning of the partition (the new log): events are re-read, which
idempotent state (the dedup window of event ids per user) makes harmless. Each one is logged as
one ERROR line naming topic, partition, position, high watermark and end offset, and counted in
``streamrec_lost_log_resets_total{topic,reason}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable, Optional

from streamer import metrics
from streamer.consumers import AIOKafkaHandle, FaustConsumerHandle

log = logging.getLogger("streamrec.watchdog")

BEYOND_LOG = "beyond_log"
COMMITTED_GONE = "committed_gone"
REPLACED = "record_replaced"


def fingerprint(timestamp_ms: int | None, key: bytes | None, value: bytes | None) -> int:
    """A record's identity for the replaced-log check: timestamp and contents."""
    import zlib

    return zlib.crc32(value or b"", zlib.crc32(key or b"", (timestamp_ms or 0) & 0xFFFFFFFF))


@dataclass(frozen=True)
class Observation:
    """One partition as one check saw it. ``committed_known`` is False where the check could not
    read the group's committed offset (no group, or the request failed)."""

    topic: str
    partition: int
    position: Optional[int]
    highwater: Optional[int]  # from the latest fetch response of this consumer
    end: Optional[int]  # ListOffsets(latest)
    committed: Optional[int] = None
    committed_known: bool = False
    replaced: Optional[bool] = None  # the record this process consumed last is gone or different

    @property
    def key(self) -> tuple[str, int]:
        return (self.topic, self.partition)


class LostLogDetector:
    """The decision, free of Kafka: feed it one ``Observation`` per partition per check; it answers
    the reason to rewind that partition, or None."""

    def __init__(self, confirmations: int = 2) -> None:
        self.confirmations = max(1, confirmations)
        self._strikes: dict[tuple[str, int], int] = {}
        self._seen_commit: dict[tuple[str, int], int] = {}  # committed offset seen on this broker
        self._last_position: dict[tuple[str, int], int] = {}

    def forget(self, key: tuple[str, int]) -> None:
        self._strikes.pop(key, None)
        self._seen_commit.pop(key, None)
        self._last_position.pop(key, None)

    def retain(self, keys: Iterable[tuple[str, int]]) -> None:
        """Drop what is known about partitions no longer assigned."""
        keep = set(keys)
        for table in (self._strikes, self._seen_commit, self._last_position):
            for k in [k for k in table if k not in keep]:
                del table[k]

    def observe(self, obs: Observation) -> Optional[str]:
        key, pos = obs.key, obs.position
        if pos is None:
            self._strikes.pop(key, None)
            return None
        last = self._last_position.get(key)
        if last is not None and pos < last:
            # the consumer moved back by itself (rebalance, seek to committed, reset): whatever it
            # committed before is no evidence about the log it reads now
            self._seen_commit.pop(key, None)
        self._last_position[key] = pos
        reason = None
        if obs.replaced:
            reason = REPLACED
        elif obs.committed_known:
            if obs.committed is None:
                if key in self._seen_commit and obs.end is not None and pos > obs.end:
                    reason = COMMITTED_GONE
            else:
                self._seen_commit[key] = obs.committed
        if reason is None:
            if obs.highwater is not None and obs.highwater >= 0 and pos > obs.highwater:
                self._strikes[key] = self._strikes.get(key, 0) + 1
                if self._strikes[key] >= self.confirmations:
                    reason = BEYOND_LOG
            else:
                self._strikes.pop(key, None)
        if reason is not None:
            self.forget(key)
        return reason


async def _collect(consumer, tps: list, with_committed: bool, position_timeout: float) -> list[Observation]:
    """Runs on the loop that owns ``consumer`` (an aiokafka ``AIOKafkaConsumer``)."""
    ends: dict = {}
    try:
        ends = await consumer.end_offsets(tps)
    except Exception as exc:  # noqa: BLE001 - broker away: no decision this round
        log.debug("watchdog: end offsets unavailable: %s", exc)
    committed: dict = {}
    known = False
    if with_committed:
        try:
            committed = await asyncio.wait_for(consumer._coordinator.fetch_committed_offsets(tps), position_timeout)
            known = True
        except Exception as exc:  # noqa: BLE001 - no coordinator right now
            log.debug("watchdog: committed offsets unavailable: %s", exc)
    out = []
    for tp in tps:
        try:
            pos = await asyncio.wait_for(consumer.position(tp), position_timeout)
        except Exception:  # noqa: BLE001 - not assigned any more, or position being reset
            pos = None
        hw = consumer.highwater(tp)
        om = committed.get(tp)
        out.append(
            Observation(
                tp.topic,
                tp.partition,
                pos,
                hw,
                ends.get(tp),
                committed=(om.offset if om is not None and om.offset >= 0 else None),
                committed_known=known,
            )
        )
    return out


class RecordProbe:
    """Reads single records back from the broker with its own group-less consumer, to tell whether
    the log still holds, at the same offset, the record this process consumed last.

    Kafka never changes a record once written; a broker that lost the partition and got new
    events answers with nothing at that offset (the new log is shorter) or with another record
    (other timestamp and contents). Either proves the log was replaced: the consumer's position
    then points into the new log at an arbitrary place, and everything before it in the new log
    would be skipped (measured: 70 of 840 events after a broker restart, in 2 of 2 runs).
    """

    def __init__(self, bootstrap: str, timeout_s: float = 1.5, **client_kwargs: Any) -> None:
        self.bootstrap = bootstrap
        self.timeout_s = timeout_s
        self.client_kwargs = client_kwargs
        self._consumer = None

    async def _ensure(self):
        if self._consumer is None:
            from aiokafka import AIOKafkaConsumer

            c = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap,
                enable_auto_commit=False,
                auto_offset_reset="none",
                fetch_max_wait_ms=100,
                max_partition_fetch_bytes=65536,
                **self.client_kwargs,
            )
            await c.start()
            self._consumer = c
        return self._consumer

    async def close(self) -> None:
        if self._consumer is not None:
            c, self._consumer = self._consumer, None
            await c.stop()

    @staticmethod
    def _response_ts(consumer, tp) -> Optional[int]:
        try:
            return consumer._subscription.subscription.assignment.state_value(tp).timestamp
        except Exception:  # noqa: BLE001 - internal attribute: without it, high watermarks are not used
            return None

    async def check(self, wanted: dict[tuple[str, int], tuple[int, int]]) -> dict[tuple[str, int], Optional[bool]]:
        """{(topic, partition): (offset, fingerprint)} -> True (same record there), False (gone or
        different), None (no answer in time: no verdict)."""
        import time

        from aiokafka import TopicPartition

        try:
            c = await self._ensure()
        except Exception as exc:  # noqa: BLE001
            log.debug("watchdog probe: cannot start: %s", exc)
            return {}
        tps = {key: TopicPartition(*key) for key in wanted}
        try:
            c.assign(list(tps.values()))
            before = {}
            for key, tp in tps.items():
                c.seek(tp, wanted[key][0])
                before[key] = self._response_ts(c, tp)
            verdict: dict[tuple[str, int], Optional[bool]] = {key: None for key in wanted}
            deadline = time.monotonic() + self.timeout_s
            while time.monotonic() < deadline and any(v is None for v in verdict.values()):
                batch = await c.getmany(timeout_ms=100, max_records=64)
                for key, tp in tps.items():
                    if verdict[key] is not None:
                        continue
                    offset, fp = wanted[key]
                    for r in batch.get(tp, []):
                        if r.offset == offset:
                            verdict[key] = fingerprint(r.timestamp, r.key, r.value) == fp
                            break
                        if r.offset > offset:  # no record at that offset (compaction?): not evidence of a loss
                            verdict[key] = True
                            break
                    if verdict[key] is None:
                        ts, hw = self._response_ts(c, tp), c.highwater(tp)
                        if ts is not None and ts != before[key] and hw is not None and hw <= offset:
                            verdict[key] = False  # a fresh fetch answer: the log ends before the offset
            return verdict
        except Exception as exc:  # noqa: BLE001 - no verdict this round; start a fresh consumer next time
            log.debug("watchdog probe failed: %s: %s", type(exc).__name__, exc)
            await self.close()
            return {}
        finally:
            if self._consumer is not None:
                with contextlib.suppress(Exception):
                    self._consumer.unsubscribe()  # no background fetching between checks


class LogView:
    """What the watchdog needs from one consumer: observe its partitions, rewind one."""

    name: str

    async def observe(self) -> list[Observation]:  # pragma: no cover - interface
        raise NotImplementedError

    async def rewind(self, topic: str, partition: int) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class FaustLogView(LogView):
    """The worker's faust consumer, observed with its group's committed offsets and, given a
    ``probe``, with the replaced-record check of the last record the worker processed.

    ``last_seen``: (topic, partition) -> (offset, fingerprint) of that record, kept by the worker.
    A rewind, the watchdog's or the stall reseek's, drops what is known of the old position."""

    def __init__(self, handle: FaustConsumerHandle, last_seen: dict | None = None, probe: RecordProbe | None = None):
        self.handle = handle
        self.name = handle.name
        self.last_seen = last_seen if last_seen is not None else {}
        self.anchor: dict[tuple[str, int], tuple[int, int]] = {}  # last_seen entries awaiting verification
        self.probe = probe
        handle.on_rewind.append(self._forget)

    def _forget(self, topic: str, partition: int) -> None:
        self.last_seen.pop((topic, partition), None)
        self.anchor.pop((topic, partition), None)

    async def observe(self) -> list[Observation]:
        if getattr(self.handle.consumer.app, "rebalancing", False):
            # no decision while the group rebalances: faust seeks every partition to its committed
            # offset when the rebalance ends, which would undo a rewind made now (measured: a
            # rewind during the rejoin after a broker restart was overwritten by the stale
            # commit). The anchors stay, so the check after the rebalance still sees the loss.
            return []
        tps = self.handle.assigned()
        if not tps:
            return []
        obs = await self.handle.call(_collect, tps, True, self.handle.position_timeout)
        if self.probe is None:
            return obs
        keys = {o.key for o in obs}
        for k in [k for k in self.anchor if k not in keys]:
            del self.anchor[k]  # revoked
        wanted = {k: self.anchor[k] for k in keys if k in self.anchor}
        verdict = await self.probe.check(wanted) if wanted else {}
        out = []
        for o in obs:
            ok = verdict.get(o.key)
            if ok is False:
                o = Observation(
                    o.topic, o.partition, o.position, o.highwater, o.end, o.committed, o.committed_known, replaced=True
                )
            elif ok is True or o.key not in self.anchor:
                # verified (or nothing to verify yet): the next check verifies the latest record
                # handled now. The anchor only moves after a verification against the live log, so
                # a record of a log the broker lost is always still anchored when it comes back.
                latest = self.last_seen.get(o.key)
                if latest is not None:
                    self.anchor[o.key] = latest
            out.append(o)
        return out

    async def rewind(self, topic: str, partition: int) -> None:
        await self.handle.rewind(topic, partition)


class FeedLogView(LogView):
    """A side feed's plain aiokafka consumer (no group: positions and high watermarks only)."""

    def __init__(self, handle: AIOKafkaHandle) -> None:
        self.handle = handle
        self.name = handle.name

    async def observe(self) -> list[Observation]:
        tps = self.handle.assigned()
        if not tps:
            return []
        return await _collect(self.handle.consumer, tps, False, self.handle.position_timeout)

    async def rewind(self, topic: str, partition: int) -> None:
        await self.handle.rewind(topic, partition)


class LostLogWatchdog:
    """Checks one consumer every ``interval_s`` seconds; rewinds partitions whose log was lost."""

    def __init__(
        self,
        handle: LogView,
        interval_s: float,
        confirmations: int = 2,
        on_rewind: Callable[[str, int], Awaitable[None] | None] | None = None,
    ) -> None:
        self.handle = handle
        self.interval_s = interval_s
        self.detector = LostLogDetector(confirmations)
        self.on_rewind = on_rewind
        self.rewinds = 0

    async def check_once(self) -> list[tuple[str, int, str]]:
        """One check; returns the (topic, partition, reason) rewound."""
        try:
            observations = await asyncio.wait_for(self.handle.observe(), self.interval_s * 2 + 5)
        except Exception as exc:  # noqa: BLE001 - broker away or rebalancing: try again later
            log.debug("watchdog (%s): check skipped: %s: %s", self.handle.name, type(exc).__name__, exc)
            return []
        self.detector.retain(o.key for o in observations)
        done = []
        for obs in observations:
            reason = self.detector.observe(obs)
            if reason is None:
                continue
            why = {
                REPLACED: "the record consumed last is gone from the broker's log or replaced by another",
                BEYOND_LOG: "the position is beyond the end of the broker's log",
                COMMITTED_GONE: "the group's committed offset vanished from the broker",
            }[reason]
            try:
                await self.handle.rewind(obs.topic, obs.partition)
            except Exception as exc:  # noqa: BLE001 - the anchor stays: seen again on the next check
                log.warning(
                    "watchdog (%s): lost log on %s:%d (reason %s) but the rewind failed, retrying at the "
                    "next check: %s: %s",
                    self.handle.name,
                    obs.topic,
                    obs.partition,
                    reason,
                    type(exc).__name__,
                    exc,
                )
                continue
            log.error(
                "lost log: %s:%d at position %s (high watermark %s, end offset %s, group committed offset %s): %s "
                "(reason %s): the broker lost this partition (restart of a memory-only broker?); %s rewound it to "
                "the beginning of the new log",
                obs.topic,
                obs.partition,
                obs.position,
                obs.highwater,
                obs.end,
                obs.committed if obs.committed_known else "n/a",
                why,
                reason,
                self.handle.name,
            )
            metrics.LOST_LOG_RESETS.labels(obs.topic, reason).inc()
            self.rewinds += 1
            if self.on_rewind is not None:
                res = self.on_rewind(obs.topic, obs.partition)
                if asyncio.iscoroutine(res):
                    await res
            done.append((obs.topic, obs.partition, reason))
        return done

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.check_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the watchdog must never die of one bad round
                log.exception("watchdog (%s): check failed", self.handle.name)


def start(handle: LogView, interval_s: float, **kw: Any) -> Optional[asyncio.Task]:
    """Start a watchdog task (None when ``interval_s`` is 0: disabled)."""
    if interval_s <= 0:
        return None
    return asyncio.ensure_future(LostLogWatchdog(handle, interval_s, **kw).run())
