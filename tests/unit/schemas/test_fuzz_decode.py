"""Fast fuzz of ``schemas.decode_event``: whatever the bytes, it returns an Event or raises a
ValidationError with a known reason, in bounded time, and the dead letter built from the failure
is itself a valid message. Real online_retail events are the seeds of the mutations.
"""

from __future__ import annotations

import time

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import (
    MAX_DEAD_LETTER_BYTES,
    MAX_MESSAGE_BYTES,
    REASONS,
    DeadLetter,
    Event,
    ValidationError,
    decode_dead_letter,
    decode_event,
    encode,
)

FAST = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def seeds(data_dir) -> list[bytes]:
    from schemas.sources import load_dataset

    events = load_dataset("online_retail", data_dir, limit_rows=300).events
    assert len(events) > 100
    return [encode(e) for e in events[:200]]


def check(raw) -> Event | None:
    """decode_event's promise, plus: the failure makes a dead letter that decodes back to it."""
    t0 = time.perf_counter()
    try:
        ev = decode_event(raw)
    except ValidationError as exc:
        assert exc.reason in REASONS, exc.reason
        assert str(exc)
        if isinstance(raw, (bytes, bytearray)) and len(raw) * 4 // 3 + 4096 < MAX_DEAD_LETTER_BYTES:
            dl = DeadLetter.for_message(
                exc, topic="events", partition=0, offset=1, key=b"k", value=bytes(raw), ts=1_320_000_000_000
            )
            back = decode_dead_letter(encode(dl))
            assert back.value() == bytes(raw) and back.error_code == exc.reason
        ev = None
    assert time.perf_counter() - t0 < 1.0, "decode took over a second"
    if ev is not None:
        assert decode_event(encode(ev)) == ev  # a valid event survives re-encoding
    return ev


@FAST
@given(st.data())
def test_byte_mutations_of_real_events(seeds, data):
    raw = bytearray(data.draw(st.sampled_from(seeds)))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.integers(0, 4))
        at = data.draw(st.integers(0, max(len(raw) - 1, 0)))
        if op == 0 and raw:
            raw[at] = data.draw(st.integers(0, 255))
        elif op == 1:
            raw = raw[:at]
        elif op == 2:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=16))
        elif op == 3:
            del raw[at : at + data.draw(st.integers(1, 20))]
        else:
            raw[at:at] = raw[max(0, at - 10) : at]
    check(bytes(raw))


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=20)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=20,
)


@FAST
@given(st.data())
def test_field_replacements_in_real_events(seeds, data):
    """Any field of a real event set to any JSON value (or removed, or an extra field added)."""
    d = orjson.loads(data.draw(st.sampled_from(seeds)))
    for _ in range(data.draw(st.integers(1, 3))):
        key = data.draw(st.sampled_from(sorted(d) + ["query", "context", "rating", "extra", "schema_version"]))
        if data.draw(st.booleans()):
            d.pop(key, None)
        else:
            d[key] = data.draw(json_values)
    try:
        raw = orjson.dumps(d)
    except TypeError:  # an integer over 64 bits, or NaN: write the JSON text by hand
        raw = (
            repr(d).replace("'", '"').replace("None", "null").replace("True", "true").replace("False", "false").encode()
        )
    check(raw)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40_000), st.sampled_from([b"[", b'{"a":']))
def test_deep_nesting_is_refused_quickly(depth, opener):
    closer = b"]" if opener == b"[" else b"}"
    raw = opener * depth + (b"1" if opener != b"[" else b"") + closer * depth
    ev = check(raw)
    assert ev is None


@FAST
@given(
    st.one_of(
        st.binary(max_size=400), st.text(max_size=200), st.none(), st.integers(), st.lists(st.integers(), max_size=3)
    )
)
def test_anything_at_all(value):
    check(value)


def test_size_limit_is_exact():
    base = {"event_id": "e", "user_id": "u", "type": "view", "item_id": "1", "ts": 1_320_000_000_000, "session_id": ""}
    pad = MAX_MESSAGE_BYTES - len(orjson.dumps(base))
    at_limit = orjson.dumps({**base, "session_id": "s" * 128})[:-1] + b" " * (pad - 128) + b"}"
    assert len(at_limit) == MAX_MESSAGE_BYTES and check(at_limit) is not None
    with pytest.raises(ValidationError) as info:
        decode_event(at_limit[:-1] + b" }")
    assert info.value.reason == "too_large"
    big = b"[" * 5_000_000  # 5 MB: refused on size before any parsing
    t0 = time.perf_counter()
    with pytest.raises(ValidationError):
        decode_event(big)
    assert time.perf_counter() - t0 < 0.05
