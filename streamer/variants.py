"""The A/B split, changeable at run time without a restart, with arms that name a model version.

``STREAMREC_VARIANTS`` is the split a worker starts with, ``label:weight`` pairs summing to 1::

    ranker:0.9,control:0.1                        # the production version / the no-ranker blend
    ranker@20261201T0300Z-retrain:0.1,ranker@production:0.9   # a canary at 10 %

``ranker`` and ``ranker@production`` are the version the model store's ``LATEST`` /
``model-updates`` names (the one the worker swapped to last); ``ranker@<version>`` is the folder
``<STREAMREC_MODEL_ROOT>/<version>``; ``control`` ranks without a learned model. The grammar is
checked here only (``parse_variants``; ``streamer.settings`` uses it for ``STREAMREC_VARIANTS``):
an unknown label, a bad version name, the same arm twice, a negative weight or weights not
summing to 1 stop the worker at start with one line naming ``STREAMREC_VARIANTS`` (exit 2).

An operator overrides the split for every worker of the deployment by writing the same syntax to
the Redis key ``<STREAMREC_REDIS_META_PREFIX>config:variants`` (default ``streamrec:config:variants``);
``streamrec-rollout`` (``streamer.rollout``) writes it for canaries, promotions and rollbacks::

    redis-cli SET streamrec:config:variants ranker:0.5,control:0.5   # all workers, within one poll
    redis-cli DEL streamrec:config:variants                          # back to STREAMREC_VARIANTS
    python -m streamer.variants show|set SPLIT|clear [--redis-url URL] [--prefix streamrec:]

Each worker reads the key every ``STREAMREC_VARIANTS_POLL_S`` seconds (default 5; 0 disables the
override), and at once when a tool announces a change on the pub/sub channel
``<key>:changed`` (``streamrec-rollout`` and ``python -m streamer.variants`` do; a plain
``redis-cli SET`` waits for the poll), and switches between micro-batches. A value that does not parse is logged once as an
error, counted in ``streamrec_variant_config_rejected_total`` and ignored: the split in force stays.
The split in force is exported as ``streamrec_variant_weight{variant}``.

Versions named by a split (``VersionLoader``): before a split naming a version is applied, the
worker loads that version next to production (manifest and file checksums, onnxruntime sessions,
the smoke inference, finite item vectors: ``Worker._load``) and builds its item index over the
same items (``streamer.model.ServedVersion``). A version that fails is *refused*: one ERROR line,
``streamrec_variant_version_refused_total{version}``, and the reason in the Redis hash
``<prefix>rollout:refused``, which every worker reads with the split — a version refused by any
worker is refused by all, so it never enters the split anywhere. The users of a refused (or not
yet loaded) arm are served by production, every other user keeps their arm. Versions a split no
longer names are dropped (their memory freed) after the new split is in force. Each poll the
worker writes what it serves to ``<prefix>rollout:workers`` (``streamrec-rollout status``).

Why Redis and not a control topic: the workers already hold a Redis client, the override is one
small value whose *latest* state is all that matters (a compacted topic would be replayed from
the start by every worker), and ``redis-cli`` is the tool at hand during an experiment.

Assignment is a stable hash of the (pseudonymised) user id (``variant_for``): the same user gets
the same arm on every event and on every worker; changing the weights moves only the users whose
hash falls in a moved band (``streamrec-rollout`` puts the canary band first, so starting,
growing and ending a canary never moves users between the other arms).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import logging
import math
import os
import re
import sys
import time

from prometheus_client import Counter, Gauge

from schemas.kafka_settings import SettingsError
from streamer.metrics import REGISTRY

log = logging.getLogger(__name__)

Split = tuple[tuple[str, float], ...]

RANKER, CONTROL, PRODUCTION = "ranker", "control", "production"
# the model store's version names (exporters.registry.check_version_name)
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

WEIGHT = Gauge(
    "streamrec_variant_weight", "A/B split in force (share of users per variant)", ["variant"], registry=REGISTRY
)
REJECTED = Counter(
    "streamrec_variant_config_rejected_total",
    "Runtime A/B split values refused (bad syntax or weights)",
    registry=REGISTRY,
)
VERSION_REFUSED = Counter(
    "streamrec_variant_version_refused_total",
    "Model versions named by the A/B split and refused (load, checksum or smoke test failed here or on another worker)",
    ["version"],
    registry=REGISTRY,
)
VERSION_LOADED = Gauge(
    "streamrec_variant_version_loaded",
    "Model versions held next to production for the A/B split (value 1)",
    ["version"],
    registry=REGISTRY,
)


def config_key(prefix: str) -> str:
    return f"{prefix}config:variants"


def changed_channel(key: str) -> str:
    """Pub/sub channel on which the operator tools announce a new value of ``key``: workers re-read
    it at once instead of at their next poll (the poll stays the source of truth)."""
    return f"{key}:changed"


def announce_change(redis, key: str) -> None:
    """After SET/DEL of the split (sync client): wake every worker's poller now."""
    redis.publish(changed_channel(key), "1")


