"""The worker's consumers on any broker (streamer/consumers.py), without a broker: the faust
consumer's rewind and the stall detector."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from streamer.consumers import FaustConsumerHandle, StallDetector
from streamer.watchdog import FaustLogView


class _FakeThread:
    async def call_thread(self, fn, *args):
        return await fn(*args)


class _FakeAio:
    def __init__(self, position: int) -> None:
        self.pos = position

    async def position(self, tp):
        return self.pos


def test_rewind_waits_until_faust_delivered_every_fetched_record():
    """A record of the old position delivered after the seek would make faust drop the re-read:
    the rewind waits until faust's read offset caught up with the fetch position."""
    ftp = ("events", 0)
    consumer = SimpleNamespace(_thread=_FakeThread(), _read_offset={ftp: 5})
    handle = FaustConsumerHandle.__new__(FaustConsumerHandle)
    handle.consumer, handle.drain_timeout_s, handle.settle_s = consumer, 5.0, 1.0

    async def scenario():
        async def deliver():  # faust's fetch loop handing out offsets 6..9, slowly
            for off in range(6, 10):
                await asyncio.sleep(0.15)
                consumer._read_offset[ftp] = off

        task = asyncio.ensure_future(deliver())
        t0 = asyncio.get_running_loop().time()
        await handle._wait_delivered(_FakeAio(10), "tp", ftp)
        waited = asyncio.get_running_loop().time() - t0
        await task
        return waited

    waited = asyncio.run(scenario())
    assert consumer._read_offset[ftp] == 9 and waited >= 0.5  # returned only after offset 9 was delivered

    # a read offset that stands still (Tansu: position past the last offset + 1) settles, no hang
    consumer._read_offset[ftp] = 2

    async def timed():
        t0 = asyncio.get_running_loop().time()
        await handle._wait_delivered(_FakeAio(10), SimpleNamespace(topic="events", partition=0), ftp)
        return asyncio.get_running_loop().time() - t0

    assert 1.0 <= asyncio.run(timed()) < 2.5


# ---- StallDetector: a partition faust stopped delivering -----------------------------------------


def test_stall_needs_no_progress_behind_the_end_and_an_idle_agent():
    d = StallDetector(after_s=30)
    key = ("events", 0)
    assert d.observe(key, 171, 710, idle_s=0, now=0) is False  # first sight
    assert d.observe(key, 171, 710, idle_s=29, now=29) is False  # not long enough
    assert d.observe(key, 171, 710, idle_s=31, now=31) is True  # stalled
    assert d.observe(key, 171, 710, idle_s=40, now=40) is False  # at most once per period
    assert d.observe(key, 171, 710, idle_s=62, now=62) is True


def test_no_stall_when_busy_caught_up_or_moving():
    d = StallDetector(after_s=30)
    busy, done, moving = ("events", 0), ("events", 1), ("events", 2)
    for now in (0, 31, 62, 93):
        assert d.observe(busy, 171, 710, idle_s=0, now=now) is False  # a long batch (Redis outage) is not a stall
        assert d.observe(done, 709, 710, idle_s=now, now=now) is False  # caught up: nothing to deliver
        assert d.observe(moving, 171 + now, 710, idle_s=now, now=now) is False  # read offset moves
    assert d.observe(("events", 3), None, None, idle_s=99, now=0) is False
    assert d.observe(("events", 3), None, None, idle_s=99, now=99) is False  # high watermark unknown


def test_stall_forgets_revoked_partitions():
    d = StallDetector(after_s=30)
    d.observe(("events", 0), 5, 50, idle_s=0, now=0)
    d.retain([("events", 1)])
    assert d.observe(("events", 0), 5, 50, idle_s=31, now=31) is False  # seen afresh after reassignment


class _RewindAio(_FakeAio):
    """The aiokafka consumer behind faust's, recording the seeks."""

    def __init__(self, position: int, committed: int | None) -> None:
        super().__init__(position)
        self._committed, self.calls = committed, []

    async def committed(self, tp):
        return self._committed

    def seek(self, tp, offset):
        self.calls.append(("seek", tp.partition, offset))

    async def seek_to_beginning(self, tp):
        self.calls.append(("seek_to_beginning", tp.partition))

    async def beginning_offsets(self, tps):
        return {tp: 0 for tp in tps}

    async def commit(self, offsets):
        self.calls.append(("commit", {tp.partition: o for tp, o in offsets.items()}))


def _faust_consumer(aio):
    from faust.types import TP

    ftp = TP("events", 0)
    thread = _FakeThread()
    thread._ensure_consumer = lambda: aio
    consumer = SimpleNamespace(
        _thread=thread,
        paused=[],
        pause_partitions=lambda tps: consumer.paused.extend(tps),
        resume_partitions=lambda tps: consumer.paused.clear(),
        **{name: {ftp: 7} for name in ("_read_offset", "_committed_offset", "_acked", "_acked_index", "_gap")},
    )
    consumer._read_offset[ftp] = 9  # everything fetched was delivered: position 10
    return consumer, ftp


def test_stall_reseek_goes_to_the_committed_offset_and_resets_faust_and_the_lost_log_memory():
    aio = _RewindAio(10, committed=4)
    consumer, ftp = _faust_consumer(aio)
    handle = FaustConsumerHandle(consumer, ["events"])
    handle.drain_s = 0
    view = FaustLogView(handle, last_seen={("events", 0): (9, 1), ("events", 1): (3, 2)})
    view.anchor[("events", 0)] = (8, 5)
    asyncio.run(handle.rewind("events", 0, to_committed=True))
    assert aio.calls == [("seek", 0, 4)]
    assert all(ftp not in getattr(consumer, t) for t in ("_read_offset", "_committed_offset", "_acked", "_gap"))
    assert view.last_seen == {("events", 1): (3, 2)} and view.anchor == {}  # only the rewound partition
    assert consumer.paused == []  # resumed


def test_rewind_without_a_commit_reads_the_log_from_its_beginning_and_commits_that():
    aio = _RewindAio(10, committed=None)
    consumer, _ = _faust_consumer(aio)
    handle = FaustConsumerHandle(consumer, ["events"])
    handle.drain_s = 0
    asyncio.run(handle.rewind("events", 0, to_committed=True))
    assert aio.calls == [("seek_to_beginning", 0), ("commit", {0: 0})]
