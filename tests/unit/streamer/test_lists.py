"""List assembly (streamer/lists.py, schemas/serving.py): the version's list parameters, through the
pipeline on the tiny model."""

from __future__ import annotations

import numpy as np

from schemas.serving import ListParams, assemble, order_with_search
from streamer.candidates import CandidateBatch
from streamer.lists import _picks_plain
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


def test_batch_assembly_is_assemble_per_user_with_ties():
    """``lists._picks_plain`` (every user's ``assemble`` and search pins at once) picks exactly what
    ``schemas.serving.assemble`` and ``order_with_search`` pick user by user, with the same
    published scores, on coarse scores full of ties, users short of new items and empty users."""
    rng = np.random.default_rng(7)
    for trial in range(60):
        n_users = int(rng.integers(1, 9))
        counts = rng.integers(0, 40, n_users) * (rng.random(n_users) > 0.15)
        offsets = np.concatenate(([0], np.cumsum(counts)))
        n = int(offsets[-1])
        scores = [np.round(rng.normal(size=int(c)), 1).astype(np.float32) for c in counts]
        own = rng.random(n) < rng.uniform(0.2, 0.95)
        has_query = rng.random(n_users) < 0.3
        qsim = np.round(rng.random(n), 1).astype(np.float32)
        slots = [int(s) for s in rng.integers(0, 6, n_users)]
        batch = CandidateBatch(
            offsets=offsets,
            rows=np.arange(n),
            src=np.zeros(n, np.int8),
            ev_row=np.full(n, -1),
            ev_count=np.zeros(n),
            feats=np.zeros((n, 1), np.float32),
            knn=None,
            query_sim=qsim,
            queries=[None] * n_users,
            has_query=has_query,
            trending_evidence=None,
            own=own,
        )
        params = ListParams(size=int(rng.integers(1, 25)), min_new=int(rng.integers(0, 12)) * (trial % 4 != 0))
        every, published = _picks_plain(batch, scores, params, slots)
        at = 0
        for k in range(n_users):
            a, b = int(offsets[k]), int(offsets[k + 1])
            sc = np.asarray(scores[k], dtype=np.float64)
            order = assemble(sc, ~own[a:b], params)
            order, final = order_with_search(sc, qsim[a:b] if has_query[k] else None, order, params.size, slots[k])
            assert (every[at : at + len(order)] - a).tolist() == order
            assert published[at : at + len(order)].tolist() == final[order].tolist()
            at += len(order)
        assert at == len(every)
