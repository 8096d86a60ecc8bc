"""In-process profile of the worker's hot path (``Pipeline.process``), no broker or Redis.

Replays real online_retail events through one ``Pipeline`` in micro-batches of
``STREAMREC_MAX_BATCH`` (dict state store, the real ONNX ranker of ``--model-root``), then
prints lists/s, events/s and the top cProfile entries by own time (``--sort tottime``) or
cumulative time. This is where ``make bench``'s drain figure is decided: the worker process is
CPU-bound here, Kafka and Redis I/O are small next to it.

    python -m benchmarks.profile_pipeline --rows 30000 --top 25

Works against any checkout of the worker (it only uses ``Pipeline``, ``Settings`` and
``ModelBundle``), so a before/after comparison runs the same script on both trees.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
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


def run(model_root: Path, rows: int, batch: int, profile: bool, top: int, sort: str, env: dict[str, str]) -> dict:
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
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--sort", default="tottime")
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE settings (repeatable)")
    args = ap.parse_args(argv)
    env = dict(kv.split("=", 1) for kv in args.env)
    run(args.model_root, args.rows, args.batch, not args.no_profile, args.top, args.sort, env)


if __name__ == "__main__":
    main()
