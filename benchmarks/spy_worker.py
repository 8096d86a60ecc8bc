"""py-spy profile of a real worker process draining a backlog (embedded broker + Redis).

    python -m benchmarks.spy_worker --rows 60000 --out var/bench/worker.collapsed

Starts the embedded stack, produces the online_retail catalog and events, starts one worker,
records it with ``py-spy record --format raw`` (collapsed stacks, flamegraph input) for
``--seconds`` while it drains, and prints where the samples fall per thread and under the
event loop's main thread. ``py-spy`` is a dev dependency (pyproject.toml).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import benchmarks.run as br
from devtools.local import produce
from devtools.stack import LocalStack
from schemas.sources import load_dataset

# Where a worker's CPU goes, all threads: each sample counted once, in the first stage (in this
# order) that one of its frames belongs to. What the bare aiokafka loop also does (fetch, produce)
# is split from what only the worker does.
STAGES = (
    ("decode + validate (parse_event)", ("parse_event",)),
    (
        "state load/save (from_bytes, to_bytes, table)",
        ("UserState.from_bytes", "UserState.to_bytes", "FaustTableStore"),
    ),
    ("state update per event (Pipeline._apply)", ("Pipeline._apply",)),
    ("candidates + features (gather_batch)", ("gather_batch",)),
    ("ranker (onnxruntime and its inputs)", ("OnnxRanker.score_rows", "OnnxRanker.score_padded")),
    ("lists (build_list(s), control scores)", ("build_list", "build_lists", "Pipeline._rank_group")),
    ("Redis writes (Publisher, redis-py)", ("Publisher._write_redis", "Pipeline.execute", "AbstractConnection")),
    (
        "producer: lists + changelog (faust/aiokafka send path)",
        (
            "Publisher.publish",
            "Topic.publish_message",
            "Sender._send_produce_req",
            "Table",
            "ProducerBuffer",
            "Sender._sender_routine",
        ),
    ),
    (
        "fetch (consumer thread, fetch loop)",
        ("Fetcher._proc_fetch_request", "_drain_messages", "Fetcher._fetcher", "Consumer.getmany"),
    ),
    (
        "rest of the batch loop (Worker._process, _publish_and_ack, acks, metrics)",
        ("Worker._handle", "Worker._consume", "Worker._process", "Worker._publish_and_ack", "Worker._publish"),
    ),
    ("waiting in select (sampled as busy)", ("EpollSelector.select",)),
)


def stage_of(frames: list[str]) -> str:
    for label, keys in STAGES:
        if any(f == k or f.startswith(k + ".") for f in frames for k in keys):
            return label
    return "other (event loop, faust services, idle threads)"


def summarize(path: Path) -> str:
    threads, main, stages = Counter(), Counter(), Counter()
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        stack, n = line.rsplit(" ", 1)
        raw = stack.split(";")
        frames = [re.sub(r" \(.*", "", f) for f in raw]
        thread = re.sub(r"thread \(\w+\): ", "", raw[0])
        threads[thread] += int(n)
        stages[stage_of(frames)] += int(n)
        if thread == "MainThread":
            for key in (
                "Pipeline.process",
                "Pipeline._rank",
                "gather_batch",
                "build_list",
                "build_lists",
                "Pipeline._apply",
                "parse_event",
                "UserState.from_bytes",
                "UserState.to_bytes",
                "Publisher.publish",
                "Stream.take_events",
                "BatchSink.take",
                "_drain_messages",
                "Fetcher._proc_fetch_request",
                "Consumer._drain_messages",
                "Sender._send_produce_req",
                "RequestHandler._handle_request",
                "EpollSelector.select",
                "Worker._handle",
                "Worker._process",
                "Worker._publish_and_ack",
            ):
                if key in frames:
                    main[key] += int(n)
            main["(all)"] += int(n)
    total = sum(threads.values())
    out = ["| thread | samples | share |", "|---|---|---|"]
    out += [f"| {t} | {n} | {n / total:.0%} |" for t, n in threads.most_common()]
    out += ["", "| main thread, inside | samples | share of main |", "|---|---|---|"]
    out += [f"| {k} | {n} | {n / max(main['(all)'], 1):.0%} |" for k, n in main.most_common()]
    out += ["", "| stage (all threads, each sample once) | samples | share |", "|---|---|---|"]
    out += [f"| {k} | {n} | {n / max(total, 1):.0%} |" for k, n in stages.most_common()]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.spy_worker", description=__doc__.splitlines()[0])
    ap.add_argument("--model-root", type=Path, default=Path("var/models"))
    ap.add_argument("--rows", type=int, default=60_000)
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--out", type=Path, default=Path("var/bench/worker.collapsed"))
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for the worker (repeatable)")
    ap.add_argument("--idle", action="store_true", help="sample idle threads too (where the event loop waits)")
    ap.add_argument("--summarize", type=Path, help="only print the tables of an earlier recording")
    args = ap.parse_args(argv)
    if args.summarize:
        print(summarize(args.summarize))
        return
    spy_bin = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    ds = load_dataset("online_retail", limit_rows=args.rows)
    tmp = Path(tempfile.mkdtemp(prefix="spy-"))
    with LocalStack.from_env(partitions=4) as stack:
        t = br.topics_for(stack, "spy")
        asyncio.run(produce(stack.bootstrap, t["items"], br.item_messages(ds.items.values())))
        asyncio.run(produce(stack.bootstrap, t["events"], br.event_messages(ds)))
        w = br.run_worker(stack, args.model_root, tmp, "spy", t, **dict(kv.split("=", 1) for kv in args.env))
        try:
            spy = subprocess.Popen(
                [
                    spy_bin,
                    "record",
                    "-p",
                    str(w.proc.pid),
                    "-d",
                    str(args.seconds),
                    "-r",
                    "50",
                    "--format",
                    "raw",
                    "-o",
                    str(args.out),
                    "--nonblocking",
                    "--threads",
                ]
                + (["--idle"] if args.idle else [])
            )
            print(br.drain(w, len(ds.events)))
            spy.wait()
        finally:
            w.stop()
    print(summarize(args.out))


if __name__ == "__main__":
    main()
