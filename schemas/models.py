"""Typed wire models for every topic, with fast hand-written validation.

The JSON Schema files in ``schemas/json/`` are the published contract (for other languages and
for documentation); this module is its Python implementation. The worker decodes every event
with it, so validation is written by hand (a few microseconds per message) instead of running a
generic JSON Schema validator. ``tests/unit/schemas/test_schema_agreement.py`` proves that both
accept and reject the same messages, and lists the few rules JSON Schema cannot express
(encoded size of ``context``, the exact instant range of RFC 3339 strings, calendar validity of
dates, unique items in a recommendation).

Rules that hold for every model:

* ``decode_*`` take the raw Kafka value (bytes) and raise only :class:`ValidationError`;
  any unexpected exception inside a check is wrapped as ``internal_error``, so one bad message
  can never take the consume loop down.
* Unknown fields are rejected (``unknown_field``): a typo in a producer must surface, not be
  silently ignored. JSON ``null`` is never accepted: an optional field is either absent or valid.
* Ids may arrive as JSON integers (``17850`` or ``17850.0``) and are normalised to strings, so a
  user has one id whatever the producer's language did with it.
* Constructing a model directly trusts the caller (no checks, for speed inside the worker);
  ``from_dict`` and ``decode_*`` are the validating entry points for untrusted input.
"""

from __future__ import annotations

import base64
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, TypeVar

import orjson

SCHEMA_VERSION = 1
MAX_MESSAGE_BYTES = 64 * 1024  # events, items, recommendations, model updates
MAX_DEAD_LETTER_BYTES = 1024 * 1024  # a dead letter carries a whole (possibly oversized) message

EVENT_TYPES: tuple[str, ...] = (
    "view",
    "click",
    "add_to_cart",
    "favorite",
    "purchase",
    "cancel",
    "rating",
    "search",
    "erase_user",  # control event: forget everything about this user (no item)
)
ITEMLESS_EVENT_TYPES = frozenset({"search", "erase_user"})

MAX_ID_LEN = 128
MAX_QUERY_LEN = 512
MAX_TITLE_LEN = 512
MAX_DESCRIPTION_LEN = 4096
MAX_CATEGORY_LEN = 256
MAX_REASON_LEN = 200
MAX_REC_ITEMS = 1000
MAX_CONTEXT_KEYS = 32
MAX_CONTEXT_DEPTH = 4  # the context object itself is level 1
MAX_CONTEXT_BYTES = 4096
MAX_QUANTITY = 1_000_000
MAX_PRICE = 10_000_000
MAX_RATING = 10
MAX_SAFE_INTEGER = 2**53  # numeric ids beyond this are not exact in a double
MAX_DEAD_LETTER_TEXT_BYTES = 8192
TS_MIN_MS = 631_152_000_000  # 1990-01-01T00:00:00Z
TS_MAX_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z (inclusive)

# Every reason code a ValidationError can carry (the DLQ's ``error_code``).
REASONS = frozenset(
    {
        "too_large",  # raw message, or an event's context, over its byte limit
        "bad_json",  # not JSON, or not UTF-8
        "too_deep",  # nesting over the limit
        "not_object",  # top-level JSON value is not an object
        "wrong_type",  # also: null, a bool where a number is expected, a non-integral id
        "unknown_field",
        "missing_field",
        "out_of_range",
        "too_long",
        "empty",
        "too_many",  # context keys, recommendation items
        "unknown_type",  # event type outside EVENT_TYPES
        "unsupported_version",
        "bad_timestamp",  # a string that is not an RFC 3339 date-time with offset
        "bad_format",  # base64, sha256 hex, version and file names
        "duplicate",  # the same item twice in one recommendation (or a variant in a manifest)
        "internal_error",  # a bug in a check; wrapped so the caller still gets a ValidationError
    }
)


class ValidationError(Exception):
    """A message broke the contract.

    ``reason`` is a short machine code from :data:`REASONS` (the dead-letter ``error_code``),
    ``path`` a JSONPath to the offending value (``$.items[3].score``), ``detail`` a human
    explanation. ``str()`` reads ``"$.ts: out_of_range: 1e+18 is after 2100-01-01"``.
    """

    def __init__(self, reason: str, path: str = "$", detail: str = "") -> None:
        super().__init__(reason, path, detail)  # args round-trip through pickle
        self.reason = reason
        self.path = path
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}: {self.detail}" if self.detail else f"{self.path}: {self.reason}"


# ---------------------------------------------------------------------------------------------
# Field checks. Each takes the value and its path and returns the normalised value or raises.

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)