def workers_key(prefix: str) -> str:
    """Hash: worker id -> JSON of what the worker serves (written every poll)."""
    return f"{prefix}rollout:workers"


def refused_key(prefix: str) -> str:
    """Hash: version -> "worker: reason" for versions some worker refused; read by every worker."""
    return f"{prefix}rollout:refused"


def valid_version(name: str) -> bool:
    return bool(_VERSION_RE.match(name)) and ".tmp-" not in name and name != "LATEST"


def arm_version(label: str) -> str | None:
    """The version an arm names: ``production`` for ``ranker`` / ``ranker@production``, the
    version for ``ranker@<version>``, None for ``control``."""
    if label == CONTROL:
        return None
    _kind, _at, version = label.partition("@")
    return version or PRODUCTION


def parse_variants(name: str, raw: str) -> Split:
    """``ranker@v2:0.1,ranker@production:0.8,control:0.1`` -> the split; the one place the grammar
    is checked. Raises ``SettingsError`` starting with ``name`` (the setting or Redis key)."""
    text = raw.strip().replace(" ", "")
    if not text:
        raise SettingsError(f"{name}: empty split, e.g. ranker:0.9,control:0.1")
    out: list[tuple[str, float]] = []
    arms: set[str | None] = set()
    for part in text.split(","):
        label, _, weight = part.partition(":")
        try:
            w = float(weight)
        except ValueError:
            raise SettingsError(f"{name}: {part!r} is not variant:weight") from None
        kind, at, version = label.partition("@")
        ok = (label == CONTROL) or (kind == RANKER and (not at or version == PRODUCTION or valid_version(version)))
        if not ok or not math.isfinite(w) or w < 0:
            raise SettingsError(
                f"{name}: variant must be ranker, ranker@<version>, ranker@production or control "
                f"with a weight >= 0, got {part!r}"
            )
        arm = arm_version(label)
        if arm in arms:
            raise SettingsError(f"{name}: {label!r} names an arm already in the split (ranker = ranker@production)")
        arms.add(arm)
        out.append((label, w))
    if abs(sum(w for _, w in out) - 1.0) > 1e-6:
        raise SettingsError(f"{name}: weights must sum to 1, got {raw!r}")
    return tuple(out)


def parse_split(raw: str | bytes, name: str | None = None) -> Split:
    """``parse_variants`` for a value read from Redis or typed by an operator."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return parse_variants(name or config_key("<prefix>"), text)


def named_versions(split: Split) -> set[str]:
    """Versions other than production that the split's arms name (weight 0 included)."""
    return {v for v in (arm_version(label) for label, _w in split) if v not in (None, PRODUCTION)}


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
    totals: dict[str, float] = {}
    for label, weight in split:
        totals[label] = totals.get(label, 0.0) + weight
    for label, weight in totals.items():
        WEIGHT.labels(label).set(weight)


