"""Product features end to end on the real broker and a real Redis (no mocks): search with the real
pretrained text encoder, search intent that fades, a new catalog item found before anyone touched
it, the A/B split switched at run time, attributed conversions and the report, the reader CLI."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import redis

from schemas import decode_recommendation, encode
from tests.conftest import wait_until
from tests.integration.helpers import WorkerProcess, event, produce, unique_topics

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
N_OTHER_ITEMS = 300


def _catalog():
    """Every LANTERN item of the first 20,000 online_retail rows plus 300 other real items."""
    from schemas.sources import load_dataset

    ds = load_dataset("online_retail", limit_rows=20_000)
    items = sorted(ds.items.values(), key=lambda it: str(it.item_id))
    lanterns = [it for it in items if it.title and "LANTERN" in it.title]
    others = [it for it in items if it.title and "LANTERN" not in it.title][:N_OTHER_ITEMS]
    return lanterns + others


@pytest.fixture(scope="session")
def real_catalog(data_dir):
    return _catalog()


@pytest.fixture(scope="session")
def real_model_root(tmp_path_factory, real_catalog):
    """The bootstrap version with the real all-MiniLM-L6-v2 weights over a few hundred real items.

    Built once per session (about 15 s on 2 cores) and kept next to pytest's temporary folders,
    keyed by the catalog and the exporter/contract sources, so later sessions reuse it."""
    pytest.importorskip("torch", reason="the real bootstrap model needs the .[train] extra")
    pytest.importorskip("transformers", reason="the real bootstrap model needs the .[train] extra")
    from exporters.bootstrap import export_bootstrap

    h = hashlib.sha256()
    for it in real_catalog:
        h.update(orjson.dumps(it.to_dict()))
    for src in sorted((REPO / "exporters").glob("*.py")) + [REPO / "schemas" / "ranking.py"]:
        h.update(src.read_bytes())
    cache = tmp_path_factory.getbasetemp().parent / f"streamrec-real-model-{h.hexdigest()[:16]}"
    if not (cache / "LATEST").exists():
        tmp = tmp_path_factory.mktemp("real-model-build")
        export_bootstrap(tmp, dataset=None, items=real_catalog, version="real-bootstrap")
        shutil.rmtree(cache, ignore_errors=True)
        shutil.copytree(tmp, cache)
    return cache


def items_valid(w: WorkerProcess) -> float:
    for line in w.metrics().splitlines():
        if line.startswith('streamrec_events_total{outcome="valid",topic="items"}'):
            return float(line.split()[-1])
    return 0.0


def latest(r, key, after_event: str | None = None):
    raw = r.get(key)
    if raw is None:
        return None
    rec = decode_recommendation(raw)
    return rec if after_event is None or rec.event_id == after_event else None


def run_cli(module: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, **(env or {})),
    )


def test_search_with_the_real_text_encoder_new_item_and_fading_intent(stack, real_model_root, real_catalog, tmp_path):
    topics = unique_topics(stack, "feat-search")
    key = topics["prefix"]
    r = redis.Redis.from_url(stack.redis_url)
    catalog = [(it.item_id.encode(), encode(it)) for it in real_catalog]
    asyncio.run(produce(stack.bootstrap, topics["items"], catalog))
    w = WorkerProcess(stack, real_model_root, tmp_path / "w", app_id="feat-search", topics=topics).start()
    try:
        w.wait_ready(90)
        wait_until(lambda: items_valid(w) >= len(catalog), what="catalog applied")
        title = {it.item_id: it.title for it in real_catalog}

        # 1. a user with no history searches "red lantern": lanterns come first, saying why
        asyncio.run(
            produce(
                stack.bootstrap, topics["events"], [event(1, "searcher", None, etype="search", query="red lantern")]
            )
        )
        rec = wait_until(lambda: latest(r, key + "searcher"), what="list after the search")
        top = rec.items[:5]
        assert all("LANTERN" in (i.title or "") for i in top), [i.title for i in rec.items]
        assert all(i.source == "search" and i.reason == "matches your search 'red lantern'" for i in top)

        # 2. the intent persists a little: after viewing something else, lanterns still lead...
        mug = next(i for i, t in title.items() if "MUG" in t)
        asyncio.run(produce(stack.bootstrap, topics["events"], [event(2, "searcher", mug, etype="view")]))
        rec = wait_until(lambda: latest(r, key + "searcher", "ev-searcher-2"), what="list after the view")
        assert "LANTERN" in (rec.items[0].title or "") and rec.items[0].source == "search"
        assert any(i.item_id == mug for i in rec.items)  # ...and the view shapes the rest
        # ...and fades: after STREAMREC_SEARCH_INTENT_EVENTS (3) later events the search is gone
        more = [event(k, "searcher", mug, etype="view") for k in (3, 4, 5)]
        asyncio.run(produce(stack.bootstrap, topics["events"], more))
        rec = wait_until(lambda: latest(r, key + "searcher", "ev-searcher-5"), what="list after 4 events")
        assert not any(i.source == "search" for i in rec.items)

        # 3. a brand-new item with text, announced on the items topic, is found before anyone touched it
        before = items_valid(w)
        new = {"item_id": "RPL-NEW-1", "title": "RED PAPER LANTERN", "available": True}
        asyncio.run(produce(stack.bootstrap, topics["items"], [(b"RPL-NEW-1", orjson.dumps(new))]))
        wait_until(lambda: items_valid(w) > before, what="new item applied")
        asyncio.run(
            produce(stack.bootstrap, topics["events"], [event(1, "looker", None, etype="search", query="lantern")])
        )
        rec = wait_until(lambda: latest(r, key + "looker"), what="list of the second searcher")
        ids = [i.item_id for i in rec.items[:5]]
        assert "RPL-NEW-1" in ids, [(i.item_id, i.title) for i in rec.items]
        assert all("LANTERN" in (i.title or "") for i in rec.items[:5])

        # 4. the reader shows it the way the front end sees it
        out = run_cli("devtools.reader", "looker", "--redis-url", stack.redis_url, "--prefix", key)
        assert out.returncode == 0, out.stderr
        assert "RED PAPER LANTERN" in out.stdout and "matches your search 'lantern'" in out.stdout
        assert "variant ranker" in out.stdout and "model real-bootstrap" in out.stdout and " ago)" in out.stdout
        missing = run_cli("devtools.reader", "nobody", "--redis-url", stack.redis_url, "--prefix", key)
        assert missing.returncode == 1 and "no list for user 'nobody'" in missing.stdout
    finally:
        code = w.stop()
    assert code in (0, -15), w.tail()


def test_runtime_ab_switch_attribution_and_report(stack, tmp_path):
    from exporters.bootstrap import export_bootstrap
    from tests.unit.streamer.conftest import CATALOG

    root = tmp_path / "models"
    export_bootstrap(root, dataset=None, tiny=True, items=CATALOG)
    topics = unique_topics(stack, "feat-ab")
    key, meta = topics["prefix"], "feat-ab:"
    r = redis.Redis.from_url(stack.redis_url)
    asyncio.run(produce(stack.bootstrap, topics["items"], [(it.item_id.encode(), encode(it)) for it in CATALOG]))
    w = WorkerProcess(
        stack,
        root,
        tmp_path / "w",
        app_id="feat-ab",
        topics=topics,
        STREAMREC_VARIANTS="ranker:1.0",
        STREAMREC_VARIANTS_POLL_S="0.2",
        STREAMREC_REDIS_META_PREFIX=meta,
    ).start()
    send = lambda *evs: asyncio.run(produce(stack.bootstrap, topics["events"], list(evs)))
    try:
        w.wait_ready()
        assert "streamrec_variant_weight{" in w.metrics(), (
            "the worker does not run the A/B split poller: streamer/app.py needs the hooks "
            "start_variant_poller (streamer.variants) and write_stats (streamer.attribution)"
        )
        # ranker arm: a view gives a list; a click on its second item is attributed to it, a click
        # on an item that is not on the live list is not
        send(event(1, "a1", "71053", etype="view"))
        rec = wait_until(lambda: latest(r, key + "a1"), what="first list")
        assert rec.variant == "ranker"
        send(event(2, "a1", rec.items[1].item_id, etype="click"))
        wait_until(lambda: latest(r, key + "a1", "ev-a1-2"), what="list after the click")
        send(event(3, "a1", "OFFLIST-A", etype="click"))
        wait_until(lambda: latest(r, key + "a1", "ev-a1-3"), what="list after the second click")

        # switch everyone to control without a restart
        r.set(meta + "config:variants", "control:1.0")
        wait_until(lambda: 'streamrec_variant_weight{variant="control"} 1.0' in w.metrics(), what="split applied")
        send(event(1, "b1", "22633", etype="view"))
        rec = wait_until(lambda: latest(r, key + "b1"), what="control list")
        assert rec.variant == "control" and rec.model_version.endswith("+control")
        send(event(2, "b1", rec.items[0].item_id, etype="add_to_cart"))
        rec = wait_until(lambda: latest(r, key + "b1", "ev-b1-2"), what="list after the cart")
        send(event(3, "b1", rec.items[0].item_id, etype="purchase"))
        wait_until(lambda: latest(r, key + "b1", "ev-b1-3"), what="list after the purchase")
        send(event(4, "b1", "OFFLIST-B", etype="purchase"))
        wait_until(lambda: latest(r, key + "b1", "ev-b1-4"), what="list after the off-list purchase")

        # a bad value is logged and ignored: control stays
        r.set(meta + "config:variants", "control:0.3")
        wait_until(lambda: "refused" in w.tail(200), what="bad split logged")
        send(event(1, "c1", "22633", etype="view"))
        assert wait_until(lambda: latest(r, key + "c1"), what="list under the bad value").variant == "control"
        # removing the override returns to STREAMREC_VARIANTS
        r.delete(meta + "config:variants")
        wait_until(lambda: 'streamrec_variant_weight{variant="ranker"} 1.0' in w.metrics(), what="override removed")
        send(event(1, "d1", "22633", etype="view"))
        assert wait_until(lambda: latest(r, key + "d1"), what="list after removal").variant == "ranker"

        # the counters in Redis and the report: exact numbers
        expected = {  # a1 3 lists + d1 1; b1 4 lists + c1 1
            "ranker": {"lists": 4, "users": 2, "clicks": 1, "lists_clicked": 1, "purchases": 0},
            "control": {
                "lists": 5,
                "users": 2,
                "clicks": 0,
                "add_to_carts": 1,
                "lists_carted": 1,
                "purchases": 1,
                "lists_purchased": 1,
            },
        }
        out = run_cli("streamer.report", "--redis-url", stack.redis_url, "--prefix", meta, "--json")
        assert out.returncode == 0, out.stderr
        got = orjson.loads(out.stdout)
        for variant, counts in expected.items():
            for name, n in counts.items():
                assert got[variant][name] == n, (variant, name, got[variant])
        assert got["control"]["conversion"]["rate"] == 0.2 and got["ranker"]["ctr"]["rate"] == 0.25
        table = run_cli("streamer.report", "--redis-url", stack.redis_url, "--prefix", meta).stdout
        assert "CTR [95% CI]" in table and "25.00% [" in table and "20.00% [" in table
        m = w.metrics()
        assert 'streamrec_ab_attributed_total{type="click",variant="ranker"} 1.0' in m
        assert 'streamrec_ab_converted_lists_total{type="purchase",variant="control"} 1.0' in m
        assert "streamrec_variant_config_rejected_total 1.0" in m
    finally:
        code = w.stop()
    assert code in (0, -15), w.tail()
