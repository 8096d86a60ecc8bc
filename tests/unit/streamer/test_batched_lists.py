"""The batched hot path (``candidates.gather_batch``, ``OnnxRanker.score_padded``, ``lists.build_lists``)
gives the same lists as the per-user path it replaced (``reference_lists``): same items in the
same order, same sources and reasons, scores within float tolerance (and ``build_lists`` exactly
``build_list``'s list per user), on random users built by
real event batches (co-visitation, trending, searches, cancels, unknown and text-less items, both
A/B arms), with the tiny real ONNX model."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest

import streamer.pipeline
from schemas import Item
from schemas.serving import ItemNeighbours
from schemas.stacking import STACK_FEATURES
from streamer.lists import build_list, build_lists
from streamer.model import ModelBundle, latest_version_dir
from streamer.pipeline import Pipeline
from streamer.settings import Settings
from tests.unit.streamer.helpers import T0, DictStore, msg
from tests.unit.streamer.reference_lists import rank_reference

WORDS = "white metal lantern heart holder glass star frosted union jack hot water bottle cream cupid".split()
TYPES = ["view", "view", "click", "add_to_cart", "purchase", "purchase", "favorite", "rating", "cancel", "search"]


def random_catalog(rng: random.Random, n: int) -> list[Item]:
    items = []
    for i in range(n):
        kind = rng.random()
        if kind < 0.7:
            items.append(Item(item_id=f"i{i}", title=" ".join(rng.choices(WORDS, k=3)).upper()))
        elif kind < 0.85:
            items.append(Item(item_id=f"i{i}", category=f"c{i % 4}"))
        else:
            items.append(Item(item_id=f"i{i}", title="GONE " + rng.choice(WORDS), available=False))
    return items


def random_batches(rng: random.Random, users: int, items: int, batches: int, size: int):
    eid = 0
    for b in range(batches):
        out = []
        for _ in range(size):
            eid += 1
            u = f"u{rng.randrange(users)}"
            etype = rng.choice(TYPES)
            d = {"event_id": f"e{eid}", "user_id": u, "type": etype, "ts": T0 + eid * rng.randrange(1, 4) * 60_000}
            if etype == "search":
                d["query"] = " ".join(rng.choices(WORDS, k=2))
            else:  # a few items the catalog never announced (id-hash vectors)
                d["item_id"] = f"i{rng.randrange(items)}" if rng.random() < 0.93 else f"x{rng.randrange(20)}"
            out.append(msg(d, offset=eid))
        if rng.random() < 0.2 and out:  # a redelivered duplicate
            out.append(out[0])
        yield out


@pytest.mark.parametrize(
    "env",
    [
        {
            "STREAMREC_CANDIDATES": "40",
            "STREAMREC_LIST_SIZE": "10",
            "STREAMREC_VARIANTS": "ranker:0.5,control:0.5",
            "STREAMREC_FILTER_PURCHASED": "true",
            "STREAMREC_FILTER_LAST_VIEWED": "true",
        },
        {"STREAMREC_CANDIDATES": "200", "STREAMREC_LIST_SIZE": "20"},
        {"STREAMREC_CANDIDATES": "200", "STREAMREC_LIST_SIZE": "20", "min_new": "8"},
        {"STREAMREC_CANDIDATES": "200", "STREAMREC_LIST_SIZE": "20", "min_new": "5", "knn": "0.3"},
        {"STREAMREC_CANDIDATES": "200", "STREAMREC_LIST_SIZE": "20", "min_new": "5", "knn": "0.3", "stack": "1"},
        {"STREAMREC_CANDIDATES": "12", "STREAMREC_LIST_SIZE": "12", "STREAMREC_RANKING": "false"},
    ],
    ids=["small-filters-ab", "default", "min-new-slots", "knn-source", "stacked-score", "ranking-off"],
)
async def test_batched_lists_equal_per_user_lists(tiny_model_root, env, monkeypatch):
    rng = random.Random(len(env) * 1000 + int(env["STREAMREC_CANDIDATES"]))
    env = dict(env)
    min_new = int(env.pop("min_new", 0))  # the manifest's list_params (schemas.serving.ListParams)
    knn_weight = float(env.pop("knn", 0.0))  # > 0: the version ships item neighbours (random here)
    s = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "REDIS_URL": "redis://127.0.0.1:1/0"} | env)
    assert s.candidates == int(env["STREAMREC_CANDIDATES"])
    # fp32: the int8 file quantizes activations per batch tensor (dynamic ranges), so its scores
    # depend on which users share a ranker call; the batched path groups users differently
    pipe = Pipeline(s, ModelBundle.load(latest_version_dir(tiny_model_root), variant="fp32"))
    pipe.upsert_items(random_catalog(rng, 260))
    stack = tuple(rng.uniform(-1, 1) for _ in STACK_FEATURES) if env.pop("stack", None) else ()  # a stacked list score
    pipe.list_params = dataclasses.replace(pipe.list_params, min_new=min_new, knn_weight=knn_weight, stack=stack)
    if knn_weight:
        n, k = len(pipe.index), 8
        nb_rows = np.asarray([rng.sample(range(n), k) for _ in range(n)], dtype=np.int32)
        nb_rows[:, -2:] = -1  # fewer than k neighbours
        nb_sims = -np.sort(-np.asarray([[rng.random() for _ in range(k)] for _ in range(n)], dtype=np.float32), axis=1)
        pipe.index.neighbours = ItemNeighbours(nb_rows, nb_sims)

    compared = []
    batched = pipe._rank

    async def both(touched):
        new = await batched(touched)
        ref = await rank_reference(pipe, touched)
        compared.append((new, ref))
        return new

    pipe._rank = both

    def lists_as_one_by_one(user_ids, users, batch, scores, index, **kw):
        """``lists.build_lists`` must give exactly ``build_list``'s list for each user of the chunk."""
        out = build_lists(user_ids, users, batch, scores, index, **kw)
        for k, rec in enumerate(out):
            one = build_list(
                user_ids[k],
                users[k],
                batch.user(k),
                scores[k],
                index,
                params=kw["params"],
                model_version=kw["model_versions"][k],
                variant=kw["variants"][k],
                event_id=kw["event_ids"][k],
                event_ts=kw["event_ts"][k],
                search_slots=kw["search_slots"][k],
            )
            assert rec.replace(published_ts=0) == one.replace(published_ts=0)
        built.append(len(out))
        return out

    built = []
    monkeypatch.setattr(streamer.pipeline, "build_lists", lists_as_one_by_one)
    store = DictStore()
    for batch in random_batches(rng, users=40, items=300, batches=25, size=30):
        await pipe.process(batch, store)

    n_lists = n_items = 0
    sources = set()
    for new, ref in compared:
        assert [r.user_id for r in new] == [r.user_id for r in ref]
        for a, b in zip(new, ref):
            assert (a.variant, a.model_version, a.event_id, a.event_ts) == (
                b.variant,
                b.model_version,
                b.event_id,
                b.event_ts,
            )
            assert [i.item_id for i in a.items] == [i.item_id for i in b.items], a.user_id
            assert [i.source for i in a.items] == [i.source for i in b.items]
            assert [i.reason for i in a.items] == [i.reason for i in b.items]
            assert [i.title for i in a.items] == [i.title for i in b.items]
            assert [i.score for i in a.items] == pytest.approx([i.score for i in b.items], rel=1e-4, abs=1e-4)
            n_lists += 1
            n_items += len(a.items)
            sources |= {i.source for i in a.items}
    assert n_lists > 100 and n_items > 0.8 * n_lists * s.list_size and sum(built) == n_lists
    # the comparison covered every source (search and covis included)
    assert {"history", "covis", "ann", "trending", "search"} <= sources, sources
    assert ("knn" in sources) == bool(knn_weight), sources
