"""The per-batch pipeline on a tiny real ONNX model and an in-memory state store."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from schemas import decode_recommendation
from streamer.model import ModelBundle, latest_version_dir
from streamer.pipeline import Pipeline, variant_for
from streamer.state import UserState
from tests.unit.streamer.conftest import WIDE_MODEL
from tests.unit.streamer.helpers import DictStore, ev, msg, settings


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


def test_variant_split_is_stable_and_proportional():
    split = (("ranker", 0.5), ("control", 0.5))
    users = [f"user{i}" for i in range(4000)]
    first = [variant_for(u, split) for u in users]
    assert first == [variant_for(u, split) for u in users]
    share = first.count("control") / len(users)
    assert 0.45 < share < 0.55


@pytest.fixture(scope="module")
def wide_version():
    """The checked-in tiny version with 16-d item vectors (the conftest's version: 8-d): another vector space."""
    return WIDE_MODEL


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
    assert all(r.model_version.startswith(new.version) and r.items for r in res.recs)
    for u in ("u1", "u2", "u3", "u4"):
        st = UserState.from_bytes(store.data[u])
        assert st.space == new.version and st.dim == new.dim and st.emb.shape == (new.dim,), u
    # u1's rebuilt embedding is the one the same events give a worker that always ran the new model
    fresh = DictStore()
    await Pipeline(settings(), new).process(
        [msg(ev(1, "u1", "71053")), msg(ev(2, "u1", "22633", etype="view"), 1), msg(ev(6, "u1", "21730"), 2)], fresh
    )
    np.testing.assert_allclose(
        UserState.from_bytes(store.data["u1"]).emb, UserState.from_bytes(fresh.data["u1"]).emb, rtol=1e-5, atol=1e-6
    )


async def test_a_redelivered_event_writes_the_user_s_state_again(pipeline):
    """The state may be only in the local store (a crash lost its changelog write, and the commit
    waited for that write, so the event comes again): writing it again puts it in the changelog.
    tests/integration/test_crash_recovery.py is the end-to-end proof."""
    store = DictStore()
    first = await pipeline.process([msg(ev(1, "u1", "71053"))], store)
    state = store.data["u1"]
    writes = store.writes
    again = await pipeline.process([msg(ev(1, "u1", "71053"))], store)
    assert (first.applied, again.applied, again.duplicates) == (1, 0, 1)
    assert store.writes == writes + 1
    assert UserState.from_bytes(store.data["u1"]).seen_set == UserState.from_bytes(state).seen_set
