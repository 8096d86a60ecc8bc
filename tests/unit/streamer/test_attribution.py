"""Online metrics: conversions attributed to the list that was live, per variant; the report's maths;
the runtime A/B split; search intent; reasons from real evidence; cold start (tiny real ONNX model)."""

from __future__ import annotations

import logging

import orjson
import pytest
import redis

from streamer import report
from streamer.attribution import FIELDS, Stats, read_stats, write_stats
from streamer.model import ModelBundle, latest_version_dir
from streamer.pipeline import Pipeline
from streamer.state import UserState
from streamer.variants import VariantPoller, parse_split
from tests.unit.streamer.helpers import T0, DictStore, ev, msg, settings

DAY = 86_400_000


@pytest.fixture()
def pipeline(tiny_model_root):
    from tests.unit.streamer.conftest import CATALOG

    bundle = ModelBundle.load(latest_version_dir(tiny_model_root))
    p = Pipeline(settings(), bundle)
    p.upsert_items(CATALOG)  # titles, as the items topic gives them
    return p


def stats_of(res) -> dict:
    return res.stats.as_dict()


class Feed:
    """Runs events through a pipeline with growing offsets and one state store."""

    def __init__(self, pipeline):
        self.p, self.store, self.off = pipeline, DictStore(), 0

    async def __call__(self, *events):
        msgs = []
        for e in events:
            msgs.append(msg(e, self.off))
            self.off += 1
        return await self.p.process(msgs, self.store)

    def state(self, user="u1") -> UserState:
        return UserState.from_bytes(self.store.data[user])


# ---- attribution --------------------------------------------------------------------------
async def test_click_cart_purchase_on_the_live_list_are_attributed_to_its_variant(pipeline):
    feed = Feed(pipeline)
    res = await feed(ev(1, item="71053", etype="view"))
    live = [i.item_id for i in res.recs[0].items]
    assert stats_of(res) == {"ranker": {"lists": 1, "users": 1}}
    st = feed.state()
    assert st.rec_items == live and st.rec_variant == "ranker" and st.rec_ts == T0 + 1000
    target = live[1]
    res = await feed(ev(2, item=target, etype="click"))
    assert stats_of(res) == {"ranker": {"clicks": 1, "lists_clicked": 1, "lists": 1}}  # users: once per variant
    live2 = [i.item_id for i in res.recs[0].items]
    res = await feed(ev(3, item=live2[0], etype="add_to_cart"), ev(4, item=live2[0], etype="purchase"))
    # both coalesced events are attributed to the list before the batch
    assert stats_of(res) == {
        "ranker": {"add_to_carts": 1, "lists_carted": 1, "purchases": 1, "lists_purchased": 1, "lists": 1}
    }


async def test_not_attributed_outside_window_off_list_before_the_list_or_for_views(pipeline):
    feed = Feed(pipeline)
    res = await feed(ev(1, item="71053", etype="view"))
    live = {i.item_id for i in res.recs[0].items}
    off_list = next(i for i in ("85123A", "84406B", "22633", "21730", "84029G", "22752", "ZZZ") if i not in live)
    assert stats_of(await feed(ev(2, item=off_list, etype="click")))["ranker"].get("clicks") is None
    live = [i.item_id for i in (await feed(ev(3, item="71053", etype="view"))).recs[0].items]
    res = await feed(ev(4, item=live[0], etype="view"))  # a view is not a conversion
    assert "clicks" not in stats_of(res)["ranker"]
    live = [i.item_id for i in res.recs[0].items]
    late = T0 + 4000 + DAY + 1  # window is 1 day of event time after the list's event
    assert "clicks" not in stats_of(await feed(ev(5, item=live[0], etype="click", ts=late)))["ranker"]
    live = [i.item_id for i in (await feed(ev(6, item="71053", etype="view", ts=late + 10))).recs[0].items]
    early = late  # older than the live list's event: it happened before the list existed
    assert "clicks" not in stats_of(await feed(ev(7, item=live[0], etype="click", ts=early)))["ranker"]


async def test_a_list_converts_once_per_kind_and_duplicates_never_count(pipeline):
    feed = Feed(pipeline)
    live = [i.item_id for i in (await feed(ev(1, item="71053", etype="view"))).recs[0].items]
    clicks = [ev(2, item=live[0], etype="click"), ev(3, item=live[1], etype="click")]
    res = await feed(*clicks)
    assert stats_of(res)["ranker"] == {"clicks": 2, "lists_clicked": 1, "lists": 1}
    res = await feed(*clicks)  # redelivered: re-published, but nothing counted
    assert res.duplicates == 2 and len(res.recs) == 1 and not res.stats


async def test_variant_of_the_list_gets_the_credit_after_a_split_change(pipeline):
    feed = Feed(pipeline)
    live = [i.item_id for i in (await feed(ev(1, item="71053", etype="view"))).recs[0].items]
    pipeline.set_variants((("control", 1.0),))
    res = await feed(ev(2, item=live[0], etype="purchase"))
    assert res.recs[0].variant == "control" and res.recs[0].model_version.endswith("+control")
    assert stats_of(res) == {"ranker": {"purchases": 1, "lists_purchased": 1}, "control": {"lists": 1, "users": 1}}


