"""Rolling-origin check of simple list orderings: is a gain seen on one validation month real?

One validation month is few cases (online_retail: ~960 next-line cases), and list orderings that
win it often lose the next. This study re-runs the time protocol at several earlier cuts (each
window as long as the data set's validation window, stepping back from the validation cut) and
grades two families of orderings with the job's evaluator (full ranking, the protocol's tie rule):

* **next-item, the user's own items** (what the rebuy half of a served list can reach): personal
  frequency; + "opens" (times the item was the first line of one of the user's baskets, i.e. the
  first event at a new timestamp); a basket-decayed frequency (TIFU-kNN style: each basket
  weighs 0.9 ** baskets since); + the last 90 days' count. Items the user never touched score 0
  and fall back to the tie rule (popularity), as in the personal-frequency baseline.
* **next-new, item-kNN** (the discovery half): binary cosine, the K nearest neighbours per item,
  similarity ** P, the user's own items removed; K in 20 / 50 / 100, P in 1 / 2 / 3. The worker's
  knn source ships K = 20, P = 2 (``schemas.serving.ItemNeighbours``). Challengers that would plug
  into the same knn source (K neighbours with weights per item): RP3beta (Paudel et al. 2017:
  item -> user -> item transition probabilities ** alpha, divided by the target's popularity **
  beta; its best validated setting alpha 0.5, beta 0.5, K 20), cosine on the basket x item matrix
  (a basket = a user's events at one timestamp) alone and added to the user-level one, and an
  asymmetric cosine (co-count / (n_i ** a n_j ** (1 - a)), a = 0.7); and the job's opt-in
  ``--try-ease`` neighbours (cosine² + EASE, ``exporters.served.item_neighbours``).

Every row shows each validation window, the case-weighted pool of them (with the paired z of
the per-case NDCG@10 difference against the family's first row) and the test period. Pick on
the pool, read the test column only afterwards.

    python -m exporters.rolling_cuts --dataset online_retail [--windows 5]

Time splits only (a leave-one-out data set has one case per user and nothing to roll).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import sparse
from tqdm import tqdm

from exporters.baselines import KnnSimilarity, personal_counts
from exporters.dataset import Interactions, Split, cut_split, load_interactions, user_baskets
from exporters.evaluate import case_ndcg
from exporters.served import NEIGHBOUR_VARIANTS, item_neighbours
from schemas.ranking import DAY_MS
from schemas.serving import KNN_K, KNN_POWER, ItemNeighbours

BASKET_DECAY = 0.9
RECENT_DAYS = 90
NEXT_ITEM, NEXT_NEW = "next-item (own items)", "next-new (item-kNN)"
EASE_VARIANT = f"cosine ** {KNN_POWER:g} + EASE"
KNN_GRID = tuple((k, p) for k in (20, 50, 100) for p in (1, 2, 3))


@dataclass(frozen=True)
class Window:
    name: str
    cut: int
    end: int


def windows(inter: Interactions, n: int) -> list[Window]:
    """``n`` validation windows ending at the test cut, newest first, then the test period."""
    test_cut, val_cut = inter.cuts()
    width = test_cut - val_cut
    out = [
        Window(f"val-{i}" if i else "val", val_cut - i * width, val_cut - (i - 1) * width if i else test_cut)
        for i in range(n)
    ]
    return [*reversed(out), Window("test", test_cut, int(np.iinfo(np.int64).max))]


def split_at(inter: Interactions, protocol: str, w: Window) -> Split:
    return cut_split(inter, protocol, w.name, w.cut, w.end)


def _matrix(inter: Interactions, split: Split, idx: np.ndarray, weights: np.ndarray) -> sparse.csr_matrix:
    m = sparse.csr_matrix((weights, (inter.users[idx], inter.items[idx])), shape=(inter.n_users, inter.n_items))
    m.sum_duplicates()
    return m[split.case_users].tocsr()


def own_item_scores(inter: Interactions, split: Split) -> dict[str, sparse.csr_matrix]:
    """Cases x items, one matrix per own-item ordering (see the module docstring)."""
    idx, new_basket = user_baskets(inter, split.visible)
    users, ts = inter.users[idx], inter.ts[idx]
    basket = np.cumsum(new_basket)  # global basket number, increasing within a user
    last_of_user = np.zeros(inter.n_users, dtype=np.int64)
    np.maximum.at(last_of_user, users, basket)
    freq = personal_counts(inter, split)
    opens = _matrix(inter, split, idx[new_basket], np.ones(int(new_basket.sum())))
    decayed = _matrix(inter, split, idx, BASKET_DECAY ** (last_of_user[users] - basket).astype(np.float64))
    recent = ts >= split.cut - RECENT_DAYS * DAY_MS
    return {
        "personal frequency": freq,
        "frequency + opens": freq + opens,
        f"basket-decayed frequency ({BASKET_DECAY} per basket)": decayed,
        f"frequency + last {RECENT_DAYS} days": freq + _matrix(inter, split, idx[recent], np.ones(int(recent.sum()))),
    }


def _top_k_per_row(w: sparse.csr_matrix, k: int) -> sparse.csr_matrix:
    """Each row's ``k`` largest entries (ties: lower column)."""
    w = w.tocoo()
    order = np.lexsort((w.col, -w.data, w.row))
    rows, cols, vals = w.row[order], w.col[order], w.data[order]
    rank = np.arange(len(rows)) - np.searchsorted(rows, rows)
    keep = rank < k
    return sparse.csr_matrix((vals[keep], (rows[keep], cols[keep])), shape=w.shape)


