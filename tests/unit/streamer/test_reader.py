"""``streamrec-reader`` against a real redis-server (a private one on a free port)."""

from __future__ import annotations

import orjson
import redis

from devtools import reader
from devtools.stack import free_port
from schemas import RecItem, Recommendation, encode

NOW = 1_800_000_000_000


def a_list(user="17850") -> Recommendation:
    return Recommendation(
        user_id=user,
        items=(
            RecItem("71053", 2.91, "matches your search 'red lantern'", "WHITE METAL LANTERN", "search"),
            RecItem(
                "22752", 0.4, "trending: bought 37 times in the last 7 days", "SET 7 BABUSHKA NESTING BOXES", "trending"
            ),
        ),
        model_version="20261123T000000Z-bootstrap",
        variant="ranker",
        event_id="ev-9",
        event_ts=1_323_000_000_000,
        published_ts=NOW - 3_200,
    )


def test_prints_titles_scores_reasons_variant_model_and_age(redis_url, capsys):
    redis.Redis.from_url(redis_url).set("rec:17850", encode(a_list()), ex=600)
    assert reader.main(["17850", "--redis-url", redis_url], now_ms=NOW) == 0
    out = capsys.readouterr().out
    assert "variant ranker" in out and "model 20261123T000000Z-bootstrap" in out
    assert "(3.2 s ago)" in out and "expires in 10.0 min" in out
    assert "WHITE METAL LANTERN" in out and "matches your search 'red lantern'" in out and "2.9100" in out
    assert out.index("71053") < out.index("22752")  # list order kept
    assert "trending: bought 37 times in the last 7 days" in out


def test_json_output(redis_url, capsys):
    redis.Redis.from_url(redis_url).set("p:17850", encode(a_list()))
    assert reader.main(["17850", "--redis-url", redis_url, "--prefix", "p:", "--json"], now_ms=NOW) == 0
    d = orjson.loads(capsys.readouterr().out)
    assert d["found"] and d["key"] == "p:17850" and d["age_s"] == 3.2 and d["ttl_s"] is None
    assert d["recommendation"]["items"][0]["title"] == "WHITE METAL LANTERN"


def test_no_list_is_a_clear_message(redis_url, capsys):
    assert reader.main(["nobody", "--redis-url", redis_url], now_ms=NOW) == 1
    out = capsys.readouterr().out
    assert out.startswith("no list for user 'nobody'") and "rec:nobody" in out and "STREAMREC_REDIS_TTL_S" in out
    assert reader.main(["nobody", "--redis-url", redis_url, "--json"], now_ms=NOW) == 1
    assert orjson.loads(capsys.readouterr().out) == {"found": False, "key": "rec:nobody"}


def test_pseudonymized_ids_are_looked_up_by_their_hmac(redis_url, capsys, monkeypatch):
    from streamer.ingest import Pseudonymizer

    hashed = Pseudonymizer("k3y")("17850")
    redis.Redis.from_url(redis_url).set("rec:" + hashed, encode(a_list(hashed)))
    monkeypatch.setenv("STREAMREC_PSEUDONYMIZE_KEY", "k3y")
    assert reader.main(["17850", "--redis-url", redis_url], now_ms=NOW) == 0
    assert hashed in capsys.readouterr().out


def test_unreachable_redis_and_invalid_value(redis_url, capsys):
    assert reader.main(["u", "--redis-url", f"redis://127.0.0.1:{free_port()}/0"], now_ms=NOW) == 2
    assert "cannot reach Redis" in capsys.readouterr().err
    redis.Redis.from_url(redis_url).set("rec:broken", b'{"user_id": "broken"}')
    assert reader.main(["broken", "--redis-url", redis_url], now_ms=NOW) == 3
    assert "not a valid recommendation list" in capsys.readouterr().err


def test_human_age():
    assert reader.human_age(3.24) == "3.2 s ago"
    assert reader.human_age(90) == "1.5 min ago"
    assert reader.human_age(7200) == "2.0 h ago"
    assert reader.human_age(3 * 86400) == "3.0 days ago"
    assert "clock skew" in reader.human_age(-5)
