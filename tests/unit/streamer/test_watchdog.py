"""Lost-log watchdog decisions (streamer/watchdog.py), without a broker."""

from __future__ import annotations

import asyncio

from streamer import metrics
from streamer.watchdog import (
    BEYOND_LOG,
    COMMITTED_GONE,
    REPLACED,
    LostLogDetector,
    LostLogWatchdog,
    Observation,
    fingerprint,
)


def obs(pos, hw=None, end=None, committed=None, known=False, replaced=None, p=0):
    return Observation("events", p, pos, hw, end, committed, known, replaced)


def test_healthy_tansu_position_above_underreported_end_is_not_a_loss():
    d = LostLogDetector(confirmations=2)
    # Tansu: ListOffsets(latest) = last batch base + 1, so end < position on a healthy log
    for _ in range(5):
        assert d.observe(obs(50, hw=50, end=1, committed=50, known=True)) is None


def test_position_beyond_fetch_highwater_needs_confirmations():
    d = LostLogDetector(confirmations=2)
    assert d.observe(obs(50, hw=10, end=1)) is None
    assert d.observe(obs(50, hw=10, end=1)) == BEYOND_LOG
    # a single transient reading is forgiven
    assert d.observe(obs(50, hw=10, end=1)) is None
    assert d.observe(obs(50, hw=60, end=1)) is None
    assert d.observe(obs(50, hw=10, end=1)) is None


def test_committed_offset_gone_is_a_loss_only_after_one_was_seen():
    d = LostLogDetector()
    assert d.observe(obs(5, hw=5, end=1, committed=None, known=True)) is None  # never committed yet
    assert d.observe(obs(50, hw=50, end=1, committed=40, known=True)) is None
    assert d.observe(obs(50, hw=50, end=1, committed=None, known=False)) is None  # unknown: no decision
    assert d.observe(obs(50, hw=50, end=1, committed=None, known=True)) == COMMITTED_GONE


def test_committed_gone_after_the_consumer_moved_back_is_not_a_loss():
    d = LostLogDetector()
    d.observe(obs(50, hw=50, end=50, committed=50, known=True))
    # the consumer reset itself (rebalance onto the new log): position went back
    assert d.observe(obs(3, hw=10, end=1, committed=None, known=True)) is None


def test_replaced_record_is_a_loss_at_once():
    d = LostLogDetector(confirmations=3)
    assert d.observe(obs(120, hw=200, end=150, replaced=True)) == REPLACED


def test_fingerprint_depends_on_time_and_contents():
    assert fingerprint(1, b"k", b"v") == fingerprint(1, b"k", b"v")
    assert (
        len(
            {
                fingerprint(1, b"k", b"v"),
                fingerprint(2, b"k", b"v"),
                fingerprint(1, b"k", b"w"),
                fingerprint(1, b"j", b"v"),
            }
        )
        == 4
    )


class FakeHandle:
    name = "fake"

    def __init__(self, rounds):
        self.rounds = list(rounds)
        self.rewound = []

    async def observe(self):
        return self.rounds.pop(0)

    async def rewind(self, topic, partition):
        self.rewound.append((topic, partition))


def test_watchdog_rewinds_logs_and_counts(caplog):
    h = FakeHandle(
        [
            [obs(50, hw=10, end=1, p=0), obs(7, hw=7, end=1, p=1)],
            [obs(50, hw=10, end=1, p=0), obs(7, hw=7, end=1, p=1)],
            [obs(0, hw=10, end=1, p=0)],
        ]
    )
    wd = LostLogWatchdog(h, interval_s=0.01, confirmations=2)
    before = metrics.LOST_LOG_RESETS.labels("events", BEYOND_LOG)._value.get()
    with caplog.at_level("ERROR", logger="streamrec.watchdog"):
        assert asyncio.run(wd.check_once()) == []
        assert asyncio.run(wd.check_once()) == [("events", 0, BEYOND_LOG)]
        assert asyncio.run(wd.check_once()) == []
    assert h.rewound == [("events", 0)] and wd.rewinds == 1
    assert metrics.LOST_LOG_RESETS.labels("events", BEYOND_LOG)._value.get() == before + 1
    lines = [r.getMessage() for r in caplog.records if "lost log" in r.getMessage()]
    assert len(lines) == 1 and "events:0 at position 50" in lines[0] and "high watermark 10" in lines[0]


def test_watchdog_survives_a_failing_observation():
    class Broken(FakeHandle):
        async def observe(self):
            raise ConnectionError("broker away")

    assert asyncio.run(LostLogWatchdog(Broken([]), interval_s=0.01).check_once()) == []
