"""Full-ranking offline evaluation with the rules of ``BASELINES.md``.

* Every model scores ALL catalog items for every test case (a ``Scorer`` returns a dense
  [cases, items] block); sampled-negative numbers are never produced here.
* Ties between equal scores go to the item with more training (``fit``) events, then to the
  lower item id (compared as text). Implemented by permuting
  columns into that tie order once, after which "earlier column wins" is the whole rule.
* ``ex`` removes the user's earlier (visible) items before the top 10 is taken; a target among
  them is a miss. ``in`` removes nothing.
* HR@K, NDCG@K = 1/log2(rank+1), MRR@K = 1/rank (0 beyond K), coverage = distinct items over
  all top-K lists / catalog size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
from scipy import sparse

from exporters.dataset import Interactions, Split

K = 10
CHUNK = 512


class Scorer(Protocol):
    def __call__(self, cases: np.ndarray) -> np.ndarray:
        """Scores [len(cases), n_items] for test-case indices ``cases`` (higher is better)."""


@dataclass(frozen=True)
class Metrics:
    hr: float
    ndcg: float
    mrr: float
    cov: float
    cases: int

    def as_dict(self) -> dict[str, float]:
        return {"hr@10": self.hr, "ndcg@10": self.ndcg, "mrr@10": self.mrr, "cov": self.cov, "cases": self.cases}


def tie_order(inter: Interactions, fit: np.ndarray) -> np.ndarray:
    """Item indices from best to worst under the tie rule (more fit events, then lower id)."""
    counts = np.bincount(inter.items[fit], minlength=inter.n_items)
    return np.lexsort((id_rank(inter), -counts))


def id_rank(inter: Interactions) -> np.ndarray:
    """Per item, its position in item-id order. Ids compare as text, also numeric ones
    ("10" < "9"): that is what reproduces the published Taobao rows exactly."""
    ids = np.array(inter.item_ids, dtype=object)
    pos = np.empty(len(ids), dtype=np.int64)
    pos[np.argsort(ids, kind="stable")] = np.arange(len(ids))
    return pos


def history_matrix(inter: Interactions, split: Split) -> sparse.csr_matrix:
    """Cases x items, 1 where the case's user has a visible event on the item."""
    seen = inter.user_item_matrix(split.visible, binary=True)
    return seen[split.case_users]


def evaluate(
    scorer: Scorer | Callable[[np.ndarray], np.ndarray], inter: Interactions, split: Split, k: int = K
) -> dict[str, Metrics]:
    """Metrics per mode of the split (``ex`` and/or ``in``)."""
    return _evaluate(scorer, inter, split, k)[0]


def case_ndcg(
    scorer: Scorer | Callable[[np.ndarray], np.ndarray],
    inter: Interactions,
    split: Split,
    cases: np.ndarray,
    k: int = K,
) -> np.ndarray:
    """NDCG@k of each of the given cases (indices into ``split``), in the split's first mode."""
    r = _evaluate(scorer, inter, split, k, np.asarray(cases, dtype=np.int64))[1][split.modes[0]]
    return np.where(r <= k, 1.0 / np.log2(r + 1), 0.0)


def _evaluate(scorer, inter: Interactions, split: Split, k: int, subset: np.ndarray | None = None):
    order = tie_order(inter, split.fit)
    col_of = np.empty(inter.n_items, dtype=np.int64)
    col_of[order] = np.arange(inter.n_items)
    history = history_matrix(inter, split) if "ex" in split.modes else None
    all_cases = np.arange(len(split)) if subset is None else subset
    ranks = {m: np.full(len(split), np.inf, dtype=np.float64) for m in split.modes}
    covered = {m: np.zeros(inter.n_items, dtype=bool) for m in split.modes}
    arange = np.arange(inter.n_items)
    for start in range(0, len(all_cases), CHUNK):
        cases = all_cases[start : start + CHUNK]
        raw = np.asarray(scorer(cases), dtype=np.float64)
        if raw.shape != (len(cases), inter.n_items):
            raise ValueError(f"scorer returned {raw.shape}, expected {(len(cases), inter.n_items)}")
        s_in = raw[:, order]  # columns in tie order: an earlier column wins a tie
        s_in[np.isnan(s_in)] = -np.inf
        target_col = col_of[split.case_targets[cases]]
        for mode in split.modes:
            s, excluded = s_in, np.zeros(len(cases), dtype=bool)
            if mode == "ex":
                h = history[cases].tocoo()
                s = s_in.copy()
                s[h.row, col_of[h.col]] = -np.inf
                excluded = np.asarray(history[cases, split.case_targets[cases]]).ravel() > 0
            st = s[np.arange(len(cases)), target_col][:, None]
            rank = 1 + (s > st).sum(1) + ((s == st) & (arange[None, :] < target_col[:, None])).sum(1)
            ranks[mode][cases] = np.where(excluded | ~np.isfinite(st[:, 0]), np.inf, rank)
            covered[mode][order[_top_k_mask(s, k).any(axis=0)]] = True
    out = {}
    for mode in split.modes:
        r = ranks[mode] = ranks[mode][all_cases]
        hit = r <= k
        out[mode] = Metrics(
            hr=float(hit.mean()) if len(r) else 0.0,
            ndcg=float(np.where(hit, 1.0 / np.log2(r + 1), 0.0).mean()) if len(r) else 0.0,
            mrr=float(np.where(hit, 1.0 / r, 0.0).mean()) if len(r) else 0.0,
            cov=float(covered[mode].sum() / inter.n_items),
            cases=len(r),
        )
    return out, ranks


def _top_k_mask(s: np.ndarray, k: int, prefix: int = 1024) -> np.ndarray:
    """Boolean mask of every row's top k (ties to the earlier column); -inf is never listed."""
    n = s.shape[1]
    k = min(k, n)
    thr = -np.partition(-s, k - 1, axis=1)[:, k - 1 : k]  # (partitioning near the end is 2x slower)
    above = s > thr
    need = k - above.sum(axis=1, keepdims=True)
    tied = (s == thr) & np.isfinite(thr)
    # The first `need` tied columns of a row: nearly always within a short prefix (columns are in
    # tie order, so big ties such as "never seen" start early); the full scan only as fallback.
    head = np.cumsum(tied[:, :prefix], axis=1, dtype=np.int32)
    done = head[:, -1:] >= need
    picked = np.zeros_like(tied)
    picked[:, :prefix] = tied[:, :prefix] & (head <= need)
    rest = np.flatnonzero(~done[:, 0])
    if len(rest):
        picked[rest] = tied[rest] & (np.cumsum(tied[rest], axis=1, dtype=np.int32) <= need[rest])
    return above | picked


def format_table(title: str, rows: dict[str, dict[str, Metrics]], modes: tuple[str, ...]) -> str:
    """Markdown table in the layout of ``BASELINES.md`` (one row per model)."""
    head = ["model"]
    for m in modes:
        head += [f"HR@10 {m}", f"NDCG@10 {m}", f"MRR@10 {m}", f"cov {m}"]
    lines = [f"## {title}", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, per_mode in rows.items():
        cells = [name]
        for m in modes:
            x = per_mode[m]
            cells += [f"{x.hr:.4f}", f"{x.ndcg:.4f}", f"{x.mrr:.4f}", f"{x.cov:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
