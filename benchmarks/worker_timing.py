"""Where a draining worker's batch time goes: per batch, the event loop's thread running, waiting
for a core (run-queue delay) and idle (waiting on the ranker, Redis, the broker or the GIL), from
the kernel's per-thread ``schedstat``; the ranker's calls (wall, thread CPU, run-queue delay); the
publication's wall time; and the garbage collector's pauses.

    python -m benchmarks.worker_timing --rows 60000 [--model-root var/models] [--env KEY=VALUE]

Starts the embedded stack, produces the online_retail catalog and events, and starts one worker
as ``python -m benchmarks.worker_timing`` with ``BENCH_TIMING_OUT`` set: in that process the
module wraps ``Pipeline.process``, ``OnnxRanker.score_padded`` and ``Publisher`` methods with
timers (nothing else changes), runs ``streamer.app.main()``, and writes its totals to that file
every 0.5 s. Works against any checkout (it wraps only names every version since step 4 has).
Short drains on a shared machine move by ±20 %: compare the per-batch shares, run alternately.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

OUT_ENV = "BENCH_TIMING_OUT"


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
        result = await process(self, msgs, store)
        acc["lists"] += len(result.recs)
        return result

    pipeline.Pipeline.process = timed_process
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
    args = ap.parse_args(argv)
    ds = load_dataset("online_retail", limit_rows=args.rows)
    tmp = Path(tempfile.mkdtemp(prefix="timing-"))
    out = tmp / "timing.json"
    WorkerProcess.module = "benchmarks.worker_timing"
    env = dict(kv.split("=", 1) for kv in args.env) | {OUT_ENV: str(out)}
    with LocalStack.from_env(partitions=4) as stack:
        t = br.topics_for(stack, "timing")
        asyncio.run(produce(stack.bootstrap, t["items"], br.item_messages(ds.items.values())))
        asyncio.run(produce(stack.bootstrap, t["events"], br.event_messages(ds)))
        w = br.run_worker(stack, args.model_root.resolve(), tmp, "timing", t, **env)
        try:
            drained = br.drain(w, len(ds.events))
        finally:
            w.stop()
    print({k: round(v, 3) if isinstance(v, float) else v for k, v in drained.items()})
    print(summary(json.loads(out.read_text())))


if __name__ == "__main__":
    if os.environ.get(OUT_ENV) and os.environ.get("STREAMREC_APP_ID"):  # the worker process
        if os.environ.get("BENCH_SWITCH_INTERVAL_S"):  # --env BENCH_SWITCH_INTERVAL_S=0.001: an A/B of the GIL's
            sys.setswitchinterval(float(os.environ["BENCH_SWITCH_INTERVAL_S"]))
        instrument(Path(os.environ[OUT_ENV]))
        from streamer import app

        sys.exit(app.main())
    main()
