"""Embedded-broker workarounds stay in the embedded stack: production defaults do not pay for them."""

from __future__ import annotations

from devtools.stack import LocalStack
from streamer.settings import Settings

BASE = {"KAFKA_BOOTSTRAP_SERVERS": "kafka:9092", "REDIS_URL": "redis://redis:6379/0"}


def test_production_defaults_have_no_embedded_broker_workarounds():
    s = Settings.from_env(BASE)
    assert s.lost_log_check_s == 0  # Apache Kafka answers OFFSET_OUT_OF_RANGE itself
    assert s.producer_max_batch_bytes == 16384
    assert s.ort_threads == 0  # auto


def test_embedded_stack_turns_the_watchdog_on_and_batches_producers():
    embedded = LocalStack(bootstrap="127.0.0.1:9092", redis_url="redis://127.0.0.1:6379/0", external_kafka=False)
    env = embedded.client_env()
    s = Settings.from_env(env)
    assert s.lost_log_check_s == 2
    assert s.fetch_max_wait_ms == 10
    assert s.producer_max_batch_bytes == 16384  # batching is safe since recovery reads fetch high watermarks


def test_external_kafka_gets_plain_defaults():
    external = LocalStack(bootstrap="kafka:9092", redis_url="redis://redis:6379/0", external_kafka=True)
    s = Settings.from_env(external.client_env())
    assert s.lost_log_check_s == 0 and s.fetch_max_wait_ms == 500


def test_auto_threads_leave_a_core_to_the_event_loop():
    from streamer.model import auto_threads

    assert 1 <= auto_threads() <= 4
