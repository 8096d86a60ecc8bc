"""The wire models: what they accept, how they normalise, and the exact code and path of every
refusal (the dead-letter topic reports them to producers, so they are part of the contract)."""

from __future__ import annotations

import base64
import json
import pickle
import subprocess
import sys
from datetime import datetime, timezone

import orjson
import pytest

import schemas
from schemas import (
    EVENT_TYPES,
    MAX_MESSAGE_BYTES,
    REASONS,
    DeadLetter,
    Event,
    Item,
    ModelUpdate,
    RecItem,
    Recommendation,
    ValidationError,
    decode_dead_letter,
    decode_event,
    decode_item,
    decode_model_update,
    decode_recommendation,
    encode,
    validate_manifest,
)
from schemas.ranking import EVENT_TYPE_IDS, FEATURE_NAMES, MODEL_FORMAT

TS = 1291191960000  # 2010-12-01T08:26:00Z, the first online_retail line
BASE = {"event_id": "or-9202340e85de11ad", "user_id": "17850", "type": "purchase", "item_id": "85123A", "ts": TS}


def raw(**changes) -> bytes:
    """BASE with fields replaced (value None removes the field), as wire bytes."""
    msg = {**BASE, **changes}
    return orjson.dumps({k: v for k, v in msg.items() if v is not None})


def refused(decode, data) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        decode(data)
    assert info.value.reason in REASONS
    return info.value


# --- events: accepted and normalised ------------------------------------------------------------


def test_first_online_retail_line_as_event():
    ev = decode_event(raw(quantity=6, price=2.55, session_id="536365"))
    assert ev == Event(
        "or-9202340e85de11ad", "17850", "purchase", TS, "85123A", session_id="536365", quantity=6, price=2.55
    )
    assert ev.schema_version == 1


@pytest.mark.parametrize(
    ("user_id", "expected"),
    [(17850.0, "17850"), (17850, "17850"), ("17850.0", "17850.0"), (-0.0, "0"), (2**53, str(2**53))],
)
def test_numeric_user_ids_are_normalised_strings_are_kept(user_id, expected):
    # A JSON number is an id written by a producer's language; a string is opaque and kept as is.
    assert decode_event(raw(user_id=user_id)).user_id == expected


def test_numeric_item_id_is_normalised():
    assert decode_event(raw(item_id=22423.0)).item_id == "22423"


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        (TS, TS),
        (TS + 0.9, TS),  # float ms: floored
        (float(TS), TS),
        ("2010-12-01T08:26:00Z", TS),
        ("2010-12-01t08:26:00z", TS),
        ("2010-12-01 08:26:00Z", TS),
        ("2010-12-01T09:26:00+01:00", TS),
        ("2010-12-01T08:26:00.123456789Z", TS + 123),
        ("2010-12-01T08:26:00.5-00:00", TS + 500),
        ("1990-01-01T00:00:00Z", 631152000000),
        ("2100-01-01T00:00:00Z", 4102444800000),
        (631152000000, 631152000000),
    ],
)
def test_timestamps_in_every_accepted_form(ts, expected):
    assert decode_event(raw(ts=ts)).ts == expected


def test_search_needs_a_query_but_no_item():
    ev = decode_event(raw(type="search", item_id=None, query="heart t-light"))
    assert (ev.item_id, ev.query) == (None, "heart t-light")


def test_erase_user_needs_no_item():
    assert decode_event(raw(type="erase_user", item_id=None)).item_id is None


def test_real_data_quirks_that_the_contract_accepts():
    # Cancellations carry the cancelled quantity; zero and negative quantities are valid on the
    # wire (the data source decides what a stock adjustment is), and so is a free item.
    assert decode_event(raw(type="cancel", quantity=12)).type == "cancel"
    assert decode_event(raw(quantity=0)).quantity == 0
    assert decode_event(raw(quantity=-80995)).quantity == -80995
    assert decode_event(raw(quantity=6.0)).quantity == 6
    assert decode_event(raw(price=0)).price == 0.0
    assert decode_event(raw(type="rating", rating=3)).rating == 3.0


