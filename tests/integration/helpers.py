"""Helpers for integration tests: run real worker processes against the session's real stack."""

from __future__ import annotations

import asyncio

import orjson

from devtools.local import WorkerProcess, produce, read_all  # noqa: F401  (re-exported for the tests)
from devtools.stack import ensure_topics


def unique_topics(stack, prefix: str) -> dict[str, str]:
    names = {k: f"{prefix}.{k}" for k in ("events", "items", "recs", "dlq", "updates")}
    asyncio.run(ensure_topics(stack.bootstrap, list(names.values()), partitions=4))
    names["prefix"] = f"{prefix}:rec:"
    return names


def event(
    i: int, user: str, item: str | None, etype: str = "purchase", ts: int | None = None, **extra
) -> tuple[bytes, bytes]:
    d = {"event_id": f"ev-{user}-{i}", "user_id": user, "type": etype, "ts": ts or 1_320_000_000_000 + i * 1000}
    if item is not None:
        d["item_id"] = item
    d.update(extra)
    return user.encode(), orjson.dumps(d)
