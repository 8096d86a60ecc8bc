"""``make demo``: the product's main job end to end on embedded defaults.

embedded stack (broker + Redis) → bootstrap model (real pretrained BERT, if none yet) → worker
process → replay of a slice of online_retail (catalog + events, paced) → summary table → three
users' recent items and lists → everything stopped, exit 0 (non-zero if any stage failed).

``--loop`` (``make loop``): the learning loop. Embedded stack + worker + archiver; replay the
first months of online_retail (events before ``--retrain-at``), retrain from the archive
(``streamrec-retrain train --source <archive>``, the job's default settings unless
``--retrain-args`` says otherwise), the worker swaps to the new version, replay the next weeks
(``--next-days``); print the online report (attributed conversion, ``streamrec-report``) of each
period — the model that served it — next to the job's offline evaluation.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import orjson

from devtools.replay import replay
from devtools.stack import LocalStack, free_port
from schemas.sources import load_dataset


def _metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    prefix = f"{name}{{{want}}}" if labels else name
    total = 0.0
    for line in text.splitlines():
        if line.startswith(prefix + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read().decode()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="streamrec-demo", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--rows", type=int, default=30_000, help="online_retail rows to replay (from the start of the file)"
    )
    ap.add_argument("--rate", type=float, default=500.0, help="events per second produced")
    ap.add_argument("--model-root", default=os.environ.get("STREAMREC_MODEL_ROOT", "var/models"))
    ap.add_argument(
        "--loop", action="store_true", help="the learning loop: replay, archive, retrain, swap, replay (see above)"
    )
    ap.add_argument("--loop-dir", default="var/loop", help="(--loop) fresh model root and archive under this folder")
    ap.add_argument("--retrain-at", default="2011-06-01", help="(--loop) replay events before this date, then retrain")
    ap.add_argument("--next-days", type=float, default=21.0, help="(--loop) then replay this many days more")
    ap.add_argument("--loop-rate", type=float, default=3000.0, help="(--loop) events per second produced")
    ap.add_argument(
        "--retrain-args", default="", help="(--loop) extra streamrec-retrain train options, e.g. '--epochs 1'"
    )
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.loop:
        return loop(args)

    model_root = Path(args.model_root)
    if not (model_root / "LATEST").exists():
        print(
            f"[demo] no model under {model_root}: building the bootstrap version from the pretrained BERT", flush=True
        )
        subprocess.run(
            [
                sys.executable,
                "-m",
                "exporters.bootstrap",
                "--model-root",
                str(model_root),
                "--dataset",
                "online_retail",
            ],
            check=True,
        )

    ds = load_dataset("online_retail", limit_rows=args.rows)
    print(f"[demo] online_retail first {args.rows} rows: {len(ds.events)} events, {len(ds.items)} items", flush=True)
    print(ds.stats.table(), flush=True)

    state_dir = Path(tempfile.mkdtemp(prefix="streamrec-demo-state-"))
    port = free_port()
    with LocalStack.from_env(partitions=4) as stack:
        print(f"[demo] broker {stack.bootstrap}  redis {stack.redis_url}", flush=True)
        env = dict(
            os.environ,
            **stack.client_env(),
            STREAMREC_MODEL_ROOT=str(model_root),
            STREAMREC_STATE_DIR=str(state_dir),
            STREAMREC_METRICS_PORT=str(port),
            STREAMREC_APP_ID=f"demo-{os.getpid()}",
        )
        worker = subprocess.Popen([sys.executable, "-m", "streamer.app"], env=env, start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while True:
                if worker.poll() is not None:
                    raise SystemExit(f"[demo] worker exited with {worker.returncode}")
                try:
                    if _get(f"http://127.0.0.1:{port}/readyz") == "ready":
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("[demo] worker not ready after 120 s")
                time.sleep(0.3)
            print("[demo] worker ready; replaying", flush=True)
            sent = asyncio.run(replay(ds, stack.bootstrap, rate=args.rate))
            total = sent["events"]
            deadline = time.monotonic() + 300
            while True:
                m = _get(f"http://127.0.0.1:{port}/metrics")
                seen = sum(
                    _metric(m, "streamrec_events_total", outcome=o, topic="events")
                    for o in ("valid", "duplicate", "dead_letter", "erased")
                )
                if seen >= total or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            time.sleep(1.0)
            m = _get(f"http://127.0.0.1:{port}/metrics")
            report(stack, ds, sent, m)
        finally:
            worker.terminate()
            try:
                worker.wait(60)
            except subprocess.TimeoutExpired:
                worker.kill()
            shutil.rmtree(state_dir, ignore_errors=True)
    ok = worker.returncode in (0, -15)
    print(f"[demo] stopped everything (worker exit code {worker.returncode})", flush=True)
    return 0 if ok else 1


async def event_to_publish_latencies(
    bootstrap: str, events_topic: str = "events", recs_topic: str = "recommendations"
) -> np.ndarray:
    """Seconds from each triggering event's Kafka timestamp to its list's Kafka timestamp.

    The list is produced right after its Redis write, so this is event -> Redis (+ the producer
    call), measured from outside the worker by reading both topics back.
    """
    from aiokafka import AIOKafkaConsumer

    async def read(topic: str) -> list:
        c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False)
        await c.start()
        out, idle_since = [], time.monotonic()
        try:
            while time.monotonic() - idle_since < 2.0:
                batch = await c.getmany(timeout_ms=200, max_records=10000)
                for msgs in batch.values():
                    out.extend(msgs)
                    idle_since = time.monotonic()
        finally:
            await c.stop()
        return out

    events = await read(events_topic)
    ts = {}
    for m in events:
        try:
            ts[orjson.loads(m.value)["event_id"]] = m.timestamp
        except (orjson.JSONDecodeError, KeyError, TypeError):
            continue
    lat = []
    for m in await read(recs_topic):
        rec = orjson.loads(m.value)
        t0 = ts.get(rec["event_id"])
        if t0 is not None:
            lat.append((m.timestamp - t0) / 1000)
    return np.asarray(lat)


def report(stack: LocalStack, ds, sent: dict, metrics_text: str) -> None:
    import redis

    r = redis.Redis.from_url(stack.redis_url)
    lists = {}
    for key in r.scan_iter(match="rec:*", count=1000):
        lists[key.decode()[4:]] = orjson.loads(r.get(key))
    lat = asyncio.run(event_to_publish_latencies(stack.bootstrap))
    m = metrics_text
    rows = [
        ("events produced", sent["events"]),
        ("items produced", sent["items"]),
        ("events in (valid)", int(_metric(m, "streamrec_events_total", outcome="valid", topic="events"))),
        ("events in (duplicate)", int(_metric(m, "streamrec_events_total", outcome="duplicate", topic="events"))),
        ("dead letters", int(_metric(m, "streamrec_events_total", outcome="dead_letter", topic="events"))),
        (
            "lists published",
            int(
                _metric(m, "streamrec_lists_published_total", variant="ranker")
                + _metric(m, "streamrec_lists_published_total", variant="control")
            ),
        ),
        ("users with a list in Redis", len(lists)),
        ("event->Redis p50 (ms)", f"{np.percentile(lat, 50) * 1000:.1f}" if len(lat) else "n/a"),
        ("event->Redis p99 (ms)", f"{np.percentile(lat, 99) * 1000:.1f}" if len(lat) else "n/a"),
    ]
    for stage in ("ingest_state", "candidates_ranking", "publish"):
        n = _metric(m, "streamrec_stage_seconds_count", stage=stage)
        if n:
            rows.append(
                (
                    f"mean {stage} per batch (ms)",
                    f"{_metric(m, 'streamrec_stage_seconds_sum', stage=stage) / n * 1000:.1f}",
                )
            )
    width = max(len(k) for k, _ in rows)
    print("\n== demo summary ==")
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    titles = {i.item_id: i.title for i in ds.items.values()}
    history: dict[str, list] = {}
    for ev in ds.events:
        history.setdefault(ev.user_id, []).append(ev)
    shown = sorted((u for u in lists if u in history), key=lambda u: -len(history[u]))[:3]
    for u in shown:
        print(f"\n-- user {u}: {len(history[u])} events; most recent items:")
        for ev in history[u][-5:]:
            print(f"   {ev.type:<9} {ev.item_id:<8} {titles.get(ev.item_id) or ''}")
        rec = lists[u]
        seen = {ev.item_id for ev in history[u]}
        again = sum(it["item_id"] in seen for it in rec["items"])
        print(
            f"   list (model {rec['model_version']}, variant {rec['variant']}): {len(rec['items'])} items, "
            f"{again} bought before (again), {len(rec['items']) - again} new to this user (new):"
        )
        for i, it in enumerate(rec["items"], 1):
            tag = "again" if it["item_id"] in seen else "new"
            print(
                f"   {i:>2}. {it['score']:+.3f} {tag:<5} {it['item_id']:<8} {(it.get('title') or '')[:36]:<36}  "
                f"{it['reason']}"
            )


# ---------------------------------------------------------------------------------------------
# --loop: the learning loop


def _start(cmd: list[str], env: dict, log_path: Path) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen | None) -> int | None:
    if proc is None:
        return None
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def _wait_ready(proc: subprocess.Popen, port: int, name: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"[loop] {name} exited with {proc.returncode}")
        try:
            if _get(f"http://127.0.0.1:{port}/readyz") == "ready":
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"[loop] {name} not ready after {timeout:.0f} s")
        time.sleep(0.5)


def _wait_for(what: str, done, timeout: float) -> None:
    deadline, last = time.monotonic() + timeout, 0.0
    while not done():
        if time.monotonic() > deadline:
            raise SystemExit(f"[loop] timed out waiting for {what}")
        if time.monotonic() - last > 30:
            print(f"[loop] waiting for {what}", flush=True)
            last = time.monotonic()
        time.sleep(1.0)


def _archived_events(archive: Path) -> int:
    import pyarrow.parquet as pq

    from schemas.archive import EVENTS, list_files

    if not (archive / EVENTS).is_dir():
        return 0
    return sum(pq.ParquetFile(f.path).metadata.num_rows for f in list_files(archive, EVENTS))


def _metrics_of(proc: subprocess.Popen, port: int, name: str) -> str:
    """The process's /metrics; a process that died ends the demo with one line naming its log."""
    try:
        return _get(f"http://127.0.0.1:{port}/metrics")
    except OSError:
        if proc.poll() is not None:
            raise SystemExit(f"[loop] {name} exited with code {proc.returncode} (see its log)") from None
        return ""


