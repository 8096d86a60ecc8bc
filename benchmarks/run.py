"""Benchmarks on real data through the embedded broker, printed as tables (``make bench``).

Sections (``--only`` picks some):

* ``ingest``  — bare aiokafka consume→produce loop vs the worker with ranking disabled
                (validation + state + candidates + publish), same broker, same events, same run;
* ``e2e``     — the worker with the ranker: drain capacity (events/s, lists/s), then paced runs at
                25/50/90 % of it with event→Redis latency percentiles;
* ``drain``   — only that drain (short: for interleaved A/B runs of two checkouts);
* ``onnx``    — the same ranker in ONNX Runtime (fp32, int8) vs PyTorch eager, per batch size;
* ``scale``   — 1 vs 2 worker processes in one consumer group draining the same events;
* ``memory``  — worker RSS with 100k users and 100k items in state.

Nothing here asserts a time: the numbers go to the terminal and to ``var/bench/results.json``;
BENCHMARKS.md quotes them with the machine they came from.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

from devtools.demo import event_to_publish_latencies
from devtools.local import WorkerProcess, produce
from devtools.stack import LocalStack, ensure_topics
from schemas import Item, encode
from schemas.sources import load_dataset

RESULTS = Path("var/bench/results.json")


def table(title: str, header: list[str], rows: list[list]) -> str:
    cells = [header] + [[f"{c:,.1f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [
        f"\n## {title}",
        "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells[1:]]
    return "\n".join(lines)


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def topics_for(stack: LocalStack, prefix: str) -> dict[str, str]:
    names = {k: f"{prefix}.{k}" for k in ("events", "items", "recs", "dlq", "updates")}
    asyncio.run(ensure_topics(stack.bootstrap, list(names.values()), partitions=4))
    names["prefix"] = f"{prefix}:rec:"
    return names


def event_messages(ds) -> list[tuple[bytes, bytes]]:
    return [(e.user_id.encode(), encode(e)) for e in ds.events]


def item_messages(items) -> list[tuple[bytes, bytes]]:
    return [(i.item_id.encode(), encode(i)) for i in items]


# ---- ingest: bare loop vs worker without ranking ------------------------------------------------
BARE_CPU: dict[str, float] = {}  # CPU seconds of the last bare loop (this process)


async def bare_loop(bootstrap: str, src: str, dst: str, n: int) -> float:
    """Consume ``n`` messages and produce each to ``dst``: the ceiling a Kafka-bound worker can reach."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    c = AIOKafkaConsumer(
        src,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        group_id=f"bare-{src}",
        fetch_max_wait_ms=10,
        enable_auto_commit=True,
        session_timeout_ms=10000,
        heartbeat_interval_ms=1000,
    )
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await c.start()
    await p.start()
    seen, t0 = 0, None
    try:
        while seen < n:
            batch = await c.getmany(timeout_ms=100, max_records=1000)
            for msgs in batch.values():
                if t0 is None:
                    t0, BARE_CPU["t0"] = time.perf_counter(), time.process_time()
                for m in msgs:
                    await p.send(dst, m.value, key=m.key)
                seen += sum(1 for _ in msgs)
        await p.flush()
        BARE_CPU["cpu_s"] = time.process_time() - BARE_CPU["t0"]
        return n / (time.perf_counter() - t0)
    finally:
        await p.stop()
        await c.stop()


