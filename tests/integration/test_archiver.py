"""The archiver on the real broker: exactly once through SIGKILLs, and the same log as Kafka's."""

from __future__ import annotations

import asyncio
import random
import threading
import time

import orjson
import pyarrow.parquet as pq
import pytest

from devtools.local import ArchiverProcess
from devtools.replay import replay
from exporters.logsource import read_log
from schemas import decode_event
from schemas.archive import EVENTS, ITEMS, Located, list_files, write_batch
from schemas.sources import load_dataset
from tests.integration.helpers import event, produce, read_all, unique_topics

pytestmark = pytest.mark.integration

# Messages the contract refuses, mixed into the events topic: not JSON, a missing field, an
# unknown type, a tombstone-like empty value, an unknown field.
INVALID = [
    (b"u1", b"not json"),
    (b"u1", b'{"event_id": "bad1", "user_id": "u1", "type": "purchase"}'),
    (b"u2", b'{"event_id": "bad2", "user_id": "u2", "type": "teleport", "item_id": "a", "ts": 1300000000000}'),
    (b"u3", b""),
    (b"u4", b'{"event_id": "bad3", "user_id": "u4", "type": "view", "item_id": "a", "ts": 1300000000000, "x": 1}'),
]


def raw_ids(root, kind: str) -> list[str]:
    """Every record id in the committed files, duplicates included (no de-duplication here)."""
    column = "event_id" if kind == EVENTS else "item_id"
    ids: list[str] = []
    for f in list_files(root, kind):
        ids += pq.read_table(f.path, columns=[column]).column(column).to_pylist()
    return ids


