"""Transport security objects built from the settings: the Kafka TLS context and SASL credentials
(for faust's worker consumer/producer and for the worker's own aiokafka consumers), and the Redis
client's AUTH and TLS arguments.

``Settings.from_env`` has already refused contradictory or incomplete combinations (SASL without
credentials, TLS files without TLS, files that are not there), naming the setting; what is left
here is building the objects. Nothing here logs a secret.
"""

from __future__ import annotations

from typing import Any

from schemas.kafka_settings import kafka_client_kwargs, kafka_ssl_context
from streamer.settings import Settings

__all__ = ["faust_credentials", "kafka_client_kwargs", "kafka_ssl_context", "redis_client_kwargs", "tool_redis_client"]


def faust_credentials(s: Settings):
    """faust's ``broker_credentials`` (None for PLAINTEXT): ``SASLCredentials`` (PLAIN, SCRAM-SHA-256,
    SCRAM-SHA-512; SASL_SSL when it carries a TLS context) or ``SSLCredentials``."""
    import faust

    if s.kafka_security_protocol == "PLAINTEXT":
        return None
    ctx = kafka_ssl_context(s)
    if s.kafka_security_protocol.startswith("SASL"):
        return faust.SASLCredentials(username=s.kafka_sasl_username, password=s.kafka_sasl_password,
                                     mechanism=s.kafka_sasl_mechanism, ssl_context=ctx)
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