def test_state_round_trip_and_older_values_load():
    st = UserState(
        dim=4,
        last_query="lantern",
        query_ts=5,
        since_query=1,
        rec_items=["a", "b"],
        rec_variant="control",
        rec_ts=7,
        rec_hits=4,
        ab_seen=["ranker", "control"],
    )
    back = UserState.from_bytes(st.to_bytes())
    assert (back.rec_items, back.rec_variant, back.rec_ts, back.rec_hits, back.ab_seen) == (
        ["a", "b"],
        "control",
        7,
        4,
        ["ranker", "control"],
    )
    assert (back.last_query, back.query_ts, back.since_query) == ("lantern", 5, 1)
    old = orjson.loads(st.to_bytes())
    for k in ("qt", "qk", "rl", "ab"):
        del old[k]
    back = UserState.from_bytes(orjson.dumps(old))  # a value written before these fields existed
    assert back.rec_variant is None and back.rec_items == [] and back.ab_seen == []
    assert back.search_intent(10, 3, 10**9) is None  # an old query no longer shapes the list


# ---- Redis counters and the report ---------------------------------------------------------
async def test_stats_go_to_redis_and_the_report_reads_them(redis_url, capsys):  # noqa: F811
    import redis.asyncio as aioredis

    a = aioredis.from_url(redis_url)
    s = Stats()
    s.add("ranker", "lists", 1000)
    s.add("ranker", "users", 40)
    s.add("ranker", "lists_purchased", 120)
    s.add("ranker", "purchases", 150)
    s.add("control", "lists", 900)
    s.add("control", "users", 38)
    s.add("control", "lists_purchased", 70)
    s.add("control", "purchases", 80)
    await write_stats(a, s, "t1:")
    await write_stats(a, {"ranker": {"lists": 1}}, "t1:")
    await a.aclose()
    got = read_stats(redis.Redis.from_url(redis_url), "t1:")
    assert set(got) == {"ranker", "control"} and set(got["ranker"]) == set(FIELDS)
    assert got["ranker"]["lists"] == 1001 and got["control"]["lists_purchased"] == 70
    assert report.main(["--redis-url", redis_url, "--prefix", "t1:"]) == 0
    out = capsys.readouterr().out
    assert "conversion [95% CI]" in out and "11.99% [10.12%, 14.15%]" in out  # 120 / 1001
    assert "difference to control" in out and "ranker: CTR +0.00" in out
    assert report.main(["--redis-url", redis_url, "--prefix", "t1:", "--json"]) == 0
    d = orjson.loads(capsys.readouterr().out)
    assert d["control"]["conversion"]["rate"] == pytest.approx(70 / 900)
    assert d["ranker"]["vs_control"]["conversion"]["low"] > 0  # 12.0% vs 7.8%: the interval excludes 0
    assert report.main(["--redis-url", redis_url, "--prefix", "empty:"]) == 0
    assert "no A/B counters yet" in capsys.readouterr().out


def test_wilson_and_newcombe_known_values():
    assert report.wilson(0, 0) == (0.0, 0.0, 1.0)
    p, lo, hi = report.wilson(5, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.2366, 0.7634)  # textbook value
    p, lo, hi = report.wilson(0, 20)
    assert p == 0 and lo == 0 and round(hi, 4) == 0.1611
    d, lo, hi = report.newcombe(56, 70, 48, 80)  # Newcombe (1998), example (a): 0.2 [0.0524, 0.3339]
    assert round(d, 4) == 0.2 and (round(lo, 4), round(hi, 4)) == (0.0524, 0.3339)


# ---- runtime A/B split ----------------------------------------------------------------------
def test_split_override_is_validated_applied_and_removable(pipeline, caplog):
    poller = VariantPoller(None, pipeline, default=pipeline.variants, key="streamrec:config:variants", interval_s=1)
    assert poller.apply(b"ranker:0.25, control:0.75") and pipeline.variants == (("ranker", 0.25), ("control", 0.75))
    with caplog.at_level(logging.ERROR):
        for bad in (b"ranker:0.5", b"banana:1.0", b"\xff\xfe", b"control:x"):
            assert not poller.apply(bad)
            assert not poller.apply(bad)  # same bad value again: ignored quietly
    assert pipeline.variants == (("ranker", 0.25), ("control", 0.75))  # still in force
    assert len([r for r in caplog.records if "refused" in r.message]) == 4
    assert poller.apply(None) and pipeline.variants == (("ranker", 1.0),)  # key deleted: back to the env
    assert parse_split("control:1") == (("control", 1.0),)