def drain(worker: WorkerProcess, n: int, timeout: float = 900) -> dict:
    """Poll the worker's metrics until it has consumed ``n`` events; rate over the busy period."""
    t0 = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = worker.metrics()
        seen = sum(
            metric(m, "streamrec_events_total", topic="events", outcome=o)
            for o in ("valid", "duplicate", "dead_letter")
        )
        now = time.perf_counter()
        if seen and t0 is None:
            t0, seen0, cpu0 = now, seen, cpu_s(worker.proc.pid)
        if seen >= n:
            lists = metric(m, "streamrec_lists_published_total")
            busy = now - t0
            cpu = cpu_s(worker.proc.pid) - cpu0
            return {
                "events": n,
                "seconds": busy,
                "events_per_s": (n - seen0) / busy if busy else float("nan"),
                "lists": lists,
                "lists_per_s": lists / busy if busy else float("nan"),
                "rss_mb": rss_mb(worker.proc.pid),
                "cpu_s": cpu,
                "cores": cpu / busy if busy else float("nan"),
                "lists_per_cpu_s": lists / cpu if cpu else float("nan"),
            }
        time.sleep(0.2)  # each poll costs the worker a /metrics render (4 % of its main thread at 20 Hz, py-spy)
    raise RuntimeError(f"worker did not drain {n} events in {timeout} s:\n{worker.tail()}")


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) the process used so far. On a machine shared with
    other jobs a worker gets a varying share of the cores: lists per CPU-second is the figure
    that does not depend on that share."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_worker(stack, model_root, tmp: Path, name: str, topics, **env) -> WorkerProcess:
    w = WorkerProcess(stack, model_root, tmp / name, app_id=name, topics=topics, **(WORKER_ENV | env)).start()
    w.wait_ready(timeout=180)
    return w


# (label, worker env) of the ingest runs; the embedded stack's own settings apply unless overridden
# (fetch wait 10 ms, lost-log watchdog every 2 s: ``LocalStack.client_env``; the producer batches
# records, 16 KiB per partition, as in production). The last row measures the embedded broker's
# former workaround, one record per producer batch, which production no longer pays for.
INGEST_RUNS = (
    ("worker, ranking off (stack defaults)", {"STREAMREC_RANKING": "false"}),
    ("worker, ranking off, lost-log watchdog off", {"STREAMREC_RANKING": "false", "STREAMREC_LOST_LOG_CHECK_S": "0"}),
    (
        "worker, ranking off, one record per producer batch",
        {"STREAMREC_RANKING": "false", "STREAMREC_PRODUCER_MAX_BATCH_BYTES": "1"},
    ),
)
WORKER_ENV: dict[str, str] = {}  # --env: applied to every worker of the run


def bench_ingest(stack, model_root, tmp, ds, results) -> None:
    n = len(ds.events)
    ev = event_messages(ds)
    rows = []
    t = topics_for(stack, "bare")
    asyncio.run(produce(stack.bootstrap, t["events"], ev))
    bare = asyncio.run(bare_loop(stack.bootstrap, t["events"], t["recs"], n))
    rows.append(["bare aiokafka consume→produce", n, bare, "1.00", "", f"{n / BARE_CPU['cpu_s']:,.0f}"])
    for label, env in INGEST_RUNS:
        t = topics_for(stack, f"ingest{len(rows)}")
        asyncio.run(produce(stack.bootstrap, t["items"], item_messages(ds.items.values())))
        asyncio.run(produce(stack.bootstrap, t["events"], ev))
        name = f"ingest{len(rows)}"
        w = run_worker(stack, model_root, tmp, name, t, **env)
        try:
            r = drain(w, n)
        finally:
            w.stop()
        rows.append(
            [
                label,
                n,
                r["events_per_s"],
                f"{r['events_per_s'] / bare:.2f}",
                f"{r['cores']:.2f}",
                f"{(n - 0) / r['cpu_s'] if r['cpu_s'] else float('nan'):,.0f}",
            ]
        )
        results.setdefault("ingest", {"bare_events_per_s": bare})[label] = dict(r, ratio=r["events_per_s"] / bare)
    print(
        table(
            f"ingest path vs bare aiokafka loop ({n:,} online_retail events, 4 partitions, one run)",
            ["pipeline", "events", "events/s", "ratio to bare", "worker cores used", "events per CPU-s"],
            rows,
        ),
        flush=True,
    )


