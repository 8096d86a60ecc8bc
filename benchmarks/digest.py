"""Digest of everything the pipeline writes for a replay of real events: every list (without its
``published_ts``), each batch's counts and A/B counters, and every user's final state value.

Run it in two checkouts to prove a hot-path change leaves the output bit for bit the same (the
differential check of issue 15's rewrites: same digest = same lists, same order, same scores and
reasons, same states)::

    python -m benchmarks.digest --dataset online_retail --rows 20000
    python -m benchmarks.digest --dataset taobao --rows 20000 --env STREAMREC_VARIANTS=ranker:0.5,control:0.5

The HNSW graph is built single-threaded here (hnswlib's multi-threaded insertion order varies from
run to run, and with it a few nearest-neighbour answers), so two runs of one checkout agree. A
slice of the events is replayed a second time, as redelivered duplicates.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import types
from pathlib import Path

import hnswlib
import orjson

import streamer.items
from benchmarks.profile_pipeline import DictStore, payload
from schemas import encode
from schemas.sources import load_dataset
from streamer.ingest import RawMessage
from streamer.model import ModelBundle, latest_version_dir
from streamer.pipeline import Pipeline
from streamer.settings import Settings


class _SingleThreadedIndex(hnswlib.Index):
    def add_items(self, *args, **kw):
        kw["num_threads"] = 1
        return super().add_items(*args, **kw)


def digest(model_root: Path, dataset: str, rows: int, batch: int, env: dict[str, str]) -> tuple[int, str]:
    streamer.items.hnswlib = types.SimpleNamespace(Index=_SingleThreadedIndex)
    settings = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "REDIS_URL": "redis://127.0.0.1:1/0"} | env)
    pipe = Pipeline(settings, ModelBundle.load(latest_version_dir(model_root), threads=1))
    events = load_dataset(dataset, limit_rows=rows).events
    msgs = [RawMessage("events", 0, i, e.user_id.encode(), encode(e), 0) for i, e in enumerate(events)]
    msgs += msgs[len(msgs) // 4 : len(msgs) // 4 + 300]  # redelivered duplicates
    store = DictStore()
    out: list[bytes] = []

    async def go() -> None:
        for i in range(0, len(msgs), batch):
            r = await pipe.process(msgs[i : i + batch], store)
            for rec in r.recs:
                d = orjson.loads(payload(rec))
                d.pop("published_ts", None)
                out.append(orjson.dumps(d, option=orjson.OPT_SORT_KEYS))
            counts = {"dead": len(r.dead_letters), "applied": r.applied, "dup": r.duplicates}
            out.append(orjson.dumps(counts | {"stats": r.stats.as_dict()}, option=orjson.OPT_SORT_KEYS))

    asyncio.run(go())
    out += [k.encode() + b"=" + store.data[k] for k in sorted(store.data)]
    return len(out), hashlib.sha256(b"\n".join(out)).hexdigest()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.digest", description=__doc__.splitlines()[0])
    ap.add_argument("--model-root", type=Path, default=Path(os.environ.get("STREAMREC_MODEL_ROOT", "var/models")))
    ap.add_argument("--dataset", default="online_retail")
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE settings (repeatable)")
    args = ap.parse_args(argv)
    n, h = digest(args.model_root, args.dataset, args.rows, args.batch, dict(kv.split("=", 1) for kv in args.env))
    print(f"{args.dataset} rows={args.rows} {' '.join(args.env)}: {n} records, sha256 {h}")


if __name__ == "__main__":
    main()
