"""Where a draining worker's batch time goes: per batch, the event loop's thread running, waiting
for a core (run-queue delay) and idle (waiting on the ranker, Redis, the broker or the GIL), from
the kernel's per-thread ``schedstat``; the ranker's calls (wall, thread CPU, run-queue delay); the
publication's wall time; and the garbage collector's pauses.

    python -m benchmarks.worker_timing --rows 60000 [--model-root var/models] [--env KEY=VALUE]

Starts the embedded stack, produces the online_retail catalog and events, and starts one worker
as ``python -m benchmarks.worker_timing`` with ``BENCH_TIMING_OUT`` set: in that process the
module wraps ``Pipeline.process``, ``OnnxRanker.score_padded`` and ``Publisher`` methods with
timers (nothing else changes), runs ``streamer.app.main()``, and writes its totals to that file
every 0.5 s and at exit. Works against any checkout (it wraps only names every version since step 5 has).
Short drains on a shared machine move by ±20 %: compare the per-batch shares, run alternately.

    python -m benchmarks.worker_timing --paced 2600 --seconds 20 [--model-root var/models]

produces the events at that rate while the worker runs instead of as a backlog, and adds where an
event's latency goes (``LATENCY_PARTS``: broker and fetch, the batch sink, ``Pipeline.process``,
the queue for publication, the publication), median and p99 per part from 0.5 ms histograms
counted in the worker (``faust_compat.BatchSink.put``, ``Worker._process``,
``Worker._publish_and_ack`` wrapped). The paced producer runs on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import gc
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

OUT_ENV = "BENCH_TIMING_OUT"
LATENCY_ENV = "BENCH_TIMING_LATENCY"  # set by --paced: count where each event's latency goes (~3 µs per event)


def _sched() -> tuple[float, float]:
    """(seconds on a core, seconds waiting for one) of the calling thread."""
    run, delay, _ = Path("/proc/thread-self/schedstat").read_text().split()
    return int(run) / 1e9, int(delay) / 1e9


def instrument(out: Path) -> None:
    """Wrap the hot path's stages of this (worker) process with timers."""
    from streamer import pipeline, publish, ranking

    acc: dict = defaultdict(float)
    first: list = []
    last_dump = [0.0]

    def dump() -> None:
        out.write_text(json.dumps(acc))

    atexit.register(dump)  # the last figures too, when the worker stops (SIGTERM: a clean exit)

    def timed(owner, name: str, key: str, on_thread: bool = False) -> None:
        original = getattr(owner, name)
        if on_thread:

            def sync(*a, **k):
                t0, (r0, d0) = time.perf_counter(), _sched()
                try:
                    return original(*a, **k)
                finally:
                    r1, d1 = _sched()
                    acc[key + "_wall"] += time.perf_counter() - t0
                    acc[key + "_cpu"] += r1 - r0
                    acc[key + "_delay"] += d1 - d0
                    acc[key + "_calls"] += 1

            setattr(owner, name, sync)
            return

        async def coro(*a, **k):
            t0 = time.perf_counter()
            try:
                return await original(*a, **k)
            finally:
                acc[key + "_wall"] += time.perf_counter() - t0

        setattr(owner, name, coro)

    process = pipeline.Pipeline.process

    async def timed_process(self, msgs, store):
        now, (run, delay) = time.perf_counter(), _sched()
        if not first:
            first.append((now, run, delay))
        t0, r0, d0 = first[0]
        acc["wall"], acc["main_run"], acc["main_delay"] = now - t0, run - r0, delay - d0
        acc["batches"] += 1
        acc["events"] += len(msgs)
        if now - last_dump[0] > 0.5:
            last_dump[0] = now
            dump()
        t1 = time.perf_counter()
        result = await process(self, msgs, store)
        acc["process_wall"] += time.perf_counter() - t1
        acc["lists"] += len(result.recs)
        return result

    pipeline.Pipeline.process = timed_process
    if os.environ.get(LATENCY_ENV):
        _instrument_latency(acc)
    timed(ranking.OnnxRanker, "score_padded", "ranker", on_thread=True)
    timed(publish.Publisher, "publish", "publish")
    timed(publish.Publisher, "_write_redis", "redis")
    started: list = []

    def on_gc(phase: str, info: dict) -> None:
        if not first:
            return
        if phase == "start":
            started[:] = [time.perf_counter()]
        elif started:
            acc[f"gc{info['generation']}_n"] += 1
            acc[f"gc{info['generation']}_s"] += time.perf_counter() - started[0]

    gc.callbacks.append(on_gc)