def bench_e2e(stack, model_root, tmp, ds, results, seconds: float) -> None:
    n = len(ds.events)
    cap = drain_backlog(stack, model_root, tmp, ds, "e2e")
    rows = [
        [
            "drain (backlog)",
            "max",
            f"{cap['events_per_s']:,.0f}",
            f"{cap['lists_per_s']:,.0f}",
            "",
            "",
            "",
            f"{cap['cores']:.2f}",
            f"{cap['lists_per_cpu_s']:,.0f}",
        ]
    ]
    results["e2e"] = {"capacity": cap, "paced": []}
    for frac in (0.25, 0.5, 0.9):
        rate = cap["events_per_s"] * frac
        k = min(n, int(rate * seconds))
        sub = ds.events[:k]
        t = topics_for(stack, f"paced{int(frac * 100)}")
        asyncio.run(produce(stack.bootstrap, t["items"], item_messages(ds.items.values())))
        w = run_worker(stack, model_root, tmp, f"paced{int(frac * 100)}", t)
        try:
            t0 = time.perf_counter()
            asyncio.run(_paced(stack.bootstrap, t["events"], [(e.user_id.encode(), encode(e)) for e in sub], rate))
            r = drain(w, k, timeout=120)
            elapsed = time.perf_counter() - t0
            lat = asyncio.run(event_to_publish_latencies(stack.bootstrap, t["events"], t["recs"])) * 1000
        finally:
            w.stop()
        p50, p95, p99 = (np.percentile(lat, q) for q in (50, 95, 99))
        rows.append(
            [
                f"paced {int(frac * 100)}%",
                f"{rate:,.0f}",
                f"{k / elapsed:,.0f}",
                f"{r['lists'] / elapsed:,.0f}",
                f"{p50:.0f}",
                f"{p95:.0f}",
                f"{p99:.0f}",
                "",
                "",
            ]
        )
        results["e2e"]["paced"].append(
            {
                "fraction": frac,
                "rate": rate,
                "events": k,
                "lists": r["lists"],
                "p50_ms": p50,
                "p95_ms": p95,
                "p99_ms": p99,
            }
        )
    print(
        table(
            "end to end with the ranker (event → Redis latency from Kafka timestamps)",
            [
                "run",
                "offered ev/s",
                "events/s",
                "lists/s",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "worker cores used",
                "lists per CPU-s",
            ],
            rows,
        ),
        flush=True,
    )


def drain_backlog(stack, model_root, tmp, ds, name: str) -> dict:
    """The catalog and every event produced first, then one worker with the ranker drains them."""
    t = topics_for(stack, name)
    asyncio.run(produce(stack.bootstrap, t["items"], item_messages(ds.items.values())))
    asyncio.run(produce(stack.bootstrap, t["events"], event_messages(ds)))
    w = run_worker(stack, model_root, tmp, name, t)
    try:
        return drain(w, len(ds.events))
    finally:
        w.stop()


def bench_drain(stack, model_root, tmp, ds, results) -> None:
    """Only the drain of ``bench_e2e`` (no paced runs): short enough to interleave A/B runs of two
    checkouts (``--only drain`` in each, alternately)."""
    n = len(ds.events)
    cap = results["drain"] = drain_backlog(stack, model_root, tmp, ds, "drain")
    print(
        table(
            "drain with the ranker (backlog)",
            ["events", "events/s", "lists/s", "worker cores used", "lists per CPU-s"],
            [
                [
                    n,
                    f"{cap['events_per_s']:,.0f}",
                    f"{cap['lists_per_s']:,.0f}",
                    f"{cap['cores']:.2f}",
                    f"{cap['lists_per_cpu_s']:,.0f}",
                ]
            ],
        ),
        flush=True,
    )


async def _paced(bootstrap: str, topic: str, msgs, rate: float) -> None:
    from aiokafka import AIOKafkaProducer

    p = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=1)
    await p.start()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    try:
        for i, (k, v) in enumerate(msgs):
            delay = t0 + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await p.send(topic, v, key=k)
        await p.flush()
    finally:
        await p.stop()


