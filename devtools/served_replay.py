"""``python -m devtools.served_replay``: a period's events through a real worker on the embedded
stack; writes the lists the worker published.

Input: JSON-lines files of contract messages (``schemas.encode``): the catalog items (optional)
and the events, in time order. Output: one JSON line per user, the ``recommendations`` message
Redis holds for them once the worker has applied their last event (``event_id`` equal to it).

``--exact`` runs the worker on one partition with one-event micro-batches, so each list is
computed with exactly the events before it applied (global co-visitation and trending counts
included): that is what the offline evaluator assumes (``exporters.served``). Without it the
worker runs with its usual batching (faster; the lists may then see a few later events).

The retrain job's ``streamrec-retrain evaluate-served`` runs this as a subprocess and grades the
output: ``streamer`` and ``exporters`` meet only through files, ``schemas`` and Kafka.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import orjson

from schemas import ValidationError, decode_event, decode_recommendation

EXACT_ENV = {"STREAMREC_PARTITIONS": "1", "STREAMREC_MAX_BATCH": "1"}


def _lines(path: Path) -> list[bytes]:
    return [line for line in path.read_bytes().splitlines() if line.strip()]


async def _wait_for_lists(redis_url: str, prefix: str, last_event: dict[str, str], timeout: float) -> dict[str, bytes]:
    """Poll Redis until every user's list answers their last event (or ``timeout``)."""
    from redis.asyncio import Redis

    r = Redis.from_url(redis_url)
    users = list(last_event)
    out: dict[str, bytes] = {}
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            pending = [u for u in users if u not in out]
            if not pending:
                break
            for i in range(0, len(pending), 500):
                chunk = pending[i : i + 500]
                for u, raw in zip(chunk, await r.mget([prefix + u for u in chunk])):
                    if raw is not None and decode_recommendation(raw).event_id == last_event[u]:
                        out[u] = raw
            if len(out) < len(users):
                await asyncio.sleep(0.5)
    finally:
        await r.aclose()
    return out


def run(
    events_file: Path,
    model_root: Path,
    out_file: Path,
    *,
    items_file: Path | None = None,
    exact: bool = True,
    timeout: float = 600.0,
    ranker_variant: str = "auto",
    stack=None,
) -> dict:
    """Replay and collect; starts (and stops) an embedded stack unless ``stack`` is given.
    Returns {"events", "users", "lists", "seconds"}; a user without a list after ``timeout`` raises."""
    from devtools.local import WorkerProcess, produce
    from devtools.stack import LocalStack, ensure_topics

    events = _lines(events_file)
    items = _lines(items_file) if items_file else []
    last_event: dict[str, str] = {}
    keyed = []
    for raw in events:
        ev = decode_event(raw)  # a bad line fails here, with its reason
        last_event[ev.user_id] = ev.event_id
        keyed.append((ev.user_id.encode(), raw))
    own_stack = stack is None
    if own_stack:
        stack = LocalStack.from_env(partitions=1).start()
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="served-replay-"))
    tag = f"served{int(time.time() * 1000)}"
    topics = {k: f"{tag}.{k}" for k in ("events", "items", "recs", "dlq", "updates")}
    topics["prefix"] = f"{tag}:rec:"
    partitions = 1 if exact else 4
    worker = None
    try:
        asyncio.run(ensure_topics(stack.bootstrap, list(topics.values()), partitions=partitions))
        if items:
            asyncio.run(produce(stack.bootstrap, topics["items"], [(None, raw) for raw in items]))
        env = dict(EXACT_ENV) if exact else {}
        env.update(
            STREAMREC_PARTITIONS=str(partitions),
            STREAMREC_VARIANTS="ranker:1.0",
            STREAMREC_VARIANTS_POLL_S="0",
            STREAMREC_RANKER_VARIANT=ranker_variant,
        )
        worker = WorkerProcess(stack, model_root, tmp / "state", app_id=tag, topics=topics, **env).start()
        worker.wait_ready(120)
        asyncio.run(produce(stack.bootstrap, topics["events"], keyed))
        lists = asyncio.run(_wait_for_lists(stack.redis_url, topics["prefix"], last_event, timeout))
        missing = [u for u in last_event if u not in lists]
        if missing:
            raise RuntimeError(
                f"{len(missing)} of {len(last_event)} users have no list for their last event after "
                f"{timeout:.0f} s (e.g. {missing[:3]}); worker log tail:\n{worker.tail()}"
            )
        with open(out_file, "wb") as f:
            for u in last_event:
                f.write(lists[u] + b"\n")
    finally:
        if worker is not None:
            worker.stop()
        if own_stack:
            stack.stop()
    return {
        "events": len(events),
        "users": len(last_event),
        "lists": len(last_event),
        "seconds": time.perf_counter() - started,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m devtools.served_replay", description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=Path, required=True, help="JSON lines of events, in time order")
    p.add_argument("--items", type=Path, default=None, help="JSON lines of catalog items (produced first)")
    p.add_argument("--model-root", type=Path, required=True, help="model root whose LATEST version the worker serves")
    p.add_argument("--out", type=Path, required=True, help="JSON lines of the published lists, one per user")
    p.add_argument("--batched", action="store_true", help="the worker's usual batching instead of one-event batches")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the last lists")
    p.add_argument(
        "--ranker-variant",
        default="auto",
        choices=("auto", "fp32", "fp16", "int8"),
        help="STREAMREC_RANKER_VARIANT of the worker",
    )
    args = p.parse_args(argv)
    try:
        res = run(
            args.events,
            args.model_root,
            args.out,
            items_file=args.items,
            exact=not args.batched,
            timeout=args.timeout,
            ranker_variant=args.ranker_variant,
        )
    except (RuntimeError, OSError, ValueError, ValidationError) as exc:
        print(f"served_replay: {exc}", file=sys.stderr)
        return 1
    print(orjson.dumps(res).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
