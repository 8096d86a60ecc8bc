"""Typed wire models for every topic: ONE declaration per contract (msgspec Structs).

Each model below is the single source of truth of its contract. msgspec decodes and checks the
plain parts natively (strings and their lengths, numbers and their bounds, booleans, enums,
arrays, unknown and missing fields); the rules it cannot express are ``WireType`` field types that
carry their Python check and their JSON Schema together. ``python -m schemas.generate`` writes
the published JSON Schema files in ``schemas/json/`` from these declarations (a unit test fails
when the checked-in files are stale), and ``tests/unit/schemas/test_schema_agreement.py`` proves
that the generated schemas and the decoders accept and reject the same messages, listing the few
rules JSON Schema cannot express (encoded size of ``context``, the exact instant range of RFC 3339
strings, calendar validity of dates, unique items in a recommendation).

Rules that hold for every model:

* ``decode_*`` take the raw Kafka value (bytes) and raise only :class:`ValidationError`, whose
  ``reason`` is the dead-letter ``error_code`` (see :data:`REASONS`) and ``path`` a JSONPath;
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
import functools
import math
import re
from datetime import datetime, timezone
from typing import Annotated, Any, Callable, ClassVar, Literal, TypeVar, get_args, get_origin

import msgspec
import orjson
from msgspec import Meta
from msgspec.structs import astuple

T = TypeVar("T")

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


def _as_object(d: Any, path: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise ValidationError(
            "not_object" if path == "$" else "wrong_type", path, f"expected an object, got {_kind(d)}"
        )
    return d


def _version(value: Any, path: str) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (isinstance(value, float) and not value.is_integer())
    ):
        raise _wrong(path, "an integer", value)
    if value != SCHEMA_VERSION:
        raise ValidationError("unsupported_version", path, f"{_show(value)}, this code reads {SCHEMA_VERSION}")
    return SCHEMA_VERSION


def _manifest_format(value: Any, path: str) -> int:
    if isinstance(value, bool) or value != 1:
        raise ValidationError("unsupported_version", path, f"{_show(value)}, this code reads 1")
    return 1


def _json_numbers(value: Any) -> Any:
    """A parsed JSON value with integers beyond 64 bits as floats, as JSON parsers built on
    doubles (and orjson, which this contract was first written with) read them."""
    if isinstance(value, dict):
        return {k: _json_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_numbers(v) for v in value]
    if type(value) is int and not -(2**63) <= value < 2**64:
        return float(value)
    return value


# ---------------------------------------------------------------------------------------------
# Field types. msgspec checks plain strings, numbers, booleans, enums, arrays and unknown or
# missing fields natively (constraints in ``Meta``). A wire rule it cannot express (an id that may
# arrive as a number, a timestamp in two forms, blank text meaning absent, bounded context) is a
# ``WireType``: ONE class holding both its check (run on decode, through msgspec's ``dec_hook``)
# and its JSON Schema (emitted by ``python -m schemas.generate``), so the two are declared side by
# side and ``test_schema_agreement`` proves they agree.


class _PlainValues(type):
    """A wire type's values are the plain Python values its check returns (a ``str`` id, an ``int``
    timestamp), not instances of the type: msgspec checks the hook's result with isinstance."""

    def __instancecheck__(cls, obj: object) -> bool:
        return True


class WireType(metaclass=_PlainValues):
    """A field type msgspec delegates to Python: ``check(value, path)`` and ``json_schema()``.

    ``common``, when set, is a msgspec-native type for the form nearly every message uses (an id
    that is a non-empty string, a timestamp that is integer epoch ms in range): every value it
    accepts, ``check`` returns unchanged. ``decode_*`` try a decoder built from these forms first
    (no Python call per field) and fall back to ``check`` for anything else, so the common form
    is a shortcut, not a second contract (``test_common_form_is_a_subset_of_the_check``).
    """

    __slots__ = ()
    check: ClassVar[Callable[[Any, str], Any]]
    schema: ClassVar[dict[str, Any] | Callable[[], dict[str, Any]]]
    python: ClassVar[type]  # the Python type of the values ``check`` returns
    common: ClassVar[Any] = None

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        return cls.schema() if callable(cls.schema) else dict(cls.schema)


def wire_type(
    name: str,
    python: type,
    check: Callable[[Any, str], Any],
    schema: dict[str, Any] | Callable[[], dict[str, Any]],
    common: Any = None,
) -> Any:
    attrs = {"__slots__": (), "check": staticmethod(check), "schema": schema, "python": python, "common": common}
    return type(name, (WireType,), attrs)


def value_type(annotation: Any) -> type:
    """The Python type of a model field's values (``str`` for an ``Id``, ``int`` for a ``Ts``...)."""
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if isinstance(annotation, type) and issubclass(annotation, WireType):
        return annotation.python
    if get_origin(annotation) is Literal:
        return type(get_args(annotation)[0])
    return get_origin(annotation) or annotation