# ---- scale-out: 1 vs 2 worker processes in one group ------------------------------------------
def bench_scale(stack, model_root, tmp, ds, results) -> None:
    n = len(ds.events)
    rows, res = [], []
    for workers in (1, 2):
        name = f"scale{workers}"
        t = topics_for(stack, name)
        asyncio.run(produce(stack.bootstrap, t["items"], item_messages(ds.items.values())))
        procs = [
            WorkerProcess(stack, model_root, tmp / f"{name}-{i}", app_id=name, topics=t, **WORKER_ENV).start()
            for i in range(workers)
        ]
        try:
            for w in procs:
                w.wait_ready(timeout=180)
            time.sleep(12)  # let the group settle (a join takes about half the session timeout)
            # the backlog arrives once the group is stable: produced before, it was drained during
            # the settling sleep by a worker that is now fast enough (nothing left to time)
            asyncio.run(produce(stack.bootstrap, t["events"], event_messages(ds)))
            t0, first = None, 0.0
            while True:
                seen = sum(
                    sum(
                        metric(w.metrics(), "streamrec_events_total", topic="events", outcome=o)
                        for o in ("valid", "duplicate", "dead_letter")
                    )
                    for w in procs
                )
                now = time.perf_counter()
                if t0 is None and seen:
                    t0, first = now, seen
                if seen >= n:
                    break
                time.sleep(0.05)
            lists = sum(metric(w.metrics(), "streamrec_lists_published_total") for w in procs)
            busy = now - t0
            share = [
                int(
                    sum(
                        metric(w.metrics(), "streamrec_events_total", topic="events", outcome=o)
                        for o in ("valid", "duplicate")
                    )
                )
                for w in procs
            ]
        finally:
            for w in procs:
                w.stop()
        rate = (n - first) / busy if busy else float("nan")
        rows.append([workers, n, f"{rate:,.0f}", f"{lists / busy:,.0f}", "/".join(map(str, share))])
        res.append({"workers": workers, "events_per_s": rate, "lists_per_s": lists / busy, "events_per_worker": share})
    print(
        table(
            "scale-out on this machine: worker processes in one consumer group (ranker on)",
            ["workers", "events", "events/s", "lists/s", "events per worker"],
            rows,
        ),
        flush=True,
    )
    results["scale"] = res


