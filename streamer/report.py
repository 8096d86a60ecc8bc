"""``streamrec-report``: the online A/B table per variant, from the counters the workers keep in Redis.

    streamrec-report [--redis-url URL] [--prefix streamrec:] [--json]

For each variant (see ``streamer.attribution`` for how events are attributed):

* ``lists``: fresh lists published (impressions); ``users``: distinct users shown the variant;
* ``clicks`` / ``carts`` / ``purchases``: events on an item of the user's live list within
  ``STREAMREC_ATTRIBUTION_WINDOW_S`` (event time);
* ``CTR`` = lists with >= 1 attributed click / lists; ``cart rate`` and ``conversion`` likewise
  for add-to-carts and purchases. Each with a 95% Wilson score interval;
* when a ``control`` variant exists, each other variant's difference to it, with a 95% interval
  (Newcombe's method from the two Wilson intervals).

How to read it. The unit is a list, and one user sees many lists, so the lists are not
independent: the intervals are somewhat too narrow, and a difference is convincing only over many
users. On a replay of online_retail (purchases only) there are no clicks or carts: CTR and cart
rate are 0 and "conversion" is the purchase-of-a-recommended-item rate — the share of lists after
which the customer bought a listed item within the window, largely the rest of the invoice keyed
in line by line (co-visitation) and the customer's own rebuys (see ``streamer.attribution``).
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import orjson

from streamer.attribution import read_stats

Z95 = 1.959963984540054
RATES = (("ctr", "lists_clicked", "CTR"), ("cart_rate", "lists_carted", "cart rate"), ("conversion", "lists_purchased", "conversion"))


def wilson(successes: int, trials: int, z: float = Z95) -> tuple[float, float, float]:
    """(proportion, low, high): the Wilson score interval; (0, 0, 1) with no trials."""
    if trials <= 0:
        return 0.0, 0.0, 1.0
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return p, max(0.0, centre - half), min(1.0, centre + half)


def newcombe(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float, float]:
    """Difference p1 - p2 and its 95% interval (Newcombe's hybrid score method, no continuity correction)."""
    p1, l1, u1 = wilson(x1, n1)
    p2, l2, u2 = wilson(x2, n2)
    d = p1 - p2
    return d, d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def summarize(stats: dict[str, dict[str, int]]) -> dict[str, dict]:
    out = {}
    for variant, c in stats.items():
        row = dict(c)
        for name, field, _label in RATES:
            p, lo, hi = wilson(c[field], c["lists"])
            row[name] = {"rate": p, "ci95": [lo, hi]}
        out[variant] = row
    control = stats.get("control")
    if control is not None:
        for variant, c in stats.items():
            if variant == "control":
                continue
            out[variant]["vs_control"] = {
                name: dict(zip(("diff", "low", "high"), newcombe(c[field], c["lists"], control[field], control["lists"])))
                for name, field, _label in RATES
            }
    return out


def _pct(p: float) -> str:
    return f"{100 * p:.2f}%"


def _rate(r: dict) -> str:
    lo, hi = r["ci95"]
    return f"{_pct(r['rate'])} [{_pct(lo)}, {_pct(hi)}]"


def render(summary: dict[str, dict]) -> str:
    if not summary:
        return "no A/B counters yet: no worker has published a list under this prefix (or the workers run without the stats hook)"
    head = ["variant", "lists", "users", "clicks", "carts", "purchases", "CTR [95% CI]", "cart rate [95% CI]", "conversion [95% CI]"]
    rows = [
        [v, str(r["lists"]), str(r["users"]), str(r["clicks"]), str(r["add_to_carts"]), str(r["purchases"]),
         _rate(r["ctr"]), _rate(r["cart_rate"]), _rate(r["conversion"])]
        for v, r in sorted(summary.items())
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    lines = [fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]
    diffs = [(v, r["vs_control"]) for v, r in sorted(summary.items()) if "vs_control" in r]
    if diffs:
        lines.append("")
        lines.append("difference to control (percentage points, 95% CI, Newcombe):")
        for v, d in diffs:
            parts = [f"{label} {100 * d[name]['diff']:+.2f} [{100 * d[name]['low']:+.2f}, {100 * d[name]['high']:+.2f}]"
                     for name, _field, label in RATES]
            lines.append(f"  {v}: " + "; ".join(parts))
    lines.append("")
    lines.append("rates are per list (lists with >= 1 attributed event / lists); clicks, carts, purchases count attributed events")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="streamrec-report", description="Online A/B metrics per variant, from the workers' counters in Redis.")
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0")
    p.add_argument("--prefix", default=os.environ.get("STREAMREC_REDIS_META_PREFIX", "streamrec:"),
                   help="STREAMREC_REDIS_META_PREFIX of the workers (keys <prefix>stats:<variant>)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeout

    from streamer.security import tool_redis_client

    r = tool_redis_client(args.redis_url, socket_connect_timeout=5, socket_timeout=5)
    try:
        stats = read_stats(r, args.prefix)
    except (RedisConnectionError, RedisTimeout, OSError) as exc:
        print(f"streamrec-report: cannot reach Redis: {exc}", file=sys.stderr)
        return 2
    summary = summarize(stats)
    if args.json:
        print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    else:
        print(render(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
