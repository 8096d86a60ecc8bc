"""The learning loop on the real broker and Redis: the deployment's own events -> (archiver ->
archive) -> ``streamrec-retrain train --source ...`` (tiny models) -> a published version ->
the running worker swaps to it and re-ranks a user with it. And the refusal of a log too small."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from devtools.local import free_port
from schemas import Item, encode
from tests.integration.helpers import WorkerProcess, event, produce, unique_topics
from tests.integration.test_hot_swap import wait_swapped_and_serving

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
TINY = [
    "--tiny",
    "--max-seq-len",
    "8",
    "--item-steps",
    "3",
    "--epochs",
    "1",
    "--batch-size",
    "32",
    "--min-test-cases",
    "10",
]


def shop_messages() -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]:
    """The synthetic shop of the job's unit tests as contract messages: (items, events)."""
    from tests.unit.exporters.test_retrain_job import shop

    ds = shop()
    items = [(k.encode(), encode(Item.from_dict({"item_id": k, "title": v.title}))) for k, v in ds.items.items()]
    events = [(e.user_id.encode(), encode(e)) for e in ds.events]
    return items, events


def env_for(stack, topics: dict[str, str], **extra: str) -> dict[str, str]:
    return dict(
        os.environ,
        **stack.client_env(),
        PYTHONPATH=str(REPO),
        STREAMREC_EVENTS_TOPIC=topics["events"],
        STREAMREC_ITEMS_TOPIC=topics["items"],
        STREAMREC_MODEL_UPDATES_TOPIC=topics["updates"],
        **extra,
    )


def retrain(stack, topics, source: str, root: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "exporters.cli",
        "train",
        "--source",
        source,
        "--model-root",
        str(root),
        "--kafka",
        stack.bootstrap,
        *TINY,
        *extra,
    ]
    return subprocess.run(cmd, env=env_for(stack, topics), capture_output=True, text=True, timeout=600, cwd=REPO)


def start_worker(stack, tmp_path: Path, topics, app_id: str) -> tuple[Path, WorkerProcess]:
    from exporters.bootstrap import export_bootstrap
    from tests.unit.streamer.conftest import CATALOG

    root = tmp_path / "models"
    export_bootstrap(root, dataset=None, tiny=True, items=CATALOG, version="v1-bootstrap")
    w = WorkerProcess(stack, root, tmp_path / "w", app_id=app_id, topics=topics).start()
    w.wait_ready()
    return root, w


def check_published_and_served(
    stack, topics, root: Path, w: WorkerProcess, run: subprocess.CompletedProcess, user: str
) -> str:
    assert run.returncode == 0, run.stderr[-3000:]
    version = (root / "LATEST").read_text().strip()
    assert version != "v1-bootstrap" and (root / version / "report.md").is_file()
    record = [json.loads(line) for line in (root / "runs.jsonl").read_text().splitlines()][-1]
    assert record["version"] == version and record["status"] == "published"
    assert record["events"]["interactions"] > 1000 and record["cases"]["test"] >= 10
    # The running worker swaps to it, and a new event of a user gets a list ranked by it.
    wait_swapped_and_serving(stack, w, redis.Redis.from_url(stack.redis_url), topics, user, version)
    return version


def test_train_from_kafka_publishes_and_worker_serves_it(stack, tmp_path: Path) -> None:
    topics = unique_topics(stack, "loopk")
    items, events = shop_messages()
    asyncio.run(produce(stack.bootstrap, topics["items"], items))
    asyncio.run(produce(stack.bootstrap, topics["events"], events))
    root, w = start_worker(stack, tmp_path, topics, "loopk")
    try:
        run = retrain(stack, topics, f"kafka://{stack.bootstrap}", root)
        check_published_and_served(stack, topics, root, w, run, "c7")
        # Nothing new in the log: the next run refuses, writes nothing, records the refusal.
        before = sorted(p.name for p in root.iterdir())
        again = retrain(stack, topics, f"kafka://{stack.bootstrap}", root)
        assert again.returncode == 3 and "refused: log too stale" in again.stderr, again.stderr[-2000:]
        assert sorted(p.name for p in root.iterdir()) == before
    finally:
        w.stop()


def test_train_from_the_archive_publishes_and_worker_serves_it(stack, tmp_path: Path) -> None:
    topics = unique_topics(stack, "loopa")
    archive = tmp_path / "archive"
    env = env_for(
        stack,
        topics,
        STREAMREC_ARCHIVE_DIR=str(archive),
        STREAMREC_APP_ID="loopa",
        STREAMREC_ARCHIVE_FLUSH_S="1",
        STREAMREC_METRICS_PORT=str(free_port()),
        STREAMREC_PARTITIONS="4",
    )
    log = open(tmp_path / "archiver.log", "wb")
    archiver = subprocess.Popen(
        [sys.executable, "-m", "streamer.archiver"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        start_new_session=True,
    )
    root, w = start_worker(stack, tmp_path, topics, "loopa")
    try:
        items, events = shop_messages()
        asyncio.run(produce(stack.bootstrap, topics["items"], items))
        asyncio.run(produce(stack.bootstrap, topics["events"], events))
        # Wait until the archive holds every event (the archiver flushes each partition within 1 s).
        from exporters.logsource import read_log

        deadline = time.monotonic() + 90
        while True:
            n = len(read_log(str(archive)).events) if (archive / "events").is_dir() else 0
            if n == len(events):
                break
            assert archiver.poll() is None and time.monotonic() < deadline, (
                n,
                (tmp_path / "archiver.log").read_text()[-3000:],
            )
            time.sleep(1)
        run = retrain(stack, topics, str(archive), root)
        check_published_and_served(stack, topics, root, w, run, "c11")
    finally:
        w.stop()
        archiver.terminate()
        archiver.wait(30)
        log.close()


def test_a_log_too_small_is_refused(stack, tmp_path: Path) -> None:
    topics = unique_topics(stack, "loops")
    asyncio.run(produce(stack.bootstrap, topics["events"], [event(i, f"u{i % 3}", f"I{i % 5}") for i in range(30)]))
    root = tmp_path / "models"
    run = retrain(stack, topics, f"kafka://{stack.bootstrap}", root)
    assert run.returncode == 3, run.stderr[-2000:]
    lines = [line for line in run.stderr.splitlines() if "refused" in line]
    assert lines == [lines[0]] and lines[0].startswith("streamrec-retrain: refused: log too small")
    assert sorted(p.name for p in root.iterdir()) == ["runs.jsonl"]  # no version, no LATEST
    record = json.loads((root / "runs.jsonl").read_text())
    assert record["status"] == "refused" and record["version"] is None and record["events"]["read"] == 30