def test_blank_session_is_absent_and_context_kept():
    ev = decode_event(raw(session_id="  ", context={"page": "home", "slots": [1, 2, {"a": [None]}]}))
    assert ev.session_id is None
    assert ev.context == {"page": "home", "slots": [1, 2, {"a": [None]}]}


def test_input_forms_bytes_bytearray_memoryview_and_str():
    data = raw()
    for form in (data, bytearray(data), memoryview(data), data.decode()):
        assert decode_event(form).event_id == BASE["event_id"]


def test_encode_omits_absent_fields_and_round_trips():
    ev = decode_event(raw(type="view", context={"k": 1.5}))
    assert orjson.loads(encode(ev)) == {**BASE, "type": "view", "context": {"k": 1.5}, "schema_version": 1}
    assert decode_event(encode(ev)) == ev
    assert Event.from_dict(ev.to_dict()) == ev


def test_models_are_frozen_with_slots():
    ev = decode_event(raw())
    with pytest.raises(AttributeError):
        ev.user_id = "other"  # type: ignore[misc]
    assert not hasattr(ev, "__dict__")


# --- events: refused, with the exact reason and path ------------------------------------------


def _deep(levels: int) -> dict:
    value: dict = {"leaf": 1}
    for i in range(levels - 1):
        value = {f"l{i}": value}
    return value


