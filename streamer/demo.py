"""``make demo``: the product's main job end to end on embedded defaults.

embedded stack (broker + Redis) → bootstrap model (real pretrained BERT, if none yet) → worker
process → replay of a slice of online_retail (catalog + events, paced) → summary table → three
users' recent items and lists → everything stopped, exit 0 (non-zero if any stage failed).
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
from pathlib import Path

import numpy as np
import orjson

from schemas.sources import load_dataset
from streamer.replay import replay
from streamer.stack import LocalStack, free_port


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
    ap.add_argument("--rows", type=int, default=30_000, help="online_retail rows to replay (from the start of the file)")
    ap.add_argument("--rate", type=float, default=500.0, help="events per second produced")
    ap.add_argument("--model-root", default=os.environ.get("STREAMREC_MODEL_ROOT", "var/models"))
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    model_root = Path(args.model_root)
    if not (model_root / "LATEST").exists():
        print(f"[demo] no model under {model_root}: building the bootstrap version from the pretrained BERT", flush=True)
        subprocess.run([sys.executable, "-m", "exporters.bootstrap", "--model-root", str(model_root),
                        "--dataset", "online_retail"], check=True)

    ds = load_dataset("online_retail", limit_rows=args.rows)
    print(f"[demo] online_retail first {args.rows} rows: {len(ds.events)} events, {len(ds.items)} items", flush=True)
    print(ds.stats.table(), flush=True)

    state_dir = Path(tempfile.mkdtemp(prefix="streamrec-demo-state-"))
    port = free_port()
    with LocalStack.from_env(partitions=4) as stack:
        print(f"[demo] broker {stack.bootstrap}  redis {stack.redis_url}", flush=True)
        env = dict(os.environ, **stack.client_env(), STREAMREC_MODEL_ROOT=str(model_root), STREAMREC_STATE_DIR=str(state_dir),
                   STREAMREC_METRICS_PORT=str(port), STREAMREC_APP_ID=f"demo-{os.getpid()}")
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
                seen = sum(_metric(m, "streamrec_events_total", outcome=o, topic="events")
                           for o in ("valid", "duplicate", "dead_letter", "erased"))
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


async def event_to_publish_latencies(bootstrap: str, events_topic: str = "events", recs_topic: str = "recommendations") -> np.ndarray:
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
        ("lists published", int(_metric(m, "streamrec_lists_published_total", variant="ranker")
                                + _metric(m, "streamrec_lists_published_total", variant="control"))),
        ("users with a list in Redis", len(lists)),
        ("event->Redis p50 (ms)", f"{np.percentile(lat, 50) * 1000:.1f}" if len(lat) else "n/a"),
        ("event->Redis p99 (ms)", f"{np.percentile(lat, 99) * 1000:.1f}" if len(lat) else "n/a"),
    ]
    for stage in ("ingest_state", "candidates_ranking", "publish"):
        n = _metric(m, "streamrec_stage_seconds_count", stage=stage)
        if n:
            rows.append((f"mean {stage} per batch (ms)", f"{_metric(m, 'streamrec_stage_seconds_sum', stage=stage) / n * 1000:.1f}"))
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
        print(f"   list (model {rec['model_version']}, variant {rec['variant']}):")
        for i, it in enumerate(rec["items"][:10], 1):
            print(f"   {i:>2}. {it['score']:+.3f}  {it['item_id']:<8} {(it.get('title') or '')[:36]:<36}  {it['reason']}")