class VersionLoader:
    """Holds the versions a split names next to production, in ``pipeline`` (``add_version`` /
    ``drop_version`` / ``versions``). ``load`` verifies, loads and smoke-tests a version folder
    (``Worker._load``: raises ``ModelRefused``); it runs off the event loop."""

    def __init__(
        self, pipeline, load, *, model_root, redis=None, prefix: str = "streamrec:", worker_id: str = ""
    ) -> None:
        from pathlib import Path

        self.pipeline = pipeline
        self.load = load
        self.model_root = Path(model_root)
        self.redis = redis
        self.prefix = prefix
        self.worker_id = worker_id
        self.refused: dict[str, str] = {}  # version -> reason (here or on another worker)

    def note_refused(self, version: str, reason: str, *, here: bool) -> None:
        if version in self.refused:
            return
        self.refused[version] = reason
        VERSION_REFUSED.labels(version).inc()
        log.error(
            "model version %s named by the A/B split refused%s; its users are served by production %s: %s",
            version,
            "" if here else " (by another worker)",
            self.pipeline.bundle.version,
            reason,
        )

    async def prepare(self, split: Split, refused_elsewhere: dict[str, str]) -> None:
        """Load every version ``split`` names that is neither production, loaded nor refused."""
        from streamer.model import ModelRefused

        for version, reason in refused_elsewhere.items():
            if version not in self.refused and version in named_versions(split):
                self.note_refused(version, reason, here=False)
                self.drop(version)
        loop = asyncio.get_running_loop()
        for version in sorted(named_versions(split)):
            if version == self.pipeline.bundle.version or version in self.pipeline.versions or version in self.refused:
                continue
            try:
                bundle = await loop.run_in_executor(None, self.load, self.model_root / version)
                if bundle.version != version:
                    raise ModelRefused(f"{self.model_root / version}: its manifest names version {bundle.version!r}")
                self.pipeline.add_version(bundle)  # the aligned index is built here, between batches
            except ModelRefused as exc:
                self.note_refused(version, str(exc), here=True)
                if self.redis is not None:
                    await self.redis.hsetnx(refused_key(self.prefix), version, f"{self.worker_id}: {exc}"[:2000])
                continue
            VERSION_LOADED.labels(version).set(1)
            log.info(
                "model version %s loaded next to production %s for the A/B split (%s)",
                version,
                self.pipeline.bundle.version,
                bundle.ranker_file,
            )

    def drop(self, version: str) -> None:
        if self.pipeline.drop_version(version):
            VERSION_LOADED.remove(version)
            log.info("model version %s no longer in the A/B split: unloaded", version)

    def release(self, split: Split) -> None:
        """Unload the versions ``split`` no longer names (after it is in force)."""
        keep = named_versions(split)
        for version in list(self.pipeline.versions):
            if version not in keep:
                self.drop(version)

    def report(self, requested: Split) -> dict:
        p = self.pipeline
        serving: dict[str, float] = {}
        for label, w in p.serving_split():  # a refused arm's band adds to production's
            serving[label] = round(serving.get(label, 0.0) + w, 12)
        return {
            "worker": self.worker_id,
            "ts": time.time(),
            "production": p.bundle.version,
            "loaded": sorted(p.versions),
            "refused": dict(self.refused),
            "split": format_split(requested),
            "serving": serving,
        }


