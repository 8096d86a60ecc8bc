"""Dead letters as sent (streamer/dlq.py): bounded in size, truthful about what was cut."""

from __future__ import annotations

from schemas import DeadLetter, decode_dead_letter, encode
from streamer.dlq import bounded_dead_letter


def letter(value: bytes, key: bytes | None = b"user-1", reason: str = "bad_json: not JSON") -> DeadLetter:
    return DeadLetter.for_message(
        ValueError(reason), topic="events", partition=2, offset=7, key=key, value=value, ts=1_800_000_000_000
    )


def test_a_small_dead_letter_is_sent_as_it_is():
    dl = letter(b"{not json")
    assert bounded_dead_letter(dl, limit=64) is dl


def test_a_huge_value_is_cut_to_its_first_bytes_and_the_reason_says_so():
    value = bytes(range(256)) * 40  # 10,240 bytes, not UTF-8
    dl = bounded_dead_letter(letter(value), limit=1000)
    assert dl.value() == value[:1000] and dl.key() == b"user-1"  # the small key is untouched
    assert dl.value_utf8 is None
    assert dl.reason.endswith("[value truncated to its first 1000 of 10240 bytes]")
    assert (dl.error_code, dl.partition, dl.offset) == ("processing_error", 2, 7)
    assert decode_dead_letter(encode(dl)) == dl  # still a valid wire message


def test_key_and_value_both_cut_and_the_reason_stays_within_its_bound():
    dl = bounded_dead_letter(letter(b"v" * 5000, key=b"k" * 5000, reason="x" * 3000), limit=100)
    assert dl.value() == b"v" * 100 and dl.key() == b"k" * 100
    assert dl.reason.endswith(
        "[value truncated to its first 100 of 5000 bytes; key truncated to its first 100 of 5000 bytes]"
    )
    assert len(dl.reason) <= 2048
    assert len(encode(dl)) < 4096  # the whole letter is bounded, whatever the input's size
