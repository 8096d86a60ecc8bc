"""The rebuy score: its features (schemas.repeat) computed by the worker from its state and by the
offline evaluator from the log, its fit (exporters.repeat), and the same list from both."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from exporters.dataset import build_interactions, make_split
from exporters.repeat import REBUY_VARIANTS, fit_rebuy, fit_subset, own_inputs, repeat_rates
from exporters.served import candidate_sets, own_items, served_lists, served_points, served_rebuy_inputs
from exporters.stacking import case_features
from schemas.ranking import DAY_MS, EVENT_TYPE_IDS, EVENT_WEIGHTS
from schemas.repeat import REPEAT_FEATURES, RepeatRates, repeat_features
from schemas.serving import CandidateQuota, ListParams, list_scores
from streamer.candidates import Candidates
from streamer.items import ItemIndex
from streamer.lists import build_list, rebuy_inputs
from streamer.state import UserState
from tests.unit.exporters.test_evaluation_rules import AFTER, BEFORE, CUTS, retail

D = DAY_MS
ROWS = [
    # u1 rebuys A every 10 days, B after 40 days, and views C
    ("u1", "A", BEFORE - 40 * D, "purchase"),
    ("u1", "B", BEFORE - 40 * D, "purchase"),
    ("u1", "A", BEFORE - 30 * D, "purchase"),
    ("u1", "B", BEFORE - 30 * D + 1, "cancel"),
    ("u1", "A", BEFORE - 20 * D, "purchase"),
    ("u1", "C", BEFORE - 2 * D, "view"),
    ("u1", "B", BEFORE, "purchase"),
    ("u1", "D", BEFORE, "purchase"),
    ("u2", "A", BEFORE - 35 * D, "purchase"),
    ("u2", "C", BEFORE - 35 * D, "purchase"),
    ("u2", "C", BEFORE - 5 * D, "purchase"),
    ("u2", "E", BEFORE - D, "add_to_cart"),
    ("u3", "D", BEFORE - 3 * D, "purchase"),
    ("u3", "E", BEFORE - 3 * D, "purchase"),
    ("u3", "D", BEFORE, "purchase"),
    ("u1", "A", AFTER, "purchase"),  # u1: a rebuy
    ("u2", "D", AFTER, "purchase"),  # u2: new
    ("u3", "E", AFTER, "purchase"),  # u3: a rebuy
]
SEQ_LEN = 4  # the ranker's sequence: shorter than u1's history


def worker_state(inter, user: str, upto: int) -> UserState:
    """The worker's state of ``user`` after applying their events before ``upto`` in log order."""
    st = UserState(dim=2)
    u = inter.user_ids.index(user)
    type_name = {v: k for k, v in EVENT_TYPE_IDS.items()}
    for e in np.flatnonzero((inter.users == u) & (inter.ts < upto)):
        st.apply(
            f"e{e}",
            type_name[int(inter.types[e])],
            inter.item_ids[inter.items[e]],
            int(inter.ts[e]),
            None,
            max_seq_len=50,  # the worker's default STREAMREC_MAX_SEQ_LEN
            dedup_window=100,
            half_life_ms=14 * D,
        )
    return st


def worker_index(inter) -> ItemIndex:
    index = ItemIndex(dim=2)
    index.add_many(list(inter.item_ids), np.ones((inter.n_items, 2), np.float32))
    return index


def worker_candidates(cands, feats, c: int) -> Candidates:
    """Case ``c``'s candidates as the worker holds them (``streamer.candidates.Candidates``)."""
    rows = cands.rows[c]
    return Candidates(rows, cands.sources[c].astype(np.int8), np.full(len(rows), -1), np.zeros(len(rows)), feats[c])


def setup():
    inter = build_interactions(retail(ROWS), CUTS)
    line = make_split(inter, "next-line")
    points = served_points(inter, line, SEQ_LEN)
    cands = candidate_sets(points, None, CandidateQuota(12))
    return inter, line, points, cands