_RFC3339_PATTERN = (
    r"^(199[0-9]|20[0-9]{2}|2100)-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt ]([01][0-9]|2[0-3]):[0-5][0-9]"
    r":[0-5][0-9](\.[0-9]{1,9})?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)
_RFC3339_SCHEMA = {"type": "string", "maxLength": 64, "pattern": _RFC3339_PATTERN}
_TS_INT_SCHEMA = {
    "description": "Integer epoch milliseconds, 1990-01-01 .. 2100-01-01 UTC.",
    "type": "integer",
    "minimum": TS_MIN_MS,
    "maximum": TS_MAX_MS,
}


def _regex_schema(regex: re.Pattern[str]) -> str:
    return "^" + regex.pattern.replace("(?:", "(") + "$"


def _context_schema() -> dict[str, Any]:
    scalar = {"type": ["string", "number", "boolean", "null"]}
    level: dict[str, Any] = {"type": ["object", "array"], "additionalProperties": scalar, "items": scalar}
    for _ in range(MAX_CONTEXT_DEPTH - 2):
        inner = {"anyOf": [scalar, level]}
        level = {"type": ["object", "array"], "additionalProperties": inner, "items": inner}
    return {
        "description": f"Producer's free-form context: at most {MAX_CONTEXT_KEYS} keys, nested at most "
        f"{MAX_CONTEXT_DEPTH} levels (this object is level 1), at most {MAX_CONTEXT_BYTES} bytes encoded "
        "(not expressible in JSON Schema; enforced by readers).",
        "type": "object",
        "maxProperties": MAX_CONTEXT_KEYS,
        "additionalProperties": {"anyOf": [scalar, level]},
    }


def _int_type(name: str, lo: int, hi: int) -> Any:
    schema = {"type": "integer", "minimum": lo, "maximum": hi}
    return wire_type(name, int, lambda v, p: _int(v, p, lo, hi), schema, Annotated[int, Meta(ge=lo, le=hi)])


def _text_type(name: str, max_len: int, description: str = "") -> Any:
    schema = {"type": "string", "maxLength": max_len}
    return wire_type(
        name,
        str,
        lambda v, p: _text(v, p, max_len),
        {"description": description, **schema} if description else schema,
        # Not blank: \S is exactly what str.strip() keeps (both use Py_UNICODE_ISSPACE).
        Annotated[str, Meta(max_length=max_len, pattern=r"\S")],
    )


def _pattern_type(name: str, regex: re.Pattern[str], what: str, max_len: int) -> Any:
    # Short patterns bound their own length; long ones (base64) state it.
    schema = {"type": "string", "pattern": _regex_schema(regex), **({"maxLength": max_len} if max_len > 128 else {})}
    return wire_type(name, str, lambda v, p: _pattern(v, p, regex, what, max_len), schema)


SchemaVersion = wire_type(
    "SchemaVersion",
    int,
    _version,
    {"description": "Contract version; readers of v1 accept only 1. Absent means 1.", "const": SCHEMA_VERSION},
    Literal[SCHEMA_VERSION],
)
Id = wire_type(
    "Id",
    str,
    _id,
    {
        "description": "A string of 1..128 characters, or an integral JSON number (17850 or 17850.0) that readers "
        'normalise to its digits ("17850").',
        "anyOf": [
            {"type": "string", "minLength": 1, "maxLength": MAX_ID_LEN},
            {"type": "integer", "minimum": -MAX_SAFE_INTEGER, "maximum": MAX_SAFE_INTEGER},
        ],
    },
    Annotated[str, Meta(min_length=1, max_length=MAX_ID_LEN)],
)
Ts = wire_type(
    "Ts",
    int,
    _ts,
    {
        "description": "Event time: epoch milliseconds (integer or number) or an RFC 3339 date-time with offset; "
        "1990-01-01 .. 2100-01-01 UTC. Readers normalise it to integer epoch ms.",
        "anyOf": [{"type": "number", "minimum": TS_MIN_MS, "maximum": TS_MAX_MS}, _RFC3339_SCHEMA],
    },
    Annotated[int, Meta(ge=TS_MIN_MS, le=TS_MAX_MS)],
)
TsInt = wire_type("TsInt", int, _ts_int, _TS_INT_SCHEMA)
Rfc3339 = wire_type(
    "Rfc3339",
    str,
    _rfc3339_str,
    {"description": "RFC 3339 date-time with offset, 1990-01-01 .. 2100-01-01 UTC.", **_RFC3339_SCHEMA},
)


def _json_context(value: Any, path: str) -> dict[str, Any]:
    try:
        return _context(value, path)
    except ValidationError as err:
        if err.reason != "out_of_range" or err.path != path or "64 bits" not in err.detail:
            raise
    return _context(_json_numbers(value), path)  # rare: read huge integers as JSON does


Context = wire_type("Context", dict, _json_context, _context_schema)
Quantity = _int_type("Quantity", -MAX_QUANTITY, MAX_QUANTITY)
Finite = wire_type("Finite", float, _finite, {"type": "number"})
Base64 = _pattern_type("Base64", _B64, "base64", 2**24)
Sha256 = _pattern_type("Sha256", _SHA256, "64 lowercase hex digits", 64)
SafeName = _pattern_type("SafeName", _SAFE_NAME, "a safe version name", 128)
Title = _text_type("Title", MAX_TITLE_LEN)
Category = _text_type("Category", MAX_CATEGORY_LEN)


def _str_meta(min_len: int, max_len: int, description: str = "") -> Any:
    kw: dict[str, Any] = {"max_length": max_len}
    if min_len:
        kw["min_length"] = min_len
    if description:
        kw["description"] = description
    return Meta(**kw)


def Str(max_len: int, min_len: int = 1, description: str = "") -> Any:  # noqa: N802 - reads as a type
    """A plain string field checked natively by msgspec."""
    return Annotated[str, _str_meta(min_len, max_len, description)]


def Doc(tp: Any, description: str) -> Any:  # noqa: N802 - reads as a type
    return Annotated[tp, Meta(description=description)]


# ---------------------------------------------------------------------------------------------
# Models: the single declaration of every wire contract.


class _Wire(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Base of the wire models: frozen, slotted, unknown fields refused.

    A field typed ``X = None`` is optional: absent means None, and JSON ``null`` is refused
    (msgspec checks the value against ``X``, which never admits null).
    """

    # Extra JSON Schema of the whole message (title/description/cross-field rules), see schemas.generate.
    __schema__: ClassVar[dict[str, Any]] = {}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if "schema_version" in self.__struct_fields__:
            out["schema_version"] = self.schema_version  # type: ignore[attr-defined]
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if value is not None and name != "schema_version":
                out[name] = value
        return out

    def replace(self: T, **changes: Any) -> T:
        """A copy with ``changes`` (trusted, like direct construction)."""
        return msgspec.structs.replace(self, **changes)

    @classmethod
    def from_dict(cls: type[T], d: Any, path: str = "$") -> T:
        """Validate an already parsed message (a dict from JSON); raises only ValidationError."""
        return _convert(d, cls, path)

    def _rules(self, path: str) -> None:
        """Cross-field rules msgspec cannot express (run by decode_* and from_dict)."""

    # Which fault a message with several reports (the error path only, see _first_error): unknown
    # fields first, then the fields in this order (default: schema_version, then the declaration
    # order), each followed by its cross-field rule.
    __check_order__: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def _field_rule(cls, name: str, checked: dict[str, Any], path: str) -> None:
        """The cross-field rule checked right after field ``name``, given the fields checked so far."""


def _when_type(types: list[str] | str, required: str, negate: bool = False) -> dict[str, Any]:
    cond: dict[str, Any] = {"enum": types} if isinstance(types, list) else {"const": types}
    return {
        "if": {"required": ["type"], "properties": {"type": {"not": cond} if negate else cond}},
        "then": {"required": [required]},
    }


class Event(_Wire):
    """One user event from the ``events`` topic (key: ``user_id``).

    ``ts`` is always epoch milliseconds here, whatever form the producer sent. ``context`` is
    the producer's own small JSON object; treat it as read-only.
    """

    event_id: Str(MAX_ID_LEN, description="Unique id of the event; consumers de-duplicate on it.")
    user_id: Id
    type: Doc(Literal[EVENT_TYPES], "erase_user asks the worker to forget the user (no item).")  # type: ignore[valid-type]
    ts: Ts
    item_id: Doc(Id, "Required for every type except search and erase_user.") = None
    query: Str(MAX_QUERY_LEN, description="Search text; required for type search.") = None
    session_id: Doc(_text_type("SessionId", MAX_ID_LEN), "Blank means absent.") = None
    quantity: Doc(Quantity, "Units; a cancel carries the cancelled quantity as a positive number.") = None
    price: Annotated[float, Meta(ge=0, le=MAX_PRICE, description="Unit price.")] = None
    rating: Annotated[float, Meta(ge=0, le=MAX_RATING, description="Explicit rating; required for type rating.")] = None
    context: Context = None
    schema_version: SchemaVersion = SCHEMA_VERSION

    __schema__ = {
        "description": "One user event on the `events` topic (Kafka key: user_id). Encoded as compact UTF-8 JSON, "
        f"at most {MAX_MESSAGE_BYTES} bytes. Unknown fields are rejected; null is never a valid value (leave an "
        "optional field out instead).",
        "properties": {"type": {"enum": list(EVENT_TYPES)}},  # in EVENT_TYPES order (msgspec sorts a Literal)
        "allOf": [
            _when_type(sorted(ITEMLESS_EVENT_TYPES, key=EVENT_TYPES.index), "item_id", negate=True),
            _when_type("search", "query"),
            _when_type("rating", "rating"),
        ],
    }

    __check_order__ = (
        "schema_version", "event_id", "user_id", "type", "item_id", "query", "ts",
        "session_id", "quantity", "price", "rating", "context",
    )  # fmt: skip

    def _rules(self, path: str) -> None:
        etype = self.type
        if (
            (self.item_id is None and etype not in ITEMLESS_EVENT_TYPES)
            or (self.query is None and etype == "search")
            or (self.rating is None and etype == "rating")
        ):
            checked = {"type": etype, "item_id": self.item_id, "query": self.query, "rating": self.rating}
            for name in ("item_id", "query", "context"):
                Event._field_rule(name, checked, path)

    @classmethod
    def _field_rule(cls, name: str, checked: dict[str, Any], path: str) -> None:
        etype = checked.get("type")
        if name == "item_id" and checked.get("item_id") is None and etype not in ITEMLESS_EVENT_TYPES:
            raise ValidationError("missing_field", f"{path}.item_id", f"required for type {etype}")
        if name == "query" and checked.get("query") is None and etype == "search":
            raise ValidationError("missing_field", f"{path}.query", "required for type search")
        if name == "context" and checked.get("rating") is None and etype == "rating":  # the last rule
            raise ValidationError("missing_field", f"{path}.rating", "required for type rating")


class Item(_Wire):
    """A catalog entry from the ``items`` topic (key: ``item_id``). It may have no text at all."""

    item_id: Id
    title: Title = None
    description: _text_type("Description", MAX_DESCRIPTION_LEN) = None
    category: Category = None
    brand: Category = None
    price: Annotated[float, Meta(ge=0, le=MAX_PRICE)] = None
    available: Doc(bool, "False hides the item from recommendations. Absent means true.") = True
    ts: Ts = None
    schema_version: SchemaVersion = SCHEMA_VERSION

    __schema__ = {
        "description": "A catalog entry on the `items` topic (Kafka key: item_id). An item may have no text at all; "
        "blank (empty or whitespace-only) text fields mean absent.",
    }


class RecItem(_Wire):
    """One recommended item: its score and a short human reason (``"bought with X"``)."""

    item_id: Id
    score: Doc(Finite, "Ranker score; higher is better; only comparable within one list.")
    reason: Str(MAX_REASON_LEN, 0, "Short human explanation, e.g. 'bought with WHITE METAL LANTERN'.")
    title: Str(MAX_TITLE_LEN, 0) = None
    source: Str(64, description="Candidate source: history, covis, ann, trending, search, ...") = None


class Recommendation(_Wire):
    """A user's fresh list on the ``recommendations`` topic (key: ``user_id``) and in Redis."""

    user_id: Id
    items: Annotated[tuple[RecItem, ...], Meta(max_length=MAX_REC_ITEMS)]
    model_version: Str(MAX_ID_LEN)
    variant: Str(64, description="Ranking variant that produced the list (A/B arm, precision, fallback).")
    event_id: Str(MAX_ID_LEN, description="The event that triggered this list.")
    event_ts: Doc(TsInt, "Time of the triggering event.")
    published_ts: Doc(TsInt, "When the worker published the list; published_ts - event_ts is the end-to-end latency.")
    schema_version: SchemaVersion = SCHEMA_VERSION

    __schema__ = {
        "description": "A user's fresh list on the `recommendations` topic (Kafka key: user_id); the same document "
        "is stored in Redis. Items are ordered best first and unique by item_id (uniqueness is enforced by readers).",
    }

    def to_dict(self) -> dict[str, Any]:
        out = _Wire.to_dict(self)
        out["items"] = [item.to_dict() for item in self.items]
        return out

    def _rules(self, path: str) -> None:
        if len({x.item_id for x in self.items}) != len(self.items):
            Recommendation._field_rule("items", {"items": self.items}, path)

    @classmethod
    def _field_rule(cls, name: str, checked: dict[str, Any], path: str) -> None:
        if name != "items":
            return
        seen: set[str] = set()
        for i, x in enumerate(checked["items"]):
            if x.item_id in seen:
                raise ValidationError("duplicate", f"{path}.items[{i}].item_id", f"{_show(x.item_id)} is listed twice")
            seen.add(x.item_id)


class DeadLetter(_Wire):
    """A message the worker could not process, on ``events.dlq``: the original bytes and why.

    Build one with :meth:`for_message`; ``value_utf8`` makes small text messages readable in a
    console consumer without decoding base64.
    """

    reason: Str(2048, description="Human reason, e.g. '$.ts: out_of_range: 1e+18 is after 2100-01-01'.")
    error_code: Str(
        64, description="Machine code: a validation reason (missing_field, wrong_type, ...) or processing_error."
    )
    source_topic: Str(249)
    partition: _int_type("Partition", 0, 2**31 - 1)
    offset: _int_type("Offset", 0, 2**63 - 1)
    value_b64: Doc(Base64, "Original value, standard base64 (empty for a tombstone).")
    ts: Doc(TsInt, "When the message was dead-lettered.")
    key_b64: Doc(Base64, "Original key, standard base64; absent when the message had no key.") = None
    value_utf8: Str(
        MAX_DEAD_LETTER_TEXT_BYTES,
        0,
        f"Original value as text, present when it is valid UTF-8 and at most {MAX_DEAD_LETTER_TEXT_BYTES} bytes.",
    ) = None
    worker: Str(MAX_ID_LEN, description="Id of the worker that gave up on it.") = None
    schema_version: SchemaVersion = SCHEMA_VERSION

    __check_order__ = (
        "schema_version", "reason", "error_code", "source_topic", "partition", "offset",
        "key_b64", "value_b64", "value_utf8", "ts", "worker",
    )  # fmt: skip
    __schema__ = {
        "description": "A message that could not be processed, on `events.dlq`: the original bytes, where they came "
        "from and a precise reason. Nothing is dropped silently.",
    }

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


class ModelUpdate(_Wire):
    """A new model version is ready (``model-updates`` topic). ``version`` is a safe folder name."""

    version: Doc(SafeName, "Version name, also the folder name: no path separators.")
    location: Str(4096, description="Path or URI of the version folder.")
    manifest_sha256: Doc(Sha256, "sha256 (lowercase hex) of the version's manifest.json bytes.")
    created_at: Rfc3339
    metrics: Annotated[
        dict[str, Any],
        Meta(description="Offline metrics of this version (and of production/baselines, for comparison)."),
    ]
    note: Str(1024, 0) = None
    schema_version: SchemaVersion = SCHEMA_VERSION

    __schema__ = {
        "description": "A new model version is published (`model-updates` topic). Workers verify the manifest "
        "checksum and run a smoke inference before switching.",
    }


# --- the model directory's manifest.json (a file, not a message: extra top-level keys are allowed)

_VARIANT = re.compile(r"[a-z0-9_]{1,32}", re.ASCII)


class ManifestFile(_Wire):
    sha256: Sha256
    bytes: _int_type("FileBytes", 0, 2**53)


def _files(value: Any, path: str) -> dict[str, Any]:
    files = _object(value, path)
    if not files:
        raise ValidationError("empty", path, "must list the version's files")
    for name, entry in files.items():
        where = _child(path, name)
        if not _SAFE_NAME.fullmatch(name):
            raise ValidationError("bad_format", where, f"{_show(name)} is not a safe file name")
        _convert(entry, ManifestFile, where)
    return files


def _files_schema() -> dict[str, Any]:
    from schemas.generate import struct_schema  # generation only

    return {
        "description": "Every file of the version except manifest.json, with its checksum.",
        "type": "object",
        "minProperties": 1,
        "propertyNames": {"pattern": _regex_schema(_SAFE_NAME)},
        "additionalProperties": struct_schema(ManifestFile),
    }


def _type_ids(value: Any, path: str) -> dict[str, Any]:
    for name, type_id in _object(value, path).items():
        _int(type_id, _child(path, name), 1, 1024)
    return value


def _variants(value: Any, path: str) -> list[str]:
    if not isinstance(value, list):
        raise _wrong(path, "an array", value)
    if not value:
        raise ValidationError("empty", path, "must list at least one variant")
    for i, name in enumerate(value):
        _pattern(name, f"{path}[{i}]", _VARIANT, "a variant name like fp16", 32)
        if name in value[:i]:
            raise ValidationError("duplicate", f"{path}[{i}]", f"{_show(name)} is listed twice")
    return value


def _dataset(value: Any, path: str) -> Any:
    if not isinstance(value, (str, dict)):
        raise _wrong(path, "a string or an object", value)
    return value


class TrainingWindow(msgspec.Struct, frozen=True):
    start: Ts
    end: Ts


class ModelManifest(msgspec.Struct, frozen=True):
    """The model directory's ``manifest.json``; see :func:`validate_manifest`."""

    format: Doc(
        wire_type("ManifestFormat", int, _manifest_format, {"const": 1}),
        "Model directory format (schemas.ranking.MODEL_FORMAT).",
    )
    version: SafeName
    created_at: Rfc3339
    base_model: Str(256, description="Pretrained weights the model starts from.")
    dim: _int_type("Dim", 1, 65536)
    max_seq_len: _int_type("MaxSeqLen", 1, 65536)
    max_text_len: _int_type("MaxTextLen", 1, 65536)
    features: Annotated[
        list[Str(64)],
        Meta(
            min_length=1,
            description="Per-candidate feature names in ranker input order (schemas.ranking.FEATURE_NAMES).",
        ),
    ]
    event_type_ids: Doc(
        wire_type(
            "EventTypeIds",
            dict,
            _type_ids,
            {"type": "object", "additionalProperties": {"type": "integer", "minimum": 1, "maximum": 1024}},
        ),
        "Event type -> id of the ranker's type embedding (0 is padding).",
    )
    files: wire_type("Files", dict, _files, _files_schema)
    ranker_variants: Doc(
        wire_type(
            "RankerVariants",
            list,
            _variants,
            {
                "type": "array",
                "minItems": 1,
                "uniqueItems": True,
                "items": {"type": "string", "pattern": _regex_schema(_VARIANT)},
            },
        ),
        'Ranker precisions exported, e.g. ["fp32", "fp16", "int8"].',
    )
    training_window: Doc(TrainingWindow, "Event-time range of the training data.") = None
    metrics: dict[str, Any] = None
    parity: Annotated[
        dict[str, Any], Meta(description="ONNX vs PyTorch comparison (max abs difference, tolerance, ...).")
    ] = None
    dataset: wire_type("Dataset", object, _dataset, {"type": ["string", "object"]}) = None

    __schema__: ClassVar[dict[str, Any]] = {
        "description": "manifest.json of a model version folder (see schemas.ranking.MODEL_DIR_LAYOUT). Extra top-level "
        "keys are allowed: the job may add information that older workers ignore.",
    }


def validate_manifest(d: Any) -> None:
    """Check a model directory's ``manifest.json`` (already parsed) against model_manifest.v1.

    Unlike the wire messages, extra top-level keys are allowed: the manifest is a file that the
    job may enrich without breaking workers that do not read the new keys.
    """
    _convert(d, ModelManifest, "$")


# ---------------------------------------------------------------------------------------------
# msgspec errors -> ValidationError (reason code + JSONPath)


class _Fail(ValueError):
    """Carries a check's ValidationError (with a path relative to the field) through msgspec."""

    def __init__(self, error: ValidationError) -> None:
        super().__init__(error.reason)
        self.error = error


def _python_dec_hook(tp: Any, value: Any) -> Any:
    """``from_dict``: Python values, not JSON text, so an integer beyond 64 bits in ``context`` is
    refused (it would not survive a JSON round trip) instead of read as JSON would read it."""
    if tp is Context:
        try:
            return _context(value, "")
        except ValidationError as err:
            raise _Fail(err) from None
    return _dec_hook(tp, value)


def _dec_hook(tp: Any, value: Any) -> Any:
    try:
        check = tp.check
    except AttributeError:
        raise NotImplementedError(f"no wire check for {tp!r}") from None
    try:
        return check(value, "")
    except ValidationError as err:
        raise _Fail(err) from None


_WORDS = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean",
    "null": "null",
    "array": "an array",
    "object": "an object",
}
_AT = " - at `"
_MSGSPEC_RULES: list[tuple[re.Pattern[str], Callable[[re.Match[str], str], ValidationError]]] = [
    (
        re.compile(r"Object contains unknown field `(.*)`", re.S),
        lambda m, p: ValidationError("unknown_field", _child(p, m[1]), "not part of the schema"),
    ),
    (
        re.compile(r"Object missing required field `(.*)`", re.S),
        lambda m, p: ValidationError("missing_field", _child(p, m[1]), "required"),
    ),
    (
        re.compile(r"Expected `(\w+)`, got `(\w+)`"),
        lambda m, p: ValidationError(
            "not_object" if p == "$" and m[1] == "object" else "wrong_type",
            p,
            f"expected {_WORDS.get(m[1], m[1])}, got {_WORDS.get(m[2], m[2])}",
        ),
    ),
    (
        re.compile(r"Expected `(?:str|array)` of length >= 1"),
        lambda m, p: ValidationError("empty", p, "must not be empty"),
    ),
    (
        re.compile(r"Expected `str` of length <= (\d+)"),
        lambda m, p: ValidationError("too_long", p, f"more than {m[1]} characters"),
    ),
    (
        re.compile(r"Expected `(?:array|object)` of length <= (\d+)"),
        lambda m, p: ValidationError("too_many", p, f"more than {m[1]} entries"),
    ),
    (
        re.compile(r"Expected `(?:int|float)` ([<>]=?) (\S+)"),
        lambda m, p: ValidationError("out_of_range", p, f"must be {m[1]} {m[2]}"),
    ),
    (
        re.compile(r"Invalid enum value (.*)", re.S),
        lambda m, p: ValidationError("unknown_type", p, f"{m[1]} is not one of {', '.join(EVENT_TYPES)}"),
    ),
]


def _translate(exc: msgspec.ValidationError, prefix: str) -> ValidationError:
    """The ValidationError of a msgspec error: its reason code and the JSONPath under ``prefix``."""
    cause = exc.__cause__
    message = str(exc)
    path = "$"
    cut = message.rfind(_AT)
    if cut >= 0 and message.endswith("`"):
        message, path = message[:cut], message[cut + len(_AT) : -1]
    if path.startswith("key` in `"):  # a non-string key of a Python dict (from_dict only)
        return ValidationError("wrong_type", prefix + path[len("key` in `") + 1 :], "a key is not a string")
    path = prefix + path[1:]
    if isinstance(cause, _Fail):
        err = cause.error
        return ValidationError(err.reason, path + err.path, err.detail)
    if cause is not None:  # a check raised ValueError/TypeError itself: a bug, wrapped
        return ValidationError("internal_error", prefix, f"{type(cause).__name__}: {cause}")
    for pattern, build in _MSGSPEC_RULES:
        m = pattern.fullmatch(message)
        if m:
            return build(m, path)
    return ValidationError("wrong_type", path, message)


@functools.cache
def _check_plan(cls: Any) -> tuple[frozenset[str], tuple[tuple[str, bool, Any, Any, int | None], ...]]:
    """(field names, per field in check order: name, required, element struct of an array of
    structs or the struct itself or None, a one-field struct that checks the value, max items)."""
    fields = {f.name: f for f in msgspec.structs.fields(cls)}
    plan = []
    for name in dict.fromkeys(n for n in (cls.__check_order__ or ("schema_version", *fields)) if n in fields):
        tp = fields[name].type
        base, metas = (get_args(tp)[0], get_args(tp)[1:]) if get_origin(tp) is Annotated else (tp, ())
        elem = get_args(base)[0] if get_origin(base) is tuple else base
        struct = elem if isinstance(elem, type) and issubclass(elem, _Wire) else None
        limit = min((m.max_length for m in metas if isinstance(m, Meta) and m.max_length is not None), default=None)
        checker = msgspec.defstruct(f"{cls.__name__}_{name}", [(name, tp)])
        plan.append((name, fields[name].required, struct if struct is not base else None, checker, limit))
    return frozenset(fields), tuple(plan)


def _first_error(cls: Any, d: Any, path: str) -> ValidationError | None:
    """The fault a message with several reports, in a stable order that does not depend on the
    order of its keys: not an object, unknown fields (the first in sorted order), then field by
    field in ``cls.__check_order__`` (a missing required field where it would be), each with its
    cross-field rule; nested structs likewise. None when no field is at fault (a rule on the
    whole message failed). Runs only for a refused message."""
    if not isinstance(d, dict):
        kind = "not_object" if path == "$" else "wrong_type"
        return ValidationError(kind, path, f"expected an object, got {_kind(d)}")
    names, plan = _check_plan(cls)
    extra = sorted(str(k) for k in d if k not in names)
    if extra and cls.__struct_config__.forbid_unknown_fields:
        return ValidationError("unknown_field", _child(path, extra[0]), "not part of the schema")
    checked: dict[str, Any] = {}
    try:
        for name, required, elem, checker, limit in plan:
            if name not in d:
                if required:
                    raise ValidationError("missing_field", _child(path, name), "required")
            else:
                value = d[name]
                if elem is not None and isinstance(value, list) and (limit is None or len(value) <= limit):
                    for i, x in enumerate(value):  # an array of structs: each item in the same order
                        err = _first_error(elem, x, f"{_child(path, name)}[{i}]")
                        if err is not None:
                            raise err
                try:
                    checked[name] = getattr(msgspec.convert({name: value}, checker, dec_hook=_dec_hook), name)
                except msgspec.ValidationError as exc:
                    raise _translate(exc, path) from None
            cls._field_rule(name, checked, path)
    except ValidationError as err:
        return err
    return None


def _refusal(cls: Any, d: Any, exc: msgspec.ValidationError, path: str) -> ValidationError:
    """The ValidationError of a message msgspec refused: its first fault in the stable order."""
    try:
        err = _first_error(cls, d, path)
    except Exception:  # noqa: BLE001 - fall back to msgspec's own report
        err = None
    return err or _translate(exc, path)


def _internal(exc: BaseException, path: str) -> ValidationError:
    return ValidationError("internal_error", path, f"{type(exc).__name__}: {exc}")


def _convert(d: Any, cls: type[T], path: str) -> T:
    """Validate a parsed value as ``cls``; raises only ValidationError."""
    try:
        obj = msgspec.convert(d, cls, dec_hook=_python_dec_hook)
        rules = getattr(obj, "_rules", None)
        if rules is not None:
            rules(path)
        return obj
    except ValidationError:
        raise
    except msgspec.ValidationError as exc:
        raise _refusal(cls, d, exc, path) from None
    except RecursionError:
        raise ValidationError("too_deep", path, "nested too deeply") from None
    except Exception as exc:  # noqa: BLE001 - the caller must only ever see ValidationError
        raise _internal(exc, path) from exc


# ---------------------------------------------------------------------------------------------
# Bytes in, bytes out

_DECODERS: dict[type, msgspec.json.Decoder] = {}
_COMMON_DECODERS: dict[type, msgspec.json.Decoder] = {}


def _common_form(tp: Any) -> Any:
    """``tp`` with a WireType (possibly inside ``Annotated``) replaced by its ``common`` form."""
    if get_origin(tp) is Annotated:
        inner = _common_form(get_args(tp)[0])
        return tp if inner is get_args(tp)[0] else inner  # the outer Meta only documents
    if isinstance(tp, type) and issubclass(tp, WireType) and tp.common is not None:
        return tp.common
    return tp


def _common_struct(cls: Any) -> Any:
    """A struct with ``cls``'s fields in ``cls``'s order, each WireType field in its common form:
    what it decodes, ``cls`` decodes to the same values (see WireType)."""
    fields = []
    for f in msgspec.structs.fields(cls):
        tp = _common_form(f.type)
        fields.append((f.name, tp) if f.required else (f.name, tp, f.default))
    return msgspec.defstruct(
        f"_{cls.__name__}Common", fields, forbid_unknown_fields=cls.__struct_config__.forbid_unknown_fields
    )


def _refused_bytes(raw: Any, cls: Any, exc: msgspec.ValidationError) -> ValidationError:
    """Why msgspec refused ``raw``: bad_json/too_deep when it is not JSON at all (JSON errors win
    over contract errors, wherever they are), else the first fault of the parsed message."""
    try:
        parsed = msgspec.json.decode(raw)
    except msgspec.DecodeError as err:
        return ValidationError("bad_json", "$", str(err))
    except RecursionError:
        return ValidationError("too_deep", "$", "nested too deeply")
    return _refusal(cls, parsed, exc, "$")


def _decode(raw: Any, cls: type[T], limit: int) -> T:
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")  # msgspec then reports lone surrogates as bad_json
    elif not isinstance(raw, (bytes, bytearray, memoryview)):
        hint = " (a Kafka tombstone?)" if raw is None else ""
        raise ValidationError("wrong_type", "$", f"expected bytes, got {_kind(raw)}{hint}")
    size = len(raw)
    if size > limit:
        raise ValidationError("too_large", "$", f"{size} bytes, at most {limit}")
    try:
        # The common form first: natively checked, no Python call per field. Anything it refuses
        # (a numeric id, a blank session, a bad message) goes through the full checks below,
        # which alone decide what is refused and why.
        obj = cls(*astuple(_COMMON_DECODERS[cls].decode(raw)))
    except Exception:  # noqa: BLE001 - the full decode below reports it
        obj = None
    try:
        if obj is None:
            obj = _DECODERS[cls].decode(raw)
        obj._rules("$")
        return obj
    except ValidationError:
        raise
    except msgspec.ValidationError as exc:
        raise _refused_bytes(raw, cls, exc) from None
    except msgspec.DecodeError as exc:
        raise ValidationError("bad_json", "$", str(exc)) from None
    except RecursionError:
        raise ValidationError("too_deep", "$", "nested too deeply") from None
    except Exception as exc:  # noqa: BLE001 - one bad message must never crash the consumer
        raise _internal(exc, "$") from exc


for _cls in (Event, Item, Recommendation, DeadLetter, ModelUpdate):
    _DECODERS[_cls] = msgspec.json.Decoder(_cls, dec_hook=_dec_hook)
    _COMMON_DECODERS[_cls] = msgspec.json.Decoder(_common_struct(_cls), dec_hook=_dec_hook)


def decode_event(raw: bytes) -> Event:
    """Parse and validate one ``events`` message; raises only ValidationError."""
    return _decode(raw, Event, MAX_MESSAGE_BYTES)


def decode_item(raw: bytes) -> Item:
    return _decode(raw, Item, MAX_MESSAGE_BYTES)


def decode_recommendation(raw: bytes) -> Recommendation:
    return _decode(raw, Recommendation, MAX_MESSAGE_BYTES)


def decode_dead_letter(raw: bytes) -> DeadLetter:
    return _decode(raw, DeadLetter, MAX_DEAD_LETTER_BYTES)


def decode_model_update(raw: bytes) -> ModelUpdate:
    return _decode(raw, ModelUpdate, MAX_MESSAGE_BYTES)


Model = Event | Item | RecItem | Recommendation | DeadLetter | ModelUpdate


def encode(obj: Model) -> bytes:
    """Compact JSON bytes of a model, with absent (None) fields left out."""
    return orjson.dumps(obj.to_dict())


# The published contracts: the model each file is generated from (``python -m schemas.generate``).
CONTRACTS: dict[str, type] = {
    "event": Event,
    "item": Item,
    "recommendation": Recommendation,
    "dead_letter": DeadLetter,
    "model_update": ModelUpdate,
    "model_manifest": ModelManifest,
}
JSON_SCHEMA_FILES = {name: f"{name}.v{SCHEMA_VERSION}.json" for name in CONTRACTS}


def json_schema(name: str) -> dict[str, Any]:
    """The published JSON Schema of a contract (``"event"``, ``"item"``, ... see JSON_SCHEMA_FILES)."""
    from importlib.resources import files

    return orjson.loads(files("schemas").joinpath("json", JSON_SCHEMA_FILES[name]).read_bytes())
