"""Wire contracts of the recommender: one source of truth for the worker, the job and the tools.

``schemas.models`` declares each typed message once (msgspec Structs, which decode and validate
it); ``schemas/json/*.v1.json`` are the same contracts as JSON Schema (draft 2020-12), generated
from those declarations (``python -m schemas.generate``) for other languages and documentation;
``schemas.ranking`` the ranker contract (numpy; import it explicitly); ``schemas.sources`` maps the
shared real data sets onto these messages. This package imports nothing else of the project.
"""

from schemas.models import (
    EVENT_TYPES,
    ITEMLESS_EVENT_TYPES,
    MAX_DEAD_LETTER_BYTES,
    MAX_MESSAGE_BYTES,
    REASONS,
    SCHEMA_VERSION,
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
    json_schema,
    parse_rfc3339_ms,
    validate_manifest,
)

__all__ = [
    "EVENT_TYPES",
    "ITEMLESS_EVENT_TYPES",
    "MAX_DEAD_LETTER_BYTES",
    "MAX_MESSAGE_BYTES",
    "REASONS",
    "SCHEMA_VERSION",
    "DeadLetter",
    "Event",
    "Item",
    "ModelUpdate",
    "RecItem",
    "Recommendation",
    "ValidationError",
    "decode_dead_letter",
    "decode_event",
    "decode_item",
    "decode_model_update",
    "decode_recommendation",
    "encode",
    "json_schema",
    "parse_rfc3339_ms",
    "validate_manifest",
]
