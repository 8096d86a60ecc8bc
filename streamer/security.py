"""Transport security objects built from the settings: the Kafka TLS context and SASL credentials
(for faust's worker consumer/producer and for the worker's own aiokafka consumers), and the Redis
client's AUTH and TLS arguments.

``Settings.from_env`` has already refused contradictory or incomplete combinations (SASL without
credentials, TLS files without TLS, files that are not there), naming the setting; what is left
here is building the objects. Nothing here logs a secret.
"""

from __future__ import annotations

import ssl
from typing import Any

from streamer.settings import Settings, SettingsError


def kafka_ssl_context(s: Settings) -> ssl.SSLContext | None:
    """The TLS context for SSL / SASL_SSL (None for the plaintext protocols): server verification
    against ``KAFKA_SSL_CAFILE`` (else the system's CAs), hostname check per
    ``KAFKA_SSL_CHECK_HOSTNAME``, and the client certificate when ``KAFKA_SSL_CERTFILE`` is set."""
    if not s.kafka_security_protocol.endswith("SSL"):
        return None
    from aiokafka.helpers import create_ssl_context

    try:
        ctx = create_ssl_context(cafile=s.kafka_ssl_cafile or None, certfile=s.kafka_ssl_certfile or None,
                                 keyfile=s.kafka_ssl_keyfile or None, password=s.kafka_ssl_key_password or None)
    except ssl.SSLError as exc:
        which = "KAFKA_SSL_CERTFILE / KAFKA_SSL_KEYFILE / KAFKA_SSL_KEY_PASSWORD" if s.kafka_ssl_certfile else "KAFKA_SSL_CAFILE"
        raise SettingsError(f"{which}: cannot be loaded: {exc.reason or exc}") from None
    ctx.check_hostname = s.kafka_ssl_check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def kafka_client_kwargs(s: Settings) -> dict[str, Any]:
    """aiokafka client arguments for the worker's own consumers (items, model-updates)."""
    kw: dict[str, Any] = {"security_protocol": s.kafka_security_protocol}
    if s.kafka_security_protocol.startswith("SASL"):
        kw.update(sasl_mechanism=s.kafka_sasl_mechanism, sasl_plain_username=s.kafka_sasl_username,
                  sasl_plain_password=s.kafka_sasl_password)
    ctx = kafka_ssl_context(s)
    if ctx is not None:
        kw["ssl_context"] = ctx
    return kw


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