INVALID_EVENTS = [
    # label, message bytes, reason, path
    ("truncated last line", raw()[:-9], "bad_json", "$"),
    ("taobao csv line", b"100370,1968385,1875258,pv", "bad_json", "$"),
    ("empty message", b"", "bad_json", "$"),
    ("not utf-8", b'{"event_id": "\xff"}', "bad_json", "$"),
    ("lone surrogate", b'{"event_id": "\\ud800"}', "bad_json", "$"),
    ("NaN literal", raw()[:-1] + b',"price":NaN}', "bad_json", "$"),
    ("array", b"[1, 2]", "not_object", "$"),
    ("string", b'"event"', "not_object", "$"),
    ("deep json", b"[" * 100_000 + b"]" * 100_000, "too_large", "$"),
    ("deep json under size limit", b"[" * 5000 + b"]" * 5000, "too_deep", "$"),
    ("oversized message", raw(query="x" * MAX_MESSAGE_BYTES, type="search"), "too_large", "$"),
    ("unknown field", raw(customer="17850"), "unknown_field", "$.customer"),
    ("unknown odd field", raw(**{"Invoice No": "1"}), "unknown_field", '$["Invoice No"]'),
    ("schema version 2", raw(schema_version=2), "unsupported_version", "$.schema_version"),
    ("schema version string", raw(schema_version="1"), "wrong_type", "$.schema_version"),
    ("schema version true", raw(schema_version=True), "wrong_type", "$.schema_version"),
    ("no event id", raw(event_id=None), "missing_field", "$.event_id"),
    ("empty event id", raw(event_id=""), "empty", "$.event_id"),
    ("numeric event id", raw(event_id=5), "wrong_type", "$.event_id"),
    ("event id too long", raw(event_id="e" * 129), "too_long", "$.event_id"),
    ("missing user (no CustomerID)", raw(user_id=None), "missing_field", "$.user_id"),
    ("empty user id", raw(user_id=""), "empty", "$.user_id"),
    ("fractional user id", raw(user_id=17850.5), "wrong_type", "$.user_id"),
    ("boolean user id", raw(user_id=True), "wrong_type", "$.user_id"),
    ("huge numeric user id", raw(user_id=2**53 + 2), "out_of_range", "$.user_id"),
    ("user id too long", raw(user_id="u" * 129), "too_long", "$.user_id"),
    (
        "null user id",
        b'{"event_id":"e","user_id":null,"type":"view","item_id":"i","ts":1291191960000}',
        "wrong_type",
        "$.user_id",
    ),
    ("no type", raw(type=None), "missing_field", "$.type"),
    ("unknown type", raw(type="pv"), "unknown_type", "$.type"),
    ("type not a string", raw(type=["view"]), "wrong_type", "$.type"),
    ("view without item", raw(type="view", item_id=None), "missing_field", "$.item_id"),
    ("cancel without item", raw(type="cancel", item_id=None), "missing_field", "$.item_id"),
    ("empty item id", raw(item_id=""), "empty", "$.item_id"),
    ("search without query", raw(type="search", item_id=None), "missing_field", "$.query"),
    ("empty query", raw(type="search", query=""), "empty", "$.query"),
    ("query too long", raw(type="search", query="q" * 513), "too_long", "$.query"),
    ("rating without value", raw(type="rating"), "missing_field", "$.rating"),
    ("no ts", raw(ts=None), "missing_field", "$.ts"),
    ("ts far future", raw(ts=1e18), "out_of_range", "$.ts"),
    ("ts in seconds", raw(ts=1291191960), "out_of_range", "$.ts"),
    ("ts zero", raw(ts=0), "out_of_range", "$.ts"),
    ("ts just after 2100", raw(ts=4102444800001), "out_of_range", "$.ts"),
    ("ts string before 1990", raw(ts="1989-12-31T23:59:59Z"), "out_of_range", "$.ts"),
    ("ts year before 1990, instant after", raw(ts="1989-12-31T23:30:00-01:00"), "out_of_range", "$.ts"),
    ("ts string after 2100", raw(ts="2100-01-01T00:00:01Z"), "out_of_range", "$.ts"),
    ("ts without offset", raw(ts="2010-12-01 08:26:00"), "bad_timestamp", "$.ts"),
    ("ts date only", raw(ts="2010-12-01"), "bad_timestamp", "$.ts"),
    ("ts 30 February", raw(ts="2011-02-30T00:00:00Z"), "bad_timestamp", "$.ts"),
    ("ts leap second", raw(ts="2016-12-31T23:59:60Z"), "bad_timestamp", "$.ts"),
    ("ts offset hour 24", raw(ts="2010-12-01T08:26:00+24:00"), "bad_timestamp", "$.ts"),
    ("ts non-ascii digits", raw(ts="٢٠١٠-12-01T08:26:00Z"), "bad_timestamp", "$.ts"),
    ("ts boolean", raw(ts=True), "wrong_type", "$.ts"),
    ("ts object", raw(ts={"ms": TS}), "wrong_type", "$.ts"),
    ("session too long", raw(session_id="s" * 129), "too_long", "$.session_id"),
    ("quantity over 1e6", raw(quantity=1_000_001), "out_of_range", "$.quantity"),
    ("quantity fraction", raw(quantity=2.5), "wrong_type", "$.quantity"),
    ("quantity string", raw(quantity="6"), "wrong_type", "$.quantity"),
    ("negative price (bad debt)", raw(price=-11062.06), "out_of_range", "$.price"),
    ("price over 1e7", raw(price=1e7 + 1), "out_of_range", "$.price"),
    ("price string", raw(price="2.55"), "wrong_type", "$.price"),
    ("rating over 10", raw(type="rating", rating=11), "out_of_range", "$.rating"),
    ("context not object", raw(context=[1]), "wrong_type", "$.context"),
    ("context 33 keys", raw(context={f"k{i}": i for i in range(33)}), "too_many", "$.context"),
    ("context over 4 KiB", raw(context={"blob": "x" * 4096}), "too_large", "$.context"),
    ("context 5 levels", raw(context=_deep(5)), "too_deep", "$.context.l3.l2.l1.l0"),
    ("context list 5 levels", raw(context={"a": [[[[1]]]]}), "too_deep", "$.context.a[0][0][0]"),
]


@pytest.mark.parametrize(("label", "data", "reason", "path"), INVALID_EVENTS, ids=[c[0] for c in INVALID_EVENTS])
def test_invalid_event(label, data, reason, path):
    err = refused(decode_event, data)
    assert (err.reason, err.path) == (reason, path)
    assert str(err).startswith(f"{path}: {reason}")


