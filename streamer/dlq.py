"""Dead letters as sent: bounded in size, so a huge invalid input cannot take the worker down."""

from __future__ import annotations

import base64

from schemas import DeadLetter

DLQ_VALUE_LIMIT = 256 * 1024  # bytes of the original value (and key) a dead letter carries


def bounded_dead_letter(dl: DeadLetter, limit: int = DLQ_VALUE_LIMIT) -> DeadLetter:
    """The dead letter, with the original value and key cut to their first ``limit`` bytes.

    A dead letter carries the original bytes base64-encoded (4/3 larger): an input near the
    broker's 1 MB limit made a dead letter over the producer's ``max_request_size``, whose send
    failed and took the events agent down (measured with a 900 KB event). The reason says what
    was cut, so the letter stays truthful; small messages are untouched.
    """
    cut = {}
    notes = []
    for field, get in (("value_b64", dl.value), ("key_b64", dl.key)):
        encoded = getattr(dl, field)
        if encoded is not None and len(encoded) > limit * 4 // 3 + 4:
            raw = get()
            cut[field] = base64.b64encode(raw[:limit]).decode("ascii")
            notes.append(f"{field[:-4]} truncated to its first {limit} of {len(raw)} bytes")
    if not cut:
        return dl
    note = " [" + "; ".join(notes) + "]"
    return dl.replace(**cut, value_utf8=None, reason=dl.reason[: 2048 - len(note)] + note)
