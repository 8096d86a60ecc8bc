"""Prometheus metrics of the worker, plus the /healthz and /readyz probes on the same port.

No label carries a user id, item id or query: cardinality stays bounded and no personal data
leaves through the metrics endpoint.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)

EVENTS = Counter(
    "streamrec_events_total", "Input messages by topic and outcome", ["topic", "outcome"], registry=REGISTRY
)
DLQ = Counter(
    "streamrec_dead_letters_total", "Messages sent to the dead-letter topic, by error code", ["code"], registry=REGISTRY
)
LISTS = Counter(
    "streamrec_lists_published_total", "Recommendation lists published, by variant", ["variant"], registry=REGISTRY
)
BATCH = Histogram(
    "streamrec_batch_size",
    "Events per micro-batch",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
    registry=REGISTRY,
)
RANKED = Histogram(
    "streamrec_ranked_users_per_batch",
    "Users re-ranked per micro-batch (after coalescing)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
    registry=REGISTRY,
)
LATENCY = Histogram(
    "streamrec_event_to_publish_seconds",
    "From the input message's Kafka timestamp to the Redis write",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
STAGE = Histogram(
    "streamrec_stage_seconds",
    "Time per micro-batch in each stage",
    ["stage"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    registry=REGISTRY,
)
LAG = Gauge(
    "streamrec_consumer_lag",
    "Messages behind the end of the events topic (sum over owned partitions)",
    registry=REGISTRY,
)
MODEL = Gauge(
    "streamrec_model_info",
    "Model version being served (value 1)",
    ["version", "ranker_file", "provider"],
    registry=REGISTRY,
)
MODEL_REFUSED = Counter("streamrec_model_refused_total", "Model versions refused at load or swap", registry=REGISTRY)
MODEL_SWAPS = Counter("streamrec_model_swaps_total", "Model versions switched to while running", registry=REGISTRY)
ITEMS = Gauge("streamrec_items", "Items in the item index", registry=REGISTRY)
REDIS_RETRIES = Counter("streamrec_redis_retries_total", "Redis writes retried after an error", registry=REGISTRY)
LOST_LOG_RESETS = Counter(
    "streamrec_lost_log_resets_total",
    "Partitions rewound to the beginning because the broker lost their log (position beyond the log), by topic and reason",
    ["topic", "reason"],
    registry=REGISTRY,
)


class ProbeServer:
    """aiohttp server: /metrics, /healthz (process alive), /readyz (model loaded, consuming, side feeds positioned)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.ready = False
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", lambda _r: web.Response(text="ok"))
        app.router.add_get("/readyz", self._ready)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "0.0.0.0", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # resolves port 0
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _ready(self, _request: web.Request) -> web.Response:
        return web.Response(text="ready" if self.ready else "starting", status=200 if self.ready else 503)


STALL_RESEEKS = Counter(
    "streamrec_stalled_partition_reseeks_total",
    "Partitions sought back to the group's committed offset because faust stopped delivering them "
    "(behind the log end, no progress and an idle agent for 30 s)",
    ["topic"],
    registry=REGISTRY,
)