def _child(path: str, key: str) -> str:
    """JSONPath of ``key`` under ``path``: dotted when it is an identifier, bracketed otherwise."""
    if _IDENT.fullmatch(key):
        return f"{path}.{key}"
    return f"{path}[{orjson.dumps(key).decode()}]"


def _show(value: Any, limit: int = 40) -> str:
    """Short, safe rendering of an offending value for an error message."""
    if isinstance(value, float):
        text = repr(value)
    else:
        try:
            text = orjson.dumps(value).decode()
        except TypeError:
            text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _wrong(path: str, expected: str, value: Any) -> ValidationError:
    return ValidationError("wrong_type", path, f"expected {expected}, got {_kind(value)}")


def _str(value: Any, path: str, max_len: int, min_len: int = 1) -> str:
    if not isinstance(value, str):
        raise _wrong(path, "a string", value)
    n = len(value)
    if n < min_len:
        raise ValidationError("empty", path, "must not be empty")
    if n > max_len:
        raise ValidationError("too_long", path, f"{n} characters, at most {max_len}")
    return value


def _text(value: Any, path: str, max_len: int) -> str | None:
    """Optional free text: blank (empty or whitespace-only) means absent."""
    value = _str(value, path, max_len, 0)
    return value if value.strip() else None


def _id(value: Any, path: str) -> str:
    """An id: a string of 1..128 characters, or an integral JSON number normalised to its digits."""
    if isinstance(value, str):
        return _str(value, path, MAX_ID_LEN)
    if isinstance(value, bool):
        raise _wrong(path, "a string or an integer", value)
    if isinstance(value, float):
        if not value.is_integer():
            raise ValidationError("wrong_type", path, f"{_show(value)} is not an integral number")
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise ValidationError("out_of_range", path, f"{_show(value)} is beyond +-2**53")
        return str(int(value))
    if isinstance(value, int):
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise ValidationError("out_of_range", path, f"{_show(value)} is beyond +-2**53")
        return str(value)
    raise _wrong(path, "a string or an integer", value)


def _int(value: Any, path: str, lo: int, hi: int) -> int:
    if isinstance(value, bool):
        raise _wrong(path, "an integer", value)
    if isinstance(value, float):
        if not value.is_integer():  # also NaN and infinities
            raise ValidationError("wrong_type", path, f"{_show(value)} is not an integer")
        value = int(value)
    elif not isinstance(value, int):
        raise _wrong(path, "an integer", value)
    if not lo <= value <= hi:
        raise ValidationError("out_of_range", path, f"{_show(value)} is outside {lo}..{hi}")
    return value


def _number(value: Any, path: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _wrong(path, "a number", value)
    if not lo <= value <= hi:  # False for NaN too
        raise ValidationError("out_of_range", path, f"{_show(value)} is outside {lo}..{hi}")
    return float(value)


def _finite(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _wrong(path, "a number", value)
    if not math.isfinite(value):
        raise ValidationError("out_of_range", path, f"{_show(value)} is not finite")
    return float(value)


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise _wrong(path, "a boolean", value)
    return value


def _object(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _wrong(path, "an object", value)
    return value


# RFC 3339 date-time with a mandatory offset. re.ASCII: \d must not match other scripts' digits.
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:[Zz]|([+-])(\d{2}):(\d{2}))",
    re.ASCII,
)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def parse_rfc3339_ms(text: str, path: str = "$") -> int:
    """Epoch milliseconds of an RFC 3339 date-time (``2011-12-09T12:50:00Z``, ``...+08:00``).

    Stricter than ``datetime.fromisoformat``: the offset is mandatory (a naive local time is
    ambiguous on the wire) and ISO 8601 variants that RFC 3339 does not allow are refused.
    Fractions below a millisecond are truncated.
    """
    m = _RFC3339.fullmatch(text) if len(text) <= 64 else None
    if m is None:
        raise ValidationError("bad_timestamp", path, f"{_show(text)} is not an RFC 3339 date-time with offset")
    year, month, day, hour, minute, second, frac, sign, off_h, off_m = m.groups()
    try:
        if int(off_h or 0) > 23 or int(off_m or 0) > 59:
            raise ValueError("offset out of range")
        moment = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=timezone.utc)
    except ValueError as exc:
        raise ValidationError("bad_timestamp", path, f"{_show(text)}: {exc}") from None
    delta = moment - _EPOCH
    ms = delta.days * 86_400_000 + delta.seconds * 1000 + (int((frac + "00")[:3]) if frac else 0)
    if sign:
        offset = (int(off_h) * 60 + int(off_m)) * 60_000
        ms = ms - offset if sign == "+" else ms + offset
    return ms