def _cosine(x: sparse.csr_matrix, power: float = 2.0, alpha: float = 0.5) -> sparse.csr_matrix:
    """Item x item co-count / (n_i ** alpha n_j ** (1 - alpha)) on a binary matrix, ** power, no diagonal."""
    co = (x.T @ x).tocsr()
    n = co.diagonal().astype(np.float64)
    co.setdiag(0)
    co.eliminate_zeros()
    co = co.tocoo()
    sim = co.data / (n[co.row] ** alpha * n[co.col] ** (1 - alpha))
    return sparse.csr_matrix((sim**power, (co.row, co.col)), shape=co.shape)


def _rp3beta(x: sparse.csr_matrix, alpha: float, beta: float) -> sparse.csr_matrix:
    du = np.maximum(np.asarray(x.sum(1)).ravel(), 1)
    di = np.maximum(np.asarray(x.sum(0)).ravel(), 1)
    p_ui = (sparse.diags(1 / du) @ x).power(alpha)
    p_iu = (sparse.diags(1 / di) @ x.T.tocsr()).power(alpha)
    w = (p_iu @ p_ui).tocsr()
    w.setdiag(0)
    w.eliminate_zeros()
    return w @ sparse.diags(1 / di**beta)


def _baskets(inter: Interactions, split: Split) -> sparse.csr_matrix:
    """Baskets x items, binary, of the ``fit`` events."""
    idx, first = user_baskets(inter, split.fit)
    basket = np.cumsum(first) - 1
    x = sparse.csr_matrix((np.ones(len(idx)), (basket, inter.items[idx])), shape=(int(first.sum()), inter.n_items))
    x.sum_duplicates()
    x.data[:] = 1.0
    return x


def _neighbour_matrix(nb: ItemNeighbours) -> sparse.csr_matrix:
    n, k = nb.rows.shape
    rows, cols, sims = np.repeat(np.arange(n), k), nb.rows.ravel().astype(np.int64), nb.sims.ravel()
    ok = cols >= 0
    return sparse.csr_matrix((sims[ok].astype(np.float64), (rows[ok], cols[ok])), shape=(n, n))


