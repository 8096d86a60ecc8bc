"""The A/B split, changeable at run time without a restart.

``STREAMREC_VARIANTS`` (e.g. ``ranker:0.9,control:0.1``) is the split a worker starts with. An
operator overrides it for every worker of the deployment by writing the same syntax to the Redis
key ``<STREAMREC_REDIS_META_PREFIX>config:variants`` (default ``streamrec:config:variants``)::

    redis-cli SET streamrec:config:variants ranker:0.5,control:0.5   # all workers, within one poll
    redis-cli DEL streamrec:config:variants                          # back to STREAMREC_VARIANTS
    python -m streamer.variants show|set SPLIT|clear [--redis-url URL] [--prefix streamrec:]

Each worker reads the key every ``STREAMREC_VARIANTS_POLL_S`` seconds (default 5; 0 disables the
override) and switches between micro-batches. A value that does not parse (unknown variant,
weights not summing to 1, garbage) is logged once as an error, counted in
``streamrec_variant_config_rejected_total`` and ignored: the split in force stays. The split in
force is exported as ``streamrec_variant_weight{variant}``.

Why Redis and not a control topic: the workers already hold a Redis client, the override is one
small value whose *latest* state is all that matters (a compacted topic would be replayed from
the start by every worker), and ``redis-cli`` is the tool at hand during an experiment.

Assignment is a stable hash of the user id (``variant_for``), so with an unchanged split a user
stays in one arm; changing the weights moves only the users whose hash falls in the moved band.

Not done: variants naming a model version (``ranker@<version>``). Serving two versions at once
needs a second item index in the other version's vector space, user embeddings per space and
twice the memory; a new version goes to everyone through the verified hot swap instead.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import sys

from prometheus_client import Counter, Gauge

from streamer.metrics import REGISTRY
from streamer.settings import SettingsError, _variants

log = logging.getLogger(__name__)

Split = tuple[tuple[str, float], ...]

WEIGHT = Gauge("streamrec_variant_weight", "A/B split in force (share of users per variant)", ["variant"], registry=REGISTRY)
REJECTED = Counter("streamrec_variant_config_rejected_total", "Runtime A/B split values refused (bad syntax or weights)", registry=REGISTRY)


def config_key(prefix: str) -> str:
    return f"{prefix}config:variants"


def parse_split(raw: str | bytes) -> Split:
    """Same syntax and checks as ``STREAMREC_VARIANTS``; raises ``SettingsError``."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return _variants(config_key("<prefix>"), text.strip().replace(" ", ""))


def variant_for(user_id: str, split: Split) -> str:
    """Stable A/B assignment: the same user always lands in the same arm for a given split."""
    h = int.from_bytes(hashlib.blake2b(user_id.encode(), digest_size=8).digest(), "big") / 2**64
    acc = 0.0
    for label, weight in split:
        acc += weight
        if h < acc:
            return label
    return split[-1][0]


def format_split(split: Split) -> str:
    return ",".join(f"{label}:{weight:g}" for label, weight in split)


def export_split(split: Split) -> None:
    WEIGHT.clear()
    for label, weight in split:
        WEIGHT.labels(label).set(weight)


class VariantPoller:
    """Polls the override key and applies it to ``target`` (anything with ``variants`` and
    ``set_variants``: the ``Pipeline``)."""

    def __init__(self, redis, target, *, default: Split, key: str, interval_s: float) -> None:
        self.redis = redis
        self.target = target
        self.default = default
        self.key = key
        self.interval_s = interval_s
        self._last_bad: bytes | None = None
        self._redis_down = False

    def apply(self, raw: bytes | str | None) -> bool:
        """Apply one read of the key (None: no override). Returns whether the split changed."""
        if raw is None:
            split = self.default
            self._last_bad = None
        else:
            raw_b = raw.encode() if isinstance(raw, str) else raw
            try:
                split = parse_split(raw_b)
            except SettingsError as exc:
                if raw_b != self._last_bad:  # once per distinct bad value, not every poll
                    REJECTED.inc()
                    log.error("runtime A/B split %s=%r refused (%s); keeping %s", self.key, raw_b[:200],
                              str(exc).split(": ", 1)[-1], format_split(self.target.variants))
                    self._last_bad = raw_b
                return False
            self._last_bad = None
        if split == self.target.variants:
            return False
        log.info("A/B split %s -> %s (%s)", format_split(self.target.variants), format_split(split),
                 f"from {self.key}" if raw is not None else "override removed, STREAMREC_VARIANTS")
        self.target.set_variants(split)
        export_split(split)
        return True

    async def poll_once(self) -> None:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeout

        try:
            raw = await self.redis.get(self.key)
        except (RedisConnectionError, RedisTimeout, OSError) as exc:
            if not self._redis_down:
                log.warning("cannot read the A/B split from Redis (%s); keeping %s", type(exc).__name__,
                            format_split(self.target.variants))
            self._redis_down = True
            return
        self._redis_down = False
        self.apply(raw)

    async def run(self) -> None:
        export_split(self.target.variants)
        while True:
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # the poller must outlive any one bad read
                log.exception("A/B split poll failed")
            await asyncio.sleep(self.interval_s)


def start_variant_poller(redis, pipeline, settings) -> asyncio.Task | None:
    """Start polling (hook for the worker's startup, after the pipeline exists); None when
    ``STREAMREC_VARIANTS_POLL_S`` is 0."""
    export_split(pipeline.variants)
    if settings.variants_poll_s <= 0:
        return None
    poller = VariantPoller(redis, pipeline, default=settings.variants, key=config_key(settings.redis_meta_prefix),
                           interval_s=settings.variants_poll_s)
    return asyncio.ensure_future(poller.run())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m streamer.variants", description="Show, set or clear the runtime A/B split.")
    p.add_argument("action", choices=("show", "set", "clear"))
    p.add_argument("split", nargs="?", help="for set: e.g. ranker:0.5,control:0.5")
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    p.add_argument("--prefix", default=os.environ.get("STREAMREC_REDIS_META_PREFIX", "streamrec:"))
    args = p.parse_args(argv)
    from streamer.security import tool_redis_client

    r = tool_redis_client(args.redis_url)
    key = config_key(args.prefix)
    if args.action == "set":
        if not args.split:
            p.error("set needs a split, e.g. ranker:0.5,control:0.5")
        try:
            split = parse_split(args.split)
        except SettingsError as exc:
            print(f"refused: {str(exc).split(': ', 1)[-1]}", file=sys.stderr)
            return 2
        r.set(key, format_split(split))
    elif args.action == "clear":
        r.delete(key)
    raw = r.get(key)
    print(f"{key} = {raw.decode() if raw else '(unset: workers use STREAMREC_VARIANTS)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
