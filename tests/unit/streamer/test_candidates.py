"""Candidate sources and filters (streamer/candidates.py), through the pipeline on the tiny model."""

from __future__ import annotations

import numpy as np

from streamer.candidates import rank_in_groups, stable_argsort
from streamer.model import ModelBundle, latest_version_dir
from streamer.pipeline import Pipeline
from tests.unit.streamer.helpers import DictStore, ev, msg, settings


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


def test_vectorised_sorts_equal_the_stable_sorts_they_replace():
    """``stable_argsort`` = ``np.argsort(kind="stable")`` and ``rank_in_groups`` = the three-key
    ``np.lexsort``, ties included, on the composite-key path and on the fallback for huge keys."""
    rng = np.random.default_rng(7)
    for n, high in ((0, 5), (1, 5), (500, 7), (5000, 300), (300, 1 << 61)):
        keys = rng.integers(0, high, n, dtype=np.int64)
        np.testing.assert_array_equal(stable_argsort(keys), np.argsort(keys, kind="stable"))
        groups = np.sort(rng.integers(0, 9, n))
        score = rng.integers(0, 4, n).astype(np.float64) / 2  # many ties
        tie = rng.permutation(n)
        np.testing.assert_array_equal(rank_in_groups(groups, score, tie), np.lexsort((tie, -score, groups)))
        np.testing.assert_array_equal(rank_in_groups(groups, score), np.lexsort((np.arange(n), -score, groups)))
        score[: n // 10] = np.nan  # NaN last in its group, and -0.0 equal to 0.0, as in lexsort
        score[n // 10 : n // 5] = -0.0
        for g in (rng.permutation(groups), groups * 40_000):  # unsorted groups; groups beyond 16 bits
            np.testing.assert_array_equal(rank_in_groups(g, score, tie), np.lexsort((tie, -score, g)))
            np.testing.assert_array_equal(rank_in_groups(g, score), np.lexsort((np.arange(n), -score, g)))


def test_recent_counts_are_the_events_of_the_last_days():
    """``RecentCounts`` counts in dicts and moves them into its arrays when read or when a day's
    bucket is reused: the counts are exactly the events of the last ``days`` days (rows past
    the arrays' capacity included)."""
    from streamer.candidates import DAY_MS, RecentCounts

    rng = np.random.default_rng(3)
    rc = RecentCounts(days=3, capacity=4)
    log = []
    for _ in range(2000):
        day = int(rng.integers(0, 4)) + len(log) // 200  # time moves on, with stragglers
        row, etype = int(rng.integers(0, 12)), str(rng.choice(["purchase", "view", "cancel", "click"]))
        rc.add(row, etype, day * DAY_MS + int(rng.integers(0, DAY_MS)))
        log.append((row, etype, day))
        if len(log) % 150 == 0:
            newest = max(d for _r, _e, d in log)
            want = [
                (
                    sum(1 for r, e, d in log if r == row and e == "purchase" and d > newest - 3),
                    sum(1 for r, e, d in log if r == row and e in ("view", "click") and d > newest - 3),
                    3,
                )
                for row in range(14)
            ]
            assert rc.counts(list(range(14))) == want
