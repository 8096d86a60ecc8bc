"""The retrain job's hand-off to the workers through a real broker: a committed version is
announced on the model-updates topic, and what a consumer reads back checks out against the
files on disk."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from devtools.local import read_all
from devtools.stack import ensure_topics
from exporters import registry
from exporters.bootstrap import export_bootstrap
from exporters.cli import main as retrain_main
from exporters.publish import publish_model_update
from schemas.models import decode_model_update

pytestmark = pytest.mark.integration


def test_published_version_is_announced_and_verifiable(stack, tmp_path: Path) -> None:
    topic = f"retrain-{uuid.uuid4().hex[:8]}.model-updates"
    asyncio.run(ensure_topics(stack.bootstrap, [topic], partitions=1))
    folder = export_bootstrap(tmp_path, dataset=None, tiny=True, version="v-announce")

    sent = publish_model_update(stack.bootstrap, folder, topic, location="file:///models/v-announce")
    messages = asyncio.run(read_all(stack.bootstrap, topic, expect=1))

    assert len(messages) == 1 and messages[0].key == b"v-announce"
    update = decode_model_update(messages[0].value)
    assert update == sent
    assert update.location == "file:///models/v-announce"
    assert update.manifest_sha256 == registry.sha256_file(folder / "manifest.json")
    assert registry.verify_version(folder) == []


def test_announce_cli_refuses_a_damaged_version(stack, tmp_path: Path) -> None:
    topic = f"retrain-{uuid.uuid4().hex[:8]}.model-updates"
    asyncio.run(ensure_topics(stack.bootstrap, [topic], partitions=1))
    folder = export_bootstrap(tmp_path, dataset=None, tiny=True, version="v-damaged")
    with open(folder / "ranker.onnx", "r+b") as f:
        f.write(b"\0\0\0\0")

    code = retrain_main(["announce", "--model-root", str(tmp_path), "--kafka", stack.bootstrap, "--topic", topic])

    assert code == 1
    assert asyncio.run(read_all(stack.bootstrap, topic, timeout=5, idle=2)) == []