def test_context_of_exactly_four_levels_and_32_keys_is_fine():
    ctx = {**{f"k{i}": i for i in range(31)}, "deep": _deep(3)}
    assert decode_event(raw(context=ctx)).context == ctx


def test_error_message_reads_well():
    err = refused(decode_event, raw(ts=1e18))
    assert str(err) == "$.ts: out_of_range: 1e+18 is after 2100-01-01"
    err = refused(decode_event, raw(user_id=17850.5))
    assert str(err) == "$.user_id: wrong_type: 17850.5 is not an integral number"


def test_tombstone_and_non_bytes():
    assert (refused(decode_event, None).reason, refused(decode_event, None).path) == ("wrong_type", "$")
    assert "tombstone" in str(refused(decode_event, None))
    assert refused(decode_event, 12).reason == "wrong_type"


def test_validation_error_pickles():
    err = refused(decode_event, raw(type="pv"))
    clone = pickle.loads(pickle.dumps(err))
    assert (clone.reason, clone.path, str(clone)) == (err.reason, err.path, str(err))


def test_unexpected_exception_inside_a_check_is_wrapped(monkeypatch):
    def broken(text, path="$"):
        raise ZeroDivisionError("bug")

    monkeypatch.setattr(schemas.models, "parse_rfc3339_ms", broken)
    err = refused(decode_event, raw(ts="2010-12-01T08:26:00Z"))
    assert (err.reason, err.path) == ("internal_error", "$")
    assert "ZeroDivisionError" in str(err)


@pytest.mark.parametrize(
    ("context", "reason", "path"),
    [
        ({"t": datetime(2011, 1, 1)}, "wrong_type", "$.context.t"),
        ({"n": float("nan")}, "out_of_range", "$.context.n"),
        ({"x": [float("inf")]}, "out_of_range", "$.context.x[0]"),
        ({"t": (1, 2)}, "wrong_type", "$.context.t"),
        ({1: "a"}, "wrong_type", "$.context"),
        ({"big": 2**70}, "out_of_range", "$.context"),
    ],
)
def test_from_dict_refuses_python_values_that_json_cannot_carry(context, reason, path):
    with pytest.raises(ValidationError) as info:
        Event.from_dict({**BASE, "context": context})
    assert (info.value.reason, info.value.path) == (reason, path)


def test_event_types_match_the_ranking_contract():
    # The ranker's vocabulary is authoritative; erase_user is a control event it never sees.
    assert set(EVENT_TYPES) == set(EVENT_TYPE_IDS) | {"erase_user"}
    assert schemas.json_schema("event")["properties"]["type"]["enum"] == list(EVENT_TYPES)


def test_importing_schemas_pulls_in_neither_jsonschema_nor_numpy():
    # Validation is hand-written (per-event speed) and the wire models stay numpy-free.
    code = "import sys, schemas, schemas.sources; print(sorted({'jsonschema', 'numpy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- items --------------------------------------------------------------------------------------


def test_item_with_text_and_defaults():
    it = decode_item(b'{"item_id": 85123, "title": "WHITE HANGING HEART T-LIGHT HOLDER", "price": 2.55}')
    assert it == Item("85123", title="WHITE HANGING HEART T-LIGHT HOLDER", price=2.55)
    assert it.available is True
    assert decode_item(encode(it)) == it
    assert orjson.loads(encode(it)) == {
        "schema_version": 1,
        "item_id": "85123",
        "title": it.title,
        "price": 2.55,
        "available": True,
    }


@pytest.mark.parametrize("blank", ["", "   ", "\t\n"])
def test_item_blank_text_means_no_text(blank):
    it = decode_item(orjson.dumps({"item_id": "2268318", "title": blank, "description": blank, "category": blank}))
    assert (it.title, it.description, it.category) == (None, None, None)


