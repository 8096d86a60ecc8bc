"""Memory of a second model version in one worker (issue 17's canary): RSS of the pipeline serving
one version, then the same pipeline holding a second version for a ``ranker@<version>`` arm.

    python -m benchmarks.two_versions --model-root var/models [--users 400]

The second version is a copy of the first under another name (``<version>-copy`` in a temporary
model store): the same architecture and catalog as a retrained version, and onnxruntime shares
nothing between the two sessions, so the cost is the same as for a different version. Both arms
rank ``--users`` users (one event each, in micro-batches of 64) before each measurement, so
onnxruntime's arenas are allocated. RSS from /proc/self/status after ``gc.collect`` and
``malloc_trim``; CPU seconds (``process_time``) of ranking ``--users`` new users (one event
each) with one version and with the two at 50/50.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import shutil
import tempfile
import time
from pathlib import Path


def rss_mb() -> float:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def rank_users(p, store, users: list[str], items: list[str], start: int) -> None:
    import orjson

    from streamer.ingest import RawMessage

    for b in range(0, len(users), 64):
        msgs = []
        for k, u in enumerate(users[b : b + 64]):
            i = start + b + k
            ev = {
                "event_id": f"e{i}",
                "user_id": u,
                "type": "view",
                "item_id": items[i % len(items)],
                "ts": 1_320_000_000_000 + i * 1000,
            }
            msgs.append(RawMessage("events", 0, i, u.encode(), orjson.dumps(ev), 1_320_000_000_000))
        await p.process(msgs, store)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.two_versions")
    ap.add_argument("--model-root", type=Path, required=True)
    ap.add_argument("--version", default=None, help="default: LATEST")
    ap.add_argument("--users", type=int, default=400)
    args = ap.parse_args(argv)

    from streamer.model import ModelBundle, latest_version_dir
    from streamer.pipeline import Pipeline
    from streamer.settings import Settings
    from streamer.variants import parse_split
    from tests.unit.streamer.helpers import DictStore

    src = args.model_root / args.version if args.version else latest_version_dir(args.model_root)
    tmp = Path(tempfile.mkdtemp(prefix="two-versions-"))
    copy = tmp / f"{src.name}-copy"
    shutil.copytree(src, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["version"] = copy.name
    (copy / "manifest.json").write_text(json.dumps(manifest))
    settings = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "unused:9092", "REDIS_URL": "redis://127.0.0.1:1/0"})
    out = {"rss_mb_imports": rss_mb()}
    try:
        t0 = time.perf_counter()
        p = Pipeline(settings, ModelBundle.load(src))
        items = list(p.bundle.item_ids)
        users = [f"user{i}" for i in range(args.users)]
        asyncio.run(rank_users(p, DictStore(), users, items, 0))
        out["rss_mb_one_version"] = rss_mb()
        c0 = time.process_time()
        asyncio.run(rank_users(p, DictStore(), [f"x{u}" for u in users], items, 20 * args.users))
        out["cpu_s_rank_one_version"] = round(time.process_time() - c0, 2)
        out["load_s_first"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        p.add_version(ModelBundle.load(copy))
        out["load_s_second"] = round(time.perf_counter() - t0, 1)
        split = parse_split(f"ranker@{copy.name}:0.5,ranker@production:0.5")
        p.set_variants(split)
        asyncio.run(rank_users(p, DictStore(), users, items, 10 * args.users))
        out["rss_mb_two_versions"] = rss_mb()
        c0 = time.process_time()
        asyncio.run(rank_users(p, DictStore(), [f"y{u}" for u in users], items, 30 * args.users))
        out["cpu_s_rank_two_versions"] = round(time.process_time() - c0, 2)
        out["second_version_mb"] = round(out["rss_mb_two_versions"] - out["rss_mb_one_version"], 1)
        out["items"] = len(p.index)
        out["version"] = src.name
        out["ranker_file"] = p.bundle.ranker_file
        out["files_mb"] = round(sum(f.stat().st_size for f in src.iterdir() if f.is_file()) / 2**20, 1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
