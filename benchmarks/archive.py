"""Archiver throughput and read_log cost on a real replay: ``streamrec-stack -- python -m benchmarks.archive``.

1. ``streamrec-replay``'s code produces a data set (default online_retail, all rows) into the
   stack's topics (KAFKA_BOOTSTRAP_SERVERS, set by ``streamrec-stack``);
2. a ``streamrec-archive`` process (default flush settings) drains that backlog into a fresh
   archive folder: events/s from its start to the last event on disk, and per CPU second;
3. ``read_log`` in a child process, once from ``kafka://`` and once from the archive: wall time
   and peak RSS (``wait4``), and whether both give the same events.

Prints one table; ``--json PATH`` also writes the figures. No test asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

READ = """
import sys, time, hashlib
from exporters.logsource import read_log
t = time.perf_counter()
ds = read_log(sys.argv[1])
s = time.perf_counter() - t
h = hashlib.sha1("|".join(e.event_id for e in ds.events).encode()).hexdigest()
print(f"{s:.3f} {len(ds.events)} {len(ds.items)} {h} {sum(v for k, v in ds.stats.dropped.items() if k.startswith('invalid_'))}")
"""


def archived_rows(root: Path) -> int:
    return sum(pq.read_metadata(p).num_rows for p in (root / "events").glob("date=*/*.parquet"))


def run_child(argv: list[str], env: dict) -> tuple[str, float, float]:
    """stdout, wall seconds, peak RSS (MiB) of one child process."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{argv} failed with {proc.returncode}")
    return out, time.perf_counter() - started, usage.ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.archive", description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="online_retail")
    ap.add_argument("--limit", type=int, help="read only the first N rows of the data set")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep", action="store_true", help="keep the archive folder (printed) instead of deleting it")
    args = ap.parse_args(argv)
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        ap.error("KAFKA_BOOTSTRAP_SERVERS is not set: run under `streamrec-stack -- python -m benchmarks.archive`")

    from devtools.replay import replay
    from devtools.stack import ensure_topics, free_port
    from schemas.sources import load_dataset

    tag = f"bench{os.getpid()}"
    events_topic, items_topic = f"{tag}.events", f"{tag}.items"
    asyncio.run(ensure_topics(bootstrap, [events_topic, items_topic], int(os.environ.get("STREAMREC_PARTITIONS", "4"))))
    ds = load_dataset(args.dataset, limit_rows=args.limit)
    produced = asyncio.run(replay(ds, bootstrap, events_topic, items_topic))
    n = len(ds.events)

    root = Path(tempfile.mkdtemp(prefix="streamrec-archive-bench-"))
    env = dict(
        os.environ,
        STREAMREC_EVENTS_TOPIC=events_topic,
        STREAMREC_ITEMS_TOPIC=items_topic,
        STREAMREC_ARCHIVE_DIR=str(root),
        STREAMREC_APP_ID=tag,
        STREAMREC_METRICS_PORT=str(free_port()),
        STREAMREC_LOG_LEVEL="WARNING",
    )
    env.setdefault("REDIS_URL", "redis://unused:6379/0")
    env.setdefault("STREAMREC_ARCHIVE_FLUSH_S", "5")  # the drain time measures writing, not the 60 s timer
    started = time.perf_counter()
    archiver = subprocess.Popen([sys.executable, "-m", "streamer.archiver"], env=env)
    first = None
    while True:
        rows = archived_rows(root) if (root / "events").is_dir() else 0
        if rows and first is None:
            first = time.perf_counter()
        if rows >= n:
            break
        if archiver.poll() is not None:
            raise SystemExit(f"archiver exited with {archiver.returncode}")
        time.sleep(0.2)
    drained = time.perf_counter() - started
    archiver.terminate()
    _pid, _status, usage = os.wait4(archiver.pid, 0)
    cpu = usage.ru_utime + usage.ru_stime
    files = len(list((root / "events").glob("date=*/*.parquet")))
    size = sum(p.stat().st_size for p in root.rglob("*.parquet")) / 2**20

    read_env = dict(os.environ, STREAMREC_EVENTS_TOPIC=events_topic, STREAMREC_ITEMS_TOPIC=items_topic)
    reads = {}
    for name, source in (("kafka", f"kafka://{bootstrap}"), ("archive", str(root))):
        out, wall, rss = run_child([sys.executable, "-c", READ, source], read_env)
        seconds, events, items, digest, invalid = out.split()
        reads[name] = {
            "read_log_s": float(seconds),
            "process_s": wall,
            "peak_rss_mib": rss,
            "events": int(events),
            "items": int(items),
            "digest": digest,
            "invalid": int(invalid),
        }

    result = {
        "dataset": args.dataset,
        "events": n,
        "items": len(ds.items),
        "replay_events_per_s": produced["events_per_s"],
        "archiver": {
            "seconds_from_start": drained,
            "events_per_s": n / drained,
            "cpu_s": cpu,
            "events_per_cpu_s": n / cpu,
            "event_files": files,
            "archive_mib": size,
        },
        "read_log": reads,
        "same_events": reads["kafka"]["digest"] == reads["archive"]["digest"],
    }
    a = result["archiver"]
    print(f"\n{args.dataset}: {n:,} events, {len(ds.items):,} items")
    print(
        f"archiver: all events on disk {a['seconds_from_start']:.1f} s after its start (incl. group join): "
        f"{a['events_per_s']:,.0f} events/s; {a['cpu_s']:.1f} CPU s = {a['events_per_cpu_s']:,.0f} events/CPU s; "
        f"{files} event files, {size:.1f} MiB"
    )
    print("| source | read_log wall s | process wall s | peak RSS MiB | events | items |")
    print("|---|---|---|---|---|---|")
    for name, r in reads.items():
        print(
            f"| {name} | {r['read_log_s']:.1f} | {r['process_s']:.1f} | {r['peak_rss_mib']:.0f} | {r['events']:,} | {r['items']:,} |"
        )
    print(f"same events, same order: {result['same_events']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if args.keep:
        print(f"archive kept in {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if result["same_events"] else 1


if __name__ == "__main__":
    sys.exit(main())
