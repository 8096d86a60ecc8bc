"""Shared fixtures and helpers of the whole suite: the real embedded stack (Tansu broker +
redis-server) on free ports, a private redis-server per test module, the shared data folder, and
``wait_until`` (tests wait on a condition, never on a fixed sleep)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def stack():
    """A real Kafka-protocol broker and a real Redis, started for this test session only.

    Never the machine's shared Redis on 6379: a private server on a free port, so tests neither
    collide nor depend on leftovers. Set KAFKA_BOOTSTRAP_SERVERS / REDIS_URL to test against
    external ones instead.
    """
    from devtools.stack import LocalStack

    s = LocalStack.from_env(partitions=4).start()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    for candidate in (os.environ.get("STREAMREC_DATA_DIR"), REPO.parent / "shared" / "data", Path("/work/shared/data")):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    pytest.fail("real data not found: set STREAMREC_DATA_DIR to the shared data folder")


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    """A private redis-server on a free port for one test module (never the machine's shared one)."""
    import shutil
    import subprocess

    import redis

    from devtools.stack import free_port, redis_command

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server not installed")
    port = free_port()
    proc = subprocess.Popen(
        redis_command(binary, port, str(tmp_path_factory.mktemp("redis"))),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    url = f"redis://127.0.0.1:{port}/0"
    r = redis.Redis.from_url(url)
    for _ in range(100):
        try:
            r.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    yield url
    proc.terminate()
    proc.wait(10)


def wait_until(predicate, timeout: float = 60, what: str = "condition", interval: float = 0.2, on_fail=lambda: ""):
    """Poll ``predicate`` every ``interval`` seconds until it returns something true (returned),
    or fail after ``timeout`` seconds naming ``what``, with ``on_fail()`` (a log tail) appended."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout:.0f} s\n{on_fail()}")
        time.sleep(interval)
