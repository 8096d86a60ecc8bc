"""A batch that raises ends the worker at once, without the graceful stop that would commit it."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

import streamer.app as app_mod


class Exited(Exception):
    pass


def test_failed_batch_exits_hard_without_a_graceful_stop(monkeypatch):
    codes = []

    def fake_exit(code):
        codes.append(code)
        raise Exited

    monkeypatch.setattr(app_mod.os, "_exit", fake_exit)
    crashed = []

    async def crash(exc):  # faust's graceful path: would commit what take_events acked
        crashed.append(exc)

    w = app_mod.Worker.__new__(app_mod.Worker)
    w.probe = SimpleNamespace(ready=True)
    w.app = SimpleNamespace(crash=crash)
    with pytest.raises(Exited):
        asyncio.run(w._fail(RuntimeError("boom")))
    assert codes == [app_mod.EXIT_BATCH_FAILED] and codes[0] != 0
    assert crashed == []
    assert w.probe.ready is False


def test_shutdown_cancels_again_a_task_that_swallowed_its_cancellation():
    import asyncio

    from streamer.app import cancel_all

    async def stubborn(log: list) -> None:
        swallowed = False
        while True:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                if swallowed:
                    log.append("stopped")
                    raise
                swallowed = True  # as a library that turns a cancellation into a caught error
                log.append("swallowed")

    async def run() -> tuple[list, bool]:
        log: list = []
        task = asyncio.ensure_future(stubborn(log))
        await asyncio.sleep(0.02)
        await cancel_all([task], timeout_s=30, every_s=0.05)
        return log, task.cancelled()

    assert asyncio.run(run()) == (["swallowed", "stopped"], True)