def _range_ms(ms: int | float, path: str, shown: str) -> None:
    if ms < TS_MIN_MS:
        raise ValidationError("out_of_range", path, f"{shown} is before 1990-01-01")
    if not ms <= TS_MAX_MS:  # also NaN
        raise ValidationError("out_of_range", path, f"{shown} is after 2100-01-01")


def _ts(value: Any, path: str) -> int:
    """Event time as epoch ms, from epoch ms (int or float) or an RFC 3339 string."""
    if isinstance(value, str):
        return _string_ts(value, path)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _wrong(path, "epoch milliseconds or an RFC 3339 string", value)
    _range_ms(value, path, _show(value))
    return int(value)  # floor: the range is positive


def _string_ts(text: str, path: str) -> int:
    ms = parse_rfc3339_ms(text, path)
    # The JSON Schema can only judge the written year (its pattern allows 1990..2100), so the
    # year is checked as written too: whatever Python accepts, the schema accepts.
    year = int(text[:4])
    if year < 1990:
        raise ValidationError("out_of_range", path, f"{_show(text)} is before 1990-01-01")
    if year > 2100:
        raise ValidationError("out_of_range", path, f"{_show(text)} is after 2100-01-01")
    _range_ms(ms, path, _show(text))
    return ms


def _ts_int(value: Any, path: str) -> int:
    """A timestamp the worker itself writes: integer epoch ms only."""
    ms = _int(value, path, -(2**63), 2**63 - 1)
    _range_ms(ms, path, _show(value))
    return ms


def _rfc3339_str(value: Any, path: str) -> str:
    """A date-time kept as text (``created_at``) but checked like an event time."""
    text = _str(value, path, 64)
    _string_ts(text, path)
    return text


def _context(value: Any, path: str) -> dict[str, Any]:
    """Free-form producer context, bounded so that it cannot bloat per-user state."""
    if not isinstance(value, dict):
        raise _wrong(path, "an object", value)
    if len(value) > MAX_CONTEXT_KEYS:
        raise ValidationError("too_many", path, f"{len(value)} keys, at most {MAX_CONTEXT_KEYS}")
    # Size first (orjson, in C): the walk below then visits at most 4 KiB worth of values.
    try:
        size = len(orjson.dumps(value))
    except TypeError:  # not plain JSON (or nested past orjson's limit): let the walk name it
        _json_value(value, path, 1)
        raise ValidationError("out_of_range", path, "an integer exceeds 64 bits") from None
    if size > MAX_CONTEXT_BYTES:
        raise ValidationError("too_large", path, f"{size} bytes encoded, at most {MAX_CONTEXT_BYTES}")
    _json_value(value, path, 1)
    return value


_SCALARS = (str, int, bool, type(None))


def _json_value(value: Any, path: str, depth: int) -> None:
    """Check that ``value`` is plain JSON (finite numbers, string keys) nested at most 4 deep.

    orjson would serialise more (dataclasses, datetimes, NaN as null); a Python caller's context
    must survive a round trip unchanged, so only JSON's own types pass.
    """
    if isinstance(value, dict):
        if depth > MAX_CONTEXT_DEPTH:
            raise ValidationError("too_deep", path, f"nested deeper than {MAX_CONTEXT_DEPTH} levels")
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValidationError("wrong_type", path, f"key {_show(key)} is not a string")
            if type(item) not in _SCALARS:
                _json_value(item, _child(path, key), depth + 1)
    elif isinstance(value, list):
        if depth > MAX_CONTEXT_DEPTH:
            raise ValidationError("too_deep", path, f"nested deeper than {MAX_CONTEXT_DEPTH} levels")
        for i, item in enumerate(value):
            if type(item) not in _SCALARS:
                _json_value(item, f"{path}[{i}]", depth + 1)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError("out_of_range", path, f"{_show(value)} is not finite")
    elif not isinstance(value, _SCALARS):
        raise ValidationError("wrong_type", path, f"{type(value).__name__} is not a JSON value")


_B64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?", re.ASCII)
_SHA256 = re.compile(r"[0-9a-f]{64}", re.ASCII)
# Version and file names end up in paths on the worker: no separators, no "..", no leading dot.
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", re.ASCII)


def _pattern(value: Any, path: str, regex: re.Pattern[str], what: str, max_len: int) -> str:
    text = _str(value, path, max_len, 0)
    if not regex.fullmatch(text):
        raise ValidationError("bad_format", path, f"{_show(text)} is not {what}")
    return text


