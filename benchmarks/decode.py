"""Decode speed of the wire contracts: ``decode_event`` / ``decode_item`` per message.

    python -m benchmarks.decode [--rows 20000] [--repeat 5]

Encodes the first ``--rows`` events of each shared data set (and their items) once, then times
``decode_event``/``decode_item`` over all of them ``--repeat`` times and prints the best
microseconds per message (best of the repeats: the least disturbed by other processes), plus a
mix of invalid messages (each refused with its dead-letter reason).
"""

from __future__ import annotations

import argparse
import time

import orjson

from schemas import ValidationError, decode_event, decode_item, encode
from schemas.sources import load_dataset

INVALID = [
    b"100370,1968385,1875258,pv",
    b'{"event_id":"e","user_id":17850.5,"type":"view","item_id":"i","ts":1291191960000}',
    b'{"event_id":"e","user_id":"u","type":"pv","item_id":"i","ts":1291191960000}',
    b'{"event_id":"e","user_id":"u","type":"view","ts":1291191960000}',
    b'{"event_id":"e","user_id":"u","type":"view","item_id":"i","ts":1e18}',
    b'{"event_id":"e","user_id":"u","type":"view","item_id":"i","ts":1291191960000,"customer":"x"}',
]


def best_us(decode, payloads: list[bytes], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for raw in payloads:
            try:
                decode(raw)
            except ValidationError:
                pass
        best = min(best, time.perf_counter() - t0)
    return best / len(payloads) * 1e6


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--datasets", default="online_retail,taobao,movielens")
    args = ap.parse_args(argv)
    out = {}
    for name in args.datasets.split(","):
        ds = load_dataset(name, limit_rows=args.rows)
        events = [encode(e) for e in ds.events]
        items = [encode(i) for i in list(ds.items.values())[: args.rows]]
        out[f"{name} events"] = (len(events), best_us(decode_event, events, args.repeat))
        out[f"{name} items"] = (len(items), best_us(decode_item, items, args.repeat))
    invalid = INVALID * 2000
    out["invalid events (mix)"] = (len(invalid), best_us(decode_event, invalid, args.repeat))
    for label, (n, us) in out.items():
        print(orjson.dumps({"case": label, "messages": n, "us_per_message": round(us, 3)}).decode(), flush=True)


if __name__ == "__main__":
    main()
