"""Bad input through a real worker: more than 10,000 malformed, mutated and generated messages.

Sources: real online_retail events (``schemas.sources``) encoded with ``schemas.encode``; JSON-level
and byte-level mutations of them; messages invented by hypothesis; and hand-picked extremes
(oversized up to 900 KB, nesting up to 30,000 levels, tombstones, invalid UTF-8, NaN literals).

The contract's decoder is the oracle for which messages are valid. Promise, checked end to end:
the worker neither crashes nor stalls; every invalid message is on the dead-letter topic exactly
once, with its original bytes and the reason code the contract gives (counts match exactly);
every valid message is applied, and every user's list in Redis reflects that user's last valid
event (or is absent when that event was an ``erase_user``).
"""

from __future__ import annotations

import asyncio
import collections
import random
import time

import orjson
import pytest
import redis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from schemas import (
    MAX_MESSAGE_BYTES,
    ValidationError,
    decode_dead_letter,
    decode_event,
    encode,
)
from schemas.sources import load_dataset
from streamer.dlq import DLQ_VALUE_LIMIT
from tests.conftest import wait_until
from tests.integration.helpers import WorkerProcess, produce, read_all, unique_topics
from tests.integration.test_faults import metric, shared_model_root

pytestmark = pytest.mark.integration

SEED = 20261123
BAD_VALUES = [
    None,
    "",
    [],
    {},
    True,
    False,
    -1,
    0,
    1.5,
    "x" * 200,
    "x" * 600,
    {"a": [1, 2]},
    [None],
    "null",
    "2011-02-30T00:00:00Z",
    "2011-12-09T12:50:00",
    10**16,
    -(2**53) - 2,
    9.99e15,
    "\u0000",
    "\U0001f600",
]
FIELDS = [
    "schema_version",
    "event_id",
    "user_id",
    "type",
    "item_id",
    "query",
    "ts",
    "session_id",
    "quantity",
    "price",
    "rating",
    "context",
]


# ---- generators -------------------------------------------------------------------------------
def json_mutation(rng: random.Random, d: dict) -> bytes:
    """One structural change to a real event: mostly invalid, sometimes still valid."""
    d = dict(d)
    kind = rng.randrange(14)
    key = rng.choice(FIELDS)
    if kind == 0:
        d.pop(rng.choice(list(d)), None)
    elif kind in (1, 2, 3):
        d[key] = rng.choice(BAD_VALUES)
    elif kind == 4:
        d[rng.choice(["extra", "userId", "Type", "", "item id"])] = rng.choice(BAD_VALUES)
    elif kind == 5:
        d["type"] = rng.choice(["view", "click", "search", "erase_user", "favorite", "rating", "refund", "VIEW", ""])
    elif kind == 6:
        d["ts"] = rng.choice(
            [
                d.get("ts", 0) // 1000,
                d.get("ts", 0) * 1000,
                "2011-12-09T12:50:00Z",
                "2011-12-09T12:50:00+25:00",
                "1989-12-31T23:59:59Z",
                "2100-01-01T00:00:01Z",
                4_102_444_800_000,
                631_151_999_999,
                "now",
            ]
        )
    elif kind == 7:
        d["user_id"] = rng.choice([12347, 12347.0, 12347.5, 2**53 + 1, "u" * 129, -5, True])
    elif kind == 8:
        depth = rng.choice([3, 4, 5, 8])
        ctx: dict = {"leaf": 1}
        for _ in range(depth - 1):
            ctx = {"n": ctx}
        d["context"] = ctx
    elif kind == 9:
        d["context"] = {f"k{i}": "v" * rng.choice([10, 200]) for i in range(rng.choice([5, 20, 33]))}
    elif kind == 10:
        d["schema_version"] = rng.choice([1, 2, 0, "1", 1.0])
    elif kind == 11:
        d["price"] = rng.choice([-1, 1e8, 3.5, "3.5"])
        d["quantity"] = rng.choice([1, -1_000_001, 2_000_000, 2.5])
    elif kind == 12:
        return orjson.dumps(d)[:-1] + b', "ts": NaN}'  # a literal orjson cannot write
    else:
        d["query"] = rng.choice(["lantern", "", "q" * 513, 5])
    return orjson.dumps(d)


