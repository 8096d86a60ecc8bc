"""Worker start and stop on the real embedded broker and Redis: fail clearly and early, stop cleanly."""

from __future__ import annotations

import asyncio
import subprocess
import time

import pytest
import redis

from tests.conftest import wait_until
from tests.integration.helpers import WorkerProcess, event, produce, unique_topics
from tests.integration.test_worker import model_root  # noqa: F401  (model_root is a fixture)

pytestmark = pytest.mark.integration


def test_second_worker_on_the_same_state_dir_exits_before_joining(stack, model_root, tmp_path):  # noqa: F811
    topics = unique_topics(stack, "lk1")
    state = tmp_path / "shared-state"
    first = WorkerProcess(stack, model_root, state, app_id="lk1", topics=topics).start()
    second = WorkerProcess(stack, model_root, state, app_id="lk1", topics=topics)
    second.log = tmp_path / "second.log"  # both would otherwise write the log named after the state folder
    try:
        first.wait_ready()
        second.start()
        try:
            code = second.proc.wait(60)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"second worker still running:\n{second.tail()}") from None
        assert code == 2, second.tail()
        lines = second.log.read_text(errors="replace").splitlines()
        named = [ln for ln in lines if "STREAMREC_STATE_DIR" in ln]
        assert len(named) == 1, lines
        assert str(state.resolve()) in named[0] and f"pid {first.proc.pid}" in named[0], named[0]
        assert not any("Traceback" in ln or "LOCK" in ln for ln in lines), lines
        # the first worker kept its partitions and keeps serving
        assert first.proc.poll() is None, first.tail()
        r = redis.Redis.from_url(stack.redis_url)
        users = [f"lk-user{i}" for i in range(8)]
        asyncio.run(produce(stack.bootstrap, topics["events"], [event(i, u, "85123A") for i, u in enumerate(users)]))
        wait_until(lambda: all(r.exists(topics["prefix"] + u) for u in users))
        assert first.proc.poll() is None, first.tail()
    finally:
        second.kill()
        code = first.stop()
    assert code == 0, first.tail()


def test_sigterm_stops_cleanly_without_unclosed_clients(stack, model_root, tmp_path):  # noqa: F811
    topics = unique_topics(stack, "lk2")
    w = WorkerProcess(
        stack, model_root, tmp_path / "s", app_id="lk2", topics=topics, STREAMREC_LOST_LOG_CHECK_S="0.5"
    ).start()
    try:
        w.wait_ready()
        r = redis.Redis.from_url(stack.redis_url)
        asyncio.run(produce(stack.bootstrap, topics["events"], [event(1, "lk2-user", "85123A")]))
        wait_until(lambda: r.exists(topics["prefix"] + "lk2-user"))
        # let the side clients come up too: the lost-log watchdog's record probe (every
        # STREAMREC_LOST_LOG_CHECK_S once an event was consumed) opens its own consumer
        time.sleep(3)
    finally:
        code = w.stop(timeout=60)
    text = w.log.read_text(errors="replace")
    assert code == 0, w.tail()
    for bad in ("Unclosed", "Traceback", "Task was destroyed", "[ERROR]", " ERROR "):
        assert bad not in text, text[-6000:]
