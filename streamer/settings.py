"""One typed, frozen settings object for the worker, read from environment variables.

Every field names its variable; a bad value fails at start with a message naming it
(``SettingsError: STREAMREC_MAX_BATCH: must be an integer >= 1, got 'abc'``).

One declaration per setting: a field of :class:`Settings` (the Kafka ones of
``schemas.kafka_settings.KafkaSettings``) made with :func:`setting`: variable, default, parser,
meaning, and ``secret=True`` for a secret (redacted in logs, kept out of ``repr``). To add a
setting, add that one field; ``SETTINGS_DOC`` and ``SECRET_FIELDS`` are derived from the fields,
the README table (``python -m streamer.settings --write-readme``) and the deploy checker's list of
variables and table (``python -m devtools.deploycheck --write-readme``) from ``SETTINGS_DOC``, and
unit tests fail while a checked-in table is stale (``make generate`` rewrites both).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from schemas.kafka_settings import (
    KafkaSettings,
    SettingsError,
    check_kafka_security,
    check_tls_files,
    read_settings,
    secret_fields,
    setting,
    settings_doc,
)
from schemas.kafka_settings import parse_bool as _bool
from schemas.kafka_settings import parse_choice as _choice
from schemas.kafka_settings import parse_float as _float
from schemas.kafka_settings import parse_int as _int
from schemas.kafka_settings import parse_nonempty as _nonempty
from schemas.kafka_settings import parse_str as _str


def _redis_url(name: str, raw: str) -> str:
    if not raw.startswith(("redis://", "rediss://", "unix://")):
        raise SettingsError(f"{name}: must start with redis://, rediss:// or unix://, got {raw!r}")
    return raw


def _variants(name: str, raw: str) -> tuple[tuple[str, float], ...]:
    """The A/B split; its grammar lives in ``streamer.variants.parse_variants`` (one place)."""
    from streamer.variants import parse_variants

    return parse_variants(name, raw)


@dataclass(frozen=True)
class Settings(KafkaSettings):
    """The worker's settings: the shared Kafka connection and topics (``KafkaSettings``) and the rest."""

    redis_url: str = setting(
        "REDIS_URL", None, _redis_url, "Redis URL (redis://, rediss:// for TLS; password in the URL or REDIS_PASSWORD)"
    )
    redis_password: str = setting(
        "REDIS_PASSWORD",
        "",
        _str,
        "Redis AUTH password, for a REDIS_URL without one (redis-py lets a password in the URL win); never logged",
        secret=True,
    )
    redis_ssl_cafile: str = setting(
        "REDIS_SSL_CAFILE",
        "",
        _str,
        "CA bundle (PEM) that signs the Redis server's certificate (rediss:// only; empty: the system's CAs)",
    )
    redis_ssl_certfile: str = setting(
        "REDIS_SSL_CERTFILE", "", _str, "client certificate (PEM) for Redis mutual TLS (rediss:// only)"
    )
    redis_ssl_keyfile: str = setting("REDIS_SSL_KEYFILE", "", _str, "private key (PEM) of REDIS_SSL_CERTFILE")
    redis_ssl_check_hostname: bool = setting(
        "REDIS_SSL_CHECK_HOSTNAME",
        "true",
        _bool,
        "verify that the Redis server's certificate names the host connected to (rediss:// only)",
    )
    app_id: str = setting(
        "STREAMREC_APP_ID",
        "streamrec",
        _nonempty,
        "consumer group / faust app id (all workers of one deployment share it)",
    )
    worker_id: str = setting(
        "STREAMREC_WORKER_ID", "", _str, "name of this worker in logs and dead letters (default: host:pid)"
    )
    recs_topic: str = setting(
        "STREAMREC_RECS_TOPIC", "recommendations", _nonempty, "output topic of recommendation lists"
    )
    dlq_topic: str = setting("STREAMREC_DLQ_TOPIC", "events.dlq", _nonempty, "dead-letter topic")
    model_updates_topic: str = setting(
        "STREAMREC_MODEL_UPDATES_TOPIC", "model-updates", _nonempty, "topic announcing new model versions"
    )
    partitions: int = setting(
        "STREAMREC_PARTITIONS", "4", _int(1, 4096), "partitions of the events topic and state changelogs"
    )
    model_root: str = setting(
        "STREAMREC_MODEL_ROOT", "var/models", _nonempty, "model store: one folder per version and a LATEST file"
    )
    state_dir: str = setting(
        "STREAMREC_STATE_DIR", "var/state", _nonempty, "local state (RocksDB) folder of this worker"
    )
    metrics_port: int = setting(
        "STREAMREC_METRICS_PORT", "9108", _int(0, 65535), "port of /metrics, /healthz, /readyz (0 = a free port)"
    )
    list_size: int = setting("STREAMREC_LIST_SIZE", "20", _int(1, 500), "items per published list")
    candidates: int = setting("STREAMREC_CANDIDATES", "200", _int(10, 5000), "candidates scored per user")
    max_seq_len: int = setting(
        "STREAMREC_MAX_SEQ_LEN", "50", _int(1, 512), "recent interactions kept per user (the ranker may read fewer)"
    )
    dedup_window: int = setting(
        "STREAMREC_DEDUP_WINDOW", "512", _int(16, 100000), "event ids remembered per user to drop redeliveries"
    )
    half_life_days: float = setting(
        "STREAMREC_HALF_LIFE_DAYS",
        "14",
        _float(0.01, 3650),
        "event-time half-life of the user embedding and trending counts",
    )
    max_batch: int = setting(
        "STREAMREC_MAX_BATCH",
        "256",
        _int(1, 65536),
        "max events per micro-batch (users in a batch share one ranker call)",
    )
    max_wait_ms: int = setting("STREAMREC_MAX_WAIT_MS", "20", _int(0, 10000), "max wait to fill a micro-batch")
    ranking: bool = setting(
        "STREAMREC_RANKING", "true", _bool, "score candidates with the ONNX ranker (false: candidate scores only)"
    )
    ranker_variant: str = setting(
        "STREAMREC_RANKER_VARIANT",
        "auto",
        _choice("auto", "fp32", "fp16", "int8"),
        "which ONNX file of the version to run (auto: fp16 on CUDA, int8 on CPU if shipped, else fp32)",
    )
    ort_threads: int = setting(
        "STREAMREC_ORT_THREADS",
        "0",
        _int(0, 256),
        "onnxruntime intra-op threads of the ranker and encoder (0 = auto: the cores beyond the event loop's, min(cores - 1, 4), at least 1); threads never spin-wait, they share the cores with the event loop",
    )
    device: str = setting("STREAMREC_DEVICE", "auto", _choice("auto", "cpu", "cuda"), "execution provider choice")
    filter_purchased: bool = setting(
        "STREAMREC_FILTER_PURCHASED",
        "false",
        _bool,
        "hide items the user bought (off by default: wholesale buyers rebuy)",
    )
    filter_last_viewed: bool = setting(
        "STREAMREC_FILTER_LAST_VIEWED", "false", _bool, "hide the item of the triggering view/click"
    )
    redis_ttl_s: int = setting("STREAMREC_REDIS_TTL_S", "604800", _int(1, 10**9), "TTL of rec:<user_id> keys")
    redis_prefix: str = setting("STREAMREC_REDIS_PREFIX", "rec:", _str, "Redis key prefix of the lists")
    variants: tuple[tuple[str, float], ...] = setting(
        "STREAMREC_VARIANTS",
        "ranker:1.0",
        _variants,
        "A/B split by stable user hash, e.g. ranker:0.9,control:0.1 or ranker@<version>:0.1,ranker@production:0.9 (see streamer/variants.py)",
    )
    pseudonymize_key: str = setting(
        "STREAMREC_PSEUDONYMIZE_KEY",
        "",
        _str,
        "when set, user ids are replaced at ingest by HMAC-SHA256(key, id); never logged",
        secret=True,
    )
    producer_max_batch_bytes: int = setting(
        "STREAMREC_PRODUCER_MAX_BATCH_BYTES",
        "16384",
        _int(1, 64 * 1024 * 1024),
        "producer batch size per partition (1 = one record per batch; the embedded stack used to need it, see LocalStack.client_env)",
    )
    fetch_max_wait_ms: int = setting(
        "STREAMREC_FETCH_MAX_WAIT_MS",
        "500",
        _int(1, 60000),
        "longest a fetch waits on the broker; the embedded stack sets 10 because its broker (Tansu) does not answer a waiting fetch when data arrives, so the wait is added to every event's latency",
    )
    session_timeout_s: float = setting(
        "STREAMREC_SESSION_TIMEOUT_S",
        "10",
        _float(1, 300),
        "Kafka consumer session timeout (group joins wait about half of it)",
    )
    lost_log_check_s: float = setting(
        "STREAMREC_LOST_LOG_CHECK_S",
        "0",
        _float(0, 3600),
        "how often the worker checks that its consumers' positions lie inside the broker's logs; a partition whose log the broker lost (a memory-only broker restarted) is rewound to its beginning (0 = never, the default: Apache Kafka answers such a fetch with OFFSET_OUT_OF_RANGE itself; the embedded stack sets 2)",
    )
    search_intent_events: int = setting(
        "STREAMREC_SEARCH_INTENT_EVENTS",
        "3",
        _int(0, 100),
        "later events for which the user's last search keeps adding candidates and top slots (0: only the search event itself)",
    )
    search_intent_s: int = setting(
        "STREAMREC_SEARCH_INTENT_S",
        "1800",
        _int(0, 10**8),
        "event-time seconds after which a search no longer shapes the list",
    )
    search_share: float = setting(
        "STREAMREC_SEARCH_SHARE",
        "0.5",
        _float(0, 1),
        "share of the list's top slots given to the best query matches on a search event; halved for each later event",
    )
    attribution_window_s: int = setting(
        "STREAMREC_ATTRIBUTION_WINDOW_S",
        "86400",
        _int(1, 10**9),
        "event-time window in which a click, add-to-cart or purchase of a listed item is attributed to the user's live list",
    )
    variants_poll_s: float = setting(
        "STREAMREC_VARIANTS_POLL_S",
        "5",
        _float(0, 3600),
        "how often the worker reads the runtime A/B split from Redis <meta prefix>config:variants (0 = never)",
    )
    redis_meta_prefix: str = setting(
        "STREAMREC_REDIS_META_PREFIX",
        "streamrec:",
        _nonempty,
        "prefix of the worker's own Redis keys: <prefix>config:variants (runtime A/B split), <prefix>stats:<variant> (online metrics)",
    )
    archive_dir: str = setting(
        "STREAMREC_ARCHIVE_DIR",
        "var/archive",
        _nonempty,
        "archiver (streamrec-archive): root folder of the Parquet archive of valid events and catalog records",
    )
    archive_group: str = setting(
        "STREAMREC_ARCHIVE_GROUP",
        "",
        _str,
        "archiver: its Kafka consumer group, never the workers' (default: <STREAMREC_APP_ID>-archive)",
    )
    archive_flush_records: int = setting(
        "STREAMREC_ARCHIVE_FLUSH_RECORDS",
        "50000",
        _int(1, 10_000_000),
        "archiver: write a partition's buffered records once it holds this many",
    )
    archive_flush_s: float = setting(
        "STREAMREC_ARCHIVE_FLUSH_S",
        "60",
        _float(0.1, 86400),
        "archiver: write a partition's buffered records at the latest this many seconds after the first arrived",
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        values = read_settings(settings_doc(cls), [f.name for f in fields(cls)], env, overrides)
        if not values["worker_id"]:
            values["worker_id"] = f"{os.uname().nodename}:{os.getpid()}"
        if not values["archive_group"]:
            values["archive_group"] = f"{values['app_id']}-archive"
        if values["archive_group"] == values["app_id"]:
            raise SettingsError(
                "STREAMREC_ARCHIVE_GROUP: must differ from STREAMREC_APP_ID (the workers' consumer group)"
            )
        if values["candidates"] < values["list_size"]:
            raise SettingsError("STREAMREC_CANDIDATES: must be >= STREAMREC_LIST_SIZE")
        _check_transport_security(values, env)
        return cls(**values)

    @property
    def model_path(self) -> Path:
        return Path(self.model_root)

    def redacted(self) -> dict[str, Any]:
        """Settings safe to log: secrets replaced by '***', also inside URLs (user-info and
        secret-looking query parameters such as ``?password=``)."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in SECRET_FIELDS and v:
                v = "***"
            elif isinstance(v, str) and "://" in v:
                v = redact_url(v)
            out[f.name] = v
        return out

    def warnings(self) -> list[str]:
        """Settings that are consistent enough to start but probably not what was meant."""
        out = []
        if not self.kafka_security_protocol.startswith("SASL") and (
            self.kafka_sasl_username or self.kafka_sasl_password
        ):
            out.append(
                f"KAFKA_SASL_USERNAME / KAFKA_SASL_PASSWORD: set but unused with "
                f"KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} (use SASL_SSL or SASL_PLAINTEXT)"
            )
        if self.kafka_security_protocol == "SASL_PLAINTEXT" and self.kafka_sasl_mechanism == "PLAIN":
            out.append(
                "KAFKA_SECURITY_PROTOCOL: SASL_PLAINTEXT with KAFKA_SASL_MECHANISM=PLAIN sends the password "
                "in clear text; use SASL_SSL"
            )
        return out


# Derived from the one declaration above (kept for the tools that read them).
#: field name -> (ENV VAR, default, parser, description), in declaration order.
SETTINGS_DOC = settings_doc(Settings)
SECRET_FIELDS = secret_fields(Settings)

#: query parameters of a URL whose value is a secret (lower case; matched also as a suffix, e.g.
#: ``sasl_password``, ``ssl_password``, ``auth_token``)
_SECRET_PARAMS = ("password", "passwd", "pass", "pwd", "secret", "token", "key", "credential", "credentials", "auth")


def _secret_param(name: str) -> bool:
    low = name.lower().replace("-", "_")
    if low in (
        "ssl_keyfile",
        "ssl_certfile",
        "ssl_ca_certs",
        "ssl_ca_path",
        "ssl_ca_data",
        "ssl_cert_reqs",
        "ssl_check_hostname",
        "key_prefix",
    ):
        return False  # paths and switches, not secrets
    return any(low == p or low.endswith("_" + p) or low.endswith(p) for p in _SECRET_PARAMS)


def redact_url(url: str) -> str:
    """``url`` with the password of its user-info and every secret-looking query parameter
    replaced by ``***`` (``redis://u:pw@h:1/0?password=x&db=1`` -> ``redis://u:***@h:1/0?password=***&db=1``).
    A URL that does not parse is hidden whole after its scheme."""
    from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            user, sep, _pw = userinfo.partition(":")
            netloc = f"{user}:***@{host}" if sep else f"***@{host}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = "&".join(
                f"{quote(k, safe='')}={'***' if _secret_param(k) else quote(v, safe='/:,')}" for k, v in pairs
            )
        fragment = "***" if parts.fragment else ""
        return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))
    except ValueError:
        return url.split("://", 1)[0] + "://***"


def _check_transport_security(v: dict[str, Any], env: Mapping[str, str]) -> None:
    """Fail at start, naming the setting, when the Kafka or Redis security settings contradict
    each other or name files that are not there (instead of a TLS or SASL error at connect time,
    or a silent fallback to plaintext)."""
    check_kafka_security(v, env)
    url = v["redis_url"]
    redis_tls = {
        "REDIS_SSL_CAFILE": v["redis_ssl_cafile"],
        "REDIS_SSL_CERTFILE": v["redis_ssl_certfile"],
        "REDIS_SSL_KEYFILE": v["redis_ssl_keyfile"],
    }
    check_tls_files(
        redis_tls, url.startswith("rediss://"), "REDIS_URL is not rediss:// (TLS): use rediss://host:port/db"
    )


def settings_table() -> str:
    """Markdown table of every setting, for the README."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for var, default, _p, doc in SETTINGS_DOC.values():
        rows.append(
            f"| `{var}` | {'(required)' if default is None else f'`{default}`' if default else '(empty)'} | {doc} |"
        )
    return "\n".join(rows)


def _write_readme(path: Path = Path(__file__).resolve().parents[1] / "README.md") -> None:
    start, end = "<!-- settings-table:start -->\n", "\n<!-- settings-table:end -->"
    text = path.read_text()
    head, rest = text.split(start, 1)
    _old, tail = rest.split(end, 1)
    path.write_text(head + start + settings_table() + end + tail)


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--write-readme"]:
        _write_readme()
    else:
        print(settings_table())
