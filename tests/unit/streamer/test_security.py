"""Transport security settings: validation naming the setting, redaction of secrets (also in URL
query parameters), and the TLS context / SASL credentials / Redis arguments built from them.
No TLS server needed: certificates are generated with the openssl CLI into tmp_path."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from streamer.security import faust_credentials, kafka_client_kwargs, kafka_ssl_context, redis_client_kwargs
from streamer.settings import Settings, SettingsError, redact_url

BASE = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092", "REDIS_URL": "redis://127.0.0.1:6379/0"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not found")
    d = tmp_path_factory.mktemp("pki")
    run = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True, cwd=d)  # noqa: E731
    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=streamrec-test-ca",
    )
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "client.key", "-out", "client.csr", "-subj", "/CN=worker")
    run(
        "x509",
        "-req",
        "-in",
        "client.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "client.pem",
        "-days",
        "2",
    )
    run("rsa", "-in", "client.key", "-aes256", "-passout", "pass:keypw", "-out", "client.enc.key")
    (d / "garbage.pem").write_text("not a certificate\n")
    return {
        n: d / f
        for n, f in [
            ("ca", "ca.pem"),
            ("cert", "client.pem"),
            ("key", "client.key"),
            ("enc_key", "client.enc.key"),
            ("garbage", "garbage.pem"),
        ]
    }


def settings(**env: str) -> Settings:
    return Settings.from_env(dict(BASE, **env))


# ---- redaction --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url, secret",
    [
        ("redis://127.0.0.1:6379/0?password=s3cr3t", "s3cr3t"),
        ("redis://:s3cr3t@127.0.0.1:6379/0", "s3cr3t"),
        ("redis://user:s3cr3t@127.0.0.1:6379/0?db=1", "s3cr3t"),
        ("rediss://h:6380/0?ssl_ca_certs=/etc/ca.pem&password=s3cr3t&db=2", "s3cr3t"),
        ("redis://h:6379/0?Password=s3cr3t", "s3cr3t"),
        ("redis://h:6379/0?sasl_password=s3cr3t", "s3cr3t"),
        ("redis://h:6379/0?auth_token=s3cr3t", "s3cr3t"),
        ("redis://h:6379/0?password=s%33cr3t", "s3cr3t"),  # percent-encoded
    ],
)
def test_redacted_hides_passwords_in_urls(url, secret):
    s = settings(REDIS_URL=url)
    text = repr(s.redacted())
    assert secret not in text and "s%33cr3t" not in text
    assert "***" in s.redacted()["redis_url"]


def test_redacted_keeps_what_is_not_secret():
    url = "rediss://h:6380/2?ssl_ca_certs=/etc/ssl/ca.pem&db=2"
    assert redact_url(url) == url
    assert settings(REDIS_URL=url).redacted()["redis_url"] == url
    assert redact_url("redis://u:pw@h:1/0?password=x&db=1") == "redis://u:***@h:1/0?password=***&db=1"


def test_every_secret_setting_is_redacted(pki):
    s = settings(
        KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        KAFKA_SASL_USERNAME="worker",
        KAFKA_SASL_PASSWORD="saslpw",
        KAFKA_SSL_CAFILE=str(pki["ca"]),
        KAFKA_SSL_CERTFILE=str(pki["cert"]),
        KAFKA_SSL_KEYFILE=str(pki["enc_key"]),
        KAFKA_SSL_KEY_PASSWORD="keypw",
        REDIS_PASSWORD="redispw",
        STREAMREC_PSEUDONYMIZE_KEY="k-9f3e",
    )
    text = repr(s.redacted())
    for secret in ("saslpw", "keypw", "redispw", "k-9f3e"):
        assert secret not in text


# ---- validation ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "env, message",
    [
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"},
            "KAFKA_SASL_USERNAME: required with KAFKA_SECURITY_PROTOCOL=SASL_SSL",
        ),
        (
            {
                "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                "KAFKA_SASL_USERNAME": "u",
            },
            "KAFKA_SASL_PASSWORD: required with KAFKA_SECURITY_PROTOCOL=SASL_SSL (KAFKA_SASL_MECHANISM=SCRAM-SHA-512)",
        ),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_PASSWORD": "p"}, "KAFKA_SASL_USERNAME: required"),
        (
            {"KAFKA_SASL_MECHANISM": "SCRAM-SHA-256"},
            "KAFKA_SASL_MECHANISM: set to 'SCRAM-SHA-256' but KAFKA_SECURITY_PROTOCOL is PLAINTEXT",
        ),
        (
            {"KAFKA_SASL_MECHANISM": "GSSAPI", "KAFKA_SECURITY_PROTOCOL": "SASL_SSL"},
            "KAFKA_SASL_MECHANISM: must be one of",
        ),
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL: must be one of"),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"},
            "KAFKA_SSL_CAFILE: file not found: /nonexistent/ca.pem",
        ),
        ({"KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"}, "KAFKA_SSL_CAFILE: set but KAFKA_SECURITY_PROTOCOL is PLAINTEXT"),
        (
            {
                "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "KAFKA_SASL_USERNAME": "u",
                "KAFKA_SASL_PASSWORD": "p",
                "KAFKA_SSL_CERTFILE": "/x.pem",
            },
            "KAFKA_SSL_CERTFILE: set but KAFKA_SECURITY_PROTOCOL is SASL_PLAINTEXT",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CERTFILE": "/nonexistent/c.pem"},
            "KAFKA_SSL_CERTFILE: file not found",
        ),
        ({"KAFKA_SSL_CHECK_HOSTNAME": "perhaps"}, "KAFKA_SSL_CHECK_HOSTNAME: must be true or false"),
        ({"REDIS_SSL_CAFILE": "/nonexistent/ca.pem"}, "REDIS_SSL_CAFILE: set but REDIS_URL is not rediss://"),
        (
            {"REDIS_URL": "rediss://h:6380/0", "REDIS_SSL_CAFILE": "/nonexistent/ca.pem"},
            "REDIS_SSL_CAFILE: file not found",
        ),
        (
            {"REDIS_URL": "rediss://h:6380/0", "REDIS_SSL_CERTFILE": "/nonexistent/c.pem"},
            "REDIS_SSL_CERTFILE: file not found",
        ),
    ],
)
def test_inconsistent_security_settings_name_the_setting(env, message):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        settings(**env)


def test_key_without_certificate_is_refused(pki):
    with pytest.raises(SettingsError, match="KAFKA_SSL_KEYFILE: set without KAFKA_SSL_CERTFILE"):
        settings(KAFKA_SECURITY_PROTOCOL="SSL", KAFKA_SSL_KEYFILE=str(pki["key"]))
    with pytest.raises(SettingsError, match="REDIS_SSL_KEYFILE: set without REDIS_SSL_CERTFILE"):
        settings(REDIS_URL="rediss://h:6380/0", REDIS_SSL_KEYFILE=str(pki["key"]))


def test_unused_sasl_credentials_are_a_warning_not_an_error():
    s = settings(KAFKA_SASL_PASSWORD="pw")  # PLAINTEXT: starts, but says so
    assert any("KAFKA_SASL_USERNAME / KAFKA_SASL_PASSWORD: set but unused" in w for w in s.warnings())
    assert "pw" not in " ".join(s.warnings())
    assert settings().warnings() == []


# ---- objects built from the settings --------------------------------------------------------
def test_plaintext_builds_nothing():
    s = settings()
    assert kafka_ssl_context(s) is None and faust_credentials(s) is None
    assert kafka_client_kwargs(s) == {"security_protocol": "PLAINTEXT"}
    assert redis_client_kwargs(s) == {}
    assert redis_client_kwargs(settings(REDIS_PASSWORD="pw")) == {"password": "pw"}


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_ssl_credentials_and_kwargs(pki, mechanism):
    import faust

    s = settings(
        KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        KAFKA_SASL_MECHANISM=mechanism,
        KAFKA_SASL_USERNAME="worker",
        KAFKA_SASL_PASSWORD="pw",
        KAFKA_SSL_CAFILE=str(pki["ca"]),
    )
    creds = faust_credentials(s)
    assert isinstance(creds, faust.SASLCredentials)
    assert creds.mechanism.value == mechanism and creds.username == "worker" and creds.password == "pw"
    assert creds.protocol.value == "SASL_SSL" and isinstance(creds.ssl_context, ssl.SSLContext)
    assert "pw" not in repr(creds)
    kw = kafka_client_kwargs(s)
    assert kw["security_protocol"] == "SASL_SSL" and kw["sasl_mechanism"] == mechanism
    assert kw["sasl_plain_username"] == "worker" and kw["sasl_plain_password"] == "pw"
    ctx = kw["ssl_context"]
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert any("streamrec-test-ca" in str(c.get("subject")) for c in ctx.get_ca_certs())
    # faust hands exactly these to aiokafka
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    auth = credentials_to_aiokafka_auth(creds)
    assert auth["security_protocol"] == "SASL_SSL" and auth["sasl_mechanism"] == mechanism
    assert auth["sasl_plain_password"] == "pw" and auth["ssl_context"] is creds.ssl_context


def test_sasl_plaintext_has_no_tls():
    s = settings(
        KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
        KAFKA_SASL_MECHANISM="SCRAM-SHA-256",
        KAFKA_SASL_USERNAME="u",
        KAFKA_SASL_PASSWORD="p",
    )
    assert kafka_ssl_context(s) is None and "ssl_context" not in kafka_client_kwargs(s)
    assert faust_credentials(s).protocol.value == "SASL_PLAINTEXT"
    assert any(
        "clear text" in w
        for w in settings(
            KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT", KAFKA_SASL_USERNAME="u", KAFKA_SASL_PASSWORD="p"
        ).warnings()
    )


def test_mutual_tls_client_certificate(pki):
    import faust

    s = settings(
        KAFKA_SECURITY_PROTOCOL="SSL",
        KAFKA_SSL_CAFILE=str(pki["ca"]),
        KAFKA_SSL_CERTFILE=str(pki["cert"]),
        KAFKA_SSL_KEYFILE=str(pki["enc_key"]),
        KAFKA_SSL_KEY_PASSWORD="keypw",
        KAFKA_SSL_CHECK_HOSTNAME="false",
    )
    ctx = kafka_ssl_context(s)
    assert ctx is not None and not ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    creds = faust_credentials(s)
    assert isinstance(creds, faust.SSLCredentials) and creds.protocol.value == "SSL"
    assert "sasl_mechanism" not in kafka_client_kwargs(s)


def test_unloadable_certificate_or_key_names_the_setting(pki):
    s = settings(
        KAFKA_SECURITY_PROTOCOL="SSL",
        KAFKA_SSL_CERTFILE=str(pki["cert"]),
        KAFKA_SSL_KEYFILE=str(pki["enc_key"]),
        KAFKA_SSL_KEY_PASSWORD="wrong",
    )
    with pytest.raises(
        SettingsError, match="KAFKA_SSL_CERTFILE / KAFKA_SSL_KEYFILE / KAFKA_SSL_KEY_PASSWORD: cannot be loaded"
    ):
        kafka_ssl_context(s)
    with pytest.raises(SettingsError, match="KAFKA_SSL_CAFILE: cannot be loaded"):
        kafka_ssl_context(settings(KAFKA_SECURITY_PROTOCOL="SSL", KAFKA_SSL_CAFILE=str(pki["garbage"])))


def test_redis_tls_arguments(pki):
    s = settings(
        REDIS_URL="rediss://redis:6380/0",
        REDIS_PASSWORD="pw",
        REDIS_SSL_CAFILE=str(pki["ca"]),
        REDIS_SSL_CERTFILE=str(pki["cert"]),
        REDIS_SSL_KEYFILE=str(pki["key"]),
        REDIS_SSL_CHECK_HOSTNAME="false",
    )
    kw = redis_client_kwargs(s)
    assert kw == {
        "password": "pw",
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": False,
        "ssl_ca_certs": str(pki["ca"]),
        "ssl_certfile": str(pki["cert"]),
        "ssl_keyfile": str(pki["key"]),
    }
    # both redis-py clients accept them and build a TLS connection pool (no connection is made)
    import redis
    import redis.asyncio as aioredis

    for client in (redis.Redis.from_url(s.redis_url, **kw), aioredis.from_url(s.redis_url, **kw)):
        pool = client.connection_pool
        assert "SSL" in pool.connection_class.__name__
        assert pool.connection_kwargs["ssl_ca_certs"] == str(pki["ca"]) and pool.connection_kwargs["password"] == "pw"


def test_command_line_tools_use_the_workers_redis_tls_settings(pki, monkeypatch):
    from streamer.security import tool_redis_client

    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)  # the tools need no Kafka
    monkeypatch.setenv("REDIS_PASSWORD", "pw")
    monkeypatch.setenv("REDIS_SSL_CAFILE", str(pki["ca"]))
    client = tool_redis_client("rediss://redis:6380/0", socket_timeout=5)
    pool = client.connection_pool
    assert "SSL" in pool.connection_class.__name__
    assert pool.connection_kwargs["ssl_ca_certs"] == str(pki["ca"]) and pool.connection_kwargs["password"] == "pw"
    assert pool.connection_kwargs["socket_timeout"] == 5
    with pytest.raises(SettingsError, match="REDIS_SSL_CAFILE"):  # a TLS file without rediss:// names the setting
        tool_redis_client("redis://redis:6379/0")