# an event's way through the worker, in the order it passes (``--paced``): per event, seconds
LATENCY_PARTS = (
    ("fetch", "Kafka timestamp -> handed to the batch sink (broker, fetch wait, consumer thread)"),
    ("sink", "in the sink until its batch is taken (batch window, the batch before still running)"),
    ("process", "its batch in Pipeline.process (state, candidates, ranker, lists)"),
    ("queued", "processed -> its publication starts (the previous batch's publication)"),
    ("publish", "its batch's publication (Redis round trip, then the lists to the producer)"),
)


BUCKET_S, BUCKETS = 0.0005, 8000  # histograms of 0.5 ms up to 4 s (cheap to count and to dump)


def _instrument_latency(acc: dict) -> None:
    """Per event, histograms of the seconds of each of ``LATENCY_PARTS`` and of their sum
    (``acc["latency"]``)."""
    from streamer import app, faust_compat

    arrived: dict = {}
    taken: dict = {}  # id(batch) -> (take time, process end)
    keys = [k for k, _ in LATENCY_PARTS] + ["total"]
    hist = acc.setdefault("latency", {k: [0] * BUCKETS for k in keys})
    put, process, publish_and_ack = faust_compat.BatchSink.put, app.Worker._process, app.Worker._publish_and_ack

    def timed_put(self, message) -> None:
        arrived[(message.topic, message.partition, message.offset)] = time.time()
        put(self, message)

    async def timed_process(self, batch):
        t0 = time.time()
        result = await process(self, batch)
        taken[id(batch)] = (t0, time.time())
        return result

    async def timed_publish_and_ack(self, batch, result) -> None:
        t2 = time.time()
        await publish_and_ack(self, batch, result)
        t3 = time.time()
        t0, t1 = taken.pop(id(batch), (t2, t2))
        for m in batch:
            a = arrived.pop((m.topic, m.partition, m.offset), t0)
            for key, v in zip(keys, (a - m.timestamp, t0 - a, t1 - t0, t2 - t1, t3 - t2, t3 - m.timestamp)):
                hist[key][min(max(int(v / BUCKET_S), 0), BUCKETS - 1)] += 1

    faust_compat.BatchSink.put = timed_put
    app.Worker._process = timed_process
    app.Worker._publish_and_ack = timed_publish_and_ack


def latency_summary(acc: dict) -> str:
    """Median and p99 of each part of an event's time in the worker (``--paced``), from the
    0.5 ms histograms."""
    import numpy as np

    def q(h, f: float) -> float:
        c = np.cumsum(h)
        return 1000 * BUCKET_S * (int(np.searchsorted(c, f * c[-1])) + 0.5)

    lat = acc.get("latency") or {}
    what = dict(LATENCY_PARTS) | {"total": "event timestamp -> its batch published (the sum)"}
    rows = [f"| {k} | {what[k]} | {q(h, 0.5):.1f} | {q(h, 0.99):.1f} |" for k, h in lat.items() if sum(h)]
    if not rows:
        return ""
    n = sum(lat["total"]) if "total" in lat else 0
    return "\n".join([f"{n:,} events", "| part (per event) | what | median ms | p99 ms |", "|---|---|---|---|"] + rows)


