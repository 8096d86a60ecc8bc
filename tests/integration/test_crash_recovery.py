"""SIGKILL mid-stream and restart: no event lost, none applied twice, state equals a clean run."""

from __future__ import annotations

import asyncio
import random
import time

import orjson
import pytest
import redis

from streamer.state import UserState
from tests.integration.helpers import WorkerProcess, event, produce, read_all, unique_topics

pytestmark = pytest.mark.integration

ITEMS = ["71053", "85123A", "84406B", "22633", "21730", "84029G", "22752", "NOTEXT1"]


@pytest.fixture(scope="module")
def model_root(tmp_path_factory):
    from exporters.bootstrap import export_bootstrap
    from tests.unit.streamer.conftest import CATALOG

    root = tmp_path_factory.mktemp("models")
    export_bootstrap(root, dataset=None, tiny=True, items=CATALOG)
    return root


def make_events(n_users: int, per_user: int, seed: int) -> tuple[list, dict[str, int]]:
    """Interleaved events of many users, with 5% exact redeliveries (same event id)."""
    rng = random.Random(seed)
    evs, expected = [], {}
    for i in range(n_users * per_user):
        u = f"user{rng.randrange(n_users)}"
        expected[u] = expected.get(u, 0) + 1
        ev = event(
            i,
            u,
            rng.choice(ITEMS),
            etype=rng.choice(["view", "click", "add_to_cart", "purchase"]),
            ts=1_320_000_000_000 + i * 60_000,
        )
        evs.append(ev)
        if rng.random() < 0.05:
            evs.append(ev)  # duplicate delivery
    return evs, expected


async def group_positions(bootstrap: str, group: str, topic: str) -> dict[int, tuple]:
    """partition -> (committed offset of ``group``, records in the log): for a failure message."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await c.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or [])]
        counts = {p.partition: 0 for p in tps}
        for m in await read_all(bootstrap, topic, timeout=10):
            counts[m.partition] += 1
        return {tp.partition: (await c.committed(tp), counts[tp.partition]) for tp in tps}
    finally:
        await c.stop()


def final_states(
    bootstrap: str,
    app_id: str,
    expected: dict[str, int],
    timeout: float = 120,
    worker=None,
    events_topic: str | None = None,
) -> dict[str, dict]:
    """Last changelog value per user, once every user's state has applied all its events."""
    deadline = time.monotonic() + timeout
    while True:
        msgs = asyncio.run(read_all(bootstrap, f"{app_id}-user-state-changelog", timeout=5))
        states = {m.key.decode(): UserState.from_bytes(m.value) for m in msgs if m.value}
        done = {u: s.events_applied for u, s in states.items()}
        if done == expected:
            return {u: s.fingerprint() for u, s in states.items()}
        if time.monotonic() > deadline:
            missing = {u: (n, done.get(u)) for u, n in expected.items() if done.get(u) != n}
            regressed = {}  # users whose applied count went down in the changelog: state rebuilt from a stale copy
            high: dict[str, int] = {}
            for m in msgs:
                if m.value:
                    u, n = m.key.decode(), UserState.from_bytes(m.value).events_applied
                    if n < high.get(u, 0):
                        regressed[u] = (high[u], n)
                    high[u] = max(high.get(u, 0), n)
            detail = f"\nusers whose applied count went down in the changelog: {len(regressed)} {list(regressed.items())[:5]}"
            if events_topic:
                positions = asyncio.run(group_positions(bootstrap, app_id, events_topic))
                detail += f"\n(committed offset, records) per partition of {events_topic}: {positions}"
                # which events of the first incomplete users the state lacks, by (partition, offset)
                from streamer.state import event_hash

                latest = {m.key.decode(): UserState.from_bytes(m.value) for m in msgs if m.value}
                lacking = {}
                ev_by_off = {}
                for m in asyncio.run(read_all(bootstrap, events_topic, timeout=10)):
                    ev_by_off[(m.partition, m.offset)] = m.value
                    u = m.key.decode()
                    if u in missing and u in list(missing)[:3] and u in latest:
                        if event_hash(orjson.loads(m.value)["event_id"]) not in latest[u].seen_set:
                            lacking.setdefault(u, []).append((m.partition, m.offset))
                detail += f"\nevents lacking from the state (partition, offset): {lacking}"
                history = {}  # was a lacking event ever in any changelog record of its user?
                for m in msgs:
                    if m.value and m.key.decode() in lacking:
                        history.setdefault(m.key.decode(), set()).update(UserState.from_bytes(m.value).seen_set)
                ever = {
                    u: sum(
                        1
                        for p, o in offs
                        if event_hash(orjson.loads(ev_by_off[(p, o)])["event_id"]) in history.get(u, ())
                    )
                    for u, offs in lacking.items()
                }
                detail += f"\nof those, found in an earlier changelog record of the user: {ever}"
                from streamer.consumers import fetch_highwaters

                changelog = f"{app_id}-user-state-changelog"
                hw = asyncio.run(fetch_highwaters(bootstrap, [(changelog, p) for p in range(4)]))
                got = {p: sum(1 for m in msgs if m.partition == p) for p in range(4)}
                detail += f"\nchangelog records read / high watermark per partition: {got} / {hw}"
            if worker is not None:
                try:
                    detail += "\nworker metrics:\n" + "\n".join(
                        line
                        for line in worker.metrics().splitlines()
                        if line.startswith(("streamrec_events_total", "streamrec_consumer_lag", "streamrec_lists"))
                    )
                except OSError as exc:
                    detail += f"\nworker metrics unavailable: {exc}"
                import os
                import signal

                os.kill(worker.proc.pid, signal.SIGUSR1)  # mode's worker logs every task's stack
                time.sleep(3)
                detail += f"\nworker log:\n{worker.tail(150)}"
            raise AssertionError(
                f"state incomplete or over-applied for {len(missing)} users: {list(missing.items())[:5]}{detail}"
            )
        time.sleep(1)


