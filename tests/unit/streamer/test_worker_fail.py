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