def wait_archived(root, want_events: int, want_items: int, proc: ArchiverProcess, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.proc.poll() is None, f"archiver exited with {proc.proc.returncode}:\n{proc.tail()}"
        if len(raw_ids(root, EVENTS)) >= want_events and len(raw_ids(root, ITEMS)) >= want_items:
            return
        time.sleep(0.3)
    raise AssertionError(f"archive incomplete after {timeout} s:\n{proc.tail()}")


@pytest.fixture(scope="module")
def retail(data_dir):
    return load_dataset("online_retail", data_dir, limit_rows=5000)  # 3,708 events, 1,292 items


def test_sigkilled_archiver_keeps_every_valid_event_exactly_once(stack, tmp_path, retail):
    topics = unique_topics(stack, f"arch{random.randrange(10**6)}")
    archive = tmp_path / "archive"
    asyncio.run(produce(stack.bootstrap, topics["events"], INVALID))
    want = {e.event_id for e in retail.events}
    # The log is produced while the archiver runs (about 12 s), and the archiver writes small,
    # frequent files: a kill lands among writes, renames and commits.
    producer = threading.Thread(
        target=lambda: asyncio.run(
            replay(retail, stack.bootstrap, topics["events"], topics["items"], rate=300, progress=False)
        )
    )
    settings = dict(
        STREAMREC_ARCHIVE_FLUSH_RECORDS="37", STREAMREC_ARCHIVE_FLUSH_S="0.2", STREAMREC_SESSION_TIMEOUT_S="3"
    )
    rng = random.Random()
    kills = []
    for round_ in range(3):
        if len(raw_ids(archive, EVENTS)) >= len(want):
            break  # all written before this round's kill
        proc = ArchiverProcess(stack, archive, app_id="arch-test", topics=topics, **settings).start()
        if round_ == 0:  # the log starts flowing once the first archiver owns its partitions
            deadline = time.monotonic() + 60
            while "assigned partitions:" not in proc.tail() and time.monotonic() < deadline:
                assert proc.proc.poll() is None, proc.tail()
                time.sleep(0.05)
            producer.start()
        # wait for its first new file of this round, then kill at a random moment
        before = len(list_files(archive, EVENTS))
        deadline = time.monotonic() + 30
        while len(list_files(archive, EVENTS)) <= before and time.monotonic() < deadline:
            assert proc.proc.poll() is None, proc.tail()
            time.sleep(0.02)
        delay = rng.uniform(0, 0.5)
        time.sleep(delay)
        proc.kill()
        kills.append((round(delay, 3), len(raw_ids(archive, EVENTS))))
    producer.join()
    assert kills and kills[0][1] < len(want), "the first kill came after the whole log was archived"
    proc = ArchiverProcess(stack, archive, app_id="arch-test", topics=topics, **settings).start()
    try:
        wait_archived(archive, len(want), len(retail.items), proc)
        time.sleep(1.0)  # anything written twice would show up now
        events, items = raw_ids(archive, EVENTS), raw_ids(archive, ITEMS)
    finally:
        assert proc.stop() == 0, proc.tail()
    resumed = proc.log.read_text().count("they will not be written again")
    print(
        f"kills (delay s, events archived at the kill): {kills}; final {len(events)} rows; "
        f"partitions resumed past their committed offset: {resumed}"
    )
    assert len(events) == len(set(events)), "an event was archived twice"
    assert set(events) == want
    assert sorted(items) == sorted(retail.items)
    leftovers = [p for p in archive.rglob(".*") if p.is_file()]
    assert leftovers == [], "temporary files left behind"
    assert "'invalid': " in proc.tail(5)


def test_files_written_before_a_lost_commit_are_not_written_again(stack, tmp_path):
    """A crash between the rename and the offset commit: the files hold records past the group's
    committed offset. The restarted archiver must skip exactly those."""
    topics = unique_topics(stack, f"lost{random.randrange(10**6)}")
    archive = tmp_path / "archive"
    messages = [event(i, f"user{i % 7}", "a", ts=1_320_000_000_000 + i * 60_000) for i in range(60)]
    asyncio.run(produce(stack.bootstrap, topics["events"], messages))
    records = asyncio.run(read_all(stack.bootstrap, topics["events"], expect=len(messages)))
    # "already written, commit lost": the first half of every partition, as the archiver writes it
    by_partition: dict[int, list] = {}
    for m in sorted(records, key=lambda m: (m.partition, m.offset)):
        by_partition.setdefault(m.partition, []).append(
            Located(decode_event(m.value), m.partition, m.offset, m.timestamp)
        )
    pre = 0
    for located in by_partition.values():
        half = located[: len(located) // 2]
        if half:
            write_batch(archive, EVENTS, topics["events"], half)
            pre += len(half)
    assert pre > 0
    proc = ArchiverProcess(
        stack,
        archive,
        app_id="lost-test",
        topics=topics,
        STREAMREC_ARCHIVE_FLUSH_RECORDS="10",
        STREAMREC_ARCHIVE_FLUSH_S="0.2",
    ).start()
    try:
        wait_archived(archive, len(messages), 0, proc)
        time.sleep(1.0)
    finally:
        assert proc.stop() == 0, proc.tail()
    ids = raw_ids(archive, EVENTS)
    assert sorted(ids) == sorted(orjson.loads(v)["event_id"] for _k, v in messages)
    assert f"'already_archived': {pre}" in proc.tail(5)


def test_read_log_from_kafka_equals_read_log_from_the_archive(stack, tmp_path, retail):
    topics = unique_topics(stack, f"logs{random.randrange(10**6)}")
    archive = tmp_path / "archive"
    asyncio.run(replay(retail, stack.bootstrap, topics["events"], topics["items"], progress=False))
    asyncio.run(produce(stack.bootstrap, topics["events"], INVALID))
    # a redelivered event: the same id at a later offset, dropped by both readers
    again = retail.events[10]
    from schemas import encode

    asyncio.run(produce(stack.bootstrap, topics["events"], [(again.user_id.encode(), encode(again))]))
    proc = ArchiverProcess(
        stack,
        archive,
        app_id="logs-test",
        topics=topics,
        STREAMREC_ARCHIVE_FLUSH_RECORDS="500",
        STREAMREC_ARCHIVE_FLUSH_S="0.5",
    ).start()
    try:
        wait_archived(archive, len(retail.events) + 1, len(retail.items), proc)
    finally:
        assert proc.stop() == 0, proc.tail()
    assert f"'invalid': {len(INVALID)}" in proc.tail(5)

    env = {"STREAMREC_EVENTS_TOPIC": topics["events"], "STREAMREC_ITEMS_TOPIC": topics["items"]}
    from_kafka = read_log(f"kafka://{stack.bootstrap}", env=env)
    from_archive = read_log(str(archive))
    assert from_kafka.events == from_archive.events
    assert from_kafka.items == from_archive.items == retail.items
    assert {e.event_id for e in from_kafka.events} == {e.event_id for e in retail.events}
    invalid = {k: v for k, v in from_kafka.stats.dropped.items() if k.startswith("invalid_")}
    assert sum(invalid.values()) == len(INVALID)
    assert from_kafka.stats.dropped["duplicate_event_id"] == from_archive.stats.dropped["duplicate_event_id"] == 1
    # each user's events keep their log order
    by_user: dict[str, list[str]] = {}
    for e in retail.events:
        by_user.setdefault(e.user_id, []).append(e.event_id)
    got: dict[str, list[str]] = {}
    for e in from_archive.events:
        got.setdefault(e.user_id, []).append(e.event_id)
    assert got == by_user

    # a window on event time
    cut = retail.events[len(retail.events) // 2].ts
    k, a = read_log(f"kafka://{stack.bootstrap}", since_ms=cut, env=env), read_log(str(archive), since_ms=cut)
    assert k.events == a.events and all(e.ts >= cut for e in k.events) and k.events