def summary(acc: dict) -> str:
    b = acc.get("batches") or float("nan")
    wall = acc.get("wall", 0.0)
    idle = wall - acc.get("main_run", 0.0) - acc.get("main_delay", 0.0)

    def ms(x: float) -> str:
        return f"{1000 * x / b:.1f}"

    gcs = sum(v for k, v in acc.items() if k.startswith("gc") and k.endswith("_s"))
    rows = [
        ("batches, lists per batch", f"{b:.0f}, {acc.get('lists', 0) / b:.1f}"),
        ("wall per batch, ms", ms(wall)),
        ("  of which in Pipeline.process (its waits on the ranker included)", ms(acc.get("process_wall", 0.0))),
        ("event loop thread: running", ms(acc.get("main_run", 0.0))),
        ("event loop thread: waiting for a core", ms(acc.get("main_delay", 0.0))),
        ("event loop thread: idle (ranker, Redis, broker, GIL)", f"{ms(idle)} ({idle / wall:.0%})" if wall else "-"),
        (
            "ranker call wall / CPU / waiting for a core",
            " / ".join(ms(acc.get(f"ranker_{k}", 0.0)) for k in ("wall", "cpu", "delay")),
        ),
        ("publication wall (Redis part)", f"{ms(acc.get('publish_wall', 0.0))} ({ms(acc.get('redis_wall', 0.0))})"),
        ("garbage collector pauses", ms(gcs)),
    ]
    return "\n".join(["| per batch | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows])


def main(argv: list[str] | None = None) -> None:
    import benchmarks.run as br
    from devtools.local import WorkerProcess, produce
    from devtools.stack import LocalStack
    from schemas.sources import load_dataset

    ap = argparse.ArgumentParser(prog="python -m benchmarks.worker_timing", description=__doc__.splitlines()[0])
    ap.add_argument("--model-root", type=Path, default=Path("var/models"))
    ap.add_argument("--rows", type=int, default=60_000)
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for the worker (repeatable)")
    ap.add_argument(
        "--paced",
        type=float,
        metavar="EVENTS_PER_S",
        help="produce the events at this rate while the worker runs (not a backlog first), for --seconds, "
        "and print where an event's latency goes",
    )
    ap.add_argument("--seconds", type=float, default=20.0, help="with --paced: how long to produce")
    args = ap.parse_args(argv)
    ds = load_dataset("online_retail", limit_rows=args.rows)
    events = br.event_messages(ds)
    if args.paced:
        events = events[: int(args.paced * args.seconds)]
    tmp = Path(tempfile.mkdtemp(prefix="timing-"))
    out = tmp / "timing.json"
    WorkerProcess.module = "benchmarks.worker_timing"
    env = dict(kv.split("=", 1) for kv in args.env) | {OUT_ENV: str(out)} | ({LATENCY_ENV: "1"} if args.paced else {})
    with LocalStack.from_env(partitions=4) as stack:
        t = br.topics_for(stack, "timing")
        asyncio.run(produce(stack.bootstrap, t["items"], br.item_messages(ds.items.values())))
        if not args.paced:
            asyncio.run(produce(stack.bootstrap, t["events"], events))
        w = br.run_worker(stack, args.model_root.resolve(), tmp, "timing", t, **env)
        try:
            if args.paced:
                asyncio.run(br._paced(stack.bootstrap, t["events"], events, args.paced))
            drained = br.drain(w, len(events))
        finally:
            w.stop()
    print({k: round(v, 3) if isinstance(v, float) else v for k, v in drained.items()})
    acc = json.loads(out.read_text())
    print(summary(acc))
    if args.paced:
        print(latency_summary(acc))


if __name__ == "__main__":
    if os.environ.get(OUT_ENV) and os.environ.get("STREAMREC_APP_ID"):  # the worker process
        if os.environ.get("BENCH_SWITCH_INTERVAL_S"):  # --env BENCH_SWITCH_INTERVAL_S=0.001: an A/B of the GIL's
            sys.setswitchinterval(float(os.environ["BENCH_SWITCH_INTERVAL_S"]))
        instrument(Path(os.environ[OUT_ENV]))
        from streamer import app

        sys.exit(app.main())
    main()