def _reject_unknown(d: Mapping[str, Any], allowed: frozenset[str], path: str) -> None:
    if not allowed.issuperset(d):
        extra = sorted(str(k) for k in d if k not in allowed)
        raise ValidationError("unknown_field", _child(path, extra[0]), "not part of the schema")


def _version(d: Mapping[str, Any], path: str) -> int:
    value = d.get("schema_version", SCHEMA_VERSION)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not value.is_integer()):
        raise _wrong(_child(path, "schema_version"), "an integer", value)
    if value != SCHEMA_VERSION:
        raise ValidationError("unsupported_version", _child(path, "schema_version"), f"{_show(value)}, this code reads {SCHEMA_VERSION}")
    return SCHEMA_VERSION


def _required(d: Mapping[str, Any], key: str, path: str) -> Any:
    try:
        return d[key]
    except KeyError:
        raise ValidationError("missing_field", _child(path, key), "required") from None


def _as_object(d: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(d, dict):
        raise ValidationError("not_object" if path == "$" else "wrong_type", path, f"expected an object, got {_kind(d)}")
    return d


def _drop_none(pairs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in pairs.items() if v is not None}


# ---------------------------------------------------------------------------------------------
# Models


@dataclass(frozen=True, slots=True)
class Event:
    """One user event from the ``events`` topic (key: ``user_id``).

    ``ts`` is always epoch milliseconds here, whatever form the producer sent. ``context`` is
    the producer's own small JSON object; treat it as read-only.
    """

    event_id: str
    user_id: str
    type: str
    ts: int
    item_id: str | None = None
    query: str | None = None
    session_id: str | None = None
    quantity: int | None = None
    price: float | None = None
    rating: float | None = None
    context: dict[str, Any] | None = None
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return _drop_none(
            {
                "schema_version": self.schema_version,
                "event_id": self.event_id,
                "user_id": self.user_id,
                "type": self.type,
                "item_id": self.item_id,
                "query": self.query,
                "ts": self.ts,
                "session_id": self.session_id,
                "quantity": self.quantity,
                "price": self.price,
                "rating": self.rating,
                "context": self.context,
            }
        )

    @classmethod
    def from_dict(cls, d: Any, path: str = "$") -> "Event":
        # Hot path of the worker: each field first gets an inline check for its common, valid
        # form (a plain str, an int in range) and falls back to the full check, which also
        # builds the error, only otherwise. Both give the same result for every input.
        if type(d) is not dict:
            d = _as_object(d, path)
        if not _EVENT_FIELDS.issuperset(d):
            _reject_unknown(d, _EVENT_FIELDS, path)
        version = _version(d, path) if "schema_version" in d else SCHEMA_VERSION
        event_id = _required(d, "event_id", path)
        if not (type(event_id) is str and 0 < len(event_id) <= MAX_ID_LEN):
            event_id = _str(event_id, f"{path}.event_id", MAX_ID_LEN)
        user_id = _required(d, "user_id", path)
        if not (type(user_id) is str and 0 < len(user_id) <= MAX_ID_LEN):
            user_id = _id(user_id, f"{path}.user_id")
        etype = _required(d, "type", path)
        if not isinstance(etype, str):
            raise _wrong(f"{path}.type", "a string", etype)
        if etype not in _EVENT_TYPE_SET:
            raise ValidationError("unknown_type", f"{path}.type", f"{_show(etype)} is not one of {', '.join(EVENT_TYPES)}")
        item_id = d.get("item_id")
        if type(item_id) is str and 0 < len(item_id) <= MAX_ID_LEN:
            pass
        elif "item_id" in d:
            item_id = _id(item_id, f"{path}.item_id")
        elif etype not in ITEMLESS_EVENT_TYPES:
            raise ValidationError("missing_field", f"{path}.item_id", f"required for type {etype}")
        if "query" in d:
            query = _str(d["query"], f"{path}.query", MAX_QUERY_LEN)
        elif etype == "search":
            raise ValidationError("missing_field", f"{path}.query", "required for type search")
        else:
            query = None
        ts = _required(d, "ts", path)
        if not (type(ts) is int and TS_MIN_MS <= ts <= TS_MAX_MS):
            ts = _ts(ts, f"{path}.ts")
        session_id = quantity = price = rating = context = None
        if "session_id" in d:
            session_id = _text(d["session_id"], f"{path}.session_id", MAX_ID_LEN)
        if "quantity" in d:
            quantity = d["quantity"]
            if not (type(quantity) is int and -MAX_QUANTITY <= quantity <= MAX_QUANTITY):
                quantity = _int(quantity, f"{path}.quantity", -MAX_QUANTITY, MAX_QUANTITY)
        if "price" in d:
            price = d["price"]
            if not (type(price) is float and 0.0 <= price <= MAX_PRICE):
                price = _number(price, f"{path}.price", 0, MAX_PRICE)
        if "rating" in d:
            rating = _number(d["rating"], f"{path}.rating", 0, MAX_RATING)
        if "context" in d:
            context = _context(d["context"], f"{path}.context")
        if rating is None and etype == "rating":
            raise ValidationError("missing_field", f"{path}.rating", "required for type rating")
        return cls(event_id, user_id, etype, ts, item_id, query, session_id, quantity, price, rating, context, version)


_EVENT_FIELDS = frozenset(
    ("schema_version", "event_id", "user_id", "type", "item_id", "query", "ts", "session_id", "quantity", "price",
     "rating", "context")
)
_EVENT_TYPE_SET = frozenset(EVENT_TYPES)


@dataclass(frozen=True, slots=True)
class Item:
    """A catalog entry from the ``items`` topic (key: ``item_id``). It may have no text at all."""

    item_id: str
    title: str | None = None
    description: str | None = None
    category: str | None = None
    brand: str | None = None
    price: float | None = None
    available: bool = True
    ts: int | None = None
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return _drop_none(
            {
                "schema_version": self.schema_version,
                "item_id": self.item_id,
                "title": self.title,
                "description": self.description,
                "category": self.category,
                "brand": self.brand,
                "price": self.price,
                "available": self.available,
                "ts": self.ts,
            }
        )

    @classmethod
    def from_dict(cls, d: Any, path: str = "$") -> "Item":
        d = _as_object(d, path)
        _reject_unknown(d, _ITEM_FIELDS, path)
        version = _version(d, path)
        item_id = _id(_required(d, "item_id", path), f"{path}.item_id")
        title = description = category = brand = price = ts = None
        if "title" in d:
            title = _text(d["title"], f"{path}.title", MAX_TITLE_LEN)
        if "description" in d:
            description = _text(d["description"], f"{path}.description", MAX_DESCRIPTION_LEN)
        if "category" in d:
            category = _text(d["category"], f"{path}.category", MAX_CATEGORY_LEN)
        if "brand" in d:
            brand = _text(d["brand"], f"{path}.brand", MAX_CATEGORY_LEN)
        if "price" in d:
            price = _number(d["price"], f"{path}.price", 0, MAX_PRICE)
        available = _bool(d["available"], f"{path}.available") if "available" in d else True
        if "ts" in d:
            ts = _ts(d["ts"], f"{path}.ts")
        return cls(item_id, title, description, category, brand, price, available, ts, version)


_ITEM_FIELDS = frozenset(
    ("schema_version", "item_id", "title", "description", "category", "brand", "price", "available", "ts")
)


@dataclass(frozen=True, slots=True)
class RecItem:
    """One recommended item: its score and a short human reason (``"bought with X"``)."""

    item_id: str
    score: float
    reason: str
    title: str | None = None
    source: str | None = None  # candidate source: history, covis, ann, trending, search, ...

    def to_dict(self) -> dict[str, Any]:
        return _drop_none(
            {"item_id": self.item_id, "score": self.score, "reason": self.reason, "title": self.title, "source": self.source}
        )

    @classmethod
    def from_dict(cls, d: Any, path: str = "$") -> "RecItem":
        d = _as_object(d, path)
        _reject_unknown(d, _REC_ITEM_FIELDS, path)
        item_id = _id(_required(d, "item_id", path), f"{path}.item_id")
        score = _finite(_required(d, "score", path), f"{path}.score")
        reason = _str(_required(d, "reason", path), f"{path}.reason", MAX_REASON_LEN, 0)
        title = _str(d["title"], f"{path}.title", MAX_TITLE_LEN, 0) if "title" in d else None
        source = _str(d["source"], f"{path}.source", 64) if "source" in d else None
        return cls(item_id, score, reason, title, source)


_REC_ITEM_FIELDS = frozenset(("item_id", "score", "reason", "title", "source"))


@dataclass(frozen=True, slots=True)
class Recommendation:
    """A user's fresh list on the ``recommendations`` topic (key: ``user_id``) and in Redis."""

    user_id: str
    items: tuple[RecItem, ...]
    model_version: str
    variant: str
    event_id: str
    event_ts: int
    published_ts: int
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "user_id": self.user_id,
            "items": [item.to_dict() for item in self.items],
            "model_version": self.model_version,
            "variant": self.variant,
            "event_id": self.event_id,
            "event_ts": self.event_ts,
            "published_ts": self.published_ts,
        }

    @classmethod
    def from_dict(cls, d: Any, path: str = "$") -> "Recommendation":
        d = _as_object(d, path)
        _reject_unknown(d, _RECOMMENDATION_FIELDS, path)
        version = _version(d, path)
        user_id = _id(_required(d, "user_id", path), f"{path}.user_id")
        raw_items = _required(d, "items", path)
        if not isinstance(raw_items, list):
            raise _wrong(f"{path}.items", "an array", raw_items)
        if len(raw_items) > MAX_REC_ITEMS:
            raise ValidationError("too_many", f"{path}.items", f"{len(raw_items)} items, at most {MAX_REC_ITEMS}")
        items = tuple(RecItem.from_dict(x, f"{path}.items[{i}]") for i, x in enumerate(raw_items))
        if len({x.item_id for x in items}) != len(items):
            seen: set[str] = set()
            for i, x in enumerate(items):
                if x.item_id in seen:
                    raise ValidationError("duplicate", f"{path}.items[{i}].item_id", f"{_show(x.item_id)} is listed twice")
                seen.add(x.item_id)
        model_version = _str(_required(d, "model_version", path), f"{path}.model_version", MAX_ID_LEN)
        variant = _str(_required(d, "variant", path), f"{path}.variant", 64)
        event_id = _str(_required(d, "event_id", path), f"{path}.event_id", MAX_ID_LEN)
        event_ts = _ts_int(_required(d, "event_ts", path), f"{path}.event_ts")
        published_ts = _ts_int(_required(d, "published_ts", path), f"{path}.published_ts")
        return cls(user_id, items, model_version, variant, event_id, event_ts, published_ts, version)


