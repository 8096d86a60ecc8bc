"""Announce a published model version on the ``model-updates`` topic.

The message is ``schemas.models.ModelUpdate`` (schema_version 1): version, location (the
version folder as workers reach it), sha256 of its ``manifest.json`` (workers re-check it and
every file checksum before they switch), created_at and the offline metrics.
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
    bootstrap_servers: str, version_dir: Path, topic: str = DEFAULT_TOPIC, location: str | None = None, note: str | None = None
) -> ModelUpdate:
    """Build the message for ``version_dir`` and send it (blocking); returns what was sent."""
    update = build_model_update(version_dir, location, note)
    asyncio.run(send_model_update(bootstrap_servers, update, topic))
    return update
