"""Candidate sources and filters (streamer/candidates.py), through the pipeline on the tiny model."""

from __future__ import annotations

from streamer.model import ModelBundle, latest_version_dir
from streamer.pipeline import Pipeline
from tests.unit.streamer.helpers import DictStore, ev, msg, settings


async def test_new_user_gets_trending_and_unknown_item_exists(pipeline):
    store = DictStore()
    await pipeline.process([msg(ev(i, f"buyer{i}", "22752")) for i in range(5)], store)
    res = await pipeline.process([msg(ev(20, "newbie", "BRANDNEW", etype="view"), 9)], store)
    rec = res.recs[0]
    assert "BRANDNEW" in pipeline.index.pos
    assert any(i.item_id == "22752" and i.source == "trending" for i in rec.items)


async def test_filters(tiny_model_root):
    bundle = ModelBundle.load(latest_version_dir(tiny_model_root))
    p = Pipeline(settings(filter_purchased=True, filter_last_viewed=True), bundle)
    store = DictStore()
    res = await p.process([msg(ev(1, item="71053")), msg(ev(2, item="22633", etype="view"), 1)], store)
    ids = {i.item_id for i in res.recs[0].items}
    assert "71053" not in ids and "22633" not in ids