def test_worker_state_gives_the_offline_features():
    inter, line, points, cands = setup()
    scores = [np.arange(len(r), dtype=np.float64)[::-1] for r in cands.rows]
    rates = repeat_rates(inter, line.fit)
    offline = served_rebuy_inputs(inter, line, points, cands, scores, None, rates)
    feats, _ = case_features(points, cands, None)
    index = worker_index(inter)
    params = ListParams(4, 1, rebuy=(1.0,) * len(REPEAT_FEATURES), rebuy_rates=rates)
    col = {n: i for i, n in enumerate(REPEAT_FEATURES)}
    for c, u in enumerate(line.case_users):
        user = inter.user_ids[u]
        st = worker_state(inter, user, CUTS.test_cut)
        cand = Candidates(
            cands.rows[c], cands.sources[c].astype(np.int8), cands.rows[c] * 0 - 1, 0 * scores[c], feats[c]
        )
        worker = rebuy_inputs(st, cand, scores[c], index, params, int(points.now[c]))
        np.testing.assert_allclose(worker, offline[c], rtol=1e-6, atol=1e-6)
        if user == "u1":
            x = dict(zip([inter.item_ids[r] for r in cands.rows[c]], offline[c]))
            # A: 3 purchases 10 days apart, the last 20 days before "now"; B: bought twice 40 days
            # apart (the data set keeps no cancellations: they are not interactions)
            assert x["A"][col["log_purchases"]] == pytest.approx(np.log(4))
            assert x["A"][col["log_interval"]] == pytest.approx(np.log1p(10.0))
            assert x["A"][col["log_due"]] == pytest.approx(np.log1p(20.0) - np.log1p(10.0))
            assert x["B"][col["log_purchases"]] == pytest.approx(np.log(3)) and x["B"][col["repeat"]] == 1
            assert x["B"][col["log_interval"]] == pytest.approx(np.log1p(40.0))
            assert x["C"][col["log_purchases"]] == 0 and x["C"][col["log_days_since"]] == pytest.approx(np.log(3))
            # the sequence features read u1's last 20 events (all 8 here, not the ranker's 4): the last
            # basket is B, D
            assert [x[i][col["last_basket"]] for i in "ABCD"] == [0, 1, 0, 1]
            assert x["A"][col["log_seq_count"]] == pytest.approx(np.log(4))
            assert x["A"][col["log_item_repeat_rate"]] == pytest.approx(np.log(rates.rates["A"]))
            new_rows = [r for r in cands.rows[c] if inter.item_ids[r] == "E"]
            assert new_rows and not offline[c][list(cands.rows[c]).index(new_rows[0]), 6:].any()  # new to u1


def test_old_state_without_first_time_still_loads_and_scores():
    inter, line, _points, _cands = setup()
    st = worker_state(inter, "u1", CUTS.test_cut)
    old = UserState.from_bytes(st.to_bytes())
    for k in old.items:
        old.items[k] = old.items[k][:3]  # as written before the first time was kept
    loaded = UserState.from_bytes(old.to_bytes())
    x = repeat_features(np.zeros(1), np.zeros((1, 5)), _inputs(loaded, "A"), BEFORE)
    col = {n: i for i, n in enumerate(REPEAT_FEATURES)}
    assert x[0, col["log_span"]] == 0 and x[0, col["log_interval"]] == 0  # first time unknown: no interval
    assert x[0, col["log_purchases"]] == pytest.approx(np.log(4))
    loaded.apply("new", "purchase", "A", BEFORE + D, None, max_seq_len=50, dedup_window=10, half_life_ms=14 * D)
    assert loaded.items["A"][:3] == [3 * EVENT_WEIGHTS["purchase"] + 1.0, BEFORE + D, 4]


def _inputs(st: UserState, item: str) -> np.ndarray:
    from schemas.repeat import state_inputs

    return state_inputs(st.items, st.seq, [item])


def test_worker_and_evaluator_build_the_same_list():
    inter, line, points, cands = setup()
    rates = repeat_rates(inter, line.fit)
    # a ranker that prefers the last candidates, and a rebuy score that prefers due repeats
    scores = [np.linspace(0, 1, len(r)) for r in cands.rows]
    w = np.zeros(len(REPEAT_FEATURES))
    for name, v in (("log_purchases", 1.0), ("abs_log_due", -0.7), ("last_basket", 0.3), ("log_item_repeat_rate", 0.5)):
        w[REPEAT_FEATURES.index(name)] = v
    params = ListParams(4, 1, 0.0, rebuy=tuple(w), rebuy_rates=rates)
    rebuy_x = served_rebuy_inputs(inter, line, points, cands, scores, None, rates)
    offline = served_lists(cands, None, own_items(inter, line), params, scores=scores, rebuy_x=rebuy_x)
    plain = served_lists(cands, None, own_items(inter, line), ListParams(4, 1), scores=scores)
    assert not np.array_equal(offline, plain)  # the rebuy score reorders the own items
    feats, _ = case_features(points, cands, None)
    index = ItemIndex(dim=2)
    index.add_many(list(inter.item_ids), np.ones((inter.n_items, 2), np.float32))
    for c, u in enumerate(line.case_users):
        st = worker_state(inter, inter.user_ids[u], CUTS.test_cut)
        cand = Candidates(
            cands.rows[c], cands.sources[c].astype(np.int8), cands.rows[c] * 0 - 1, 0 * scores[c], feats[c]
        )
        rec = build_list(
            inter.user_ids[u],
            st,
            cand,
            scores[c],
            index,
            params=params,
            model_version="v",
            variant="ranker",
            event_id="e",
            event_ts=int(points.now[c]),
        )
        got = [it.item_id for it in rec.items]
        assert got == [inter.item_ids[r] for r in offline[c] if r >= 0]