# ---- ONNX Runtime vs PyTorch eager --------------------------------------------------------------
def bench_onnx(results, seq_len: int, cands: int) -> None:
    import torch

    from exporters.bootstrap import build_models
    from exporters.export import export_models

    out = Path(tempfile.mkdtemp(prefix="bench-onnx-"))
    tok, encoder, ranker = build_models(tiny=False, n_layers=2, max_text_len=32)
    export_models(encoder, ranker, tok, out, max_seq_len=seq_len, item_vecs=None)
    tok.save(str(out / "tokenizer.json"))
    import onnxruntime as ort

    from streamer.model import auto_threads

    threads = auto_threads()
    sessions = {}
    for name in ("ranker.onnx", "ranker.int8.onnx"):
        if (out / name).exists():
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads  # as the worker runs it (STREAMREC_ORT_THREADS=0)
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            sessions[name] = ort.InferenceSession(str(out / name), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    rows, res = [], []
    torch.set_num_threads(threads)
    for b in (1, 16, 64, 256):
        feeds = {
            "seq_vecs": rng.standard_normal((b, seq_len, 384)).astype(np.float32),
            "seq_types": np.full((b, seq_len), 5, np.int64),
            "seq_mask": np.ones((b, seq_len), np.int64),
            "cand_vecs": rng.standard_normal((b, cands, 384)).astype(np.float32),
            "cand_feats": rng.standard_normal((b, cands, 5)).astype(np.float32),
        }
        tt = {k: torch.from_numpy(v) for k, v in feeds.items()}

        def torch_run():
            with torch.inference_mode():
                ranker(tt["seq_vecs"], tt["seq_types"], tt["seq_mask"], tt["cand_vecs"], tt["cand_feats"])

        t_torch = _time(torch_run)
        row = [b, f"{b / t_torch:,.0f}"]
        r = {"batch": b, "torch_users_per_s": b / t_torch}
        for name, sess in sessions.items():
            t_ort = _time(lambda: sess.run(["scores"], feeds))
            row += [f"{b / t_ort:,.0f}", f"{t_torch / t_ort:.2f}x"]
            r[name] = {"users_per_s": b / t_ort, "speedup": t_torch / t_ort}
        rows.append(row)
        res.append(r)
    header = ["batch", "torch eager users/s"]
    for name in sessions:
        header += [f"{name} users/s", "vs torch"]
    print(
        table(
            f"ranker: ONNX Runtime vs PyTorch eager (CPU, {threads} thread(s) each, L={seq_len}, C={cands}, 2 BERT layers)",
            header,
            rows,
        ),
        flush=True,
    )
    results["onnx"] = {"seq_len": seq_len, "candidates": cands, "rows": res}
    if "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available():
        bench_gpu(results, out, ranker, seq_len, cands)
    else:
        print("\n## GPU: no CUDA provider / device on this machine: GPU table not measured", flush=True)


def bench_gpu(results, model_dir: Path, ranker, seq_len: int, cands: int) -> None:
    """The worker's GPU path (``ranker.fp16.onnx`` on the CUDA provider, inputs copied from host
    memory through I/O binding as ``ModelBundle.score_bound`` does, scores copied back) against
    the same ranker in PyTorch eager on the same GPU (fp32, inputs copied per call too): users
    re-ranked per second and per-call latency percentiles, per batch of users."""
    import onnxruntime as ort
    import torch

    from streamer.model import ModelBundle

    name = "ranker.fp16.onnx" if (model_dir / "ranker.fp16.onnx").exists() else "ranker.onnx"
    sess = ort.InferenceSession(str(model_dir / name), providers=["CUDAExecutionProvider"])
    scorer = ModelBundle.__new__(ModelBundle)  # only score_bound's use of .ranker
    scorer.ranker = sess
    dev = torch.device("cuda")
    model = ranker.to(dev).eval()
    rng = np.random.default_rng(0)
    rows, res = [], []
    for b in (64, 256, 1024):
        feeds = {
            "seq_vecs": rng.standard_normal((b, seq_len, 384)).astype(np.float32),
            "seq_types": np.full((b, seq_len), 5, np.int64),
            "seq_mask": np.ones((b, seq_len), np.int64),
            "cand_vecs": rng.standard_normal((b, cands, 384)).astype(np.float32),
            "cand_feats": rng.standard_normal((b, cands, 5)).astype(np.float32),
        }

        def ort_run():
            scorer.score_bound(feeds)

        def torch_run():
            with torch.inference_mode():
                t = {k: torch.from_numpy(v).to(dev) for k, v in feeds.items()}
                model(t["seq_vecs"], t["seq_types"], t["seq_mask"], t["cand_vecs"], t["cand_feats"]).cpu()

        r = {"batch": b}
        for label, fn in (("onnx_fp16_cuda", ort_run), ("torch_eager_cuda", torch_run)):
            for _ in range(5):
                fn()
            lat = []
            t_end = time.perf_counter() + 3.0
            while time.perf_counter() < t_end:
                t0 = time.perf_counter()
                fn()
                lat.append(time.perf_counter() - t0)
            lat = np.asarray(lat)
            r[label] = {
                "users_per_s": b / lat.mean(),
                "p50_ms": 1000 * np.percentile(lat, 50),
                "p99_ms": 1000 * np.percentile(lat, 99),
            }
        speed = r["onnx_fp16_cuda"]["users_per_s"] / r["torch_eager_cuda"]["users_per_s"]
        rows.append(
            [
                b,
                f"{r['onnx_fp16_cuda']['users_per_s']:,.0f}",
                f"{r['onnx_fp16_cuda']['p99_ms']:.1f}",
                f"{r['torch_eager_cuda']['users_per_s']:,.0f}",
                f"{r['torch_eager_cuda']['p99_ms']:.1f}",
                f"{speed:.1f}x",
            ]
        )
        res.append(r | {"speedup": speed})
    gpu = torch.cuda.get_device_name(0)
    print(
        table(
            f"ranker on GPU ({gpu}): ONNX Runtime CUDA fp16 + I/O binding vs PyTorch eager (L={seq_len}, C={cands})",
            ["batch", "ORT users/s", "ORT p99 ms", "torch users/s", "torch p99 ms", "ORT vs torch"],
            rows,
        ),
        flush=True,
    )
    results["gpu"] = {"device": gpu, "file": name, "rows": res}


def _time(fn, min_s: float = 1.5) -> float:
    fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_s:
        fn()
        n += 1
    return (time.perf_counter() - t0) / n


# ---- memory ------------------------------------------------------------------------------------
def bench_memory(stack, model_root, tmp, results, users: int, items: int) -> None:
    t = topics_for(stack, "memory")
    rng = np.random.default_rng(1)
    catalog = [Item(item_id=f"sku{i}", category=f"c{i % 500}") for i in range(items)]
    asyncio.run(produce(stack.bootstrap, t["items"], item_messages(catalog)))
    base = 1_320_000_000_000
    evs = []
    for u in range(users):
        for j in range(2):
            d = {
                "event_id": f"m-{u}-{j}",
                "user_id": f"user{u}",
                "type": "purchase",
                "item_id": f"sku{int(rng.integers(items))}",
                "ts": base + u * 1000 + j,
            }
            evs.append((f"user{u}".encode(), orjson.dumps(d)))
    asyncio.run(produce(stack.bootstrap, t["events"], evs))
    w = run_worker(stack, model_root, tmp, "memory", t, STREAMREC_RANKING="false")
    try:
        before = rss_mb(w.proc.pid)
        r = drain(w, len(evs))
        time.sleep(2)
        m = w.metrics()
        after = rss_mb(w.proc.pid)
        n_items = metric(m, "streamrec_items")
    finally:
        w.stop()
    disk = sum(f.stat().st_size for f in (tmp / "memory").rglob("*") if f.is_file()) / 2**20
    rows = [
        [
            f"{users:,}",
            f"{int(n_items):,}",
            f"{before:,.0f}",
            f"{after:,.0f}",
            f"{disk:,.0f}",
            f"{r['events_per_s']:,.0f}",
        ]
    ]
    print(
        table(
            "worker memory with many users and items (ranking off)",
            ["users", "items in index", "RSS at ready MB", "RSS after MB", "state on disk MB", "events/s"],
            rows,
        ),
        flush=True,
    )
    results["memory"] = {
        "users": users,
        "items": int(n_items),
        "rss_ready_mb": before,
        "rss_after_mb": after,
        "state_disk_mb": disk,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="ingest,e2e,scale,onnx,memory")
    ap.add_argument("--rows", type=int, default=60_000, help="online_retail rows replayed (ingest, e2e)")
    ap.add_argument("--paced-seconds", type=float, default=20.0)
    ap.add_argument("--model-root", default=os.environ.get("STREAMREC_MODEL_ROOT", "var/models"))
    ap.add_argument("--memory-users", type=int, default=100_000)
    ap.add_argument("--memory-items", type=int, default=100_000)
    ap.add_argument(
        "--seq-len", type=int, default=None, help="onnx section: sequence length (default: the bootstrap's)"
    )
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for every worker of the run (repeatable)")
    args = ap.parse_args(argv)
    WORKER_ENV.update(dict(kv.split("=", 1) for kv in args.env))
    only = set(args.only.split(","))
    model_root = Path(args.model_root)
    if not (model_root / "LATEST").exists():
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
    results: dict = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "model": (model_root / "LATEST").read_text().strip(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(f"machine: {os.cpu_count()} CPUs, {platform.platform()}; model {results['model']}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="streamrec-bench-"))
    if "onnx" in only:
        from exporters.bootstrap import DEFAULT_MAX_SEQ_LEN

        bench_onnx(results, seq_len=args.seq_len or DEFAULT_MAX_SEQ_LEN, cands=200)
    if only & {"ingest", "e2e", "drain", "scale", "memory"}:
        ds = load_dataset("online_retail", limit_rows=args.rows)
        with LocalStack.from_env(partitions=4) as stack:
            if "ingest" in only:
                bench_ingest(stack, model_root, tmp, ds, results)
            if "drain" in only:
                bench_drain(stack, model_root, tmp, ds, results)
            if "e2e" in only:
                bench_e2e(stack, model_root, tmp, ds, results, args.paced_seconds)
            if "scale" in only:
                bench_scale(stack, model_root, tmp, ds, results)
            if "memory" in only:
                bench_memory(stack, model_root, tmp, results, args.memory_users, args.memory_items)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    RESULTS.write_text(json.dumps(previous | results, indent=2, default=float))  # sections run separately accumulate
    print(f"\nresults written to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
