"""The worker's patches of faust internals (``streamer.faust_compat``), on small fakes.

The end-to-end proofs are tests/integration/test_crash_recovery.py (SIGKILL, restart, state equal
to a clean run), test_rebalance.py and test_faults.py; these pin down the order of operations and
the hand-over those tests need, which a faust upgrade could silently undo.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from faust.tables.recovery import Recovery

from streamer.faust_compat import patch_recovery as _patch_recovery
from streamer.settings import Settings


@pytest.fixture(scope="module", autouse=True)
def patched():
    _patch_recovery(
        Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9", "REDIS_URL": "redis://127.0.0.1:6379/0"})
    )


class FakeConsumer:
    """Records the calls the recovery makes, in order; the fetcher is live throughout."""

    def __init__(self, calls: list, assignment: set) -> None:
        self.calls = calls
        self._assignment = assignment

    def assignment(self):
        return set(self._assignment)

    async def perform_seek(self):
        self.calls.append("seek")
        await asyncio.sleep(0)  # the real one awaits the consumer thread: other tasks run meanwhile

    def resume_partitions(self, tps):
        self.calls.append(("resume", frozenset(tps)))

    def resume_flow(self):
        self.calls.append("resume_flow")


def fake_recovery(calls: list) -> SimpleNamespace:
    async def nothing(*_a, **_k):
        return None

    async def wait(coro, timeout=None):
        return await coro

    consumer = FakeConsumer(calls, {("events", 0), ("events", 1), ("app-user-state-changelog", 0)})
    app = SimpleNamespace(
        consumer=consumer,
        consumer_generation_id=3,
        conf=SimpleNamespace(broker_request_timeout=5),
        on_rebalance_complete=SimpleNamespace(send=nothing),
        flow_control=SimpleNamespace(resume=lambda: calls.append("flow_control.resume")),
        _fetcher=SimpleNamespace(maybe_start=nothing),
        on_rebalance_end=lambda: calls.append("rebalance_end"),
        assignor=SimpleNamespace(assigned_standbys=lambda: set()),
    )
    return SimpleNamespace(
        app=app,
        _wait=wait,
        log=SimpleNamespace(info=lambda *a: None, warning=lambda *a: None, dev=lambda *a: None),
        _is_changelog_tp=lambda tp: tp[0].endswith("-changelog"),
        completed=asyncio.Event(),
        tables=SimpleNamespace(values=lambda: [], on_actives_ready=lambda: None, on_standbys_ready=lambda: None),
        _set_recovery_ended=lambda: None,
        actives_for_table={},
        standbys_for_table={},
    )


@pytest.mark.parametrize("method", ["_resume_streams", "on_recovery_completed"])
def test_stream_partitions_are_sought_before_they_are_resumed(method):
    calls: list = []
    rec = fake_recovery(calls)
    asyncio.run(getattr(Recovery, method)(rec, 3))
    resumes = [c for c in calls if isinstance(c, tuple)]
    assert resumes == [("resume", frozenset({("events", 0), ("events", 1)}))]  # changelogs stay paused
    assert calls.index("seek") < calls.index(resumes[0])
    assert rec.completed.is_set()
    assert calls[-1] == "rebalance_end"  # app.rebalancing cleared: the lost-log watchdog stays active


@pytest.mark.parametrize("method", ["_resume_streams", "on_recovery_completed"])
def test_a_newer_generation_resumes_nothing(method):
    calls: list = []
    rec = fake_recovery(calls)
    asyncio.run(getattr(Recovery, method)(rec, 2))  # the group moved on while this recovery ran
    assert calls == []
    assert not rec.completed.is_set()


# ---- batch delivery: the events topic without faust's per-event stream ----------------------
class FakeFlow:
    def __init__(self) -> None:
        self.active = True
        self.queues: list = []

    def is_active(self) -> bool:
        return self.active

    def manage_queue(self, q) -> None:
        self.queues.append(q)


def msg(offset: int, generation: int = 1, partition: int = 0):
    return SimpleNamespace(topic="events", partition=partition, offset=offset, generation_id=generation)


def sink_app(generation: int = 1):
    return SimpleNamespace(consumer_generation_id=generation, flow_control=FakeFlow())


def test_take_returns_at_most_max_in_arrival_order():
    from streamer.faust_compat import BatchSink

    async def run():
        sink = BatchSink(sink_app(), capacity=100)
        for i in range(10):
            sink.put(msg(i))
        first = await sink.take(4, within=10.0)  # full at once: no wait
        rest = await sink.take(100, within=0.0)
        return first, rest, len(sink)

    first, rest, left = asyncio.run(run())
    assert [m.offset for m in first] == [0, 1, 2, 3]
    assert [m.offset for m in rest] == list(range(4, 10))
    assert left == 0


def test_take_waits_for_a_first_record_and_returns_a_partial_batch_after_within():
    from streamer.faust_compat import BatchSink

    async def run():
        sink = BatchSink(sink_app(), capacity=100)
        task = asyncio.ensure_future(sink.take(50, within=0.05))
        await asyncio.sleep(0.01)
        assert not task.done()  # nothing yet
        sink.put(msg(7))
        return await task

    assert [m.offset for m in asyncio.run(run())] == [7]


def test_records_of_an_older_generation_or_while_flow_is_suspended_are_never_handed_out():
    from streamer.faust_compat import BatchSink

    async def run():
        app = sink_app(generation=2)
        sink = BatchSink(app, capacity=100)
        sink.put(msg(1, generation=1))  # fetched before the rebalance
        sink.put(msg(2, generation=2))
        got = await sink.take(10, within=0.0)
        app.flow_control.active = False  # a rebalance in progress
        sink.put(msg(3, generation=2))
        waiting = asyncio.ensure_future(sink.take(10, within=0.0))
        await asyncio.sleep(0.01)
        app.flow_control.active = True
        sink.put(msg(4, generation=2))
        return got, await waiting, sink.dropped

    got, after, dropped = asyncio.run(run())
    assert [m.offset for m in got] == [2]
    assert [m.offset for m in after] == [4]
    assert dropped == 2


def test_clear_drops_buffered_records_and_frees_space():
    from streamer.faust_compat import BatchSink

    async def run():
        sink = BatchSink(sink_app(), capacity=2)
        sink.put(msg(1))
        sink.put(msg(2))
        full = not sink._space.is_set()
        sink.clear()  # faust's flow control clears its queues on a rebalance
        await asyncio.wait_for(sink.wait_for_space(), 1)
        return full, len(sink), sink.dropped

    assert asyncio.run(run()) == (True, 0, 2)


def test_install_registers_the_topic_with_acks_and_the_sink_with_flow_control():
    from faust.transport.consumer import Consumer

    from streamer.faust_compat import BatchSink, install_batch_delivery

    added = []
    app = SimpleNamespace(topics=SimpleNamespace(add=added.append), flow_control=FakeFlow(), consumer_generation_id=1)
    topic = SimpleNamespace(topics=["events"])
    sink = BatchSink(app, capacity=8)
    install_batch_delivery(app, topic, sink)
    assert added == [topic]
    assert app.flow_control.queues == [sink]
    assert app._streamrec_batch_sinks == {"events": sink}
    assert getattr(Consumer._drain_messages, "__streamrec__", False)


def test_attribute_to_makes_the_record_faust_s_current_event():
    from faust.streams import current_event

    from streamer.faust_compat import attribute_to

    m = msg(5, partition=3)
    holder = attribute_to(m)
    assert current_event() is holder
    assert current_event().message.partition == 3


def test_records_left_over_from_a_full_batch_are_taken_without_another_wait(monkeypatch):
    import streamer.faust_compat as fc

    clock = {"now": 0.0}
    monkeypatch.setattr(fc, "time", SimpleNamespace(monotonic=lambda: clock["now"]))

    async def run():
        sink = fc.BatchSink(sink_app(), capacity=100)
        for i in range(6):
            sink.put(msg(i))  # arrived at t = 0
        clock["now"] = 7200.0  # the worker was busy for two hours
        await sink.take(4, within=3600.0)  # full: no wait
        return await asyncio.wait_for(sink.take(4, within=3600.0), 5)  # waited long enough already

    assert [m.offset for m in asyncio.run(run())] == [4, 5]


# ---- commits wait for every write the events they cover caused (faust_compat.Deliveries) ---------


class SlowBuffer:
    """A real ``ProducerBuffer`` whose sender takes ``send_s`` per message to hand it to the client
    and the broker ``ack_s`` more to acknowledge it (a busy event loop, a slow broker)."""

    @staticmethod
    def make(send_s: float, ack_s: float, fail: bool = False):
        from faust.transport.producer import ProducerBuffer

        class Buffer(ProducerBuffer):
            async def _send_pending(self, fut) -> None:
                await asyncio.sleep(send_s)
                loop = asyncio.get_running_loop()
                if fail:
                    loop.call_later(ack_s, fut.set_exception, ConnectionError("delivery timed out"))
                else:
                    loop.call_later(ack_s, fut.set_result, "acked")

        buffer = Buffer()
        buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))
        return buffer


def fake_producer(buffer, client_flushes: list):
    async def client_flush():
        client_flushes.append(1)

    return SimpleNamespace(
        app=buffer.app, buffer=buffer, _producer=SimpleNamespace(flush=client_flush), _transaction_producers={}
    )


def test_faust_s_own_flush_returns_while_a_changelog_write_is_still_in_the_process():
    """The reason for ``install_delivery_guard``: faust 0.15's flush gives up after 0.1 s without
    progress. If a faust upgrade makes this test fail, the guard may no longer be needed."""
    from faust.transport.producer import ProducerBuffer

    flush = getattr(ProducerBuffer.flush, "__wrapped__", ProducerBuffer.flush)

    async def run():
        buffer = SlowBuffer.make(send_s=0.3, ack_s=0.05)
        await buffer.start()
        try:
            sent = [asyncio.get_running_loop().create_future() for _ in range(2)]
            for fut in sent:
                buffer.put(fut)  # (this app has no delivery guard)
            await flush(buffer)
            done = [fut.done() for fut in sent]
            await asyncio.wait_for(asyncio.gather(*sent), 5)  # let the sender finish before stopping
            return done
        finally:
            await buffer.stop()

    assert asyncio.run(run()) == [False, False]


def test_a_commit_s_flush_waits_until_the_broker_acknowledged_every_write():
    from faust.transport.drivers.aiokafka import Producer

    from streamer.faust_compat import install_delivery_guard

    async def run():
        buffer = SlowBuffer.make(send_s=0.3, ack_s=0.05)
        lost = []
        deliveries = install_delivery_guard(buffer.app, lost.append)
        await buffer.start()
        try:
            changelog = [asyncio.get_running_loop().create_future() for _ in range(2)]
            for fut in changelog:
                buffer.put(fut)  # a table write: faust's send_soon
            sent_list = asyncio.get_running_loop().create_future()  # a list the worker sent itself
            deliveries.track(sent_list)
            asyncio.get_running_loop().call_later(0.2, sent_list.set_result, "acked")
            flushes = []
            await asyncio.wait_for(Producer.flush(fake_producer(buffer, flushes)), 5)
            return [f.done() for f in changelog] + [sent_list.done()], len(deliveries), flushes, lost
        finally:
            await buffer.stop()

    assert asyncio.run(run()) == ([True, True, True], 0, [1], [])


def test_a_write_the_producer_gave_up_on_is_reported_as_lost():
    from streamer.faust_compat import install_delivery_guard

    async def run():
        buffer = SlowBuffer.make(send_s=0.0, ack_s=0.01, fail=True)
        lost = []
        deliveries = install_delivery_guard(buffer.app, lost.append)
        await buffer.start()
        try:
            buffer.put(asyncio.get_running_loop().create_future())
            await asyncio.wait_for(deliveries.wait(), 5)
            return [type(e).__name__ for e in lost]
        finally:
            await buffer.stop()

    assert asyncio.run(run()) == ["ConnectionError"]
