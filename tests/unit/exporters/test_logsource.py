"""read_log: the job's reader of a deployment's own log (the Kafka path is covered against a real
broker in tests/integration/test_archiver.py)."""

from __future__ import annotations

import pytest

from exporters.logsource import LogSourceError, read_log
from schemas.archive import EVENTS, ITEMS, Located, write_batch
from schemas.kafka_settings import KafkaSettings, SettingsError
from schemas.models import Event, Item

T0 = 1_322_697_600_000


def test_read_log_from_an_archive_folder(tmp_path):
    events = [Event(f"e{i}", f"u{i % 2}", "purchase", T0 + i, item_id="a") for i in range(4)]
    write_batch(tmp_path, EVENTS, "events", [Located(e, 0, i, T0) for i, e in enumerate(events)])
    write_batch(tmp_path, ITEMS, "items", [Located(Item("a", title="A"), 0, 0, T0)])
    ds = read_log(str(tmp_path), since_ms=T0 + 1, until_ms=T0 + 3)
    assert ds.events == events[1:3]
    assert ds.items == {"a": Item("a", title="A")}
    assert ds.stats.rows == 4 and ds.stats.dropped["outside_window"] == 2 and ds.stats.balanced


def test_unknown_scheme_and_empty_window_are_refused(tmp_path):
    with pytest.raises(LogSourceError, match="kafka://HOST:PORT"):
        read_log("http://example:1")
    with pytest.raises(ValueError, match="since"):
        read_log(str(tmp_path), since_ms=5, until_ms=5)


def test_bad_kafka_address_or_security_settings_name_the_setting():
    with pytest.raises(SettingsError, match="--source"):
        read_log("kafka://no-port")
    with pytest.raises(SettingsError, match="KAFKA_SECURITY_PROTOCOL"):
        read_log("kafka://127.0.0.1:1", env={"KAFKA_SECURITY_PROTOCOL": "TLS"})
    with pytest.raises(SettingsError, match="KAFKA_SASL_USERNAME"):
        read_log("kafka://127.0.0.1:1", env={"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"})


def test_topics_and_security_come_from_the_workers_variables():
    s = KafkaSettings.from_env(
        {
            "STREAMREC_EVENTS_TOPIC": "shop.events",
            "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "KAFKA_SASL_USERNAME": "u",
            "KAFKA_SASL_PASSWORD": "p",
        },
        kafka_bootstrap="h:1",
    )
    assert (s.events_topic, s.items_topic, s.kafka_sasl_username) == ("shop.events", "items", "u")


def test_an_unreachable_broker_is_a_clear_error_not_a_hang():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(LogSourceError, match="kafka://127.0.0.1"):
        read_log(f"kafka://127.0.0.1:{port}", env={}, progress=False)
