"""Two workers in one consumer group; one is stopped (SIGTERM) mid-stream. Its partitions and the
user state they carry move to the other worker: nothing lost, nothing applied twice.

Also the scale-out check of issue 7: two processes of one deployment share the partitions.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time

import orjson
import pytest
import redis

from tests.conftest import wait_until
from tests.integration.helpers import WorkerProcess, event, produce, unique_topics
from tests.integration.test_crash_recovery import ITEMS, final_states
from tests.integration.test_faults import (
    lists_current,
    metric,
    shared_model_root,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def model_root(tmp_path_factory):
    return shared_model_root(tmp_path_factory)


def make_events(n_users: int, n: int, seed: int):
    rng = random.Random(seed)
    evs, last, counts = [], {}, {}
    for i in range(n):
        u = f"rb{rng.randrange(n_users)}"
        k, v = event(
            i,
            u,
            rng.choice(ITEMS),
            etype=rng.choice(["view", "click", "add_to_cart", "purchase"]),
            ts=1_320_000_000_000 + i * 60_000,
        )
        evs.append((k, v))
        if rng.random() < 0.03:
            evs.append((k, v))  # a redelivery: must not count twice, on whichever worker
        last[u] = orjson.loads(v)["event_id"]
        counts[u] = counts.get(u, 0) + 1
    return evs, last, counts


def events_seen(w: WorkerProcess) -> float:
    return metric(w.metrics(), "streamrec_events_total")


def test_sigterm_one_of_two_workers_state_moves_without_loss(stack, model_root, tmp_path):
    topics = unique_topics(stack, "rebal")
    r = redis.Redis.from_url(stack.redis_url)
    evs, last, counts = make_events(n_users=120, n=3000, seed=11)
    a = WorkerProcess(stack, model_root, tmp_path / "a", app_id="rebal", topics=topics).start()
    b = WorkerProcess(stack, model_root, tmp_path / "b", app_id="rebal", topics=topics).start()
    try:
        a.wait_ready()
        b.wait_ready()
        # both in the group: a first slice of events must be processed by both workers
        asyncio.run(produce(stack.bootstrap, topics["events"], evs[:400]))
        wait_until(
            lambda: events_seen(a) > 0 and events_seen(b) > 0,
            60,
            "both workers consuming",
            on_fail=lambda: a.tail() + "\n-----\n" + b.tail(),
        )
        seen_a_early, seen_b_early = events_seen(a), events_seen(b)

        # the rest is produced in the background while worker a is stopped mid-stream
        def feed() -> None:
            for i in range(400, len(evs), 200):
                asyncio.run(produce(stack.bootstrap, topics["events"], evs[i : i + 200]))
                time.sleep(0.3)

        t = threading.Thread(target=feed)
        t.start()
        time.sleep(1.5)
        seen_a = events_seen(a)
        stopped_at = time.monotonic()
        code = a.stop()
        t.join(120)
        wait_until(
            lambda: lists_current(r, topics["prefix"], last), 120, "every list current on worker b", on_fail=b.tail
        )
        takeover_s = time.monotonic() - stopped_at
        moved = final_states(stack.bootstrap, "rebal", counts)
        seen_b = events_seen(b)
        assert b.proc.poll() is None, b.tail()
    finally:
        a.stop()
        b.stop()

    # the reference: one worker, one clean pass over the same topic (own group and changelog)
    clean = WorkerProcess(
        stack, model_root, tmp_path / "clean", app_id="rebal-clean", topics=dict(topics, prefix="rebal-clean:rec:")
    ).start()
    try:
        clean.wait_ready()
        reference = final_states(stack.bootstrap, "rebal-clean", counts)
    finally:
        clean.stop()
    print(
        f"\nREBALANCE: {len(evs)} messages ({len(evs) - sum(counts.values())} redeliveries), {len(counts)} users; "
        f"before the stop a={seen_a_early:.0f}/{seen_a:.0f} b={seen_b_early:.0f} events; a exited {code}; "
        f"b ended with {seen_b:.0f}; all lists current {takeover_s:.1f} s after SIGTERM; "
        f"state lost 0, applied twice 0 (equal to a clean single pass for all {len(reference)} users)"
    )
    assert code in (0, -15), "worker a did not stop cleanly on SIGTERM"
    assert seen_a > 0 and seen_b > seen_b_early
    assert moved.keys() == reference.keys() == counts.keys()
    for u in counts:
        assert moved[u] == reference[u], u