def knn_scores(inter: Interactions, split: Split) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    sim = KnnSimilarity(inter, split.fit)
    hist = personal_counts(inter, split)
    hist.data[:] = 1.0
    neighbours = {}
    for k, p in KNN_GRID:
        nb = sim.top_k(k)
        nb.data **= p
        neighbours[f"item-kNN K={k} sim^{p}"] = nb
    x = inter.user_item_matrix(split.fit, binary=True)
    baskets = _top_k_per_row(_cosine(_baskets(inter, split)), 50)
    neighbours |= {
        "RP3beta alpha 0.5 beta 0.5 K=20": _top_k_per_row(_rp3beta(x, 0.5, 0.5), 20),
        "basket cosine K=50 sim^2": baskets,
        "item-kNN K=20 sim^2 + 0.5 x basket cosine K=50 sim^2": neighbours["item-kNN K=20 sim^2"] + 0.5 * baskets,
        "asymmetric cosine a 0.7 K=20 sim^2": _top_k_per_row(_cosine(x, alpha=0.7), 20),
        "item-kNN K=20 sim^2 + EASE (the --try-ease variant)": _neighbour_matrix(
            item_neighbours(inter, split.fit, ease_weight=NEIGHBOUR_VARIANTS[EASE_VARIANT])
        ),
    }
    return {name: (lambda cases, nb=nb: np.asarray((hist[cases] @ nb).todense())) for name, nb in neighbours.items()}


def _dense(m: sparse.csr_matrix) -> Callable[[np.ndarray], np.ndarray]:
    return lambda cases: np.asarray(m[cases].todense(), dtype=np.float64)


def run(inter: Interactions, n_windows: int) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """{family: {ordering: {window: per-case NDCG@10}}}."""
    out: dict[str, dict[str, dict[str, np.ndarray]]] = {NEXT_ITEM: {}, NEXT_NEW: {}}
    for w in tqdm(windows(inter, n_windows), desc="cuts", unit="cut"):
        line = split_at(inter, "next-item", w)
        for name, m in own_item_scores(inter, line).items():
            out[NEXT_ITEM].setdefault(name, {})[w.name] = case_ndcg(_dense(m), inter, line, np.arange(len(line)))
        new = split_at(inter, "next-new", w)
        for name, fn in knn_scores(inter, new).items():
            out[NEXT_NEW].setdefault(name, {})[w.name] = case_ndcg(fn, inter, new, np.arange(len(new)))
    return out


def _mean(x: np.ndarray) -> str:
    return f"{x.mean():.4f}" if len(x) else "–"


def _z(a: np.ndarray, b: np.ndarray) -> float:
    d = a - b
    return float(d.mean() / (d.std(ddof=1) / np.sqrt(len(d)))) if len(d) > 1 and d.std() > 0 else 0.0


def table(results: dict[str, dict[str, dict[str, np.ndarray]]]) -> str:
    """Markdown tables, one per family; z = paired gain over the family's first row (its
    baseline) and, for next-new, over the neighbours the knn source ships."""
    shipped = {NEXT_NEW: f"item-kNN K={KNN_K} sim^{KNN_POWER:g}"}
    lines = []
    for family, rows in results.items():
        names = list(next(iter(rows.values())))
        vals = [n for n in names if n != "test"]
        pool = {row: np.concatenate([per[n] for n in vals]) for row, per in rows.items()}
        base, ship = next(iter(pool.values())), pool.get(shipped.get(family, ""))
        cases = " / ".join(str(len(v)) for v in next(iter(rows.values())).values())
        lines += [
            f"\n{family}: NDCG@10 per window (cases {cases})",
            "| ordering | "
            + " | ".join(vals)
            + " | validation pool | z vs first row"
            + (" | z vs shipped" if ship is not None else "")
            + " | test |",
            "|---|" + "---|" * (len(names) + 2 + (ship is not None)),
        ]
        for name, per in rows.items():
            cells = [_mean(per[n]) for n in vals] + [_mean(pool[name]), f"{_z(pool[name], base):+.1f}"]
            cells += [f"{_z(pool[name], ship):+.1f}"] if ship is not None else []
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {_mean(per['test'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="online_retail", help="a bundled time-split data set")
    ap.add_argument("--windows", type=int, default=5, help="validation windows, stepping back from the test cut")
    args = ap.parse_args(argv)
    if args.windows < 1:
        ap.error("--windows must be >= 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    inter = load_interactions(args.dataset)
    if inter.spec.split != "time":
        ap.error(f"{args.dataset} is a leave-one-out data set: nothing to roll")
    print(table(run(inter, args.windows)))


if __name__ == "__main__":
    main()
