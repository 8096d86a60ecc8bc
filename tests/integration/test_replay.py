"""streamrec-replay against the real embedded broker (Tansu): what it produces is read back by a
consumer in another process, and every message must decode, be keyed right and keep per-user
order."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from devtools.replay import replay
from devtools.stack import ensure_topics
from schemas import Event, Item
from schemas.sources import load_dataset

pytestmark = pytest.mark.integration

PARTITIONS = 4
REPO = Path(__file__).resolve().parents[2]

# Runs in a separate interpreter: reads every partition of the two topics from the beginning (no
# consumer group) until the expected counts arrived, then polls a while longer so that extra
# messages would show; decodes with the contract and prints JSON. It cannot stop at the end
# offsets: Tansu answers ListOffsets(latest) with the last batch's base offset + 1, not the high
# watermark (15 records in 11 batches -> 11).
READER = r"""
import asyncio, json, sys
from aiokafka import AIOKafkaConsumer, TopicPartition
from schemas import ValidationError, decode_event, decode_item

async def main(bootstrap, events_topic, items_topic, n_events, n_items):
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()  # loads metadata for partitions_for_topic
        parts = [TopicPartition(t, p) for t in (events_topic, items_topic) for p in sorted(consumer.partitions_for_topic(t))]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        out = {"events": [], "items": [], "errors": []}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 120
        quiet_until = None
        while loop.time() < min(deadline, quiet_until or deadline):
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                for r in records:
                    try:
                        if tp.topic == events_topic:
                            out["events"].append([tp.partition, r.offset, r.key.decode(), decode_event(r.value).to_dict()])
                        else:
                            out["items"].append([tp.partition, r.offset, r.key.decode(), decode_item(r.value).to_dict()])
                    except ValidationError as exc:
                        out["errors"].append(f"{tp.topic}/{tp.partition}@{r.offset}: {exc}")
            if quiet_until is None and len(out["events"]) >= n_events and len(out["items"]) >= n_items:
                quiet_until = loop.time() + 2.0
        print(json.dumps(out))
    finally:
        await consumer.stop()

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])))
"""


def unique_topics(prefix: str) -> tuple[str, str]:
    tag = uuid.uuid4().hex[:8]
    return f"{prefix}-events-{tag}", f"{prefix}-items-{tag}"


async def read_back(bootstrap: str, events_topic: str, items_topic: str, n_events: int, n_items: int) -> dict:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        READER,
        bootstrap,
        events_topic,
        items_topic,
        str(n_events),
        str(n_items),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=180)
    assert proc.returncode == 0, err.decode()[-3000:]
    return json.loads(out)


async def test_replay_online_retail_slice_reads_back_in_another_process(stack, data_dir):
    dataset = load_dataset("online_retail", data_dir, limit_rows=2000)
    assert len(dataset.events) > 1000 and len(dataset.items) > 500
    events_topic, items_topic = unique_topics("replay")
    await ensure_topics(stack.bootstrap, [events_topic, items_topic], PARTITIONS)

    result = await replay(dataset, stack.bootstrap, events_topic, items_topic, progress=False)
    assert result["produced"] == {items_topic: len(dataset.items), events_topic: len(dataset.events)}
    assert (result["events"], result["items"]) == (len(dataset.events), len(dataset.items))

    got = await read_back(stack.bootstrap, events_topic, items_topic, len(dataset.events), len(dataset.items))
    assert got["errors"] == []

    # Every item once, keyed by its id, equal to what was loaded.
    items = {d["item_id"]: (key, Item.from_dict(d)) for _p, _o, key, d in got["items"]}
    assert len(items) == len(got["items"])
    assert items == {item_id: (item_id, item) for item_id, item in dataset.items.items()}

    # Every event once, keyed by its user, equal to what was loaded.
    events = [(p, o, key, Event.from_dict(d)) for p, o, key, d in got["events"]]
    assert len(events) == len(dataset.events)
    assert {e.event_id: e for *_, e in events} == {e.event_id: e for e in dataset.events}
    assert all(key == e.user_id for _p, _o, key, e in events)

    # Keyed by user: each user lives on one partition, and there in the order of the file.
    partitions = collections.defaultdict(set)
    read_order = collections.defaultdict(list)
    for p, o, _key, e in sorted(events, key=lambda x: (x[0], x[1])):
        partitions[e.user_id].add(p)
        read_order[e.user_id].append(e.event_id)
    file_order = collections.defaultdict(list)
    for e in dataset.events:
        file_order[e.user_id].append(e.event_id)
    assert all(len(ps) == 1 for ps in partitions.values())
    assert len({p for ps in partitions.values() for p in ps}) > 1, "users spread over partitions"
    assert read_order == file_order


async def test_replay_rate_limit_and_no_items(stack, data_dir):
    dataset = load_dataset("movielens", data_dir, limit_rows=300)
    events_topic, items_topic = unique_topics("replay-rate")
    await ensure_topics(stack.bootstrap, [events_topic, items_topic], PARTITIONS)
    result = await replay(dataset, stack.bootstrap, events_topic, None, rate=1000, progress=False)
    assert result["produced"] == {events_topic: 300}
    assert result["seconds"] >= 0.29  # 300 events at 1000/s cannot take less than 0.3 s
    got = await read_back(stack.bootstrap, events_topic, items_topic, 300, 0)
    assert (len(got["events"]), len(got["items"]), got["errors"]) == (300, 0, [])


def test_cli_prints_the_quality_table_and_counts(stack, data_dir):
    events_topic, items_topic = unique_topics("replay-cli")
    asyncio.run(ensure_topics(stack.bootstrap, [events_topic, items_topic], PARTITIONS))
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=stack.bootstrap, STREAMREC_DATA_DIR=str(data_dir))
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "devtools.replay",
            "--dataset",
            "taobao",
            "--limit",
            "500",
            "--events-topic",
            events_topic,
            "--items-topic",
            items_topic,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "check  rows == events + dropped" in run.stdout and "OK" in run.stdout
    produced = dict((t, int(n.replace(",", ""))) for n, t in re.findall(r"produced\s+([\d,]+)\s+to (\S+)", run.stdout))
    dataset = load_dataset("taobao", data_dir, limit_rows=500)
    assert produced == {items_topic: len(dataset.items), events_topic: len(dataset.events)}


def test_cli_without_a_broker_address_names_the_variable(data_dir):
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    run = subprocess.run(
        [sys.executable, "-m", "devtools.replay", "--dataset", "movielens"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert run.returncode == 2
    assert "KAFKA_BOOTSTRAP_SERVERS" in run.stderr


def test_cli_with_an_unreachable_broker_fails_cleanly(data_dir):
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "devtools.replay",
            "--dataset",
            "movielens",
            "--limit",
            "10",
            "--bootstrap",
            "127.0.0.1:1",
            "--data-dir",
            str(data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert run.returncode == 1
    assert "Kafka at 127.0.0.1:1 failed" in run.stderr
    assert "Unclosed" not in run.stderr  # the producer is closed on the way out