_RECOMMENDATION_FIELDS = frozenset(
    ("schema_version", "user_id", "items", "model_version", "variant", "event_id", "event_ts", "published_ts")
)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message the worker could not process, on ``events.dlq``: the original bytes and why.

    Build one with :meth:`for_message`; ``value_utf8`` makes small text messages readable in a
    console consumer without decoding base64.
    """

    reason: str
    error_code: str
    source_topic: str
    partition: int
    offset: int
    value_b64: str
    ts: int
    key_b64: str | None = None
    value_utf8: str | None = None
    worker: str | None = None
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return _drop_none(
            {
                "schema_version": self.schema_version,
                "reason": self.reason,
                "error_code": self.error_code,
                "source_topic": self.source_topic,
                "partition": self.partition,
                "offset": self.offset,
                "key_b64": self.key_b64,
                "value_b64": self.value_b64,
                "value_utf8": self.value_utf8,
                "ts": self.ts,
                "worker": self.worker,
            }
        )

    def value(self) -> bytes:
        """The original message value."""
        return base64.b64decode(self.value_b64)

    def key(self) -> bytes | None:
        return None if self.key_b64 is None else base64.b64decode(self.key_b64)

    @classmethod
    def for_message(
        cls,
        error: BaseException,
        *,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        ts: int,
        worker: str | None = None,
    ) -> "DeadLetter":
        """Dead letter for a message that failed with ``error`` (a ValidationError or any other).

        A Kafka tombstone (``value`` None) is recorded as an empty value.
        """
        if isinstance(error, ValidationError):
            code, reason = error.reason, str(error)
        else:
            code, reason = "processing_error", f"{type(error).__name__}: {error}"
        raw = bytes(value or b"")
        text = None
        if len(raw) <= MAX_DEAD_LETTER_TEXT_BYTES:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = None
        return cls(
            reason=reason[:2048],
            error_code=code,
            source_topic=topic,
            partition=partition,
            offset=offset,
            value_b64=base64.b64encode(raw).decode("ascii"),
            ts=ts,
            key_b64=None if key is None else base64.b64encode(key).decode("ascii"),
            value_utf8=text,
            worker=worker,
        )

    @classmethod
    def from_dict(cls, d: Any, path: str = "$") -> "DeadLetter":
        d = _as_object(d, path)
        _reject_unknown(d, _DEAD_LETTER_FIELDS, path)
        version = _version(d, path)
        reason = _str(_required(d, "reason", path), f"{path}.reason", 2048)
        error_code = _str(_required(d, "error_code", path), f"{path}.error_code", 64)
        source_topic = _str(_required(d, "source_topic", path), f"{path}.source_topic", 249)
        partition = _int(_required(d, "partition", path), f"{path}.partition", 0, 2**31 - 1)
        offset = _int(_required(d, "offset", path), f"{path}.offset", 0, 2**63 - 1)
        key_b64 = _pattern(d["key_b64"], f"{path}.key_b64", _B64, "base64", 2**24) if "key_b64" in d else None
        value_b64 = _pattern(_required(d, "value_b64", path), f"{path}.value_b64", _B64, "base64", 2**24)
        value_utf8 = (
            _str(d["value_utf8"], f"{path}.value_utf8", MAX_DEAD_LETTER_TEXT_BYTES, 0) if "value_utf8" in d else None
        )
        ts = _ts_int(_required(d, "ts", path), f"{path}.ts")
        worker = _str(d["worker"], f"{path}.worker", MAX_ID_LEN) if "worker" in d else None
        return cls(reason, error_code, source_topic, partition, offset, value_b64, ts, key_b64, value_utf8, worker, version)


_DEAD_LETTER_FIELDS = frozenset(
    ("schema_version", "reason", "error_code", "source_topic", "partition", "offset", "key_b64", "value_b64",
     "value_utf8", "ts", "worker")
)


@dataclass(frozen=True, slots=True)
class ModelUpdate:
    """A new model version is ready (``model-updates`` topic). ``version`` is a safe folder name."""

    version: str
    location: str
    manifest_sha256: str
    created_at: str
    metrics: dict[str, Any]
    note: str | None = None
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return _drop_none(
            {
                "schema_version": self.schema_version,
                "version": self.version,
                "location": self.location,
                "manifest_sha256": self.manifest_sha256,
                "created_at": self.created_at,
                "metrics": self.metrics,
                "note": self.note,
            }
        )

    @classmethod
    def from_dict(cls, d: Any, path: str = "$") -> "ModelUpdate":
        d = _as_object(d, path)
        _reject_unknown(d, _MODEL_UPDATE_FIELDS, path)
        version_ = _version(d, path)
        version = _pattern(_required(d, "version", path), f"{path}.version", _SAFE_NAME, "a safe version name", 128)
        location = _str(_required(d, "location", path), f"{path}.location", 4096)
        sha = _pattern(_required(d, "manifest_sha256", path), f"{path}.manifest_sha256", _SHA256, "64 lowercase hex digits", 64)
        created_at = _rfc3339_str(_required(d, "created_at", path), f"{path}.created_at")
        metrics = _object(_required(d, "metrics", path), f"{path}.metrics")
        note = _str(d["note"], f"{path}.note", 1024, 0) if "note" in d else None
        return cls(version, location, sha, created_at, metrics, note, version_)


_MODEL_UPDATE_FIELDS = frozenset(
    ("schema_version", "version", "location", "manifest_sha256", "created_at", "metrics", "note")
)


def validate_manifest(d: Any) -> None:
    """Check a model directory's ``manifest.json`` (already parsed) against model_manifest.v1.

    Unlike the wire messages, extra top-level keys are allowed: the manifest is a file that the
    job may enrich without breaking workers that do not read the new keys.
    """
    path = "$"
    try:
        d = _as_object(d, path)
        fmt = _required(d, "format", path)
        if isinstance(fmt, bool) or fmt != 1:
            raise ValidationError("unsupported_version", "$.format", f"{_show(fmt)}, this code reads 1")
        _pattern(_required(d, "version", path), "$.version", _SAFE_NAME, "a safe version name", 128)
        _rfc3339_str(_required(d, "created_at", path), "$.created_at")
        _str(_required(d, "base_model", path), "$.base_model", 256)
        for key in ("dim", "max_seq_len", "max_text_len"):
            _int(_required(d, key, path), f"$.{key}", 1, 65536)
        features = _required(d, "features", path)
        if not isinstance(features, list):
            raise _wrong("$.features", "an array", features)
        if not features:
            raise ValidationError("empty", "$.features", "must list the ranker's features")
        for i, name in enumerate(features):
            _str(name, f"$.features[{i}]", 64)
        type_ids = _object(_required(d, "event_type_ids", path), "$.event_type_ids")
        for name, value in type_ids.items():
            _int(value, _child("$.event_type_ids", name), 1, 1024)
        files = _object(_required(d, "files", path), "$.files")
        if not files:
            raise ValidationError("empty", "$.files", "must list the version's files")
        for name, entry in files.items():
            where = _child("$.files", name)
            if not _SAFE_NAME.fullmatch(name):
                raise ValidationError("bad_format", where, f"{_show(name)} is not a safe file name")
            entry = _as_object(entry, where)
            _reject_unknown(entry, _FILE_FIELDS, where)
            _pattern(_required(entry, "sha256", where), f"{where}.sha256", _SHA256, "64 lowercase hex digits", 64)
            _int(_required(entry, "bytes", where), f"{where}.bytes", 0, 2**53)
        variants = _required(d, "ranker_variants", path)
        if not isinstance(variants, list):
            raise _wrong("$.ranker_variants", "an array", variants)
        if not variants:
            raise ValidationError("empty", "$.ranker_variants", "must list at least one variant")
        for i, name in enumerate(variants):
            _pattern(name, f"$.ranker_variants[{i}]", _VARIANT, "a variant name like fp16", 32)
            if name in variants[:i]:
                raise ValidationError("duplicate", f"$.ranker_variants[{i}]", f"{_show(name)} is listed twice")
        if "training_window" in d:
            window = _object(d["training_window"], "$.training_window")
            _ts(_required(window, "start", "$.training_window"), "$.training_window.start")
            _ts(_required(window, "end", "$.training_window"), "$.training_window.end")
        for key in ("metrics", "parity"):
            if key in d:
                _object(d[key], f"$.{key}")
        if "dataset" in d and not isinstance(d["dataset"], (str, dict)):
            raise _wrong("$.dataset", "a string or an object", d["dataset"])
    except ValidationError:
        raise
    except Exception as exc:  # noqa: BLE001 - the caller must only ever see ValidationError
        raise ValidationError("internal_error", path, f"{type(exc).__name__}: {exc}") from exc


_FILE_FIELDS = frozenset(("sha256", "bytes"))
_VARIANT = re.compile(r"[a-z0-9_]{1,32}", re.ASCII)


# ---------------------------------------------------------------------------------------------
# Bytes in, bytes out

T = TypeVar("T")


def _decode(raw: Any, build: Callable[[Any], T], limit: int) -> T:
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")  # orjson then reports lone surrogates as bad_json
    elif not isinstance(raw, (bytes, bytearray, memoryview)):
        hint = " (a Kafka tombstone?)" if raw is None else ""
        raise ValidationError("wrong_type", "$", f"expected bytes, got {_kind(raw)}{hint}")
    size = len(raw)
    if size > limit:
        raise ValidationError("too_large", "$", f"{size} bytes, at most {limit}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        message = str(exc)
        reason = "too_deep" if "depth limit" in message or "recursion" in message.lower() else "bad_json"
        raise ValidationError(reason, "$", message) from None
    try:
        return build(obj)
    except ValidationError:
        raise
    except Exception as exc:  # noqa: BLE001 - one bad message must never crash the consumer
        raise ValidationError("internal_error", "$", f"{type(exc).__name__}: {exc}") from exc


def decode_event(raw: bytes) -> Event:
    """Parse and validate one ``events`` message; raises only ValidationError."""
    return _decode(raw, Event.from_dict, MAX_MESSAGE_BYTES)


def decode_item(raw: bytes) -> Item:
    return _decode(raw, Item.from_dict, MAX_MESSAGE_BYTES)


def decode_recommendation(raw: bytes) -> Recommendation:
    return _decode(raw, Recommendation.from_dict, MAX_MESSAGE_BYTES)


def decode_dead_letter(raw: bytes) -> DeadLetter:
    return _decode(raw, DeadLetter.from_dict, MAX_DEAD_LETTER_BYTES)


def decode_model_update(raw: bytes) -> ModelUpdate:
    return _decode(raw, ModelUpdate.from_dict, MAX_MESSAGE_BYTES)


Model = Event | Item | RecItem | Recommendation | DeadLetter | ModelUpdate


def encode(obj: Model) -> bytes:
    """Compact JSON bytes of a model, with absent (None) fields left out."""
    return orjson.dumps(obj.to_dict())


JSON_SCHEMA_FILES = {
    "event": "event.v1.json",
    "item": "item.v1.json",
    "recommendation": "recommendation.v1.json",
    "dead_letter": "dead_letter.v1.json",
    "model_update": "model_update.v1.json",
    "model_manifest": "model_manifest.v1.json",
}


def json_schema(name: str) -> dict[str, Any]:
    """The published JSON Schema of a contract (``"event"``, ``"item"``, ... see JSON_SCHEMA_FILES)."""
    from importlib.resources import files

    return orjson.loads(files("schemas").joinpath("json", JSON_SCHEMA_FILES[name]).read_bytes())