def byte_mutation(rng: random.Random, raw: bytes, other: bytes) -> bytes:
    b = bytearray(raw)
    kind = rng.randrange(10)
    if kind == 0:
        for _ in range(rng.randint(1, 3)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif kind == 1:
        b = b[: rng.randrange(len(b))]
    elif kind == 2:
        at = rng.randrange(len(b))
        b[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    elif kind == 3:
        at = rng.randrange(len(b))
        del b[at : at + rng.randint(1, 10)]
    elif kind == 4:
        at = rng.randrange(len(b))
        b[at:at] = b[max(0, at - 12) : at]
    elif kind == 5:
        b = b[: len(b) // 2] + other[len(other) // 2 :]
    elif kind == 6:
        b = b.replace(b'"', b"\xff", 1)
    elif kind == 7:
        b = b"[" + b + b"]"
    elif kind == 8:
        b = b"\xef\xbb\xbf" + b
    else:
        b = b + rng.choice([b"x", b"{}", b"\n{}", b" "])
    return bytes(b)


def specials() -> list[bytes | None]:
    """Extremes: tombstones, sizes around and far over the limit, deep nesting, bad encodings."""
    base = {"event_id": "sp", "user_id": "special-user", "type": "view", "item_id": "71053", "ts": 1_320_000_000_000}
    out: list[bytes | None] = [
        None,
        b"",
        b" ",
        b"null",
        b"[]",
        b"{}",
        b'"text"',
        b"1e999",
        b"-0",
        b"true",
        b'{"user_id": "\\ud800"}',
        b"\xc0\xaf",
        b"\xff\xfe{\x00}\x00",
        b"{" * 10,
        b"}" * 10,
        b'{"event_id":"a","event_id":"b"}',
    ]
    for size in (MAX_MESSAGE_BYTES - 200, MAX_MESSAGE_BYTES + 1, 200_000, 900_000):
        pad = size - len(orjson.dumps({**base, "session_id": ""}))
        out.append(orjson.dumps({**base, "event_id": f"big-{size}", "session_id": "s" * max(pad, 0)}))
    for depth in (100, 1024, 1025, 30_000):
        out.append(b"[" * depth + b"]" * depth)
        out.append(b'{"a":' * depth + b"1" + b"}" * depth)
    out.append(orjson.dumps({**base, "event_id": "deep-ctx", "context": {"a": {"b": {"c": {"d": {"e": 1}}}}}}))
    return out


def hypothesis_messages(n: int) -> list[bytes | None]:
    """Messages invented by hypothesis (derandomized: the same list every run): raw bytes, any
    JSON value, and event-like objects whose fields are mostly valid."""
    from tests.unit.schemas.test_schema_agreement import events as event_dicts
    from tests.unit.schemas.test_schema_agreement import json_values

    strategy = st.one_of(
        st.binary(max_size=300),
        json_values.map(orjson.dumps),
        event_dicts().map(lambda d: orjson.dumps(d, option=orjson.OPT_NON_STR_KEYS)),
        event_dicts().map(lambda d: orjson.dumps(d)[: max(1, len(orjson.dumps(d)) - 3)]),
    )
    out: list[bytes] = []

    @settings(
        max_examples=n,
        database=None,
        derandomize=True,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(message: bytes) -> None:
        out.append(message)

    collect()
    return out


def oracle(value: bytes | None) -> tuple[bool, str | None, object]:
    """The contract decides; a tombstone is an empty value, as the worker's ingest treats it."""
    try:
        return True, None, decode_event(value if value is not None else b"")
    except ValidationError as exc:
        return False, exc.reason, None


def build_corpus(data_dir) -> tuple[list[tuple[bytes | None, bytes | None]], dict]:
    rng = random.Random(SEED)
    dataset = load_dataset("online_retail", data_dir, limit_rows=4500)
    real = [encode(e) for e in dataset.events]
    dicts = [e.to_dict() for e in dataset.events]
    payloads: list[tuple[str, bytes | None]] = [("real", v) for v in real]
    payloads += [("json_mutation", json_mutation(rng, rng.choice(dicts))) for _ in range(4200)]
    payloads += [("byte_mutation", byte_mutation(rng, rng.choice(real), rng.choice(real))) for _ in range(2300)]
    payloads += [("hypothesis", m) for m in hypothesis_messages(1500)]
    payloads += [("special", m) for m in specials()]
    rng.shuffle(payloads)
    messages, invalid, kinds = [], collections.Counter(), collections.Counter()
    last: dict[str, tuple[str, str]] = {}  # user -> (event_id, type) of the last valid event
    bad_values = collections.Counter()
    reasons: dict[bytes, set] = collections.defaultdict(set)
    for source, value in payloads:
        ok, reason, ev = oracle(value)
        kinds[(source, ok)] += 1
        if ok:
            messages.append((ev.user_id.encode(), value))  # keyed by user: per-user order holds
            last[ev.user_id] = (ev.event_id, ev.type)
        else:
            invalid[reason] += 1
            kept = (value or b"")[:DLQ_VALUE_LIMIT]  # a dead letter keeps the first 256 KiB
            bad_values[kept] += 1
            reasons[kept].add(reason)
            key = rng.choice([None, b"k", b"12347"])
            messages.append((key if value is not None else b"tombstone", value))  # Kafka needs one of the two
    return messages, {
        "last": last,
        "invalid": invalid,
        "bad_values": bad_values,
        "reasons": reasons,
        "kinds": kinds,
        "real": len(real),
        "items": dataset.items,
    }


# ---- the test --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_root(tmp_path_factory):
    return shared_model_root(tmp_path_factory)


async def produce_big(bootstrap: str, topic: str, messages) -> None:
    """Like helpers.produce, with room for the 900 KB messages."""
    from aiokafka import AIOKafkaProducer

    p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_request_size=2 * 1024 * 1024)
    await p.start()
    try:
        for key, value in messages:
            await p.send(topic, value, key=key)
        await p.flush()
    finally:
        await p.stop()


def test_ten_thousand_bad_and_mutated_messages(stack, model_root, data_dir, tmp_path):
    t_build = time.monotonic()
    messages, info = build_corpus(data_dir)
    build_s = time.monotonic() - t_build
    n_invalid = sum(info["invalid"].values())
    n_valid = len(messages) - n_invalid
    assert len(messages) >= 10_000 and n_invalid >= 5_000 and n_valid >= 3_000, (len(messages), n_invalid)

    topics = unique_topics(stack, "fuzz")
    r = redis.Redis.from_url(stack.redis_url)
    items = [(i.item_id.encode(), encode(i)) for i in list(info["items"].values())[:300]]
    asyncio.run(produce(stack.bootstrap, topics["items"], items))
    w = WorkerProcess(stack, model_root, tmp_path / "w", app_id="fuzz", topics=topics).start()
    try:
        w.wait_ready()
        t0 = time.monotonic()
        asyncio.run(produce_big(stack.bootstrap, topics["events"], messages))
        produced_s = time.monotonic() - t0
        dls = asyncio.run(read_all(stack.bootstrap, topics["dlq"], expect=n_invalid, timeout=240))
        prefix = topics["prefix"]

        def lists_done() -> bool:
            users = list(info["last"])
            values = r.mget([prefix + u for u in users])
            for u, v in zip(users, values):
                event_id, etype = info["last"][u]
                if etype == "erase_user":
                    if v is not None:
                        return False
                elif v is None or orjson.loads(v)["event_id"] != event_id:
                    return False
            return True

        wait_until(lists_done, 240, "every valid user's list current", interval=1.0, on_fail=w.tail)
        drained_s = time.monotonic() - t0
        # a few more seconds: anything extra on the DLQ would show
        time.sleep(2)
        dls += asyncio.run(read_all(stack.bootstrap, topics["dlq"], timeout=5))[len(dls) :]
        # no stall: a fresh event after the storm is served promptly
        t1 = time.monotonic()
        asyncio.run(
            produce(
                stack.bootstrap,
                topics["events"],
                [
                    (
                        b"after-fuzz",
                        orjson.dumps(
                            {
                                "event_id": "after-fuzz-1",
                                "user_id": "after-fuzz",
                                "type": "view",
                                "item_id": "71053",
                                "ts": 1_320_000_000_000,
                            }
                        ),
                    )
                ],
            )
        )
        wait_until(lambda: r.exists(prefix + "after-fuzz"), 30, "list after the fuzz", interval=0.05, on_fail=w.tail)
        after_s = time.monotonic() - t1
        m = w.metrics()
        alive = w.proc.poll() is None
    finally:
        code = w.stop()

    decoded = [decode_dead_letter(d.value) for d in dls]
    got_values = collections.Counter(dl.value() for dl in decoded)
    wrong_reason = [
        (dl.value()[:60], dl.error_code) for dl in decoded if dl.error_code not in info["reasons"][dl.value()]
    ]
    print(
        f"\nFUZZ: {len(messages)} messages ({n_valid} valid, {n_invalid} invalid) built in {build_s:.1f} s; "
        f"kinds {dict(info['kinds'])}; reasons {dict(info['invalid'])}; produced in {produced_s:.1f} s, "
        f"all lists current {drained_s:.1f} s after the first send; DLQ {len(decoded)}; "
        f"fresh event served {after_s:.2f} s after the storm; exit {code}"
    )
    assert alive, "worker died during the fuzz"
    assert code in (0, -15), w.tail()
    assert len(decoded) == n_invalid, f"DLQ has {len(decoded)}, expected {n_invalid}"
    assert got_values == info["bad_values"], "DLQ values differ from the invalid messages sent"
    assert not wrong_reason, wrong_reason[:5]
    assert all(dl.reason and dl.source_topic == topics["events"] and dl.offset >= 0 for dl in decoded)
    cut = [dl for dl in decoded if "truncated to its first" in dl.reason]
    assert len(cut) == sum(1 for _k, v in messages if v is not None and len(v) > DLQ_VALUE_LIMIT) >= 1
    assert metric(m, 'streamrec_events_total{outcome="dead_letter",topic="events"}') == n_invalid
    valid_seen = (
        metric(m, 'streamrec_events_total{outcome="valid",topic="events"}')
        + metric(m, 'streamrec_events_total{outcome="duplicate",topic="events"}')
        + metric(m, 'streamrec_events_total{outcome="erased",topic="events"}')
    )
    assert valid_seen == n_valid + 1  # + the event after the fuzz
    assert after_s < 5
