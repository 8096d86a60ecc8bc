"""Protocol splits and the full-ranking evaluator on hand-made data with known answers."""

from __future__ import annotations

from datetime import datetime, timezone
from types import SimpleNamespace

import numpy as np
import pytest

from exporters.baselines import KnnSimilarity, fit_popularity
from exporters.dataset import SplitSpec, build_interactions, make_split
from exporters.evaluate import evaluate, tie_order
from schemas.models import Event


def ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=timezone.utc).timestamp() * 1000)


def retail(rows: list[tuple[str, str, int, str]]):
    """online_retail-like data set from (user, item, ts, type) rows in file order."""
    events = [Event(event_id=f"e{i}", user_id=u, type=t, ts=ts, item_id=it) for i, (u, it, ts, t) in enumerate(rows)]
    items = {
        it: SimpleNamespace(item_id=it, title=f"item {it}", description=None, category=None) for _, it, _, _ in rows
    }
    return SimpleNamespace(name="online_retail", events=events, items=items)


BEFORE, AFTER = ms(2011, 9, 20), ms(2011, 10, 5)
CUTS = SplitSpec(test_cut=ms(2011, 10, 1), val_cut=ms(2011, 9, 1))  # online_retail's BASELINES.md dates

ROWS = [
    ("u1", "A", BEFORE, "purchase"),
    ("u1", "B", BEFORE, "purchase"),
    ("u2", "A", BEFORE, "purchase"),
    ("u2", "C", BEFORE, "purchase"),
    ("u3", "D", BEFORE, "purchase"),
    ("u1", "X", BEFORE, "cancel"),  # not an interaction
    ("u1", "B", AFTER, "purchase"),  # u1 next-line target: B (repeat); next-new: C
    ("u1", "C", AFTER, "purchase"),
    ("u2", "D", AFTER + 1000, "purchase"),  # u2: D, new for u2
    ("u4", "A", AFTER, "purchase"),  # no history before the cut: not a test case
]


def test_cut_protocols_pick_first_line_and_first_new_line() -> None:
    inter = build_interactions(retail(ROWS), CUTS)
    assert "X" not in inter.item_ids, "cancellations are not interactions"
    item = {i: k for k, i in enumerate(inter.item_ids)}
    user = {u: k for k, u in enumerate(inter.user_ids)}
    line = make_split(inter, "next-line", "test")
    got = {inter.user_ids[u]: inter.item_ids[t] for u, t in zip(line.case_users, line.case_targets)}
    assert got == {"u1": "B", "u2": "D"}
    new = make_split(inter, "next-new", "test")
    got = {inter.user_ids[u]: inter.item_ids[t] for u, t in zip(new.case_users, new.case_targets)}
    assert got == {"u1": "C", "u2": "D"}
    assert new.modes == ("ex", "in") and line.modes == ("in",)
    assert not line.fit[(inter.users == user["u1"]) & (inter.items == item["C"])].any()


def test_ties_go_to_more_training_events_then_lower_id_as_text() -> None:
    rows = [("u0", i, BEFORE, "purchase") for i in ["9", "10", "10", "2"]] + [("u0", "2", AFTER, "purchase")]
    rows += [("u1", "9", BEFORE, "purchase"), ("u1", "9", AFTER, "purchase")]
    inter = build_interactions(retail(rows), CUTS)
    split = make_split(inter, "next-line", "test")
    order = [inter.item_ids[i] for i in tie_order(inter, split.fit)]
    assert order == ["10", "9", "2"]  # "10" and "9" have 2 events each, "10" < "9" as text
    # All-equal scores: the ranking is the tie order, so u0's target "2" is third, u1's "9" second.
    res = evaluate(lambda cases: np.zeros((len(cases), inter.n_items)), inter, split, k=2)["in"]
    assert res.hr == pytest.approx(0.5) and res.ndcg == pytest.approx(0.5 / np.log2(3))
    assert res.mrr == pytest.approx(0.25) and res.cov == pytest.approx(2 / 3)


def test_text_order_of_ids_breaks_equal_counts() -> None:
    rows = [("u0", i, BEFORE, "purchase") for i in ["9", "10", "2"]] + [("u0", "10", AFTER, "purchase")]
    inter = build_interactions(retail(rows), CUTS)
    split = make_split(inter, "next-line", "test")
    assert [inter.item_ids[i] for i in tie_order(inter, split.fit)] == ["10", "2", "9"]


def test_history_excluded_mode() -> None:
    """Each case scores A (in both users' history) 2 and its own target 1: "in" ranks the target
    second, "ex" removes A and ranks it first."""
    inter = build_interactions(retail(ROWS), CUTS)
    split = make_split(inter, "next-new", "test")
    a = inter.item_ids.index("A")

    def scorer(cases: np.ndarray) -> np.ndarray:
        s = np.zeros((len(cases), inter.n_items))
        s[:, a] = 2.0
        s[np.arange(len(cases)), split.case_targets[cases]] = 1.0
        return s

    res = evaluate(scorer, inter, split, k=1)
    assert res["in"].hr == 0.0 and res["ex"].hr == 1.0
    assert res["ex"].mrr == 1.0 and res["ex"].cov == pytest.approx(2 / 4)


def test_leave_one_out_uses_timestamp_then_file_order() -> None:
    t = ms(1998, 1, 1)
    rows = [
        ("u1", "A", t, "rating"),
        ("u1", "C", t + 5, "rating"),
        ("u1", "B", t + 5, "rating"),
        ("u2", "A", t, "rating"),
        ("u2", "B", t + 1, "rating"),
        ("u2", "C", t + 2, "rating"),
    ]
    ds = retail(rows)
    ds.name = "movielens"
    inter = build_interactions(ds, SplitSpec(split="loo"))
    test, val = make_split(inter, "loo", "test"), make_split(inter, "loo", "validation")
    got = {inter.user_ids[u]: inter.item_ids[i] for u, i in zip(test.case_users, test.case_targets)}
    assert got == {"u1": "B", "u2": "C"}  # u1: C and B share a timestamp; file order puts B last
    got = {inter.user_ids[u]: inter.item_ids[i] for u, i in zip(val.case_users, val.case_targets)}
    assert got == {"u1": "C", "u2": "B"}
    assert test.fit.sum() == 2 and test.visible.sum() == 4  # validation events are input, not fit


def test_popularity_and_knn_similarity() -> None:
    inter = build_interactions(retail(ROWS), CUTS)
    split = make_split(inter, "next-line", "test")
    pop = fit_popularity(inter, split)(np.arange(1))[0]
    assert dict(zip(inter.item_ids, pop)) == {"A": 2, "B": 1, "C": 1, "D": 1}
    sim = KnnSimilarity(inter, split.fit).top_k(1).toarray()
    a, b, c = (inter.item_ids.index(x) for x in "ABC")
    # A is bought by u1 and u2, B by u1 and C by u2: cos(A, B) = cos(A, C) = 1/sqrt(2); the tie
    # for A's single neighbour goes to B (same count, lower id).
    assert sim[a, b] == pytest.approx(1 / np.sqrt(2)) and sim[a, c] == 0.0
    assert sim[b, a] == pytest.approx(1 / np.sqrt(2)) and sim[a, a] == 0.0
