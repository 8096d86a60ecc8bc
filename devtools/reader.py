"""``streamrec-reader USER_ID``: print a user's current list from Redis, the way the front end sees it.

    streamrec-reader 17850                      # table: titles, scores, reasons, variant, model, age
    streamrec-reader 17850 --json               # machine-readable, with age_s and ttl_s
    streamrec-reader 17850 --redis-url redis://h:6379/0 --prefix rec:

Defaults come from the worker's own variables: ``REDIS_URL`` (else redis://127.0.0.1:6379/0),
``REDIS_PASSWORD``, ``STREAMREC_REDIS_PREFIX`` (else ``rec:``). When
``STREAMREC_PSEUDONYMIZE_KEY`` is set the worker stores lists under the pseudonym, so the reader
looks the user up by the same HMAC (``--no-pseudonymize`` to give a stored id as is).

Exit status: 0 list printed, 1 no list for the user, 2 Redis unreachable, 3 stored value invalid.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime

import orjson

from schemas import ValidationError, decode_recommendation
from streamer.ingest import Pseudonymizer


def duration(seconds: float) -> str:
    s = abs(seconds)
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{s / 60:.1f} min"
    if s < 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def human_age(seconds: float) -> str:
    return duration(seconds) + (" ago" if seconds >= 0 else " in the future (clock skew?)")


def _utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _cut(text: str | None, n: int) -> str:
    text = text or ""
    return text if len(text) <= n else text[: n - 1] + "…"


def render(rec, *, key: str, now_ms: int, ttl_s: int | None) -> str:
    age = (now_ms - rec.published_ts) / 1000
    lines = [
        f"user {rec.user_id}: {len(rec.items)} items · variant {rec.variant} · model {rec.model_version}",
        f"published {_utc(rec.published_ts)} ({human_age(age)}) · triggered by event {rec.event_id} of {_utc(rec.event_ts)} (event time)",
        f"Redis key {key}" + (f", expires in {duration(ttl_s)}" if ttl_s else ""),
        "",
    ]
    if not rec.items:
        lines.append("(the list is empty)")
        return "\n".join(lines)
    wid = max(4, max(len(i.item_id) for i in rec.items))
    lines.append(f"{'#':>3}  {'item':<{wid}}  {'score':>9}  {'title':<36}  {'source':<8}  reason")
    for n, it in enumerate(rec.items, 1):
        lines.append(
            f"{n:>3}  {it.item_id:<{wid}}  {it.score:>9.4f}  {_cut(it.title, 36):<36}  {_cut(it.source, 8):<8}  {it.reason}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None, now_ms: int | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="streamrec-reader", description="Print a user's current recommendation list from Redis."
    )
    p.add_argument("user_id")
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0")
    p.add_argument(
        "--prefix",
        default=os.environ.get("STREAMREC_REDIS_PREFIX", "rec:"),
        help="key prefix of the lists (STREAMREC_REDIS_PREFIX)",
    )
    p.add_argument("--json", action="store_true", help="print JSON: the list plus key, age_s, ttl_s")
    p.add_argument(
        "--no-pseudonymize",
        action="store_true",
        help="use USER_ID as stored even when STREAMREC_PSEUDONYMIZE_KEY is set",
    )
    args = p.parse_args(argv)
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeout

    from streamer.security import tool_redis_client

    user = args.user_id
    if not args.no_pseudonymize:
        user = Pseudonymizer(os.environ.get("STREAMREC_PSEUDONYMIZE_KEY", ""))(user)
    key = args.prefix + user
    r = tool_redis_client(args.redis_url, socket_connect_timeout=5, socket_timeout=5)
    try:
        with r.pipeline(transaction=False) as pipe:
            raw, ttl = pipe.get(key).ttl(key).execute()
    except (RedisConnectionError, RedisTimeout, OSError) as exc:
        print(f"streamrec-reader: cannot reach Redis at {_safe_url(args.redis_url)}: {exc}", file=sys.stderr)
        return 2
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    if raw is None:
        if args.json:
            print(orjson.dumps({"found": False, "key": key}).decode())
        else:
            print(
                f"no list for user {args.user_id!r}: key {key!r} does not exist in {_safe_url(args.redis_url)}.\n"
                f"The worker publishes a list after the user's first event; it may not have seen one yet, the list "
                f"may have expired (STREAMREC_REDIS_TTL_S), or the prefix differs (--prefix, STREAMREC_REDIS_PREFIX)."
            )
        return 1
    try:
        rec = decode_recommendation(raw)
    except ValidationError as exc:
        print(f"streamrec-reader: the value at {key!r} is not a valid recommendation list: {exc}", file=sys.stderr)
        return 3
    ttl_s = ttl if isinstance(ttl, int) and ttl >= 0 else None
    if args.json:
        out = {
            "found": True,
            "key": key,
            "age_s": round((now_ms - rec.published_ts) / 1000, 3),
            "ttl_s": ttl_s,
            "recommendation": rec.to_dict(),
        }
        print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
    else:
        print(render(rec, key=key, now_ms=now_ms, ttl_s=ttl_s))
    return 0


def _safe_url(url: str) -> str:
    return "redis://***@" + url.split("@", 1)[1] if "@" in url else url


if __name__ == "__main__":
    sys.exit(main())
