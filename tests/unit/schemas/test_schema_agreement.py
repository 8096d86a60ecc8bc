"""The published JSON Schemas and the hand-written Python validators must agree.

For every message of a corpus (and for messages hypothesis invents) both must accept or both
refuse, and when both refuse, Python's error path must be one that jsonschema also blames.

Python is deliberately stricter in a few places JSON Schema cannot express. Those are listed
in PYTHON_ONLY and checked to be the *only* disagreements, and always in that direction: a
message Python accepts is always schema-valid.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

import schemas
from schemas import (
    EVENT_TYPES,
    ValidationError,
    decode_dead_letter,
    decode_event,
    decode_item,
    decode_model_update,
    decode_recommendation,
    validate_manifest,
)

VALIDATORS = {name: Draft202012Validator(schemas.json_schema(name)) for name in schemas.models.JSON_SCHEMA_FILES}


def _decode_manifest(data: bytes) -> None:
    validate_manifest(orjson.loads(data))


DECODERS = {
    "event": decode_event,
    "item": decode_item,
    "recommendation": decode_recommendation,
    "dead_letter": decode_dead_letter,
    "model_update": decode_model_update,
    "model_manifest": _decode_manifest,
}

# Rules only Python enforces (reason, what): JSON Schema has no keyword for them.
PYTHON_ONLY = {
    ("too_large", "context"),  # encoded size of context
    ("bad_timestamp", "calendar"),  # 30 February matches the date-time pattern
    ("out_of_range", "instant"),  # year 2100 after 1 January, or an offset crossing a bound
    ("duplicate", "items"),  # unique item ids in a recommendation
}


def _python_only(err: ValidationError) -> bool:
    if err.reason == "too_large" and err.path.endswith(".context"):
        return True
    if err.reason == "bad_timestamp" and "range" in err.detail:  # "day is out of range for month"
        return True
    if err.reason == "out_of_range" and err.detail.startswith('"'):  # a string timestamp's instant
        return True
    return err.reason == "duplicate" and ".items[" in err.path


def _child(path: str, key) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        return f"{path}.{key}"
    return f"{path}[{orjson.dumps(key).decode()}]"


def _schema_paths(validator: Draft202012Validator, instance) -> set[str]:
    """Every path jsonschema blames, in our notation, including the names a
    required/additionalProperties/propertyNames error is about."""
    paths: set[str] = set()

    def visit(errors) -> None:
        for e in errors:
            path = "$"
            for key in e.absolute_path:
                path = _child(path, key)
            paths.add(path)
            if e.validator == "required" and isinstance(e.instance, dict):
                paths.update(_child(path, k) for k in e.validator_value if k not in e.instance)
            if e.validator == "additionalProperties" and isinstance(e.instance, dict):
                paths.update(_child(path, k) for k in e.instance)
            if e.validator == "uniqueItems":  # Python names the repeated element
                paths.update(_child(path, i) for i in range(len(e.instance)))
            if "propertyNames" in e.relative_schema_path and isinstance(e.instance, str):
                paths.add(_child(path, e.instance))  # the error's instance is the bad name
            visit(e.context or ())

    visit(validator.iter_errors(instance))
    return paths


def check_agreement(name: str, message) -> bool:
    """Assert that both validators agree on ``message``; returns whether it is valid."""
    data = orjson.dumps(message)
    validator = VALIDATORS[name]
    schema_ok = validator.is_valid(orjson.loads(data))
    try:
        DECODERS[name](data)
    except ValidationError as err:
        if schema_ok:
            assert _python_only(err), f"Python refuses a schema-valid {name}: {err}"
            return False
        # Both refuse. Python reports its first error, which may be a Python-only rule while
        # jsonschema trips over another field; otherwise both must blame the same place.
        assert _python_only(err) or err.path in _schema_paths(validator, orjson.loads(data)), (
            f"{name}: Python blames {err.path} ({err}), jsonschema blames {sorted(_schema_paths(validator, message))}"
        )
        return False
    assert schema_ok, f"Python accepts a schema-invalid {name}: {[e.message for e in validator.iter_errors(message)]}"
    return True


def test_schema_files_are_valid_draft_2020_12():
    for name in VALIDATORS:
        schema = schemas.json_schema(name)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        Draft202012Validator.check_schema(schema)


# --- a fixed corpus ---------------------------------------------------------------------------------

EV = {"event_id": "e1", "user_id": "17850", "type": "purchase", "item_id": "85123A", "ts": 1291191960000}
IT = {"item_id": "85123A", "title": "WHITE HANGING HEART T-LIGHT HOLDER"}
REC = {
    "user_id": "u",
    "items": [{"item_id": "a", "score": 1.0, "reason": "r"}],
    "model_version": "v1",
    "variant": "fp32",
    "event_id": "e1",
    "event_ts": 1291191960000,
    "published_ts": 1291191960100,
}
DL = {
    "reason": "$: bad_json: x",
    "error_code": "bad_json",
    "source_topic": "events",
    "partition": 0,
    "offset": 5,
    "value_b64": "e30=",
    "ts": 1291191960000,
}
MU = {
    "version": "v1",
    "location": "/m/v1",
    "manifest_sha256": "0" * 64,
    "created_at": "2024-01-01T00:00:00Z",
    "metrics": {},
}
MF = {
    "format": 1,
    "version": "v1",
    "created_at": "2024-01-01T00:00:00Z",
    "base_model": "m",
    "dim": 8,
    "max_seq_len": 4,
    "max_text_len": 4,
    "features": ["f"],
    "event_type_ids": {"view": 1},
    "files": {"ranker.onnx": {"sha256": "0" * 64, "bytes": 1}},
    "ranker_variants": ["fp32"],
}


def w(base: dict, **changes) -> dict:
    """``base`` with changes; a value of ... removes the key."""
    out = {**base, **changes}
    return {k: v for k, v in out.items() if v is not ...}


CORPUS = [
    # (schema, message, valid?) ; None for "Python-only refusal"
    ("event", EV, True),
    ("event", w(EV, user_id=17850.0, item_id=22423), True),
    ("event", w(EV, type="search", item_id=..., query="lantern"), True),
    ("event", w(EV, type="erase_user", item_id=...), True),
    ("event", w(EV, type="rating", rating=4.5), True),
    (
        "event",
        w(EV, ts="2010-12-01T08:26:00+00:00", session_id="", quantity=-3, price=0, context={"a": [1, {"b": [None]}]}),
        True,
    ),
    ("event", w(EV, ts=1291191960000.5, schema_version=1), True),
    ("event", w(EV, user_id=17850.5), False),
    ("event", w(EV, user_id=True), False),
    ("event", w(EV, user_id=None), False),
    ("event", w(EV, user_id=2**53 + 2), False),
    ("event", w(EV, user_id=...), False),
    ("event", w(EV, type="pv"), False),
    ("event", w(EV, item_id=...), False),
    ("event", w(EV, type="search", item_id=...), False),
    ("event", w(EV, type="rating"), False),
    ("event", w(EV, ts=1e18), False),
    ("event", w(EV, ts="2010-12-01 08:26:00"), False),
    ("event", w(EV, ts="1989-12-31T23:30:00-01:00"), False),
    ("event", w(EV, ts="2011-02-30T00:00:00Z"), None),
    ("event", w(EV, ts="2100-06-01T00:00:00Z"), None),
    ("event", w(EV, quantity=2.5), False),
    ("event", w(EV, quantity=True), False),
    ("event", w(EV, price=-1), False),
    ("event", w(EV, schema_version=2), False),
    ("event", w(EV, schema_version=True), False),
    ("event", w(EV, extra=1), False),
    ("event", w(EV, context={"a": {"b": {"c": {"d": 1}}}}), True),  # 4 levels
    ("event", w(EV, context={"a": {"b": {"c": {"d": {"e": 1}}}}}), False),
    ("event", w(EV, context={"a": [[[[]]]]}), False),
    ("event", w(EV, context={f"k{i}": 0 for i in range(33)}), False),
    ("event", w(EV, context={"blob": "x" * 5000}), None),
    ("item", IT, True),
    (
        "item",
        w(IT, title="  ", available=False, price=1, ts="2017-11-25T00:00:00+08:00", brand="b", category="c"),
        True,
    ),
    ("item", w(IT, title="t" * 513), False),
    ("item", w(IT, available=0), False),
    ("item", w(IT, item_id=...), False),
    ("recommendation", REC, True),
    ("recommendation", w(REC, items=[]), True),
    ("recommendation", w(REC, items=[{"item_id": "a", "score": 1, "reason": "r", "rank": 1}]), False),
    ("recommendation", w(REC, items=[{"item_id": "a", "score": 1, "reason": "r"}] * 2), None),
    ("recommendation", w(REC, event_ts=1291191960000.5), False),
    ("dead_letter", DL, True),
    ("dead_letter", w(DL, key_b64="", value_utf8="{}", worker="w1"), True),
    ("dead_letter", w(DL, value_b64="e30"), False),
    ("dead_letter", w(DL, offset=-1), False),
    ("model_update", MU, True),
    ("model_update", w(MU, note="n"), True),
    ("model_update", w(MU, version=".hidden"), False),
    ("model_update", w(MU, created_at="2024-01-01"), False),
    ("model_manifest", MF, True),
    (
        "model_manifest",
        w(MF, extra={"anything": 1}, training_window={"start": 1291191960000, "end": "2011-10-01T00:00:00Z"}),
        True,
    ),
    ("model_manifest", w(MF, files={"a/b": {"sha256": "0" * 64, "bytes": 1}}), False),
    ("model_manifest", w(MF, ranker_variants=["fp32", "fp32"]), False),
    ("model_manifest", w(MF, event_type_ids={"view": 0}), False),
    ("model_manifest", w(MF, format=2), False),
]


@pytest.mark.parametrize(("name", "message", "expected"), CORPUS, ids=[f"{c[0]}-{i}" for i, c in enumerate(CORPUS)])
def test_corpus_agreement(name, message, expected):
    valid = check_agreement(name, message)
    if expected is None:  # a documented Python-only rule: schema-valid, Python refuses
        assert VALIDATORS[name].is_valid(message) and not valid
    else:
        assert valid is expected


def test_python_only_rules_are_all_exercised():
    hits = set()
    for name, message, expected in CORPUS:
        if expected is None:
            with pytest.raises(ValidationError) as info:
                DECODERS[name](orjson.dumps(message))
            err = info.value
            what = {
                "too_large": "context",
                "bad_timestamp": "calendar",
                "out_of_range": "instant",
                "duplicate": "items",
            }
            hits.add((err.reason, what[err.reason]))
    assert hits == PYTHON_ONLY


# --- hypothesis: invented messages ----------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**60), 2**60),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=12,
)


def good_or_bad(good, bad):
    """Mostly ``good`` (so that valid messages are common), sometimes ``bad`` or any JSON value."""
    return st.integers(0, 9).flatmap(lambda roll: good if roll else st.one_of(bad, json_values))


ids = good_or_bad(
    st.one_of(st.text(min_size=1, max_size=128), st.integers(-(2**53), 2**53), st.integers(-(10**9), 10**9).map(float)),
    st.one_of(
        st.just(""),
        st.text(min_size=129, max_size=130),
        st.integers(2**53 + 1, 2**60),
        st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer()),
    ),
)
rfc3339 = st.builds(
    lambda moment, sep, offset_min, frac: (
        (moment + timedelta(minutes=offset_min)).strftime(f"%Y-%m-%d{sep}%H:%M:%S")
        + frac
        + (
            "Z"
            if offset_min == 0
            else f"{'+' if offset_min > 0 else '-'}{abs(offset_min) // 60:02d}:{abs(offset_min) % 60:02d}"
        )
    ),
    st.datetimes(min_value=datetime(1985, 1, 1), max_value=datetime(2105, 1, 1)),
    st.sampled_from(["T", " ", "t"]),
    st.integers(-23 * 60, 23 * 60),
    st.sampled_from(["", ".5", ".123456789"]),
)
timestamps = good_or_bad(
    st.one_of(st.integers(631152000000, 4102444800000), st.floats(6.32e11, 4.1e12), rfc3339),
    st.one_of(
        st.integers(0, 5 * 10**12),
        st.floats(allow_nan=False, allow_infinity=False),
        st.from_regex(r"\A(19|20|21)[0-9]{2}-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-6][0-9]Z\Z"),
        st.text(max_size=25),
    ),
)
number = st.floats(allow_nan=False, allow_infinity=False)
FIELD_VALUES = {
    "schema_version": good_or_bad(st.just(1), json_scalars),
    "event_id": good_or_bad(
        st.text(min_size=1, max_size=128), st.one_of(st.just(""), st.text(min_size=129, max_size=130))
    ),
    "user_id": ids,
    "type": good_or_bad(st.sampled_from(EVENT_TYPES), st.text(max_size=10)),
    "item_id": ids,
    "query": good_or_bad(
        st.text(min_size=1, max_size=512), st.one_of(st.just(""), st.text(min_size=513, max_size=520))
    ),
    "ts": timestamps,
    "session_id": good_or_bad(st.text(max_size=128), st.text(min_size=129, max_size=130)),
    "quantity": good_or_bad(st.integers(-(10**6), 10**6), st.one_of(st.integers(-(2 * 10**6), 2 * 10**6), number)),
    "price": good_or_bad(st.floats(0, 1e7), st.one_of(st.integers(-5, 2 * 10**7), number)),
    "rating": good_or_bad(st.floats(0, 10), st.one_of(st.integers(-2, 12), number)),
    "context": good_or_bad(
        st.dictionaries(st.text(max_size=8), json_values, max_size=8),
        st.one_of(
            st.dictionaries(st.text(max_size=8), json_values, min_size=30, max_size=34),
            st.dictionaries(st.text(max_size=3), st.text(min_size=1500, max_size=1500), min_size=2, max_size=4),
            st.recursive(
                st.just({}),
                lambda inner: st.dictionaries(st.text(max_size=2), inner, min_size=1, max_size=1),
                max_leaves=6,
            ),
        ),
    ),
}


@st.composite
def events(draw):
    """An event with a random subset of fields, each mostly valid, sometimes of the wrong kind
    or out of bounds, and now and then an unknown field."""
    msg = {}
    for key, values in FIELD_VALUES.items():
        required = key in ("event_id", "user_id", "type", "ts", "item_id")
        if draw(st.floats(0, 1)) < (0.97 if required else 0.3):
            msg[key] = draw(values)
    if draw(st.integers(0, 19)) == 0:
        msg[draw(st.text(min_size=1, max_size=8))] = draw(json_values)
    return msg


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events())
def test_hypothesis_events_agree_and_round_trip(message):
    if check_agreement("event", message):
        event = decode_event(orjson.dumps(message))
        assert decode_event(schemas.encode(event)) == event


item_fields = {
    "schema_version": FIELD_VALUES["schema_version"],
    "item_id": ids,
    "title": good_or_bad(st.text(max_size=512), st.text(min_size=513, max_size=515)),
    "description": good_or_bad(st.text(max_size=20), st.text(min_size=4090, max_size=4100)),
    "category": good_or_bad(st.text(max_size=256), st.text(min_size=257, max_size=260)),
    "brand": st.text(max_size=20),
    "price": FIELD_VALUES["price"],
    "available": good_or_bad(st.booleans(), json_scalars),
    "ts": timestamps,
}


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.fixed_dictionaries({}, optional=item_fields),
    st.one_of(st.none(), st.tuples(st.text(min_size=1, max_size=6), json_values)),
)
def test_hypothesis_items_agree_and_round_trip(message, extra):
    if extra is not None:
        message[extra[0]] = extra[1]
    if check_agreement("item", message):
        item = decode_item(orjson.dumps(message))
        assert decode_item(schemas.encode(item)) == item


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_hypothesis_any_json_agrees_for_every_contract(value):
    for name in VALIDATORS:
        check_agreement(name, value)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_hypothesis_random_bytes_raise_only_validation_errors(data):
    for decode in (decode_event, decode_item, decode_recommendation, decode_dead_letter, decode_model_update):
        try:
            decode(data)
        except ValidationError as err:
            assert err.reason in schemas.REASONS


def test_boundary_instants_are_python_only_in_one_direction():
    # Written year 2100 but instant after the bound: schema-valid, Python refuses (documented).
    assert VALIDATORS["event"].is_valid(w(EV, ts="2100-01-01T00:00:01Z"))
    assert not check_agreement("event", w(EV, ts="2100-01-01T00:00:01Z"))
    # The converse never happens: a 1989 year is refused by both, whatever its offset.
    assert not check_agreement("event", w(EV, ts="1989-12-31T23:00:00-02:00"))
    ok = datetime(1990, 1, 1, tzinfo=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert check_agreement("event", w(EV, ts=ok))