class VariantPoller:
    """Polls the override key and applies it to ``target`` (anything with ``variants`` and
    ``set_variants``: the ``Pipeline``); with a ``loader``, the versions it names are loaded first
    and what the worker serves is reported to Redis."""

    def __init__(
        self, redis, target, *, default: Split, key: str, interval_s: float, loader: VersionLoader | None = None
    ) -> None:
        self.redis = redis
        self.target = target
        self.default = default
        self.key = key
        self.interval_s = interval_s
        self.loader = loader
        self._last_bad: bytes | None = None
        self._redis_down = False
        self._applied: tuple | None = None
        self.first_poll = asyncio.Event()  # set once the first read of the split was applied (or failed)
        self._pubsub = None

    def parse(self, raw: bytes | str | None) -> Split | None:
        """The split a read of the key asks for (None: refused, logged once per distinct value)."""
        if raw is None:
            self._last_bad = None
            return self.default
        raw_b = raw.encode() if isinstance(raw, str) else raw
        try:
            split = parse_split(raw_b, self.key)
        except SettingsError as exc:
            if raw_b != self._last_bad:  # once per distinct bad value, not every poll
                REJECTED.inc()
                log.error(
                    "runtime A/B split %s=%r refused (%s); keeping %s",
                    self.key,
                    raw_b[:200],
                    str(exc).split(": ", 1)[-1],
                    format_split(self.target.variants),
                )
                self._last_bad = raw_b
            return None
        self._last_bad = None
        return split

    def apply(self, raw: bytes | str | None) -> bool:
        """Apply one read of the key (None: no override). Returns whether the split changed."""
        split = self.parse(raw)
        if split is None:
            return False
        return self.install(split, f"from {self.key}" if raw is not None else "override removed, STREAMREC_VARIANTS")

    def install(self, split: Split, source: str) -> bool:
        loaded = frozenset(getattr(self.target, "versions", ()))
        if (split, loaded) == self._applied and split == self.target.variants:
            return False
        self._applied = (split, loaded)
        changed = split != self.target.variants
        if changed:
            log.info("A/B split %s -> %s (%s)", format_split(self.target.variants), format_split(split), source)
        self.target.set_variants(split)  # recomputes which arms are servable (versions loaded since)
        export_split(split)
        if self.loader is not None:
            self.loader.release(split)
        return changed

    async def poll_once(self) -> None:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeout

        try:
            if self.loader is None:
                raw, refused = await self.redis.get(self.key), {}
            else:
                pipe = self.redis.pipeline(transaction=False)
                pipe.get(self.key)
                pipe.hgetall(refused_key(self.loader.prefix))
                raw, refused_raw = await pipe.execute()
                refused = {
                    k.decode() if isinstance(k, bytes) else k: v.decode("utf-8", "replace")
                    if isinstance(v, bytes)
                    else v
                    for k, v in refused_raw.items()
                }
        except (RedisConnectionError, RedisTimeout, OSError) as exc:
            if not self._redis_down:
                log.warning(
                    "cannot read the A/B split from Redis (%s); keeping %s",
                    type(exc).__name__,
                    format_split(self.target.variants),
                )
            self._redis_down = True
            return
        self._redis_down = False
        split = self.parse(raw)
        if split is None:
            split = self.target.variants
        elif self.loader is not None:
            await self.loader.prepare(split, refused)
        self.install(split, f"from {self.key}" if raw is not None else "override removed, STREAMREC_VARIANTS")
        if self.loader is not None:
            report = self.loader.report(self.target.variants)
            import orjson

            await self.redis.hset(workers_key(self.loader.prefix), self.loader.worker_id, orjson.dumps(report))

    async def pause(self) -> None:
        """The poll interval, cut short by an announcement on ``changed_channel(key)``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.interval_s
        try:
            if self._pubsub is None:
                self._pubsub = self.redis.pubsub()
                await self._pubsub.subscribe(changed_channel(self.key))
            while (left := deadline - loop.time()) > 0:
                if await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=min(left, 1.0)) is not None:
                    return
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - Redis away: the plain poll, subscribed again next time
            await self._close_pubsub()
            await asyncio.sleep(max(deadline - loop.time(), 0))

    async def _close_pubsub(self) -> None:
        ps, self._pubsub = self._pubsub, None
        if ps is not None:
            with contextlib.suppress(Exception):
                await ps.aclose()

    async def run(self) -> None:
        export_split(self.target.variants)
        try:
            while True:
                try:
                    await self.poll_once()
                except asyncio.CancelledError:
                    raise
                except Exception:  # the poller must outlive any one bad read
                    log.exception("A/B split poll failed")
                self.first_poll.set()
                await self.pause()
        finally:
            await self._close_pubsub()


async def wait_first_poll(task: asyncio.Task | None, timeout_s: float = 120.0) -> None:
    """Hook for the worker's startup, before it reports ready: a worker (re)started during a
    canary loads the versions of the split in force before its first batch, so its users keep
    their arm instead of getting production for a poll or two."""
    event = getattr(task, "first_poll", None)
    if event is None:
        return
    try:
        await asyncio.wait_for(event.wait(), timeout_s)
    except TimeoutError:
        log.warning(
            "the A/B split's versions were not loaded within %.0f s; serving production for them meanwhile", timeout_s
        )


def start_variant_poller(redis, pipeline, settings, load=None) -> asyncio.Task | None:
    """Start polling (hook for the worker's startup, after the pipeline exists); None when
    ``STREAMREC_VARIANTS_POLL_S`` is 0. ``load`` (``Worker._load``) lets splits name versions."""
    export_split(pipeline.variants)
    loader = (
        None
        if load is None
        else VersionLoader(
            pipeline,
            load,
            model_root=settings.model_path,
            redis=redis,
            prefix=settings.redis_meta_prefix,
            worker_id=settings.worker_id,
        )
    )
    poller = VariantPoller(
        redis,
        pipeline,
        default=settings.variants,
        key=config_key(settings.redis_meta_prefix),
        interval_s=settings.variants_poll_s,
        loader=loader,
    )
    if settings.variants_poll_s <= 0:
        if loader is None or not named_versions(settings.variants):
            return None

        async def load_once() -> None:  # no override: load the versions STREAMREC_VARIANTS names, once
            await loader.prepare(settings.variants, {})
            poller.install(settings.variants, "STREAMREC_VARIANTS")
            poller.first_poll.set()

        task = asyncio.ensure_future(load_once())
    else:
        task = asyncio.ensure_future(poller.run())
    task.first_poll = poller.first_poll
    return task


def missing_versions(split: Split, model_root) -> str | None:
    """At start: a message naming STREAMREC_VARIANTS when it names a version the model store
    lacks (a typo is a configuration error; a version that is there but damaged is refused at
    run time like any other, and production serves its users)."""
    from pathlib import Path

    missing = [v for v in sorted(named_versions(split)) if not (Path(model_root) / v / "manifest.json").is_file()]
    if not missing:
        return None
    return f"STREAMREC_VARIANTS: no version {', '.join(missing)} in the model store {model_root} (STREAMREC_MODEL_ROOT)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m streamer.variants", description="Show, set or clear the runtime A/B split."
    )
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
        announce_change(r, key)
    elif args.action == "clear":
        r.delete(key)
        announce_change(r, key)
    raw = r.get(key)
    print(f"{key} = {raw.decode() if raw else '(unset: workers use STREAMREC_VARIANTS)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