def test_item_without_any_text_and_rfc3339_ts():
    it = decode_item(
        b'{"item_id": "2268318", "category": "2520377", "available": false, "ts": "2017-11-25T00:00:00+08:00"}'
    )
    assert (it.title, it.category, it.available, it.ts) == (None, "2520377", False, 1511539200000)


INVALID_ITEMS = [
    ("no id", {"title": "x"}, "missing_field", "$.item_id"),
    ("title too long", {"item_id": "1", "title": "T" * 513}, "too_long", "$.title"),
    ("blank title too long", {"item_id": "1", "title": " " * 513}, "too_long", "$.title"),
    ("description too long", {"item_id": "1", "description": "d" * 4097}, "too_long", "$.description"),
    ("category too long", {"item_id": "1", "category": "c" * 257}, "too_long", "$.category"),
    ("null title", {"item_id": "1", "title": None}, "wrong_type", "$.title"),
    ("available as string", {"item_id": "1", "available": "yes"}, "wrong_type", "$.available"),
    ("available as 1", {"item_id": "1", "available": 1}, "wrong_type", "$.available"),
    ("negative price", {"item_id": "1", "price": -1}, "out_of_range", "$.price"),
    ("ts before 1990", {"item_id": "1", "ts": 0}, "out_of_range", "$.ts"),
    ("unknown field", {"item_id": "1", "stock": 5}, "unknown_field", "$.stock"),
]


@pytest.mark.parametrize(("label", "msg", "reason", "path"), INVALID_ITEMS, ids=[c[0] for c in INVALID_ITEMS])
def test_invalid_item(label, msg, reason, path):
    err = refused(decode_item, orjson.dumps(msg))
    assert (err.reason, err.path) == (reason, path)


# --- recommendations ----------------------------------------------------------------------------


def _rec(**changes) -> dict:
    rec = {
        "user_id": "17850",
        "items": [
            {
                "item_id": "71053",
                "score": 2.5,
                "reason": "bought with WHITE HANGING HEART T-LIGHT HOLDER",
                "source": "covis",
            },
            {
                "item_id": "22423",
                "score": 1.0,
                "reason": "popular now",
                "title": "REGENCY CAKESTAND 3 TIER",
                "source": "trending",
            },
        ],
        "model_version": "2024-01-01T00-00-00",
        "variant": "fp32",
        "event_id": "or-9202340e85de11ad",
        "event_ts": TS,
        "published_ts": TS + 120,
    }
    rec.update(changes)
    return rec


def test_recommendation_round_trip():
    rec = decode_recommendation(orjson.dumps(_rec()))
    assert rec.items[0] == RecItem("71053", 2.5, "bought with WHITE HANGING HEART T-LIGHT HOLDER", source="covis")
    assert [i.item_id for i in rec.items] == ["71053", "22423"]
    assert decode_recommendation(encode(rec)) == rec
    assert Recommendation.from_dict(rec.to_dict()) == rec
    assert decode_recommendation(orjson.dumps(_rec(items=[]))).items == ()


INVALID_RECS = [
    (
        "duplicate item",
        _rec(items=[{"item_id": "1", "score": 1, "reason": ""}, {"item_id": 1, "score": 0, "reason": ""}]),
        "duplicate",
        "$.items[1].item_id",
    ),
    ("item without score", _rec(items=[{"item_id": "1", "reason": "r"}]), "missing_field", "$.items[0].score"),
    ("item not object", _rec(items=["71053"]), "wrong_type", "$.items[0]"),
    (
        "reason too long",
        _rec(items=[{"item_id": "1", "score": 1, "reason": "r" * 201}]),
        "too_long",
        "$.items[0].reason",
    ),
    (
        "unknown item field",
        _rec(items=[{"item_id": "1", "score": 1, "reason": "", "rank": 1}]),
        "unknown_field",
        "$.items[0].rank",
    ),
    ("items not a list", _rec(items={"1": 1}), "wrong_type", "$.items"),
    (
        "too many items",
        _rec(items=[{"item_id": str(i), "score": 0, "reason": ""} for i in range(1001)]),
        "too_many",
        "$.items",
    ),
    ("event_ts as string", _rec(event_ts="2010-12-01T08:26:00Z"), "wrong_type", "$.event_ts"),
    ("published_ts in seconds", _rec(published_ts=1291191960), "out_of_range", "$.published_ts"),
    ("no variant", {k: v for k, v in _rec().items() if k != "variant"}, "missing_field", "$.variant"),
]


