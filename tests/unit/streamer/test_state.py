"""Stage 2, per-user state (streamer/state.py): idempotent per event id, erased on request; through
the pipeline on the tiny model and an in-memory store."""

from __future__ import annotations

from streamer.state import UserState
from tests.unit.streamer.helpers import T0, DictStore, ev, msg


async def test_duplicate_changes_state_once(pipeline):
    store = DictStore()
    await pipeline.process([msg(ev(1)), msg(ev(2, item="22633"), 1)], store)
    before = UserState.from_bytes(store.data["u1"]).fingerprint()
    res = await pipeline.process([msg(ev(1), 2), msg(ev(2, item="22633"), 3)], store)
    assert res.duplicates == 2 and res.applied == 0
    assert UserState.from_bytes(store.data["u1"]).fingerprint() == before
    assert [r.user_id for r in res.recs] == ["u1"]  # still re-published


async def test_erase_user(pipeline):
    store = DictStore()
    await pipeline.process([msg(ev(1))], store)
    res = await pipeline.process([msg({"event_id": "x", "user_id": "u1", "type": "erase_user", "ts": T0}, 1)], store)
    assert res.erased == ["u1"] and "u1" not in store.data


def _one_at_a_time(emb, emb_ts, events, half_life_ms):
    """The embedding rule as the worker applied it per event before ``add_to_embedding`` batched it."""
    import math

    import numpy as np

    for vec, weight, ts in events:
        if emb is None:
            emb, emb_ts = np.zeros(len(vec), dtype=np.float32), ts
        if ts >= emb_ts:
            if ts > emb_ts:
                emb *= np.float32(math.pow(0.5, (ts - emb_ts) / half_life_ms))
                emb_ts = ts
            emb += np.float32(weight) * vec
        else:
            emb += np.float32(weight * math.pow(0.5, (emb_ts - ts) / half_life_ms)) * vec
    return emb, emb_ts


def test_embedding_batch_is_bit_identical_to_one_event_at_a_time():
    """Events in and out of time order, equal times, tiny values (underflow, signed zeros): the same bits."""
    import numpy as np

    rng = np.random.default_rng(7)
    half_life = 3_600_000.0
    for trial in range(200):
        n = int(rng.integers(1, 40))
        vecs = (rng.standard_normal((n, 16)) * 10.0 ** rng.integers(-40, 5, (n, 16))).astype(np.float32)
        ts = (10**9 + rng.integers(-3, 4, n) * rng.choice([0, 1, 1_000_000, 400_000_000], n)).tolist()
        weights = rng.choice([1.0, 3.0, 5.0, -1.0, 0.25], n).tolist()
        events = list(zip(vecs, weights, ts))
        start = None if trial % 2 else (rng.standard_normal(16) * 1e-38).astype(np.float32)
        st = UserState(dim=16, emb=None if start is None else start.copy(), emb_ts=10**9)
        st.add_to_embedding(events[: n // 2], half_life)  # in two batches, as two micro-batches would
        st.add_to_embedding(events[n // 2 :], half_life)
        want, want_ts = _one_at_a_time(None if start is None else start.copy(), 10**9, events, half_life)
        assert st.emb.tobytes() == want.tobytes() and st.emb_ts == want_ts