def _worker_seen(worker: subprocess.Popen, port: int) -> float:
    m = _metrics_of(worker, port, "worker")
    return sum(
        _metric(m, "streamrec_events_total", outcome=o, topic="events")
        for o in ("valid", "duplicate", "dead_letter", "erased")
    )


def _delta(after: dict, before: dict) -> dict:
    return {v: {f: n - before.get(v, {}).get(f, 0) for f, n in c.items()} for v, c in after.items()}


def loop(args: argparse.Namespace) -> int:
    import dataclasses

    import redis

    from streamer.attribution import read_stats
    from streamer.report import render, summarize

    t_start = time.monotonic()
    base = Path(args.loop_dir)
    shutil.rmtree(base, ignore_errors=True)
    model_root, archive, state_dir = base / "models", base / "archive", base / "worker-state"
    base.mkdir(parents=True)
    print(f"[loop] building the bootstrap version under {model_root} (pretrained BERT)", flush=True)
    subprocess.run(
        [sys.executable, "-m", "exporters.bootstrap", "--model-root", str(model_root), "--dataset", "online_retail"],
        check=True,
    )

    ds = load_dataset("online_retail")
    cut = int(datetime.fromisoformat(args.retrain_at).replace(tzinfo=timezone.utc).timestamp() * 1000)
    end = cut + int(args.next_days * 86_400_000)
    first = dataclasses.replace(ds, events=[e for e in ds.events if e.ts < cut])
    then = dataclasses.replace(ds, events=[e for e in ds.events if cut <= e.ts < end])
    print(
        f"[loop] online_retail: {len(first.events):,} events before {args.retrain_at}, {len(then.events):,} in the "
        f"{args.next_days:g} days after; {len(ds.items):,} items",
        flush=True,
    )

    worker = archiver = None
    wport, aport = free_port(), free_port()
    with LocalStack.from_env(partitions=4) as stack:
        print(f"[loop] broker {stack.bootstrap}  redis {stack.redis_url}", flush=True)
        env = dict(
            os.environ,
            **stack.client_env(),
            STREAMREC_MODEL_ROOT=str(model_root),
            STREAMREC_STATE_DIR=str(state_dir),
            STREAMREC_APP_ID=f"loop-{os.getpid()}",
            STREAMREC_ARCHIVE_DIR=str(archive),
            STREAMREC_ARCHIVE_FLUSH_S="2",
        )
        try:
            worker = _start(
                [sys.executable, "-m", "streamer.app"],
                dict(env, STREAMREC_METRICS_PORT=str(wport)),
                base / "worker.log",
            )
            archiver = _start(
                [sys.executable, "-m", "streamer.archiver"],
                dict(env, STREAMREC_METRICS_PORT=str(aport)),
                base / "archiver.log",
            )
            _wait_ready(worker, wport, "worker")
            _wait_ready(archiver, aport, "archiver")
            r = redis.Redis.from_url(stack.redis_url)
            prefix = env.get("STREAMREC_REDIS_META_PREFIX", "streamrec:")

            print(
                f"[loop] 1/4 replaying the first months ({len(first.events):,} events) to the worker and the archiver",
                flush=True,
            )
            sent = asyncio.run(replay(first, stack.bootstrap, rate=args.loop_rate, progress=False))
            _wait_for(
                "the worker and the archive to hold every event",
                lambda: _worker_seen(worker, wport) >= sent["events"] and _archived_events(archive) >= sent["events"],
                1800,
            )
            before = read_stats(r, prefix)

            print("[loop] 2/4 retraining from the archive (streamrec-retrain train --source ...)", flush=True)
            cmd = [
                sys.executable,
                "-m",
                "exporters.cli",
                "train",
                "--source",
                str(archive),
                "--model-root",
                str(model_root),
                "--kafka",
                stack.bootstrap,
                *args.retrain_args.split(),
            ]
            print("[loop]   " + " ".join(cmd[1:]), flush=True)
            t0 = time.monotonic()
            job = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
            print(job.stdout, flush=True)
            print(f"[loop]   retrain exit {job.returncode} after {time.monotonic() - t0:.0f} s", flush=True)
            latest = (model_root / "LATEST").read_text().strip()
            if job.returncode == 0 and "bootstrap" not in latest:
                _wait_for(
                    f"the worker to swap to {latest}",
                    lambda: _metric(_metrics_of(worker, wport, "worker"), "streamrec_model_swaps_total") >= 1,
                    300,
                )
                print(f"[loop] 3/4 the worker now serves {latest}", flush=True)
            else:
                print(
                    f"[loop] 3/4 no new version published (LATEST is {latest}): the worker keeps the bootstrap model",
                    flush=True,
                )

            print(f"[loop] 4/4 replaying the next {args.next_days:g} days ({len(then.events):,} events)", flush=True)
            seen = _worker_seen(worker, wport)
            sent2 = asyncio.run(replay(then, stack.bootstrap, items_topic=None, rate=args.loop_rate, progress=False))
            _wait_for(
                "the worker to read every event", lambda: _worker_seen(worker, wport) >= seen + sent2["events"], 1800
            )
            time.sleep(2.0)
            after = read_stats(r, prefix)
            print(f"\n== online report, first months (model: the bootstrap version) ==\n{render(summarize(before))}")
            print(
                f"\n== online report, the next {args.next_days:g} days (model: {latest}; counts of this period only, "
                f"'users' = users new to the counters) ==\n{render(summarize(_delta(after, before)))}"
            )
            report_md = model_root / latest / "report.md"
            if report_md.is_file():
                print(f"\n== offline evaluation of {latest} ({report_md}) ==\n{report_md.read_text()}")
        finally:
            codes = {"worker": _stop(worker), "archiver": _stop(archiver)}
        print(f"[loop] logs: {base}/worker.log, {base}/archiver.log", flush=True)
    print(f"[loop] stopped everything ({codes}); {time.monotonic() - t_start:.0f} s in all", flush=True)
    return 0 if all(c in (0, -15, None) for c in codes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