@pytest.mark.parametrize(("label", "msg", "reason", "path"), INVALID_RECS, ids=[c[0] for c in INVALID_RECS])
def test_invalid_recommendation(label, msg, reason, path):
    err = refused(decode_recommendation, orjson.dumps(msg))
    assert (err.reason, err.path) == (reason, path)


def test_rec_item_score_must_be_finite():
    with pytest.raises(ValidationError) as info:
        RecItem.from_dict({"item_id": "1", "score": float("nan"), "reason": ""})
    assert (info.value.reason, info.value.path) == ("out_of_range", "$.score")


# --- dead letters -------------------------------------------------------------------------------


def test_dead_letter_keeps_the_original_bytes_and_the_precise_reason():
    bad = raw(ts=1e18)
    err = refused(decode_event, bad)
    dl = DeadLetter.for_message(
        err, topic="events", partition=3, offset=41, key=b"17850", value=bad, ts=TS, worker="w-1"
    )
    assert (dl.error_code, dl.reason) == ("out_of_range", "$.ts: out_of_range: 1e+18 is after 2100-01-01")
    assert dl.value() == bad and dl.key() == b"17850"
    assert dl.value_utf8 == bad.decode()
    back = decode_dead_letter(encode(dl))
    assert back == dl


def test_dead_letter_of_binary_oversized_and_tombstone_messages():
    big = b"x" * (MAX_MESSAGE_BYTES + 1)
    dl = DeadLetter.for_message(
        refused(decode_event, big), topic="events", partition=0, offset=0, key=None, value=big, ts=TS
    )
    assert (dl.error_code, dl.value_utf8, dl.key_b64) == ("too_large", None, None)
    assert decode_dead_letter(encode(dl)).value() == big
    binary = b"\xff\xfe"
    dl = DeadLetter.for_message(
        refused(decode_event, binary), topic="events", partition=0, offset=1, key=None, value=binary, ts=TS
    )
    assert (dl.error_code, dl.value_utf8) == ("bad_json", None)
    dl = DeadLetter.for_message(
        RuntimeError("ranker down"), topic="events", partition=0, offset=2, key=b"u", value=None, ts=TS
    )
    assert (dl.error_code, dl.reason, dl.value_b64) == ("processing_error", "RuntimeError: ranker down", "")


@pytest.mark.parametrize(
    ("changes", "reason", "path"),
    [
        ({"value_b64": "not base64!"}, "bad_format", "$.value_b64"),
        ({"value_b64": "abc"}, "bad_format", "$.value_b64"),
        ({"partition": -1}, "out_of_range", "$.partition"),
        ({"offset": 1.5}, "wrong_type", "$.offset"),
        ({"error_code": ""}, "empty", "$.error_code"),
    ],
)
def test_invalid_dead_letter(changes, reason, path):
    msg = {
        "reason": "r",
        "error_code": "bad_json",
        "source_topic": "events",
        "partition": 0,
        "offset": 7,
        "value_b64": base64.b64encode(b"{").decode(),
        "ts": TS,
        **changes,
    }
    err = refused(decode_dead_letter, orjson.dumps(msg))
    assert (err.reason, err.path) == (reason, path)


# --- model updates and manifests ----------------------------------------------------------------


UPDATE = {
    "version": "20240101-000000-ab12",
    "location": "/models/20240101-000000-ab12",
    "manifest_sha256": "a" * 64,
    "created_at": "2024-01-01T00:00:00Z",
    "metrics": {"hr@10": 0.16, "baseline": {"hr@10": 0.15}},
}