# ---- search intent ----------------------------------------------------------------------------
async def test_search_shapes_the_next_few_lists_then_fades(pipeline):
    feed = Feed(pipeline)
    res = await feed(ev(1, item=None, etype="search", query="lantern"))
    rec = res.recs[0]
    slots = pipeline.search_slots(0)
    assert slots == 2  # list of 5, share 0.5
    assert [i.source for i in rec.items[:slots]] == ["search"] * slots
    assert all(i.reason == "matches your search 'lantern'" for i in rec.items[:slots])
    scores = [i.score for i in rec.items]
    assert scores == sorted(scores, reverse=True)
    seen_search = []
    for k in range(2, 7):
        rec = (await feed(ev(k, item="22633", etype="view"))).recs[0]
        seen_search.append(sum(i.source == "search" for i in rec.items))
    # still contributing for STREAMREC_SEARCH_INTENT_EVENTS (3) later events, then gone
    assert all(n >= 1 for n in seen_search[:3]) and seen_search[3:] == [0, 0]
    st = feed.state()
    assert st.last_query == "lantern" and st.since_query == 5


async def test_search_intent_expires_in_event_time(pipeline):
    feed = Feed(pipeline)
    await feed(ev(1, item=None, etype="search", query="lantern"))
    rec = (await feed(ev(2, item="22633", etype="view", ts=T0 + 1000 + 1801 * 1000))).recs[0]
    assert not any(i.source == "search" for i in rec.items)


# ---- reasons from real evidence ------------------------------------------------------------
async def test_reasons_quote_real_counts_titles_and_dates(pipeline):
    feed = Feed(pipeline)
    # five other customers buy the nesting boxes on two days, one also views it
    buys = [ev(10 + i, f"buyer{i}", "22752", ts=T0 + i * DAY // 2) for i in range(5)]
    await feed(*buys, ev(20, "viewer", "22752", etype="view", ts=T0 + 3 * DAY))
    rec = (await feed(ev(30, "newbie", "71053", etype="view", ts=T0 + 3 * DAY))).recs[0]
    by_id = {i.item_id: i for i in rec.items}
    assert by_id["22752"].source == "trending"
    assert by_id["22752"].reason == "trending: bought 5 times in the last 7 days"
    assert by_id["71053"].reason == "you viewed this on 2011-11-02"
    # history: the user's own purchases, with the real count and date
    await feed(ev(40, "buyer0", "22752", ts=T0 + 4 * DAY))
    rec = (await feed(ev(41, "buyer0", "71053", etype="view", ts=T0 + 4 * DAY))).recs[0]
    assert {i.item_id: i for i in rec.items}["22752"].reason == "you bought this twice, last on 2011-11-03"
    # co-visitation: the anchor's title and the pair count
    for u in ("c1", "c2", "c3"):
        await feed(ev(50, u, "85123A"), ev(51, u, "84406B"))
    rec = (await feed(ev(60, "c4", "85123A", etype="view"))).recs[0]
    item = {i.item_id: i for i in rec.items}["84406B"]
    assert item.source == "covis" and item.reason == "often chosen with WHITE HANGING HEART T-LIGHT HOLDER (3 times)"


async def test_ann_reason_names_the_most_similar_recent_item(pipeline):
    import numpy as np

    feed = Feed(pipeline)
    seen = False
    rec = (await feed(ev(1, item="71053", etype="view"), ev(2, item="22633", etype="view"))).recs[0]
    idx = pipeline.index
    for it in rec.items:
        if it.source == "ann":
            row = idx.pos[it.item_id]
            recent = [idx.pos["71053"], idx.pos["22633"]]
            best = recent[int(np.argmax(idx.vecs[recent] @ idx.vecs[row]))]
            assert it.reason == f"similar to {idx.titles[best]}"
            seen = True
    assert seen


# ---- cold start --------------------------------------------------------------------------------
async def test_new_user_gets_trending_then_a_list_shaped_by_one_event(pipeline):
    feed = Feed(pipeline)
    # other customers: the nesting boxes are popular; the heart holder and coat hanger go together
    await feed(*[ev(i, f"b{i}", "22752") for i in range(6)])
    for u in ("c1", "c2"):
        await feed(ev(20, u, "85123A"), ev(21, u, "84406B"))
    # a brand-new user's first event says nothing about them (an item nobody knows): trending
    first = (await feed(ev(30, "fresh", "NEVERSEEN", etype="view"))).recs[0]
    assert any(
        i.item_id == "22752" and i.source == "trending" and i.reason.startswith("trending: bought") for i in first.items
    )
    # one event later the list follows it: the item itself and what goes with it, with reasons saying so
    after = (await feed(ev(31, "fresh", "85123A", etype="add_to_cart"))).recs[0]
    by_id = {i.item_id: i for i in after.items}
    assert by_id["85123A"].reason.startswith("you added this to your cart on ")
    assert by_id["84406B"].source == "covis" and "WHITE HANGING HEART T-LIGHT HOLDER" in by_id["84406B"].reason


async def test_new_item_with_text_is_searchable_before_any_interaction(pipeline):
    from schemas import Item

    new = Item(item_id="RPL1", title="RED PAPER LANTERN")
    pipeline.upsert_items([new], pipeline.encode_items([new], pipeline.bundle), pipeline.bundle)
    feed = Feed(pipeline)
    rec = (await feed(ev(1, "s", item=None, etype="search", query="RED PAPER LANTERN"))).recs[0]
    assert rec.items[0].item_id == "RPL1" and rec.items[0].title == "RED PAPER LANTERN"  # exact text: cosine 1
