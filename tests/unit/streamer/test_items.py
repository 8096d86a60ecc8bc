"""Stage 3, the item index (streamer/items.py): vectors for every kind of item, growth, popularity
in event time, nearest neighbours."""

from __future__ import annotations

import numpy as np

from schemas import Item
from schemas.ranking import compose_item_vector
from streamer.items import ItemIndex, hash_vector

DAY = 86_400_000


def test_an_item_first_seen_in_an_event_gets_the_same_vector_on_every_worker():
    a, b = ItemIndex(dim=8), ItemIndex(dim=8)
    row = a.ensure("NEW-1")
    assert a.ensure("NEW-1") == row and len(a) == 1  # created once
    b.ensure("OTHER")
    np.testing.assert_array_equal(a.vecs[row], b.vecs[b.ensure("NEW-1")])
    np.testing.assert_allclose(np.linalg.norm(a.vecs[row]), 1.0, rtol=1e-6)


def test_catalog_records_use_text_then_category_then_the_id_hash():
    idx = ItemIndex(dim=4)
    text_vec = np.asarray([[1.0, 0.0, 0.0, 0.0]], np.float32)
    cat = {"toys": np.asarray([0.0, 0.5, 0.0, 0.0], np.float32)}
    items = [
        Item(item_id="T", title="a lantern", category="toys"),
        Item(item_id="C", category="toys", available=False),
        Item(item_id="H"),
    ]
    rows = idx.upsert_items(items, text_vec, cat)
    np.testing.assert_allclose(idx.vecs[rows[0]], compose_item_vector(text_vec[0], cat["toys"]))
    np.testing.assert_allclose(idx.vecs[rows[1]], compose_item_vector(None, cat["toys"]))
    np.testing.assert_allclose(idx.vecs[rows[2]], hash_vector("H", 4))
    assert idx.titles[rows[0]] == "a lantern" and idx.texts[rows[0]] == "a lantern"
    assert not idx.available[rows[1]] and idx.categories[rows[1]] == "toys"


def test_the_index_grows_past_its_capacity_and_finds_every_item():
    idx = ItemIndex(dim=8, capacity=4)
    ids = [f"i{n}" for n in range(50)]
    rows = [idx.ensure(i) for i in ids]
    assert idx.capacity >= 50 and rows == list(range(50))
    found, sims = idx.nearest(idx.vecs[rows], k=1)
    assert found[:, 0].tolist() == rows  # each item is its own nearest neighbour
    np.testing.assert_allclose(sims[:, 0], 1.0, atol=1e-5)


def test_trending_decays_in_event_time_and_skips_unavailable_items():
    idx = ItemIndex(dim=4, half_life_ms=DAY)
    old, new, gone = (idx.ensure(i) for i in ("old", "new", "gone"))
    idx.bump(old, 3.0, ts=10 * DAY)
    idx.bump(gone, 9.0, ts=10 * DAY)
    idx.bump(new, 1.0, ts=12 * DAY)  # two half-lives later: old's 3 count 0.75, gone's 9 count 2.25
    assert idx.trending(3).tolist() == [gone, new, old]
    idx.set_metadata([Item(item_id="gone", available=False)])
    assert idx.trending(3).tolist() == [new, old]
    idx.bump(old, 1.0, ts=11 * DAY)  # a late event counts at its own time's weight: 1/2 now
    np.testing.assert_allclose(idx.popularity[old], 0.75 + 0.5)
    assert idx.trending(1).tolist() == [old]
    assert ItemIndex(dim=4).trending(5).size == 0