def test_model_update_round_trip():
    up = decode_model_update(orjson.dumps(UPDATE))
    assert up == ModelUpdate(**UPDATE)
    assert decode_model_update(encode(up)) == up


@pytest.mark.parametrize(
    ("changes", "reason", "path"),
    [
        ({"version": "../etc"}, "bad_format", "$.version"),
        ({"version": "a/b"}, "bad_format", "$.version"),
        ({"manifest_sha256": "A" * 64}, "bad_format", "$.manifest_sha256"),
        ({"manifest_sha256": "a" * 63}, "bad_format", "$.manifest_sha256"),
        ({"created_at": "2024-01-01 00:00:00"}, "bad_timestamp", "$.created_at"),
        ({"metrics": [0.1]}, "wrong_type", "$.metrics"),
        ({"checksum": "x"}, "unknown_field", "$.checksum"),
    ],
)
def test_invalid_model_update(changes, reason, path):
    err = refused(decode_model_update, orjson.dumps({**UPDATE, **changes}))
    assert (err.reason, err.path) == (reason, path)


def manifest(**changes) -> dict:
    m = {
        "format": MODEL_FORMAT,
        "version": "20240101-000000-ab12",
        "created_at": "2024-01-01T00:00:00+00:00",
        "base_model": "sentence-transformers/all-MiniLM-L6-v2",
        "dim": 384,
        "max_seq_len": 50,
        "max_text_len": 32,
        "features": list(FEATURE_NAMES),
        "event_type_ids": dict(EVENT_TYPE_IDS),
        "files": {
            "ranker.onnx": {"sha256": "b" * 64, "bytes": 1234},
            "item_vecs.npy": {"sha256": "c" * 64, "bytes": 0},
        },
        "ranker_variants": ["fp32", "fp16", "int8"],
        "training_window": {"start": "2010-12-01T00:00:00Z", "end": 1317427200000},
        "metrics": {"hr@10": 0.16},
        "parity": {"max_abs_diff": 1e-5, "tolerance": 1e-3},
        "dataset": "online_retail",
        "future_key": "ignored by v1 readers",
    }
    m.update(changes)
    return {k: v for k, v in m.items() if v is not None}


def test_valid_manifest():
    validate_manifest(manifest())
    validate_manifest(manifest(training_window=None, metrics=None, parity=None, dataset=None))


@pytest.mark.parametrize(
    ("changes", "reason", "path"),
    [
        ({"format": 2}, "unsupported_version", "$.format"),
        ({"dim": None}, "missing_field", "$.dim"),
        ({"dim": 0}, "out_of_range", "$.dim"),
        ({"features": []}, "empty", "$.features"),
        ({"event_type_ids": {"view": 0}}, "out_of_range", "$.event_type_ids.view"),
        ({"files": {"../ranker.onnx": {"sha256": "b" * 64, "bytes": 1}}}, "bad_format", '$.files["../ranker.onnx"]'),
        ({"files": {"ranker.onnx": {"sha256": "b" * 64}}}, "missing_field", '$.files["ranker.onnx"].bytes'),
        ({"files": {}}, "empty", "$.files"),
        ({"ranker_variants": ["fp32", "fp32"]}, "duplicate", "$.ranker_variants[1]"),
        ({"ranker_variants": ["FP32"]}, "bad_format", "$.ranker_variants[0]"),
        ({"training_window": {"start": 0, "end": 1}}, "out_of_range", "$.training_window.start"),
        ({"dataset": 5}, "wrong_type", "$.dataset"),
    ],
)
def test_invalid_manifest(changes, reason, path):
    with pytest.raises(ValidationError) as info:
        validate_manifest(manifest(**changes))
    assert (info.value.reason, info.value.path) == (reason, path)


def test_manifest_never_raises_anything_else():
    for junk in (None, [], "manifest", {"format": 1, "version": object()}):
        with pytest.raises(ValidationError):
            validate_manifest(junk)