@pytest.mark.parametrize("producer_batch_bytes", [None, "1"], ids=["batched-producer", "one-record-batches"])
def test_sigkill_and_restart_equals_clean_run(stack, model_root, tmp_path, producer_batch_bytes):
    """``batched-producer`` (the stack's default): multi-record producer batches (state
    changelog, lists) on the embedded broker, whose ListOffsets answer is wrong after them;
    recovery reads the changelog's end from fetch responses instead
    (``test_changelog_end_is_read_from_fetch_responses``). ``one-record-batches``: the stack's
    former setting."""
    env = {"STREAMREC_PRODUCER_MAX_BATCH_BYTES": producer_batch_bytes} if producer_batch_bytes else {}
    topics = unique_topics(stack, "crash")
    evs, expected = make_events(n_users=60, per_user=40, seed=7)
    asyncio.run(produce(stack.bootstrap, topics["events"], evs))
    r = redis.Redis.from_url(stack.redis_url)
    key = topics["prefix"]

    # crashed run: killed twice at random moments while events flow, restarted on the same state dir
    rng = random.Random(1)
    state_dir = tmp_path / "crashy"
    kills = 0
    for _ in range(2):
        w = WorkerProcess(
            stack, model_root, state_dir, app_id="crashy", topics=topics, STREAMREC_MAX_BATCH="32", **env
        ).start()
        w.wait_ready()
        time.sleep(rng.uniform(0.5, 2.5))
        w.kill()
        kills += 1
    w = WorkerProcess(stack, model_root, state_dir, app_id="crashy", topics=topics, **env).start()
    try:
        w.wait_ready()
        crashed = final_states(stack.bootstrap, "crashy", expected, worker=w, events_topic=topics["events"])
        # every user's final list is published and reflects their last event
        last_event = {}
        for k, v in evs:
            last_event[k.decode()] = orjson.loads(v)["event_id"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            lists = {u: r.get(key + u) for u in expected}
            if all(v and orjson.loads(v)["event_id"] == last_event[u] for u, v in lists.items()):
                break
            time.sleep(0.5)
        else:
            raise AssertionError("some users' final lists were not published")
    finally:
        w.stop()

    # clean single pass over the same topic, by a separate app (own group and changelog)
    clean_topics = dict(topics, prefix="clean:rec:")
    w2 = WorkerProcess(stack, model_root, tmp_path / "clean", app_id="clean", topics=clean_topics, **env).start()
    try:
        w2.wait_ready()
        clean = final_states(stack.bootstrap, "clean", expected, worker=w2, events_topic=topics["events"])
    finally:
        w2.stop()
    assert kills == 2
    assert crashed.keys() == clean.keys() == expected.keys()
    for u in expected:
        assert crashed[u] == clean[u], u


def test_changelog_end_is_read_from_fetch_responses(stack):
    """Recovery reads each changelog to the end that ``consumers.fetch_highwaters`` reports: it must
    equal the number of records after batched produces (the embedded broker's ListOffsets answer
    is the last batch's base offset + 1; measured 1 where 133 records were there)."""
    from streamer.consumers import fetch_highwaters

    topics = unique_topics(stack, "hwcheck")
    msgs = [(f"k{i}".encode(), b"x" * 50) for i in range(500)]
    asyncio.run(produce(stack.bootstrap, topics["events"], msgs))
    records = asyncio.run(read_all(stack.bootstrap, topics["events"], expect=len(msgs)))
    counts = {p: sum(1 for m in records if m.partition == p) for p in range(4)}
    hw = asyncio.run(fetch_highwaters(stack.bootstrap, [(topics["events"], p) for p in range(4)]))
    assert {p: hw[(topics["events"], p)] for p in range(4)} == counts
    assert sum(counts.values()) == len(msgs)
