"""Stage 1, ingest (streamer/ingest.py): raw messages become contract events or dead letters with
the precise reason code, through the pipeline on the tiny model."""

from __future__ import annotations

import orjson

from tests.unit.streamer.helpers import T0, DictStore, ev, msg


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
