"""The rolling-cut study: its windows, its own-item orderings and its grading, on hand-made data."""

from __future__ import annotations

import numpy as np
import pytest

from exporters.dataset import SplitSpec, build_interactions
from exporters.rolling_cuts import Window, knn_scores, own_item_scores, run, split_at, table, windows
from tests.unit.exporters.test_evaluation_rules import ms, retail

CUTS = SplitSpec(test_cut=ms(2011, 10, 1), val_cut=ms(2011, 9, 1))
T1, T2, T3 = ms(2011, 7, 10), ms(2011, 8, 10), ms(2011, 8, 20)
ROWS = [
    ("u1", "A", T1, "purchase"),  # basket 1 of u1: A opens it, then B
    ("u1", "B", T1, "purchase"),
    ("u1", "B", T2, "purchase"),  # basket 2: B opens it, then A
    ("u1", "A", T2, "purchase"),
    ("u1", "A", T3, "purchase"),  # basket 3: A
    ("u2", "C", T1, "purchase"),
    ("u2", "A", T1, "purchase"),
    ("u1", "A", ms(2011, 9, 5), "purchase"),  # u1's validation target: A (a rebuy)
    ("u2", "B", ms(2011, 9, 6), "purchase"),  # u2's: B, new to u2
    ("u1", "C", ms(2011, 10, 2), "purchase"),  # test: u1 C (new), u2 none
]


@pytest.fixture()
def inter():
    return build_interactions(retail(ROWS), CUTS)


def test_windows_step_back_from_the_validation_cut_and_end_with_the_test(inter) -> None:
    got = windows(inter, 3)
    width = ms(2011, 10, 1) - ms(2011, 9, 1)
    assert [w.name for w in got] == ["val-2", "val-1", "val", "test"]
    assert got[2] == Window("val", ms(2011, 9, 1), ms(2011, 10, 1))
    assert got[0].cut == ms(2011, 9, 1) - 2 * width and got[0].end == got[1].cut and got[1].end == got[2].cut
    assert got[3].cut == ms(2011, 10, 1) and got[3].end > ms(2030, 1, 1)


def test_own_item_orderings(inter) -> None:
    split = split_at(inter, "next-item", Window("val", ms(2011, 9, 1), ms(2011, 10, 1)))
    users = [inter.user_ids[u] for u in split.case_users]
    row = users.index("u1")
    col = {i: k for k, i in enumerate(inter.item_ids)}
    got = {name: m.toarray()[row] for name, m in own_item_scores(inter, split).items()}
    assert (got["personal frequency"][[col["A"], col["B"], col["C"]]] == [3, 2, 0]).all()
    assert (got["frequency + opens"][[col["A"], col["B"]]] == [3 + 2, 2 + 1]).all()  # A opens baskets 1 and 3
    decayed = got["basket-decayed frequency (0.9 per basket)"]
    assert decayed[col["A"]] == pytest.approx(0.81 + 0.9 + 1.0) and decayed[col["B"]] == pytest.approx(0.81 + 0.9)
    # the 90 days before 2011-09-01 start on 2011-06-03: every line counts twice
    assert (got["frequency + last 90 days"][[col["A"], col["B"]]] == [6, 4]).all()


def test_grading_and_table(inter) -> None:
    results = run(inter, 2)
    own = results["next-item (own items)"]["personal frequency"]
    assert list(own) == ["val-1", "val", "test"]
    # validation: u1's target A is u1's most frequent item (rank 1); u2's target B is not u2's
    # (rank 3: C and A own, then B)
    assert own["val"].tolist() == pytest.approx([1.0, 1 / np.log2(4)])
    # val-1 (from 2011-08-02): u1's first line is B (basket 2), tied with A at one purchase each;
    # the tie rule puts A (2 events before the cut) first: rank 2
    assert own["val-1"].tolist() == pytest.approx([1 / np.log2(3)])
    text = table(results)
    assert "| personal frequency |" in text and "| item-kNN K=20 sim^2 |" in text


def test_knn_powers_change_scores_not_neighbours(inter) -> None:
    split = split_at(inter, "next-new", Window("val", ms(2011, 9, 1), ms(2011, 10, 1)))
    fns = knn_scores(inter, split)
    cases = np.arange(len(split))
    s1, s2 = fns["item-kNN K=20 sim^1"](cases), fns["item-kNN K=20 sim^2"](cases)
    assert ((s1 > 0) == (s2 > 0)).all() and (s2 <= s1 + 1e-12).all() and (s1 > 0).any()


def test_top_k_per_row_keeps_the_largest_lower_column_on_ties() -> None:
    from scipy import sparse

    from exporters.rolling_cuts import _top_k_per_row

    w = sparse.csr_matrix(np.array([[0.0, 0.5, 0.5, 0.9], [0.2, 0.0, 0.0, 0.0]]))
    got = _top_k_per_row(w, 2).toarray()
    assert got.tolist() == [[0.0, 0.5, 0.0, 0.9], [0.2, 0.0, 0.0, 0.0]]
