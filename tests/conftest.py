"""Session-wide fixtures: the real embedded stack (Tansu broker + redis-server) on free ports."""

from __future__ import annotations

import os
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
