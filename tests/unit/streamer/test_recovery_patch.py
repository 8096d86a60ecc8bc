"""The worker's fixes to faust's table recovery (``streamer.app._patch_recovery``), on small fakes.

The end-to-end proof is tests/integration/test_crash_recovery.py (SIGKILL, restart, state equal
to a clean run); these pin down the order of operations that test needs, which a faust upgrade
could silently undo.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from faust.tables.recovery import Recovery
from streamer.app import _patch_recovery
from streamer.settings import Settings


@pytest.fixture(scope="module", autouse=True)
def patched():
    _patch_recovery(Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9", "REDIS_URL": "redis://127.0.0.1:6379/0"}))


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
        consumer=consumer, consumer_generation_id=3, conf=SimpleNamespace(broker_request_timeout=5),
        on_rebalance_complete=SimpleNamespace(send=nothing),
        flow_control=SimpleNamespace(resume=lambda: calls.append("flow_control.resume")),
        _fetcher=SimpleNamespace(maybe_start=nothing), on_rebalance_end=lambda: calls.append("rebalance_end"),
        assignor=SimpleNamespace(assigned_standbys=lambda: set()),
    )
    return SimpleNamespace(
        app=app, _wait=wait, log=SimpleNamespace(info=lambda *a: None, warning=lambda *a: None, dev=lambda *a: None),
        _is_changelog_tp=lambda tp: tp[0].endswith("-changelog"), completed=asyncio.Event(),
        tables=SimpleNamespace(values=lambda: [], on_actives_ready=lambda: None, on_standbys_ready=lambda: None),
        _set_recovery_ended=lambda: None, actives_for_table={}, standbys_for_table={},
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
