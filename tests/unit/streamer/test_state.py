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
