"""Online A/B metrics: impressions per variant and conversions attributed to the list that was live.

How a conversion is attributed (all in *event time*, so a replay gives the same numbers as live
traffic):

* every fresh list published for a user is an **impression** of its variant (``lists``); the
  user's state keeps the list's item ids, its variant and the event time of the event that
  triggered it (``UserState.rec_*``). A list re-published for redelivered duplicates only is not
  counted again;
* a later ``click``, ``add_to_cart`` or ``purchase`` event of that user on an item of that list,
  with ``0 <= event ts - list ts <= STREAMREC_ATTRIBUTION_WINDOW_S``, is an **attributed**
  conversion of the list's variant (``clicks``, ``add_to_carts``, ``purchases`` count such events);
* a list counts at most once per kind as **converted** (``lists_clicked``, ``lists_carted``,
  ``lists_purchased``): these are binomial successes over ``lists``, so CTR = lists_clicked /
  lists and conversion = lists_purchased / lists are proportions with Wilson intervals
  (``streamer.report``);
* ``users`` counts each user once per variant (the first list of that variant they were shown).

"The list that was live" is the last list published *before* the event was processed. Events of
one user coalesced into one micro-batch are all attributed to the list before the batch (the
lists in between were never published). An event is attributed only when it is applied, so a
redelivered duplicate never counts twice.

Where the numbers go: Prometheus counters per variant (no user or item in any label), and Redis
hashes ``<STREAMREC_REDIS_META_PREFIX>stats:<variant>`` (HINCRBY per batch; the set
``<prefix>stats:variants`` names the variants), which ``streamrec-report`` reads. Redis holds the
totals of all workers and survives worker restarts; Prometheus has them per worker process.
The worker writes a batch's counters right after the batch's lists, in one pipelined round trip
retried like the lists (see ``write_stats``); a worker killed between the two writes can lose or,
after redelivery, repeat the counters of that one batch.

Reading the numbers on a replay of online_retail (purchases only, no clicks or carts): "CTR" is 0
and the conversion rate is the purchase-of-a-recommended-item rate, the share of lists after
which the customer bought a listed item within the window. Invoice lines share one timestamp and
arrive as separate events, so much of it is the rest of a basket being keyed in: measured on the
first 20,000 rows (one event per batch), the attributed purchases were on the list through
co-visitation 56%, the customer's own history (rebuys) 33%, embedding neighbours 10%, trending 2%.
How many lists there are depends on batching (a user's events coalesced into one batch make one
list), so compare variants within one run, not across runs. Lists of one user are not
independent, so the intervals are somewhat too narrow; compare variants over many users.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from prometheus_client import Counter

from streamer.metrics import REGISTRY
from streamer.state import UserState

# event type -> (attributed-events field, converted-lists field, bit in UserState.rec_hits)
KINDS: dict[str, tuple[str, str, int]] = {
    "click": ("clicks", "lists_clicked", 1),
    "add_to_cart": ("add_to_carts", "lists_carted", 2),
    "purchase": ("purchases", "lists_purchased", 4),
}
FIELDS = ("lists", "users", "clicks", "add_to_carts", "purchases", "lists_clicked", "lists_carted", "lists_purchased")

IMPRESSIONS = Counter(
    "streamrec_ab_lists_total", "Fresh lists published (impressions), by variant", ["variant"], registry=REGISTRY
)
USERS = Counter(
    "streamrec_ab_users_total", "Users shown a list of the variant for the first time", ["variant"], registry=REGISTRY
)
ATTRIBUTED = Counter(
    "streamrec_ab_attributed_total",
    "Events on an item of the user's live list within the attribution window, by variant and type",
    ["variant", "type"],
    registry=REGISTRY,
)
CONVERTED = Counter(
    "streamrec_ab_converted_lists_total",
    "Lists with at least one attributed event of the type, by variant and type",
    ["variant", "type"],
    registry=REGISTRY,
)


@dataclass
class Stats:
    """Counters of one micro-batch: variant -> field -> count."""

    by_variant: dict[str, collections.Counter] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter)
    )

    def add(self, variant: str, name: str, n: int = 1) -> None:
        self.by_variant[variant][name] += n

    def __bool__(self) -> bool:
        return any(self.by_variant.values())

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {v: dict(c) for v, c in self.by_variant.items() if c}


def attribute(st: UserState, etype: str, item_id: str | None, ts: int, window_ms: int, stats: Stats) -> str | None:
    """Count ``etype`` on ``item_id`` against the user's live list; returns the variant credited."""
    kind = KINDS.get(etype)
    if kind is None or item_id is None or st.rec_variant is None:
        return None
    if not 0 <= ts - st.rec_ts <= window_ms or item_id not in st.rec_items:
        return None
    events_field, lists_field, bit = kind
    variant = st.rec_variant
    stats.add(variant, events_field)
    ATTRIBUTED.labels(variant, etype).inc()
    if not st.rec_hits & bit:
        st.rec_hits |= bit
        stats.add(variant, lists_field)
        CONVERTED.labels(variant, etype).inc()
    return variant


def record_list(st: UserState, item_ids: list[str], variant: str, event_ts: int, stats: Stats) -> None:
    """The user's new live list: count the impression (and the user, once per variant)."""
    st.rec_items = list(item_ids)
    st.rec_variant = variant
    st.rec_ts = event_ts
    st.rec_hits = 0
    stats.add(variant, "lists")
    IMPRESSIONS.labels(variant).inc()
    if variant not in st.ab_seen:
        st.ab_seen.append(variant)
        stats.add(variant, "users")
        USERS.labels(variant).inc()


# ---- Redis: the deployment-wide totals the report reads -------------------------------------
def stats_key(prefix: str, variant: str) -> str:
    return f"{prefix}stats:{variant}"


def variants_key(prefix: str) -> str:
    return f"{prefix}stats:variants"


async def write_stats(redis, stats: Stats | dict, prefix: str) -> None:
    """HINCRBY a batch's counters into ``<prefix>stats:<variant>`` in one pipelined round trip.

    Hook for the worker (after the batch's lists are written)::

        if result.stats:
            await self.publisher._retry(lambda: write_stats(self.redis, result.stats, self.s.redis_meta_prefix), "stats")
    """
    pipe = redis.pipeline(transaction=False)
    if queue_stats(pipe, stats, prefix):
        await pipe.execute()


def queue_stats(pipe, stats: Stats | dict, prefix: str) -> bool:
    """Queue a batch's HINCRBYs on a Redis pipeline (``write_stats``, or the pipeline that writes
    the batch's lists: ``streamer.publish``); False when there is nothing to count."""
    data = stats.as_dict() if isinstance(stats, Stats) else stats
    for variant, counts in data.items():
        pipe.sadd(variants_key(prefix), variant)
        for name, n in counts.items():
            if n:
                pipe.hincrby(stats_key(prefix, variant), name, int(n))
    return bool(data)


def read_stats(redis, prefix: str) -> dict[str, dict[str, int]]:
    """Totals per variant from Redis (a synchronous client), every field present."""
    names = sorted(v.decode() if isinstance(v, bytes) else v for v in redis.smembers(variants_key(prefix)))
    out = {}
    for variant in names:
        raw = redis.hgetall(stats_key(prefix, variant))
        vals = {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}
        out[variant] = {f: vals.get(f, 0) for f in FIELDS}
    return out
