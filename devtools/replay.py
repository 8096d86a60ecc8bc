"""``streamrec-replay``: produce one of the shared real data sets into Kafka.

Items go first (key: item_id), so that the worker knows every item before an event names it;
then the events in file order (key: user_id), so that Kafka's key partitioning keeps each user's
events in order. Messages are exactly what ``schemas.encode`` writes, cleaned by
``schemas.sources`` with the same rules as the retrain job.

The producer uses acks=all and no idempotence: the embedded Tansu broker does not implement
InitProducerId. aiokafka keeps a single in-flight batch per partition, so per-user order holds
without it.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import sys
import time
from pathlib import Path
from typing import Iterable

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from tqdm import tqdm

from schemas import encode
from schemas.sources import DATASETS, Dataset, load_dataset

# Sends whose delivery is not awaited yet; bounds memory while the producer batches freely.
MAX_PENDING = 10_000


async def replay(
    dataset: Dataset,
    bootstrap: str,
    events_topic: str = "events",
    items_topic: str | None = "items",
    rate: float | None = None,
    progress: bool = True,
) -> dict:
    """Produce ``dataset``: items to ``items_topic`` (skipped when None), then events.

    ``rate`` throttles events to that many per second (items always go at full speed).
    Returns ``{"items": n, "events": n, "produced": {topic: acknowledged}, "seconds": s,
    "events_per_s": r}``; a delivery failure raises instead of being counted.
    """
    if rate is not None and rate <= 0:
        raise ValueError("rate must be positive")
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=5,
        enable_idempotence=False,
        max_batch_size=256 * 1024,
        client_id="streamrec-replay",
    )
    topics = [items_topic, events_topic] if items_topic else [events_topic]
    produced: collections.Counter[str] = collections.Counter(dict.fromkeys(topics, 0))
    n_items = len(dataset.items) if items_topic else 0
    # disable=None: the bar shows on a terminal and stays out of logs and pipes.
    bar = tqdm(
        total=n_items + len(dataset.events),
        unit="msg",
        desc=f"replay {dataset.name}",
        disable=None if progress else True,
    )
    try:
        await producer.start()
        start = time.perf_counter()
        if items_topic:
            items = ((item.item_id, encode(item)) for item in dataset.items.values())
            await _produce(producer, items_topic, items, None, produced, bar)
        events_start = time.perf_counter()
        events = ((event.user_id, encode(event)) for event in dataset.events)
        await _produce(producer, events_topic, events, rate, produced, bar)
        end = time.perf_counter()
    finally:
        bar.close()
        await producer.stop()
    return {
        "items": produced[items_topic] if items_topic else 0,
        "events": produced[events_topic],
        "produced": dict(produced),
        "seconds": end - start,
        "events_per_s": len(dataset.events) / max(end - events_start, 1e-9),
    }


async def _produce(
    producer,
    topic: str,
    messages: Iterable[tuple[str, bytes]],
    rate: float | None,
    produced: collections.Counter[str],
    bar,
) -> None:
    """Send keyed messages, optionally paced to ``rate`` per second, and wait for every ack."""
    pending: collections.deque[asyncio.Future] = collections.deque()
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i, (key, value) in enumerate(messages):
        if rate is not None:
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        pending.append(await producer.send(topic, value, key=key.encode("utf-8")))
        if len(pending) >= MAX_PENDING:
            await pending.popleft()  # raises the delivery error, if any
            produced[topic] += 1
            bar.update(1)
    while pending:
        await pending.popleft()
        produced[topic] += 1
        bar.update(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="streamrec-replay",
        description="Produce a shared real data set to Kafka: items first (key item_id), then events in file "
        "order (key user_id), as contract JSON. Prints the data-quality table and the produced counts.",
    )
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument(
        "--data-dir", type=Path, help="shared data folder (default: $STREAMREC_DATA_DIR or ../shared/data)"
    )
    parser.add_argument("--limit", type=int, metavar="N", help="read only the first N data rows")
    parser.add_argument(
        "--rate", type=float, metavar="EVENTS_PER_S", help="throttle events (default: as fast as possible)"
    )
    parser.add_argument(
        "--bootstrap",
        default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"),
        metavar="HOST:PORT",
        help="Kafka bootstrap servers (default: $KAFKA_BOOTSTRAP_SERVERS)",
    )
    parser.add_argument("--events-topic", default="events")
    parser.add_argument("--items-topic", default="items")
    parser.add_argument("--no-items", action="store_true", help="produce only the events")
    args = parser.parse_args(argv)
    if not args.bootstrap:
        parser.error(
            "no Kafka address: set KAFKA_BOOTSTRAP_SERVERS or pass --bootstrap HOST:PORT "
            "(streamrec-stack starts a local broker and prints it)"
        )
    if args.rate is not None and args.rate <= 0:
        parser.error("--rate must be positive")

    started = time.perf_counter()
    try:
        dataset = load_dataset(args.dataset, args.data_dir, args.limit)
    except (OSError, ValueError) as exc:
        print(f"streamrec-replay: cannot load {args.dataset}: {exc}", file=sys.stderr)
        return 1
    load_s = time.perf_counter() - started
    print(
        f"loaded {args.dataset} in {load_s:.1f} s ({dataset.stats.rows / max(load_s, 1e-9):,.0f} rows/s)",
        file=sys.stderr,
    )

    items_topic = None if args.no_items else args.items_topic
    try:
        result = asyncio.run(replay(dataset, args.bootstrap, args.events_topic, items_topic, args.rate))
    except KafkaError as exc:
        print(f"streamrec-replay: Kafka at {args.bootstrap} failed: {exc!r}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(dataset.stats.table())
    print()
    for topic, count in result["produced"].items():
        print(f"produced {count:>10,}  to {topic}")
    print(f"in {result['seconds']:.1f} s ({result['events_per_s']:,.0f} events/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
