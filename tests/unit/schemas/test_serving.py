"""schemas.serving: candidate merging and list assembly shared by the worker and the job."""

from __future__ import annotations

import numpy as np
import pytest

from schemas.serving import (
    CandidateQuota,
    ListParams,
    assemble,
    history_order,
    merge_sources,
    order_with_search,
    top_rows,
)


def test_merge_sources_priority_quota_and_cap():
    offers = [
        ("history", [5, 6], 10),
        ("covis", [6, 7, 8, 9], 2),
        ("ann", [-1, 9, 7, 10], 2),
        ("trending", [1, 2, 3, 4], 10),
    ]
    rows, sources, pos = merge_sources(7, offers)
    # 6 stays history; covis adds 7, 8 (quota 2); ann skips the HNSW pad -1 and 7, adds 9, 10; trending fills to 7
    assert rows == [5, 6, 7, 8, 9, 10, 1]
    assert sources == ["history", "history", "covis", "covis", "ann", "ann", "trending"]
    assert pos == [0, 1, 1, 2, 1, 3, 0]


def test_quota_matches_worker_shares():
    q = CandidateQuota(200)
    assert (q.history, q.per_source) == (100, 50)
    assert CandidateQuota(2).per_source == 1


def test_history_order_weight_then_recency_then_given_order():
    w = np.array([1.0, 3.0, 1.0, 1.0])
    last = np.array([10, 0, 20, 10])
    assert history_order(w, last, 10).tolist() == [1, 2, 0, 3]
    assert history_order(w, last, 2).tolist() == [1, 2]


def test_top_rows_ties_to_lower_index_and_positive_only():
    s = np.array([0.0, 2.0, 1.0, 2.0, -1.0])
    assert top_rows(s, 3).tolist() == [1, 3, 2]
    assert top_rows(s, 5).tolist() == [1, 3, 2]
    assert top_rows(s, 5, positive=False).tolist() == [1, 3, 2, 0, 4]


def test_assemble_min_new_replaces_the_lowest_own_items_and_keeps_score_order():
    scores = np.array([9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0])
    new = np.array([False, False, False, True, False, True, True])
    assert assemble(scores, new, ListParams(4, 0)) == [0, 1, 2, 3]
    # at least 3 new among 4: the best own item stays, the two weakest own ones give way
    assert assemble(scores, new, ListParams(4, 3)) == [0, 3, 5, 6]
    # fewer new candidates than asked: all of them, own ones fill the rest
    assert assemble(scores, new, ListParams(6, 5)) == [0, 1, 2, 3, 5, 6]
    assert assemble(scores[:2], new[:2], ListParams(4, 2)) == [0, 1]


def test_order_with_search_pins_best_matches_on_top_of_the_assembled_list():
    scores = np.array([3.0, 2.0, 1.0, 0.5])
    qsim = np.array([0.1, 0.2, 0.9, 0.3])
    order, final = order_with_search(scores, qsim, [0, 1, 2], 3, 1)
    assert order == [2, 0, 1]
    assert final[2] == 3.0 + 2.0 + 0.9
    assert order_with_search(scores, None, [1, 0], 2, 1)[0] == [1, 0]


def test_list_params_from_manifest():
    assert ListParams.from_manifest({}, 20) == ListParams(20, 0)
    assert ListParams.from_manifest({"list_params": {"size": 20, "min_new": 10}}, 8) == ListParams(8, 8)


def test_item_neighbours_aggregate_offer_and_scores():
    from scipy import sparse

    from schemas.serving import ItemNeighbours

    # item 0's neighbours: 1 (0.5), 2 (0.25); item 1's: 0 (0.5), 2 (0.5) (ties: lower row first); 3: none
    sim = sparse.csr_matrix(
        (np.array([0.5, 0.25, 0.5, 0.5]), (np.array([0, 0, 1, 1]), np.array([1, 2, 2, 0]))), shape=(4, 4)
    )
    nb = ItemNeighbours.from_sparse(sim, k=2)
    assert nb.rows.tolist() == [[1, 2], [0, 2], [-1, -1], [-1, -1]]
    rows, score, anchor = nb.aggregate(np.array([1, 0, 0, 9]))  # repeats and rows outside ignored
    assert rows.tolist() == [0, 1, 2] and score.tolist() == [0.5, 0.5, 0.75] and anchor.tolist() == [1, 0, 1]
    top, anc = nb.offer(np.array([0, 1]), 5)
    assert top.tolist() == [2] and anc.tolist() == [1]  # own items are never offered
    top, _ = nb.offer(np.array([0]), 1)
    assert top.tolist() == [1]  # 0.5 beats 0.25
    assert ItemNeighbours.score_at(nb.aggregate(np.array([0])), np.array([2, 3, 1])).tolist() == [0.25, 0.0, 0.5]
    assert nb.aggregate(np.array([3]))[0].tolist() == []


def test_list_scores_add_the_weighted_knn_score():
    from schemas.serving import list_scores

    s, knn = np.array([1.0, 3.0, 0.5, 0.2, 0.1]), np.array([5.0, 0.0, 0.0, 1.0, 3.0])
    new = np.array([False, False, True, True, True])
    assert list_scores(s, knn, ListParams(2, 0), new).tolist() == s.tolist()  # plain: the ranker's score
    got = list_scores(s, knn, ListParams(2, 0, knn_weight=1.0), new)
    # own items keep the ranker's score (item 0's large kNN score does not move it); new items follow
    # below every own item, ordered by ranker + kNN: 4 (3.1), 3 (1.2), 2 (0.5)
    assert got[:2].tolist() == [1.0, 3.0] and list(np.argsort(-got)) == [1, 0, 4, 3, 2]
    assert got[new].max() < got[~new].min()
    assert list_scores(s, None, ListParams(2, 0, knn_weight=1.0), new)[2:].tolist() == pytest.approx(
        [0.0, -0.3, -0.4]
    )  # just below the weakest own item (1.0 - 1)
    # a user with only new candidates: their discovery order, nothing else
    assert list(np.argsort(-list_scores(s, knn, ListParams(2, 0, knn_weight=1.0), np.ones(5, bool)))) == [0, 4, 1, 3, 2]
    assert ListParams.from_manifest({"list_params": {"min_new": 3, "knn_weight": 0.3}}, 20) == ListParams(20, 3, 0.3)
