"""List assembly (streamer/lists.py, schemas/serving.py): the version's list parameters, through the
pipeline on the tiny model."""

from __future__ import annotations

from streamer.model import ModelBundle, latest_version_dir
from streamer.pipeline import Pipeline
from tests.unit.streamer.helpers import DictStore, ev, msg, settings


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
