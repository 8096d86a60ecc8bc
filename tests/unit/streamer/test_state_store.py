"""The state store is keyed by partition (of the events topic) and user id, not by a raw message:
the pipeline reads and writes each user's state on the partition of the user's events, and the
faust store attributes each table operation to that partition (changelog partition, RocksDB
partition database) without needing the consumer's message."""

from __future__ import annotations

from faust.streams import current_event

from streamer.app import FaustTableStore
from streamer.model import ModelBundle, latest_version_dir
from streamer.pipeline import Pipeline
from tests.unit.streamer.helpers import DictStore, ev, msg, settings


class PartitionLog(DictStore):
    """A ``DictStore`` that records the partition of every call."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[str, int, str]] = []

    def get(self, partition, user_id):
        self.calls.append(("get", partition, user_id))
        return super().get(partition, user_id)

    def put(self, partition, user_id, value):
        self.calls.append(("put", partition, user_id))
        super().put(partition, user_id, value)

    def delete(self, partition, user_id):
        self.calls.append(("delete", partition, user_id))
        super().delete(partition, user_id)


async def test_pipeline_keys_each_user_s_state_by_the_partition_of_their_events(tiny_model_root):
    pipeline = Pipeline(settings(), ModelBundle.load(latest_version_dir(tiny_model_root)))
    store = PartitionLog()
    msgs = [
        msg(ev(1, "u1", "71053"), 0, partition=2),
        msg(ev(2, "u2", "22633"), 0, partition=3),
        msg(ev(3, "u1", "85123A"), 1, partition=2),
    ]
    await pipeline.process(msgs, store)
    assert sorted(store.calls) == [("get", 2, "u1"), ("get", 3, "u2"), ("put", 2, "u1"), ("put", 3, "u2")]
    store.calls.clear()
    await pipeline.process([msg(ev(4, "u2", None, etype="erase_user"), 1, partition=3)], store)
    assert store.calls == [("delete", 3, "u2")]


class RecordingTable(dict):
    """A faust table stand-in: each operation notes the partition of faust's current event, the one
    faust's changelog and RocksDB store would use."""

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[str, str, int, bytes]] = []

    def _note(self, op, key):
        event = current_event()
        self.seen.append((op, event.message.topic, event.message.partition, key))

    def get(self, key, default=None):
        self._note("get", key)
        return dict.get(self, key, default)

    def __setitem__(self, key, value):
        self._note("set", key)
        dict.__setitem__(self, key, value)

    def __contains__(self, key):
        self._note("contains", key)
        return dict.__contains__(self, key)

    def __delitem__(self, key):
        self._note("del", key)
        dict.__delitem__(self, key)


def test_faust_store_makes_the_partition_faust_s_current_event():
    table = RecordingTable()
    store = FaustTableStore(table, "events")
    assert store.get(1, "u1") is None
    store.put(1, "u1", b"s1")
    store.put(0, "u2", b"s2")
    assert store.get(1, "u1") == b"s1"
    store.delete(0, "u2")
    store.delete(3, "nobody")
    assert table == {b"u1": b"s1"}
    assert table.seen == [
        ("get", "events", 1, b"u1"),
        ("set", "events", 1, b"u1"),
        ("set", "events", 0, b"u2"),
        ("get", "events", 1, b"u1"),
        ("contains", "events", 0, b"u2"),
        ("del", "events", 0, b"u2"),
        ("contains", "events", 3, b"nobody"),
    ]
