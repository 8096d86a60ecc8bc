"""Transport security objects built from the settings: the Kafka TLS context and SASL credentials
(for faust's worker consumer/producer and for the worker's own aiokafka consumers), and the Redis
client's AUTH and TLS arguments; and the start-up check that Redis accepts the configured
credentials (``check_redis_credentials``).

``Settings.from_env`` has already refused contradictory or incomplete combinations (SASL without
credentials, TLS files without TLS, files that are not there), naming the setting; what is left
here is building the objects. Nothing here logs a secret.
"""

from __future__ import annotations

import logging
from typing import Any

from schemas.kafka_settings import kafka_client_kwargs, kafka_ssl_context
from streamer.settings import Settings

log = logging.getLogger("streamrec.worker")

__all__ = [
    "check_redis_credentials",
    "faust_credentials",
    "kafka_client_kwargs",
    "kafka_ssl_context",
    "redis_client_kwargs",
    "tool_redis_client",
]


def faust_credentials(s: Settings):
    """faust's ``broker_credentials`` (None for PLAINTEXT): ``SASLCredentials`` (PLAIN, SCRAM-SHA-256,
    SCRAM-SHA-512; SASL_SSL when it carries a TLS context) or ``SSLCredentials``."""
    import faust

    if s.kafka_security_protocol == "PLAINTEXT":
        return None
    ctx = kafka_ssl_context(s)
    if s.kafka_security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=s.kafka_sasl_username,
            password=s.kafka_sasl_password,
            mechanism=s.kafka_sasl_mechanism,
            ssl_context=ctx,
        )
    return faust.SSLCredentials(ctx)


def redis_client_kwargs(s: Settings) -> dict[str, Any]:
    """Arguments for ``redis.Redis.from_url(s.redis_url, **kw)`` (sync or asyncio): the password
    from ``REDIS_PASSWORD`` and, for rediss://, the CA bundle, client certificate and hostname
    check. TLS options given in the URL's query (``?ssl_ca_certs=...``) keep working: redis-py
    lets the URL win over these arguments."""
    kw: dict[str, Any] = {}
    if s.redis_password:
        kw["password"] = s.redis_password
    if s.redis_url.startswith("rediss://"):
        kw["ssl_cert_reqs"] = "required"
        kw["ssl_check_hostname"] = s.redis_ssl_check_hostname
        if s.redis_ssl_cafile:
            kw["ssl_ca_certs"] = s.redis_ssl_cafile
        if s.redis_ssl_certfile:
            kw["ssl_certfile"] = s.redis_ssl_certfile
        if s.redis_ssl_keyfile:
            kw["ssl_keyfile"] = s.redis_ssl_keyfile
    return kw


def tool_redis_client(url: str, **extra: Any):
    """A sync Redis client for the command-line tools (report, reader, variants): their
    ``--redis-url`` with the worker's AUTH/TLS settings from the same environment variables
    (``REDIS_PASSWORD``, ``REDIS_SSL_*``), validated the same way."""
    import os

    import redis

    # the tools never talk to Kafka: a placeholder where the variable is unset
    s = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "unused:9092", **os.environ, "REDIS_URL": url})
    return redis.Redis.from_url(url, **redis_client_kwargs(s), **extra)


def check_redis_credentials(s: Settings) -> str | None:
    """A message naming the setting when Redis refuses the configured credentials, else None.

    Wrong or missing credentials are a configuration error: without this check the worker
    started, looked ready, and retried every list write forever (redis-py's AuthenticationError
    is a ConnectionError, which the publisher rightly retries). An unreachable Redis is not an
    error at start: the publisher waits for it with backoff. Neither message contains the password.
    """
    import redis
    from redis.exceptions import AuthenticationError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeout

    client = redis.Redis.from_url(s.redis_url, **redis_client_kwargs(s), socket_timeout=5, socket_connect_timeout=5)
    try:
        client.ping()
    except AuthenticationError as exc:
        return f"REDIS_PASSWORD / REDIS_URL: Redis refused the credentials ({exc})"
    except (RedisConnectionError, RedisTimeout, OSError) as exc:
        text = str(exc)
        if (
            "CERTIFICATE_VERIFY_FAILED" in text
            or "certificate verify failed" in text.lower()
            or "hostname mismatch" in text.lower()
        ):
            return (
                f"REDIS_SSL_CAFILE / REDIS_SSL_CHECK_HOSTNAME / REDIS_URL: the Redis server's certificate was "
                f"refused ({text[:300]})"
            )
        if "SSL" in text and s.redis_url.startswith("rediss://"):
            return f"REDIS_URL / REDIS_SSL_*: TLS to Redis failed ({text[:300]})"
        log.warning("redis not reachable at start (%s); list writes will wait for it", type(exc).__name__)
    finally:
        client.close()
    return None
