"""The worker's batch loop two batches deep (``Worker._consume``): batch n+1 is processed while
batch n is published; publications and acks stay in batch order, each batch is acked only after
its own publication, and a failure acks nothing more. Also the start-up tuning of the root logger
and the garbage collector (``quiet_root_logger``, ``settle_heap``)."""

from __future__ import annotations

import asyncio
import gc
import logging
from types import SimpleNamespace

import pytest

import streamer.app as app_mod

SPINS = 1000  # event-loop turns a fake publication waits for the next batch's processing to start


class Exited(Exception):
    pass


@pytest.fixture()
def exits(monkeypatch) -> list:
    """``os._exit`` recorded (and raising ``Exited``) instead of ending the test process."""
    codes: list = []

    def fake_exit(code):
        codes.append(code)
        raise Exited

    monkeypatch.setattr(app_mod.os, "_exit", fake_exit)
    return codes


class FakeSink:
    def __init__(self, batches, backlog: bool = True):
        self.batches = list(batches)
        self.backlog = backlog

    def __len__(self) -> int:  # records waiting: the batches not taken yet (none when keeping up)
        return sum(len(b) for b in self.batches) if self.backlog else 0

    async def take(self, max_, within):
        if self.batches:
            return self.batches.pop(0)
        await asyncio.Event().wait()  # no more records: wait as the real sink does


def msg(batch: int, offset: int):
    return SimpleNamespace(batch=batch, offset=offset)


def worker(batches, log, fail_publish_of=None, backlog=True):
    """A ``Worker`` with only what ``_consume`` touches; ``_process`` and ``_publish`` faked."""
    w = app_mod.Worker.__new__(app_mod.Worker)
    w.s = SimpleNamespace(max_batch=3, max_wait_ms=0)
    w.ready = asyncio.Event()
    w.ready.set()
    w.sink = FakeSink(batches, backlog)
    w.probe = SimpleNamespace(ready=True)
    w._processing, w._publishing, w._last_batch_end = False, None, 0.0
    w.app = SimpleNamespace(consumer=SimpleNamespace(ack=lambda m: log.append(("ack", m.batch, m.offset))))

    async def process(batch):
        n = batch[0].batch
        log.append(("process", n))
        return n

    async def publish(n):
        log.append(("publish start", n, w._in_batch))
        for _ in range(SPINS):  # until the next batch is being processed (the last has none)
            if ("process", n + 1) in log or n == len_batches:
                break
            await asyncio.sleep(0)
        if n == fail_publish_of:
            raise ConnectionError("redis gone for good")
        log.append(("publish end", n))

    len_batches = len(batches)
    w._process, w._publish = process, publish
    return w


def run_until_acked(w, log, n_acks: int) -> None:
    async def go():
        task = asyncio.ensure_future(w._consume())
        for _ in range(100 * SPINS):
            if sum(1 for e in log if e[0] == "ack") >= n_acks or task.done():
                break
            await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return task

    return asyncio.run(go())


def test_next_batch_is_processed_while_the_previous_one_publishes_and_acks_stay_in_order():
    log: list = []
    batches = [[msg(b, 3 * b + i) for i in range(3)] for b in (1, 2, 3)]
    w = worker(batches, log)
    run_until_acked(w, log, 9)
    acks = [e[2] for e in log if e[0] == "ack"]
    assert acks == list(range(3, 12)), log  # every record, in offset order
    for n in (1, 2):  # overlap: n+1's processing started before n's publication ended
        assert log.index(("process", n + 1)) < log.index(("publish end", n)), log
    for n in (1, 2):  # publications in batch order, one at a time
        start_next = next(i for i, e in enumerate(log) if e[:2] == ("publish start", n + 1))
        assert log.index(("publish end", n)) < start_next, log
    for n in (1, 2, 3):  # a batch is acked only after its own publication
        first_ack = next(i for i, e in enumerate(log) if e[0] == "ack" and e[1] == n)
        assert log.index(("publish end", n)) < first_ack, log
    # the stalled-partition check sees a publishing worker as busy
    assert all(e[2] is True for e in log if e[0] == "publish start"), log


def test_without_a_backlog_each_batch_is_published_before_the_next_is_processed():
    log: list = []
    batches = [[msg(b, 3 * b + i) for i in range(3)] for b in (1, 2, 3)]
    w = worker(batches, log, backlog=False)
    run_until_acked(w, log, 9)
    assert [e[2] for e in log if e[0] == "ack"] == list(range(3, 12)), log
    for n in (1, 2):
        assert log.index(("publish end", n)) < log.index(("process", n + 1)), log


def test_a_failed_publication_exits_and_acks_nothing_after_it(exits):
    codes = exits
    log: list = []
    batches = [[msg(b, 3 * b + i) for i in range(3)] for b in (1, 2, 3)]
    w = worker(batches, log, fail_publish_of=2)
    task = run_until_acked(w, log, 9)
    assert codes == [app_mod.EXIT_BATCH_FAILED]
    assert {e[1] for e in log if e[0] == "ack"} == {1}, log  # batch 1 published and acked; 2 and 3 never
    assert ("publish start", 3, True) not in log
    assert isinstance(task.exception(), Exited)


def test_a_failed_processing_exits_and_its_batch_is_never_acked(exits):
    codes = exits
    log: list = []
    batches = [[msg(b, 3 * b + i) for i in range(3)] for b in (1, 2)]
    w = worker(batches, log)
    ok_process = w._process

    async def process(batch):
        if batch[0].batch == 2:
            raise ValueError("bad batch")
        return await ok_process(batch)

    w._process = process
    run_until_acked(w, log, 6)
    assert codes == [app_mod.EXIT_BATCH_FAILED]
    assert 2 not in {e[1] for e in log if e[0] == "ack"}, log


class SpinnerHandler(logging.Handler):  # named as faust's (faust.utils.terminal.SpinnerHandler)
    def emit(self, record):
        pass


def test_quiet_root_logger_drops_the_spinner_and_raises_the_root_level():
    root = logging.Logger("root-under-test", logging.DEBUG)
    printing = logging.StreamHandler()
    printing.setLevel(logging.WARNING)
    root.addHandler(printing)
    root.addHandler(SpinnerHandler(logging.DEBUG))
    app_mod.quiet_root_logger(root)
    assert root.handlers == [printing]
    assert root.level == logging.WARNING and not root.isEnabledFor(logging.DEBUG)


def test_quiet_root_logger_leaves_a_root_whose_handler_prints_everything():
    root = logging.Logger("root-under-test", logging.DEBUG)
    root.addHandler(logging.StreamHandler())  # NOTSET: prints what reaches it
    app_mod.quiet_root_logger(root)
    assert root.level == logging.DEBUG and root.isEnabledFor(logging.DEBUG)


def test_settle_heap_freezes_what_is_alive_and_raises_the_young_threshold():
    before = gc.get_threshold()
    try:
        gc.unfreeze()
        app_mod.settle_heap()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (app_mod.GC_YOUNG_THRESHOLD, *before[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_in_batch_is_false_when_idle():
    w = app_mod.Worker.__new__(app_mod.Worker)
    w._processing, w._publishing = False, None
    assert w._in_batch is False