def test_rebuy_score_orders_own_items_only():
    new = np.array([False, True, False])
    x = np.zeros((3, len(REPEAT_FEATURES)))
    x[:, REPEAT_FEATURES.index("log_purchases")] = [0.0, 5.0, 2.0]
    w = tuple(1.0 if n == "log_purchases" else 0.0 for n in REPEAT_FEATURES)
    got = list_scores(np.array([3.0, 9.0, 1.0]), None, ListParams(3, 0, rebuy=w), new, rebuy_x=x)
    assert list(np.argsort(-got)) == [2, 0, 1]  # own items by purchases; the new item below them


def test_fit_learns_the_repeat_rate_and_skips_leave_one_out():
    rng = np.random.default_rng(0)
    groups = []
    for _ in range(300):
        x = rng.normal(size=(20, len(REPEAT_FEATURES)))
        groups.append((x, int(np.argmax(x[:, REPEAT_FEATURES.index("log_item_repeat_rate")] + 0.3 * x[:, 0]))))
    fit = fit_subset(groups, REBUY_VARIANTS["ranker + item repeat rate"])
    w = np.asarray(fit.weights)
    assert np.argmax(w) == REPEAT_FEATURES.index("log_item_repeat_rate") and w[0] > 0
    assert np.count_nonzero(w) == 2 and fit.groups == 300
    inter, line, _p, _c = setup()
    loo = dataclasses.replace(line, protocol="loo")
    assert fit_rebuy(inter, loo, None, SEQ_LEN, 7.0, lambda pts: None) == {}


def test_repeat_rates_shrink_to_the_overall_rate():
    inter, line, _p, _c = setup()
    rates = repeat_rates(inter, line.fit)
    # A: u1 came back (3 moments), u2 did not -> (1 + 2 p) / (2 + 2); E: u2 (cart) and u3, neither came back
    buyers = {"A": 2, "B": 1, "C": 2, "D": 2, "E": 2}
    back = {"A": 1, "B": 1, "C": 1, "D": 1, "E": 0}
    p = sum(back.values()) / sum(buyers.values())
    assert rates.prior == pytest.approx(p)
    for i in buyers:
        assert rates.rates[i] == pytest.approx((back[i] + 2 * p) / (buyers[i] + 2), abs=1e-6)
    assert RepeatRates.from_dict(rates.as_dict()).rates == rates.rates
    params = ListParams.from_manifest(
        {"list_params": ListParams(20, 5, rebuy=(1.0,) * 16, rebuy_rates=rates).as_dict()}, 20
    )
    assert params.rebuy_rates.lookup(["A", "zzz"]).tolist() == [rates.rates["A"], rates.prior]
    with pytest.raises(ValueError, match="rebuy"):
        ListParams.from_manifest({"list_params": {"rebuy": {"features": ["x"], "weights": [1.0]}}}, 20)


def test_sequence_features_read_a_fixed_window():
    from schemas.repeat import SEQ_WINDOW, sequence_stats

    seq = [("old", 1, 0)] + [("x", 5, t) for t in range(1, SEQ_WINDOW + 1)]
    counts, basket = sequence_stats(seq)
    assert counts == {"x": SEQ_WINDOW} and basket == {"x"}  # "old" is outside the window


def test_own_inputs_read_only_events_up_to_the_point():
    inter, line, points, cands = setup()
    u1 = inter.user_ids.index("u1")
    first = int(np.flatnonzero(inter.users == u1)[0])
    got = own_inputs(inter, line.visible, np.array([first]), [np.array([inter.item_ids.index("A")])])[0]
    assert got[0].tolist() == [1.0, BEFORE - 40 * D, 1, BEFORE - 40 * D, 1, 1]


def test_paired_gain_needs_a_clear_validation_win():
    from exporters.served import paired_gain

    old = {"a": np.zeros(400)}
    clear = {"a": np.r_[np.full(100, 0.5), np.zeros(300)]}
    noisy = {"a": np.r_[np.full(10, 0.5), np.full(9, -0.5), np.zeros(381)]}
    assert paired_gain(clear, old)[0] > 2 and paired_gain(clear, old)[1] == pytest.approx(0.125)
    assert paired_gain(noisy, old)[0] < 2
    assert paired_gain(old, old) == (0.0, 0.0)
