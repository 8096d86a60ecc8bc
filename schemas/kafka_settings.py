"""The Kafka connection and topic settings shared by the worker, the archiver and the retrain job.

One declaration per setting: a field of :class:`KafkaSettings` made with :func:`setting`. The
worker's ``streamer.settings.Settings`` extends this class (so the README table, the worker and
the job agree), and the job (``exporters``, which never imports ``streamer``) reads them with
:meth:`KafkaSettings.from_env`.
A bad value fails with :class:`SettingsError` naming the variable
(``KAFKA_SECURITY_PROTOCOL: must be one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL, got 'TLS'``).

The value parsers live here too, so both settings objects parse the same way.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping


class SettingsError(ValueError):
    """A setting is missing or invalid. The message starts with the variable's name."""


def parse_int(lo: int | None = None, hi: int | None = None) -> Callable[[str, str], int]:
    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(f"{name}: must be an integer, got {raw!r}") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise SettingsError(f"{name}: must be between {lo} and {hi}, got {value}")
        return value

    return parse


def parse_float(lo: float | None = None, hi: float | None = None) -> Callable[[str, str], float]:
    def parse(name: str, raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(f"{name}: must be a number, got {raw!r}") from None
        if value != value or (lo is not None and value < lo) or (hi is not None and value > hi):
            raise SettingsError(f"{name}: must be between {lo} and {hi}, got {raw}")
        return value

    return parse


def parse_bool(name: str, raw: str) -> bool:
    low = raw.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise SettingsError(f"{name}: must be true or false, got {raw!r}")


def parse_str(name: str, raw: str) -> str:
    return raw


def parse_nonempty(name: str, raw: str) -> str:
    if not raw.strip():
        raise SettingsError(f"{name}: must not be empty")
    return raw.strip()


def parse_bootstrap(name: str, raw: str) -> str:
    servers = [s.strip() for s in raw.split(",") if s.strip()]
    if not servers:
        raise SettingsError(f"{name}: must be host:port[,host:port...], got {raw!r}")
    for s in servers:
        host, _, port = s.rpartition(":")
        if not host or not port.isdigit():
            raise SettingsError(f"{name}: {s!r} is not host:port")
    return ",".join(servers)


def parse_choice(*options: str) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        if raw not in options:
            raise SettingsError(f"{name}: must be one of {', '.join(options)}, got {raw!r}")
        return raw

    return parse


SettingDoc = tuple[str, "str | None", Callable[[str, str], Any], str]


def setting(var: str, default: str | None, parse: Callable[[str, str], Any], doc: str, *, secret: bool = False) -> Any:
    """Declare one setting, as a field of a frozen settings dataclass: its environment variable,
    its default as the variable's text (None: required), the parser that turns the text into the
    field's value (raising SettingsError naming the variable) and the sentence that documents it
    (README table, deploy checks). A secret is kept out of ``repr`` and redacted in logs.

    This is the only place a setting is declared: add a field with ``setting(...)`` to the
    settings class and the parser, the README table (``python -m streamer.settings
    --write-readme``), the deploy checker's known variables and the redaction follow."""
    return field(repr=not secret, metadata={"setting": (var, default, parse, doc), "secret": secret})


def settings_doc(cls: type) -> dict[str, SettingDoc]:
    """field name -> (ENV VAR, default, parser, description) of a settings class, in declaration order."""
    return {f.name: f.metadata["setting"] for f in fields(cls) if "setting" in f.metadata}


def secret_fields(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in fields(cls) if f.metadata.get("secret"))


def read_settings(
    doc: Mapping[str, SettingDoc], names: Any, env: Mapping[str, str], overrides: Mapping[str, Any]
) -> dict[str, Any]:
    """Parse the settings ``names`` (field names of ``doc``) from ``env``; ``overrides`` win unparsed."""
    values: dict[str, Any] = {}
    for name in names:
        var, default, parse, _doc = doc[name]
        if name in overrides:
            values[name] = overrides[name]
            continue
        raw = env.get(var)
        if raw is None:
            if default is None:
                raise SettingsError(f"{var}: required but not set")
            raw = default
        values[name] = parse(var, raw)
    return values


@dataclass(frozen=True)
class KafkaSettings:
    """What a Kafka client of this deployment needs: where, how securely, which topics."""

    kafka_bootstrap: str = setting(
        "KAFKA_BOOTSTRAP_SERVERS",
        None,
        parse_bootstrap,
        "Kafka bootstrap servers, host:port[,...] (required for the worker; the embedded stack sets it)",
    )
    kafka_security_protocol: str = setting(
        "KAFKA_SECURITY_PROTOCOL",
        "PLAINTEXT",
        parse_choice("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
        "Kafka security protocol",
    )
    kafka_sasl_mechanism: str = setting(
        "KAFKA_SASL_MECHANISM", "PLAIN", parse_choice("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"), "SASL mechanism"
    )
    kafka_sasl_username: str = setting("KAFKA_SASL_USERNAME", "", parse_str, "SASL user name")
    kafka_sasl_password: str = setting("KAFKA_SASL_PASSWORD", "", parse_str, "SASL password; never logged", secret=True)
    kafka_ssl_cafile: str = setting(
        "KAFKA_SSL_CAFILE",
        "",
        parse_str,
        "CA bundle (PEM) that signs the Kafka brokers' certificates (SSL, SASL_SSL; empty: the system's CAs)",
    )
    kafka_ssl_certfile: str = setting(
        "KAFKA_SSL_CERTFILE", "", parse_str, "client certificate (PEM) for Kafka mutual TLS (SSL, SASL_SSL)"
    )
    kafka_ssl_keyfile: str = setting(
        "KAFKA_SSL_KEYFILE",
        "",
        parse_str,
        "private key (PEM) of KAFKA_SSL_CERTFILE (empty: the key is inside the certificate file)",
    )
    kafka_ssl_key_password: str = setting(
        "KAFKA_SSL_KEY_PASSWORD", "", parse_str, "password of an encrypted KAFKA_SSL_KEYFILE; never logged", secret=True
    )
    kafka_ssl_check_hostname: bool = setting(
        "KAFKA_SSL_CHECK_HOSTNAME",
        "true",
        parse_bool,
        "verify that the broker's certificate names the host connected to",
    )
    events_topic: str = setting("STREAMREC_EVENTS_TOPIC", "events", parse_nonempty, "input events topic")
    items_topic: str = setting("STREAMREC_ITEMS_TOPIC", "items", parse_nonempty, "item catalog topic")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> "KafkaSettings":
        env = os.environ if env is None else env
        values = read_settings(settings_doc(cls), [f.name for f in fields(cls)], env, overrides)
        check_kafka_security(values, env)
        return cls(**values)


#: field name -> (ENV VAR, default, parser, description), derived from KafkaSettings.
KAFKA_SETTINGS_DOC: dict[str, SettingDoc] = settings_doc(KafkaSettings)


def _check_file(var: str, path: str) -> None:
    p = Path(path)
    if not p.is_file():
        raise SettingsError(f"{var}: file not found: {path}")
    if not os.access(p, os.R_OK):
        raise SettingsError(f"{var}: file not readable: {path}")


def check_tls_files(files: dict[str, str], tls_on: bool, why_off: str) -> None:
    """TLS file settings (``<PREFIX>_SSL_CAFILE/CERTFILE/KEYFILE``): only with TLS on, readable,
    and no key without its certificate."""
    for var, path in files.items():
        if path and not tls_on:
            raise SettingsError(f"{var}: set but {why_off}")
        if path:
            _check_file(var, path)
    key, cert = [k for k in files if k.endswith("_KEYFILE")][0], [k for k in files if k.endswith("_CERTFILE")][0]
    if files[key] and not files[cert]:
        raise SettingsError(f"{key}: set without {cert} (the client certificate)")


def check_kafka_security(v: Mapping[str, Any], env: Mapping[str, str]) -> None:
    """Fail at start, naming the setting, when the Kafka security settings contradict each other
    or name files that are not there (instead of a TLS or SASL error at connect time, or a silent
    fallback to plaintext)."""
    proto = v["kafka_security_protocol"]
    if proto.startswith("SASL"):
        if not v["kafka_sasl_username"]:
            raise SettingsError(
                f"KAFKA_SASL_USERNAME: required with KAFKA_SECURITY_PROTOCOL={proto} "
                f"(KAFKA_SASL_MECHANISM={v['kafka_sasl_mechanism']})"
            )
        if not v["kafka_sasl_password"]:
            raise SettingsError(
                f"KAFKA_SASL_PASSWORD: required with KAFKA_SECURITY_PROTOCOL={proto} "
                f"(KAFKA_SASL_MECHANISM={v['kafka_sasl_mechanism']})"
            )
    elif env.get("KAFKA_SASL_MECHANISM"):
        raise SettingsError(
            f"KAFKA_SASL_MECHANISM: set to {env['KAFKA_SASL_MECHANISM']!r} but KAFKA_SECURITY_PROTOCOL is "
            f"{proto}: SASL needs SASL_SSL or SASL_PLAINTEXT"
        )
    kafka_tls = {
        "KAFKA_SSL_CAFILE": v["kafka_ssl_cafile"],
        "KAFKA_SSL_CERTFILE": v["kafka_ssl_certfile"],
        "KAFKA_SSL_KEYFILE": v["kafka_ssl_keyfile"],
    }
    check_tls_files(kafka_tls, proto.endswith("SSL"), f"KAFKA_SECURITY_PROTOCOL is {proto}: TLS needs SSL or SASL_SSL")
    if v["kafka_ssl_key_password"] and not (v["kafka_ssl_keyfile"] or v["kafka_ssl_certfile"]):
        raise SettingsError("KAFKA_SSL_KEY_PASSWORD: set without KAFKA_SSL_CERTFILE / KAFKA_SSL_KEYFILE")


def kafka_ssl_context(s: Any) -> ssl.SSLContext | None:
    """The TLS context for SSL / SASL_SSL (None for the plaintext protocols): server verification
    against ``KAFKA_SSL_CAFILE`` (else the system's CAs), hostname check per
    ``KAFKA_SSL_CHECK_HOSTNAME``, and the client certificate when ``KAFKA_SSL_CERTFILE`` is set.
    ``s`` is a :class:`KafkaSettings` or the worker's settings (same field names)."""
    if not s.kafka_security_protocol.endswith("SSL"):
        return None
    from aiokafka.helpers import create_ssl_context

    try:
        ctx = create_ssl_context(
            cafile=s.kafka_ssl_cafile or None,
            certfile=s.kafka_ssl_certfile or None,
            keyfile=s.kafka_ssl_keyfile or None,
            password=s.kafka_ssl_key_password or None,
        )
    except ssl.SSLError as exc:
        which = (
            "KAFKA_SSL_CERTFILE / KAFKA_SSL_KEYFILE / KAFKA_SSL_KEY_PASSWORD"
            if s.kafka_ssl_certfile
            else "KAFKA_SSL_CAFILE"
        )
        raise SettingsError(f"{which}: cannot be loaded: {exc.reason or exc}") from None
    ctx.check_hostname = s.kafka_ssl_check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def kafka_client_kwargs(s: Any) -> dict[str, Any]:
    """aiokafka client arguments (security protocol, SASL, TLS context) for ``s``."""
    kw: dict[str, Any] = {"security_protocol": s.kafka_security_protocol}
    if s.kafka_security_protocol.startswith("SASL"):
        kw.update(
            sasl_mechanism=s.kafka_sasl_mechanism,
            sasl_plain_username=s.kafka_sasl_username,
            sasl_plain_password=s.kafka_sasl_password,
        )
    ctx = kafka_ssl_context(s)
    if ctx is not None:
        kw["ssl_context"] = ctx
    return kw