def test_reason_codes_are_documented_in_the_dead_letter_schema():
    assert "error_code" in json.dumps(schemas.json_schema("dead_letter"))
    assert {
        "missing_field",
        "wrong_type",
        "out_of_range",
        "too_long",
        "bad_json",
        "not_object",
        "too_deep",
        "too_large",
        "unknown_type",
        "unknown_field",
    } <= REASONS


def test_parse_rfc3339_matches_datetime():
    for text in ("2011-12-09T12:50:00Z", "2017-11-25T00:00:00+08:00", "1999-12-31T23:59:59.999-05:30"):
        expected = datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc)
        assert schemas.parse_rfc3339_ms(text) == int(expected.timestamp() * 1000 + 1e-3)


# --- a message with several faults reports one, in a stable order ---------------------------------

SEVERAL_FAULTS = [
    # label, changes, reason, path: unknown fields first, then the fields in the contract's check order
    ("unknown field before a bad ts", {"customer": "x", "ts": 1e18}, "unknown_field", "$.customer"),
    ("first unknown field in sorted order", {"zz": 1, "aa": 2}, "unknown_field", "$.aa"),
    (
        "schema version before a missing event id",
        {"schema_version": 2, "event_id": None},
        "unsupported_version",
        "$.schema_version",
    ),
    ("missing user before a bad type", {"user_id": None, "type": 5}, "missing_field", "$.user_id"),
    ("view without item before a bad ts", {"item_id": None, "ts": "yesterday"}, "missing_field", "$.item_id"),
    ("bad ts before a bad price", {"ts": 0, "price": -1}, "out_of_range", "$.ts"),
    ("rating rule last", {"type": "rating", "context": [1]}, "wrong_type", "$.context"),
]


@pytest.mark.parametrize(("label", "changes", "reason", "path"), SEVERAL_FAULTS, ids=[c[0] for c in SEVERAL_FAULTS])
def test_several_faults_report_the_first_in_a_stable_order(label, changes, reason, path):
    msg = {k: v for k, v in {**BASE, **changes}.items() if v is not None}
    for order in (list(msg), list(reversed(msg))):  # the order of the keys does not matter
        err = refused(decode_event, orjson.dumps({k: msg[k] for k in order}))
        assert (err.reason, err.path) == (reason, path)


def test_several_faults_inside_recommendation_items():
    items = [{"item_id": "1", "score": 1, "reason": ""}, {"rank": 1, "score": "x", "item_id": "2", "reason": ""}]
    err = refused(decode_recommendation, orjson.dumps(_rec(items=items, event_ts="x")))
    assert (err.reason, err.path) == ("unknown_field", "$.items[1].rank")


_COMMON_PROBES = [
    "", " ", "\t\n", "\u00a0", "\u2003x", "\x1c", "\u200b", "a", " a ", "é", "x" * 128, "x" * 129, "x" * 513,
    "2011-12-09T12:50:00Z", 0, 1, -1, 2, 1.0, 1.5, 6.0, True, False, None, [], {}, [1], {"a": 1},
    10**6, 10**6 + 1, -(10**6), -(10**6) - 1, 2**53, 2**53 + 1, 2**63, 2**64,
    schemas.models.TS_MIN_MS - 1, schemas.models.TS_MIN_MS, schemas.models.TS_MAX_MS, schemas.models.TS_MAX_MS + 1, 1291191960000.0,
]  # fmt: skip


@pytest.mark.parametrize(
    "wire", [t for t in schemas.models.WireType.__subclasses__() if t.common is not None], ids=lambda t: t.__name__
)
def test_common_form_is_a_subset_of_the_check(wire):
    """What a WireType's common form (the decoders' fast path) accepts, its check returns unchanged."""
    import msgspec

    accepted = 0
    for probe in _COMMON_PROBES:
        raw = json.dumps(probe).encode()
        try:
            fast = msgspec.json.decode(raw, type=wire.common)
        except msgspec.ValidationError:
            continue
        accepted += 1
        checked = wire.check(msgspec.json.decode(raw), "$")
        assert (fast, type(fast)) == (checked, type(checked)), probe
    assert accepted
