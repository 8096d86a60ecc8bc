"""``streamrec-report``: the online A/B table per variant, from the counters the workers keep in Redis.

    streamrec-report [--redis-url URL] [--prefix streamrec:] [--level 0.95] [--baseline VARIANT] [--json]

For each variant (see ``streamer.attribution`` for how events are attributed):

* ``lists``: fresh lists published (impressions); ``users``: distinct users shown the variant;
* ``clicks`` / ``carts`` / ``purchases``: events on an item of the user's live list within
  ``STREAMREC_ATTRIBUTION_WINDOW_S`` (event time);
* ``CTR`` = lists with >= 1 attributed click / lists; ``cart rate`` and ``conversion`` likewise
  for add-to-carts and purchases. Each with a 95% Wilson score interval;
* each variant's difference to the **baseline** with an interval at ``--level`` (Newcombe's
  method from the two Wilson intervals) and the two-proportion z-test's p-value, and whether the
  difference is significant at that level (the interval excludes 0). The baseline is
  ``--baseline``, else production during a canary (``streamrec-rollout``: the canary
  ``ranker@<version>`` is compared with ``ranker@<production version>``), else ``control``.

Versions: arms ``ranker@<version>`` are labelled with the version that ranked the list, so the
rows of a canary compare two model versions over the same period and the same traffic.

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
from statistics import NormalDist

import orjson

from streamer.attribution import read_stats

Z95 = 1.959963984540054
RATES = (
    ("ctr", "lists_clicked", "CTR"),
    ("cart_rate", "lists_carted", "cart rate"),
    ("conversion", "lists_purchased", "conversion"),
)


def wilson(successes: int, trials: int, z: float = Z95) -> tuple[float, float, float]:
    """(proportion, low, high): the Wilson score interval; (0, 0, 1) with no trials."""
    if trials <= 0:
        return 0.0, 0.0, 1.0
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return p, max(0.0, centre - half), min(1.0, centre + half)


def z_for(level: float) -> float:
    """Two-sided normal quantile: 1.96 for 0.95."""
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level}")
    return NormalDist().inv_cdf(0.5 + level / 2)


def newcombe(x1: int, n1: int, x2: int, n2: int, z: float = Z95) -> tuple[float, float, float]:
    """Difference p1 - p2 and its interval (Newcombe's hybrid score method, no continuity correction)."""
    p1, l1, u1 = wilson(x1, n1, z)
    p2, l2, u2 = wilson(x2, n2, z)
    d = p1 - p2
    return d, d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def two_proportion_p(x1: int, n1: int, x2: int, n2: int) -> float:
    """Two-sided p-value of the pooled two-proportion z-test (1.0 when it is undefined)."""
    if n1 <= 0 or n2 <= 0:
        return 1.0
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0
    return 2 * (1 - NormalDist().cdf(abs(x1 / n1 - x2 / n2) / se))


def compare(a: dict[str, int], b: dict[str, int], level: float = 0.95) -> dict[str, dict]:
    """``a`` minus ``b`` per rate: diff, interval at ``level``, p-value, significant (interval excludes 0)."""
    z = z_for(level)
    out = {}
    for name, field, _label in RATES:
        d, lo, hi = newcombe(a[field], a["lists"], b[field], b["lists"], z)
        out[name] = {
            "diff": d,
            "low": lo,
            "high": hi,
            "p_value": two_proportion_p(a[field], a["lists"], b[field], b["lists"]),
            "significant": bool(lo > 0 or hi < 0),
        }
    return out


def summarize(stats: dict[str, dict[str, int]], baseline: str | None = None, level: float = 0.95) -> dict[str, dict]:
    """Rates per variant with intervals at ``level``; each variant against ``baseline`` (default
    ``control`` when there is one) under ``vs_<baseline>``."""
    z = z_for(level)
    out = {}
    for variant, c in stats.items():
        row = dict(c)
        for name, field, _label in RATES:
            p, lo, hi = wilson(c[field], c["lists"], z)
            row[name] = {"rate": p, "ci": [lo, hi], "level": level}
        out[variant] = row
    baseline = baseline or ("control" if "control" in stats else None)
    if baseline is not None and baseline in stats:
        for variant, c in stats.items():
            if variant != baseline:
                out[variant][f"vs_{baseline}"] = compare(c, stats[baseline], level)
    return out


def rollout_baseline(redis, prefix: str) -> tuple[str | None, str | None]:
    """(canary label, production label) of the rollout in progress or last finished, else (None, None)."""
    from streamer.rollout import state_key

    raw = redis.get(state_key(prefix))
    if not raw:
        return None, None
    st = orjson.loads(raw)
    return f"ranker@{st['version']}", (f"ranker@{st['production']}" if st.get("production") else None)


def _pct(p: float) -> str:
    return f"{100 * p:.2f}%"


def _rate(r: dict) -> str:
    lo, hi = r["ci"]
    return f"{_pct(r['rate'])} [{_pct(lo)}, {_pct(hi)}]"


def render(summary: dict[str, dict], level: float = 0.95) -> str:
    if not summary:
        return "no A/B counters yet: no worker has published a list under this prefix (or the workers run without the stats hook)"
    ci = f"{100 * level:g}% CI"
    head = [
        "variant",
        "lists",
        "users",
        "clicks",
        "carts",
        "purchases",
        f"CTR [{ci}]",
        f"cart rate [{ci}]",
        f"conversion [{ci}]",
    ]
    rows = [
        [
            v,
            str(r["lists"]),
            str(r["users"]),
            str(r["clicks"]),
            str(r["add_to_carts"]),
            str(r["purchases"]),
            _rate(r["ctr"]),
            _rate(r["cart_rate"]),
            _rate(r["conversion"]),
        ]
        for v, r in sorted(summary.items())
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    lines = [fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]
    diffs = [(v, k[3:], d) for v, r in sorted(summary.items()) for k, d in r.items() if k.startswith("vs_")]
    if diffs:
        lines.append("")
        lines.append(f"difference to {diffs[0][1]} (percentage points, {ci}, Newcombe; p: two-proportion z-test):")
        for v, _base, d in diffs:
            parts = []
            for name, _field, label in RATES:
                x = d[name]
                verdict = (
                    ("significant, better" if x["low"] > 0 else "significant, worse")
                    if x["significant"]
                    else "not significant"
                )
                parts.append(
                    f"{label} {100 * x['diff']:+.2f} [{100 * x['low']:+.2f}, {100 * x['high']:+.2f}] p={x['p_value']:.3g} {verdict}"
                )
            lines.append(f"  {v}: " + "; ".join(parts))
    lines.append("")
    lines.append(
        "rates are per list (lists with >= 1 attributed event / lists); clicks, carts, purchases count attributed events"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="streamrec-report", description="Online A/B metrics per variant, from the workers' counters in Redis."
    )
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0")
    p.add_argument(
        "--prefix",
        default=os.environ.get("STREAMREC_REDIS_META_PREFIX", "streamrec:"),
        help="STREAMREC_REDIS_META_PREFIX of the workers (keys <prefix>stats:<variant>)",
    )
    p.add_argument(
        "--level", type=float, default=0.95, help="confidence level of the intervals and the significance verdict"
    )
    p.add_argument(
        "--baseline",
        default=None,
        help="variant the others are compared with (default: production during a canary, else control)",
    )
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if not 0 < args.level < 1:
        p.error("--level must be between 0 and 1, e.g. 0.95")
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeout

    from streamer.security import tool_redis_client

    r = tool_redis_client(args.redis_url, socket_connect_timeout=5, socket_timeout=5)
    try:
        stats = read_stats(r, args.prefix)
        baseline = args.baseline
        if baseline is None:
            canary, production = rollout_baseline(r, args.prefix)
            baseline = production if canary in stats and production in stats else None
    except (RedisConnectionError, RedisTimeout, OSError) as exc:
        print(f"streamrec-report: cannot reach Redis: {exc}", file=sys.stderr)
        return 2
    summary = summarize(stats, baseline, args.level)
    if args.json:
        print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    else:
        print(render(summary, args.level))
    return 0


if __name__ == "__main__":
    sys.exit(main())
