"""Announce a published model version on the ``model-updates`` topic.

The message is ``schemas.models.ModelUpdate`` (schema_version 1): version, location (the
version folder as workers reach it), sha256 of its ``manifest.json`` (workers re-check it and
every file checksum before they switch), created_at and the offline metrics.

Or, instead of publishing outright, ``start_canary``: the version is written but ``LATEST`` stays,
and ``streamrec-rollout canary`` serves it to a share of users (``streamrec-retrain train
--canary 0.1``); a platform engineer then promotes or rolls it back (``streamer.rollout``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from exporters.registry import load_manifest, sha256_file
from schemas.models import ModelUpdate, encode

DEFAULT_TOPIC = "model-updates"


def build_model_update(version_dir: Path, location: str | None = None, note: str | None = None) -> ModelUpdate:
    version_dir = Path(version_dir)
    manifest = load_manifest(version_dir)
    return ModelUpdate(
        version=manifest["version"],
        location=location or str(version_dir.resolve()),
        manifest_sha256=sha256_file(version_dir / "manifest.json"),
        created_at=manifest["created_at"],
        metrics=manifest.get("metrics", {}),
        note=note,
    )


async def send_model_update(bootstrap_servers: str, update: ModelUpdate, topic: str = DEFAULT_TOPIC) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, encode(update), key=update.version.encode())
    finally:
        await producer.stop()


def publish_model_update(
    bootstrap_servers: str,
    version_dir: Path,
    topic: str = DEFAULT_TOPIC,
    location: str | None = None,
    note: str | None = None,
) -> ModelUpdate:
    """Build the message for ``version_dir`` and send it (blocking); returns what was sent."""
    update = build_model_update(version_dir, location, note)
    asyncio.run(send_model_update(bootstrap_servers, update, topic))
    return update


def start_canary(
    redis_url: str,
    model_root: Path,
    version: str,
    share: float,
    *,
    prefix: str = "streamrec:",
    default_split: str = "ranker:1.0",
    wait_s: float = 0.0,
) -> int:
    """Serve the committed, unpublished ``version`` to ``share`` of users (``streamrec-rollout
    canary``); returns its exit status (0 started, 1 refused or not confirmed by the workers)."""
    from streamer.rollout import Rollout
    from streamer.security import tool_redis_client

    r = tool_redis_client(redis_url, socket_connect_timeout=5, socket_timeout=5)
    try:
        return Rollout(r, prefix, model_root, default_split=default_split).canary(version, share, wait_s)
    finally:
        r.close()
