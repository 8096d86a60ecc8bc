"""Helpers of the worker unit tests: raw ``events`` messages, contract events, settings, and an
in-memory ``StateStore``. Fixtures are in ``conftest.py``."""

from __future__ import annotations

import orjson

from streamer.ingest import RawMessage
from streamer.settings import Settings

T0 = 1_320_000_000_000


class DictStore:
    """``StateStore`` in a dict by user id (a user's events all come from one partition)."""

    def __init__(self):
        self.data: dict[str, bytes] = {}
        self.writes = 0

    def get(self, partition, user_id):
        return self.data.get(user_id)

    def put(self, partition, user_id, value):
        self.writes += 1
        self.data[user_id] = value

    def delete(self, partition, user_id):
        self.data.pop(user_id, None)


def settings(**kw) -> Settings:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "STREAMREC_LIST_SIZE": "5",
        "STREAMREC_CANDIDATES": "20",
    }
    return Settings.from_env(env, **kw)


def msg(value, offset=0, partition=0) -> RawMessage:
    raw = value if isinstance(value, bytes) else orjson.dumps(value)
    return RawMessage("events", partition, offset, b"k", raw, T0)


def ev(i, user="u1", item="71053", etype="purchase", ts=None, **extra):
    d = {"event_id": f"e{i}", "user_id": user, "type": etype, "ts": ts or T0 + i * 1000}
    if item is not None:
        d["item_id"] = item
    d.update(extra)
    return d
