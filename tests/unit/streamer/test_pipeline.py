"""The per-batch pipeline on a tiny real ONNX model and an in-memory state store."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from schemas import decode_recommendation
from streamer.ingest import RawMessage
from streamer.model import ModelBundle, latest_version_dir
from streamer.pipeline import Pipeline, variant_for
from streamer.settings import Settings
from streamer.state import UserState

T0 = 1_320_000_000_000


class DictStore:
    def __init__(self):
        self.data: dict[str, bytes] = {}
        self.writes = 0

    def get(self, partition, user_id):
        return self.data.get(user_id)

    def put(self, partition, user_id, value):
        self.writes += 1
        self.data[user_id] = value

    def delete(self, partition, user_id):
        self.data.pop(user_id, None)


def settings(**kw) -> Settings:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "STREAMREC_LIST_SIZE": "5",
        "STREAMREC_CANDIDATES": "20",
    }
    return Settings.from_env(env, **kw)


def msg(value, offset=0, partition=0) -> RawMessage:
    raw = value if isinstance(value, bytes) else orjson.dumps(value)
    return RawMessage("events", partition, offset, b"k", raw, T0)


def ev(i, user="u1", item="71053", etype="purchase", ts=None, **extra):
    d = {"event_id": f"e{i}", "user_id": user, "type": etype, "ts": ts or T0 + i * 1000}
    if item is not None:
        d["item_id"] = item
    d.update(extra)
    return d


@pytest.fixture()
def pipeline(tiny_model_root):
    bundle = ModelBundle.load(latest_version_dir(tiny_model_root))
    return Pipeline(settings(), bundle)


async def test_lists_for_each_user_ordered_and_valid(pipeline):
    store = DictStore()
    msgs = [msg(ev(1, "u1", "71053")), msg(ev(2, "u2", "22633"), 1), msg(ev(3, "u1", "85123A"), 2)]
    res = await pipeline.process(msgs, store)
    assert res.applied == 3 and not res.dead_letters
    assert sorted(r.user_id for r in res.recs) == ["u1", "u2"]  # u1's two events coalesced into one list
    for rec in res.recs:
        scores = [i.score for i in rec.items]
        assert scores == sorted(scores, reverse=True)
        assert 0 < len(rec.items) <= 5
        decode_recommendation(orjson.dumps(rec.to_dict()))  # schema-valid on the wire
    u1 = next(r for r in res.recs if r.user_id == "u1")
    assert u1.event_id == "e3"
    assert {i.item_id for i in u1.items} >= {"71053", "85123A"}  # repeats stay rankable by default


async def test_duplicate_changes_state_once(pipeline):
    store = DictStore()
    await pipeline.process([msg(ev(1)), msg(ev(2, item="22633"), 1)], store)
    before = UserState.from_bytes(store.data["u1"]).fingerprint()
    res = await pipeline.process([msg(ev(1), 2), msg(ev(2, item="22633"), 3)], store)
    assert res.duplicates == 2 and res.applied == 0
    assert UserState.from_bytes(store.data["u1"]).fingerprint() == before
    assert [r.user_id for r in res.recs] == ["u1"]  # still re-published


async def test_invalid_messages_become_dead_letters_with_reasons(pipeline):
    store = DictStore()
    bad = [
        b"{not json",
        orjson.dumps({"event_id": "x", "user_id": "u", "type": "purchase", "ts": T0}),
        orjson.dumps(ev(5, ts=10**18)),
        orjson.dumps(ev(6, etype="teleport")),
    ]
    res = await pipeline.process([msg(b, i) for i, b in enumerate(bad)] + [msg(ev(9), 10)], store)
    assert len(res.dead_letters) == 4 and res.applied == 1
    codes = [d.error_code for d in res.dead_letters]
    assert codes == ["bad_json", "missing_field", "out_of_range", "unknown_type"]
    assert res.dead_letters[1].reason.startswith("$.item_id")
    assert [d.offset for d in res.dead_letters] == [0, 1, 2, 3]


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


async def test_erase_user(pipeline):
    store = DictStore()
    await pipeline.process([msg(ev(1))], store)
    res = await pipeline.process([msg({"event_id": "x", "user_id": "u1", "type": "erase_user", "ts": T0}, 1)], store)
    assert res.erased == ["u1"] and "u1" not in store.data


def test_variant_split_is_stable_and_proportional():
    split = (("ranker", 0.5), ("control", 0.5))
    users = [f"user{i}" for i in range(4000)]
    first = [variant_for(u, split) for u in users]
    assert first == [variant_for(u, split) for u in users]
    share = first.count("control") / len(users)
    assert 0.45 < share < 0.55


async def test_list_params_from_the_manifest_guarantee_new_items(tiny_model_root):
    """The job's validated mix (manifest list_params.min_new): a user whose own items fill the list
    still gets that many items they never touched, below the rebuys that outscore them."""
    bundle = ModelBundle.load(latest_version_dir(tiny_model_root))
    own = ["71053", "85123A", "22633", "21730", "84029G"]
    others = [msg(ev(100 + i, "u2", item), 100 + i) for i, item in enumerate(["84406B", "22752", "71053"] * 2)]
    events = others + [msg(ev(i, "u1", item), i) for i, item in enumerate(own * 3)]
    plain = await Pipeline(settings(), bundle).process(events, DictStore())
    u1 = next(r for r in plain.recs if r.user_id == "u1")
    assert {i.item_id for i in u1.items} == set(own)  # five rebuys fill the 5 slots
    bundle.manifest["list_params"] = {"size": 20, "min_new": 2}
    mixed = await Pipeline(settings(), bundle).process(events, DictStore())
    items = next(r for r in mixed.recs if r.user_id == "u1").items
    assert len(items) == 5 and sum(i.item_id not in own for i in items) == 2
    assert [i.source for i in items[:3]] == ["history"] * 3 and all(i.reason for i in items)


@pytest.fixture(scope="module")
def wide_version(tmp_path_factory, monkeypatch_module):
    """A tiny version whose item vectors are 48-d (the conftest's fixture version: 8-d): another vector space."""
    import functools

    import exporters.bootstrap as bootstrap
    from exporters.modeling import tiny_bert_config
    from tests.unit.streamer.conftest import CATALOG

    monkeypatch_module.setattr(bootstrap, "tiny_bert_config", functools.partial(tiny_bert_config, hidden=48))
    root = tmp_path_factory.mktemp("wide")
    return bootstrap.export_bootstrap(root, dataset=None, tiny=True, items=CATALOG, version="v2-wide")


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


async def test_swap_to_another_dimension_rebuilds_user_embeddings(tiny_model_root, wide_version):
    """Hot swap to a version with a different item-vector size: stored users (embedding, search
    query) from the old space are rebuilt in the new one and keep being served; never a crash."""
    old = ModelBundle.load(latest_version_dir(tiny_model_root))
    new = ModelBundle.load(wide_version)
    assert old.dim != new.dim
    p = Pipeline(settings(), old)
    store = DictStore()
    first = [
        msg(ev(1, "u1", "71053")),
        msg(ev(2, "u1", "22633", etype="view"), 1),
        msg(ev(3, "u2", "85123A"), 2),
        msg(ev(4, "u2", None, etype="search", query="heart holder"), 3),
        msg(ev(5, "u3", "22752"), 4),
    ]
    await p.process(first, store)
    assert UserState.from_bytes(store.data["u1"]).emb.shape == (old.dim,)
    p.install(new, p.build_index(new, p.index))
    # u1: an item event; u2: a plain event while its search intent is live; u3: a duplicate only
    res = await p.process(
        [
            msg(ev(6, "u1", "21730")),
            msg(ev(7, "u2", "22633", etype="view"), 1),
            msg(ev(5, "u3", "22752"), 2),
            msg(ev(8, "u4", "71053"), 3),
        ],
        store,
    )
    assert sorted(r.user_id for r in res.recs) == ["u1", "u2", "u3", "u4"]
    assert all(r.model_version.startswith("v2-wide") and r.items for r in res.recs)
    for u in ("u1", "u2", "u3", "u4"):
        st = UserState.from_bytes(store.data[u])
        assert st.space == "v2-wide" and st.dim == new.dim and st.emb.shape == (new.dim,), u
    # u1's rebuilt embedding is the one the same events give a worker that always ran the new model
    fresh = DictStore()
    await Pipeline(settings(), new).process(
        [msg(ev(1, "u1", "71053")), msg(ev(2, "u1", "22633", etype="view"), 1), msg(ev(6, "u1", "21730"), 2)], fresh
    )
    np.testing.assert_allclose(
        UserState.from_bytes(store.data["u1"]).emb, UserState.from_bytes(fresh.data["u1"]).emb, rtol=1e-5, atol=1e-6
    )
