"""In-process profile of the worker's hot path (``Pipeline.process``), no broker or Redis.

Replays real online_retail events through one ``Pipeline`` in micro-batches of
``STREAMREC_MAX_BATCH`` (dict state store, the real ONNX ranker of ``--model-root``), then
prints lists/s, events/s and the top cProfile entries by own time (``--sort tottime``) or
cumulative time. This is where ``make bench``'s drain figure is decided: the worker process is
CPU-bound here, Kafka and Redis I/O are small next to it.

    python -m benchmarks.profile_pipeline --rows 30000 --top 25
    python -m benchmarks.profile_pipeline --rows 20000 --no-profile --timers --env STREAMREC_RANKING=false

``--timers`` wraps the stages' functions with wall-clock timers instead (``TIMED``): cProfile adds
its cost to every call and so inflates the functions that run per event several times over; a
timer adds ~0.3 us per call. A function a checkout does not have is shown as absent.

Works against any checkout of the worker (it only uses ``Pipeline``, ``Settings`` and
``ModelBundle``), so a before/after comparison runs the same script on both trees.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import importlib
import io
import os
import pstats
import time
from pathlib import Path

import orjson

from schemas import encode
from schemas.sources import load_dataset
from streamer.ingest import RawMessage
from streamer.model import ModelBundle, latest_version_dir
from streamer.pipeline import Pipeline
from streamer.settings import Settings


def payload(rec) -> bytes:
    """The wire bytes of one list, whichever form the pipeline hands the publisher."""
    p = getattr(rec, "payload", None)
    return p if isinstance(p, bytes) else encode(rec)


class DictStore:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def get(self, partition, user_id):
        return self.data.get(user_id)

    def put(self, partition, user_id, value):
        self.data[user_id] = value

    def delete(self, partition, user_id):
        self.data.pop(user_id, None)


def run(
    model_root: Path,
    rows: int,
    batch: int,
    profile: bool,
    top: int,
    sort: str,
    env: dict[str, str],
    timers: bool = False,
) -> dict:
    settings = Settings.from_env(
        {
            "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
            "REDIS_URL": "redis://127.0.0.1:1/0",
            "STREAMREC_MAX_BATCH": str(batch),
        }
        | env
    )
    bundle = ModelBundle.load(latest_version_dir(model_root), threads=settings.ort_threads)
    pipe = Pipeline(settings, bundle)
    ds = load_dataset("online_retail", limit_rows=rows)
    msgs = [
        RawMessage("events", 0, i, e.user_id.encode(), encode(e), int(time.time() * 1000))
        for i, e in enumerate(ds.events)
    ]
    store = DictStore()
    batches = [msgs[i : i + batch] for i in range(0, len(msgs), batch)]
    # warm-up: the first batch (sessions, caches) is not timed
    asyncio.run(pipe.process(batches[0], store))
    prof = cProfile.Profile() if profile else None
    acc = install_timers() if timers else None

    async def go() -> int:
        n = 0
        for b in batches[1:]:
            r = await pipe.process(b, store)
            n += len(r.recs)
            for rec in r.recs:  # the publisher's encoding is part of the hot path
                payload(rec)
        return n

    t0, c0 = time.perf_counter(), time.process_time()
    if prof:
        prof.enable()
    lists = asyncio.run(go())
    if prof:
        prof.disable()
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0  # CPU: all threads (the ranker's too)
    events = sum(len(b) for b in batches[1:])
    out = {
        "events": events,
        "lists": lists,
        "seconds": dt,
        "events_per_s": events / dt,
        "lists_per_s": lists / dt,
        "cpu_s": cpu,
        "lists_per_cpu_s": lists / cpu,
        "ranker_file": bundle.ranker_file,
        "ranker_threads": bundle.ranker.get_session_options().intra_op_num_threads,
        "max_seq_len": bundle.max_seq_len,
    }
    print(orjson.dumps(out).decode(), flush=True)
    if prof:
        st = pstats.Stats(prof)
        print(stage_table(st, dt, lists, events))
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats(sort).print_stats(top)
        print(s.getvalue())
    if acc is not None:
        print(timer_table(acc, events, lists))
    return out


# stage -> functions (name as cProfile reports it) whose cumulative time is the stage's
STAGES = (
    ("decode + validate events", ("parse_event",)),
    ("state update per event (Pipeline._apply)", ("_apply",)),
    ("state load/save (from_bytes, to_bytes)", ("from_bytes", "to_bytes")),
    ("candidates + features (gather / gather_batch)", ("gather", "gather_batch")),
    ("ranker (event loop waiting on onnxruntime)", ("<method 'poll' of 'select.epoll' objects>",)),
    ("lists + reasons (build_list / build_lists)", ("build_list", "build_lists")),
)


# (label, module, function or Class.method) timed by ``--timers``; nested rows are part of the row above
TIMED = (
    ("decode + validate events", "streamer.pipeline", "parse_event"),
    ("state update per event (Pipeline._apply)", "streamer.pipeline", "Pipeline._apply"),
    ("  of which UserState.apply", "streamer.state", "UserState.apply"),
    ("  of which co-visitation counts", "streamer.candidates", "CoVisitation.update"),
    ("  of which recent counts", "streamer.candidates", "RecentCounts.add"),
    ("embedding, once per user and batch", "streamer.state", "UserState.add_to_embedding"),
    ("state load (from_bytes)", "streamer.state", "UserState.from_bytes"),
    ("state save (to_bytes)", "streamer.state", "UserState.to_bytes"),
    ("candidates + features (gather_batch)", "streamer.pipeline", "gather_batch"),
    ("lists + reasons (build_lists)", "streamer.pipeline", "build_lists"),
    ("total (Pipeline.process)", "streamer.pipeline", "Pipeline.process"),
)


def install_timers() -> dict[str, list]:
    """Wrap every ``TIMED`` function in place; returns label -> [seconds, calls] (filled as it runs)."""
    acc: dict[str, list] = {}
    for label, module, name in TIMED:
        owner = importlib.import_module(module)
        *path, attr = name.split(".")
        for part in path:
            owner = getattr(owner, part)
        fn = owner.__dict__.get(attr) if isinstance(owner, type) else getattr(owner, attr, None)
        if fn is None:
            continue
        acc[label] = slot = [0.0, 0]
        if isinstance(fn, (classmethod, staticmethod)):
            setattr(owner, attr, type(fn)(_timed(fn.__func__, slot)))
        else:
            setattr(owner, attr, _timed(fn, slot))
    return acc


def _timed(fn, slot: list):
    if asyncio.iscoroutinefunction(fn):

        async def timed_async(*a, **kw):
            t = time.perf_counter()
            try:
                return await fn(*a, **kw)
            finally:
                slot[0] += time.perf_counter() - t
                slot[1] += 1

        return timed_async

    def timed(*a, **kw):
        t = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            slot[0] += time.perf_counter() - t
            slot[1] += 1

    return timed


def timer_table(acc: dict[str, list], events: int, lists: int) -> str:
    total = acc.get("total (Pipeline.process)", [0.0, 0])[0] or 1.0
    rows = [
        "| stage (wall-clock timers) | s | share | calls | us per event | us per list |",
        "|---|---|---|---|---|---|",
    ]
    for label, _module, _name in TIMED:
        if label not in acc:
            rows.append(f"| {label} | absent in this checkout | | | | |")
            continue
        t, n = acc[label]
        rows.append(
            f"| {label} | {t:.3f} | {t / total:.0%} | {n:,} | {1e6 * t / max(events, 1):.1f} | {1e6 * t / max(lists, 1):.0f} |"
        )
    return "\n".join(rows)


def stage_table(st: pstats.Stats, seconds: float, lists: int, events: int) -> str:
    """Where the time of ``Pipeline.process`` goes, per stage: seconds, share, ms per list."""
    rows = ["| stage | s | share | ms per list |", "|---|---|---|---|"]
    for label, names in STAGES:
        t = 0.0
        for (_file, _line, name), (_cc, _nc, tt, ct, _callers) in st.stats.items():
            if name in names and (_file.endswith((".py",)) or name.startswith("<")):
                t += tt if name.startswith("<") else ct
        rows.append(f"| {label} | {t:.2f} | {t / seconds:.0%} | {1000 * t / max(lists, 1):.2f} |")
    rows.append(
        f"| total (profiled, {events:,} events, {lists:,} lists) | {seconds:.2f} | 100% | {1000 * seconds / max(lists, 1):.2f} |"
    )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.profile_pipeline", description=__doc__.splitlines()[0])
    ap.add_argument("--model-root", type=Path, default=Path(os.environ.get("STREAMREC_MODEL_ROOT", "var/models")))
    ap.add_argument("--rows", type=int, default=30_000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--timers", action="store_true", help="per-stage wall-clock timers (use with --no-profile)")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--sort", default="tottime")
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE settings (repeatable)")
    args = ap.parse_args(argv)
    env = dict(kv.split("=", 1) for kv in args.env)
    run(args.model_root, args.rows, args.batch, not args.no_profile, args.top, args.sort, env, args.timers)


if __name__ == "__main__":
    main()
