"""How a served list is made, shared by the worker (``streamer``) and the job's offline evaluator
(``exporters``), so the job grades exactly what the worker publishes.

Two steps, numpy only, no state of their own:

* ``merge_sources`` — the candidate set: each source (``history``, ``search``, ``knn``,
  ``covis``, ``ann``, ``trending``, in that priority order) offers its rows best first; an item keeps the
  first source that found it; a source may add at most its quota, the set at most ``n`` items.
  The worker feeds it from its live state (profile, HNSW, incremental co-visitation and
  trending counts); the offline evaluator from arrays built from training events
  (``history_order``, ``top_rows``: exact neighbours instead of HNSW).
* ``assemble`` — the published list: the ``size`` best candidates by score, of which at least
  ``min_new`` are items the user never touched (when that many exist among the candidates), then
  the search pins (``order_with_search``). Items keep score order, so a forced new item sits
  below the rebuys that outscored it. ``min_new`` is the job's validated mix: it is written to
  the manifest (``LIST_PARAMS_KEY``) and the worker reads it from there.
* ``ItemNeighbours`` — the ``knn`` source and score: each catalog item's ``KNN_K`` nearest items by
  cosine on the job's binary user x item matrix (the item-kNN baseline's neighbours), with
  similarity cosine ** ``KNN_POWER``, shipped in the version (``NEIGHBOUR_FILES``); or, where the
  job's validation picks it (``exporters.served.NEIGHBOUR_VARIANTS``), those blended with each
  item's ``KNN_K`` largest EASE weights (up to 2 ``KNN_K`` per item, the manifest's ``k``); a
  user's item-kNN score of an item is the sum of its similarities to the user's distinct items
  (``aggregate``); the source offers the best-scored items the user never touched (``offer``).
* ``list_scores`` — the score the list is assembled by: the ranker's; or, when the version's
  ``list_params`` say so (``knn_weight``, ``stack``: validated by the job), the user's own items
  in the ranker's order and, below them, the new items in the order of their discovery score
  (ranker or stacked score ``schemas.stacking``, plus ``knn_weight`` x item-kNN score).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:
    from schemas.repeat import RepeatRates

SOURCES: tuple[str, ...] = ("history", "search", "knn", "covis", "ann", "trending")
LIST_PARAMS_KEY = "list_params"  # manifest entry: {"size": .., "min_new": .., "knn_weight": ..}
NEIGHBOURS_KEY = "item_neighbours"  # manifest entry: {"k": .., "files": NEIGHBOUR_FILES}
NEIGHBOUR_FILES = ("knn_rows.npy", "knn_sims.npy")  # int32 [N, K] rows (-1: none), float32 [N, K] similarity
KNN_K = 20  # neighbours kept per item (the item-kNN baseline's K)
KNN_POWER = 2.0  # shipped similarity = cosine ** KNN_POWER (strong neighbours count more)


@dataclass(frozen=True)
class CandidateQuota:
    """How many items each source may add (``CandidateConfig.n`` in the worker)."""

    n: int = 200

    @property
    def history(self) -> int:
        return self.n // 2

    @property
    def per_source(self) -> int:  # search, knn, covis, ann
        return max(self.n // 4, 1)


@dataclass(frozen=True)
class ListParams:
    size: int = 20
    min_new: int = 0
    knn_weight: float = 0.0  # list score = ranker score + knn_weight x item-kNN score
    stack: tuple[float, ...] = ()  # weights of schemas.stacking.STACK_FEATURES; () = the ranker's score as is
    rebuy: tuple[float, ...] = ()  # weights of schemas.repeat.REPEAT_FEATURES (own items); () = the ranker's order
    rebuy_rates: "RepeatRates | None" = field(default=None, compare=False, hash=False)  # shipped with ``rebuy``

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, object], size: int) -> "ListParams":
        """The manifest's list parameters; raises ValueError when its stacked score expects other
        features than ``schemas.stacking`` computes."""
        from schemas.repeat import REPEAT_FEATURES, RepeatRates
        from schemas.stacking import STACK_FEATURES

        params = manifest.get(LIST_PARAMS_KEY) or {}
        stack = params.get("stack") or {}  # type: ignore[union-attr]
        rebuy = params.get("rebuy") or {}  # type: ignore[union-attr]
        for name, entry, ours in (("stack", stack, STACK_FEATURES), ("rebuy", rebuy, REPEAT_FEATURES)):
            if entry and tuple(entry.get("features", ())) != ours:
                raise ValueError(
                    f"list_params.{name} expects features {entry.get('features')}, this code computes {list(ours)}"
                )
        return cls(
            size=size,
            min_new=min(int(params.get("min_new", 0)), size),  # type: ignore[union-attr]
            knn_weight=float(params.get("knn_weight", 0.0)),  # type: ignore[union-attr]
            stack=tuple(float(w) for w in stack.get("weights", ())),
            rebuy=tuple(float(w) for w in rebuy.get("weights", ())),
            rebuy_rates=RepeatRates.from_dict(rebuy.get("item_repeat_rate")),
        )

    def as_dict(self) -> dict[str, object]:
        from schemas.repeat import REPEAT_FEATURES
        from schemas.stacking import STACK_FEATURES

        out: dict[str, object] = {"size": self.size, "min_new": self.min_new, "knn_weight": self.knn_weight}
        if self.stack:
            out["stack"] = {"features": list(STACK_FEATURES), "weights": list(self.stack)}
        if self.rebuy:
            out["rebuy"] = {"features": list(REPEAT_FEATURES), "weights": list(self.rebuy)}
            if self.rebuy_rates is not None:
                out["rebuy"]["item_repeat_rate"] = self.rebuy_rates.as_dict()  # type: ignore[index]
        return out


def discovery(params: ListParams) -> bool:
    """Whether new items get their own order (``list_scores``)."""
    return bool(params.stack) or bool(params.rebuy) or params.knn_weight != 0.0


def list_scores(
    scores: np.ndarray,
    knn: np.ndarray | None,
    params: ListParams,
    new: np.ndarray | None = None,
    feats: np.ndarray | None = None,
    src: np.ndarray | None = None,
    profile_items: int = 0,
    stacked: np.ndarray | None = None,
    rebuy_x: np.ndarray | None = None,
) -> np.ndarray:
    """The scores the list is assembled by. Plain (no ``stack``, ``knn_weight`` 0): the ranker's.
    Otherwise rebuys and discovery are ordered apart: the user's own items keep the ranker's
    score; the items ``new`` to the user are ordered by their discovery score — the ranker's (or,
    with ``params.stack``, the stacked score of ``schemas.stacking`` over the ranker's score, the
    candidates' features ``feats``, sources ``src`` and the user's profile size) plus
    ``knn_weight`` x item-kNN score — and placed below every own item, so they enter the list
    through its ``min_new`` slots or where the user has too few own items. ``stacked``: the
    stacked score when it is already computed (the offline evaluator's precomputed features).
    With ``params.rebuy`` the own items are ordered by the rebuy score of ``schemas.repeat`` over
    ``rebuy_x`` (``repeat_features`` of the candidates) instead of the ranker's score."""
    scores = np.asarray(scores, dtype=np.float64)
    if not discovery(params):
        return scores
    new = np.asarray(new, dtype=bool)
    disc = scores
    if params.stack:
        from schemas.stacking import stacked_scores

        disc = stacked if stacked is not None else stacked_scores(params.stack, scores, feats, knn, src, profile_items)
    if knn is not None and params.knn_weight != 0.0:
        disc = disc + params.knn_weight * np.asarray(knn, dtype=np.float64)
    if params.rebuy and rebuy_x is not None:
        from schemas.repeat import rebuy_scores

        scores = np.where(new, scores, rebuy_scores(params.rebuy, rebuy_x))
    if not new.any():
        return scores
    floor = float(scores[~new].min()) - 1.0 if (~new).any() else 0.0
    return np.where(new, disc - float(disc[new].max()) + floor, scores)


@dataclass(frozen=True)
class ItemNeighbours:
    """Each item's ``K`` nearest items (rows of the version's item index), most similar first."""

    rows: np.ndarray  # int32 [N, K], -1 where an item has fewer neighbours
    sims: np.ndarray  # float32 [N, K]

    def __post_init__(self) -> None:
        if self.rows.shape != self.sims.shape or self.rows.ndim != 2:
            raise ValueError(f"neighbour arrays disagree: rows {self.rows.shape}, sims {self.sims.shape}")

    @classmethod
    def from_sparse(cls, sim, k: int = KNN_K) -> "ItemNeighbours":
        """From a CSR item x item similarity matrix whose rows hold the neighbours to keep (the
        job's ``KnnSimilarity.top_k``); each row's first ``k`` by similarity (ties: lower row),
        most similar first."""
        n = sim.shape[0]
        rows = np.full((n, k), -1, dtype=np.int32)
        sims = np.zeros((n, k), dtype=np.float32)
        counts = np.diff(sim.indptr)
        r = np.repeat(np.arange(n), counts)
        order = np.lexsort((sim.indices, -sim.data, r))
        pos = np.arange(len(order)) - np.repeat(sim.indptr[:-1], counts)
        keep = pos < k
        rows[r[keep], pos[keep]] = sim.indices[order][keep]
        sims[r[keep], pos[keep]] = sim.data[order][keep]
        return cls(rows, sims)

    def aggregate(self, history: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Item-kNN over a user's items (rows, any order; repeats and rows outside the arrays
        ignored): (rows, score, anchor) of every neighbour of some history item, by row; score =
        the sum of its similarities to the distinct history items, anchor = the history item it
        is most similar to (ties: the lower row)."""
        h = np.asarray(history, dtype=np.int64)
        h = np.unique(h[(h >= 0) & (h < len(self.rows))])
        if not len(h):
            return np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64)
        nb = self.rows[h].ravel().astype(np.int64)
        s = self.sims[h].ravel().astype(np.float64)
        anc = np.repeat(h, self.rows.shape[1])
        ok = nb >= 0
        nb, s, anc = nb[ok], s[ok], anc[ok]
        order = np.lexsort((anc, -s, nb))
        nb, s, anc = nb[order], s[order], anc[order]
        if not len(nb):
            return np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64)
        starts = np.flatnonzero(np.r_[True, nb[1:] != nb[:-1]])
        return nb[starts], np.add.reduceat(s, starts), anc[starts]

    def offer(self, history: np.ndarray, k: int, agg=None) -> tuple[np.ndarray, np.ndarray]:
        """The ``knn`` source: the ``k`` best-scored items (``aggregate``) that are not in
        ``history``, best first (ties: lower row), and the anchor of each."""
        rows, score, anchor = agg if agg is not None else self.aggregate(history)
        new = ~np.isin(rows, np.asarray(history, dtype=np.int64))
        rows, score, anchor = rows[new], score[new], anchor[new]
        top = np.lexsort((rows, -score))[:k]
        return rows[top], anchor[top]

    @staticmethod
    def score_at(agg, rows: np.ndarray) -> np.ndarray:
        """Item-kNN score of ``rows`` from an ``aggregate`` result (0 for the others)."""
        ref, score, _ = agg
        rows = np.asarray(rows, dtype=np.int64)
        if not len(ref):
            return np.zeros(len(rows))
        i = np.minimum(np.searchsorted(ref, rows), len(ref) - 1)
        return np.where(ref[i] == rows, score[i], 0.0)


def merge_sources(n: int, offers: Sequence[tuple[str, Sequence[int], int]]) -> tuple[list[int], list[str], list[int]]:
    """Candidate rows from ``offers`` = [(source, rows best first, quota)] in priority order.

    Returns (rows, source per row, position of the row in its source's offer — the index of its
    evidence). Negative rows (HNSW padding) are skipped."""
    picked: dict[int, tuple[str, int]] = {}
    for source, rows, quota in offers:
        added = 0
        for i, r in enumerate(rows):
            if len(picked) >= n or added >= quota:
                break
            r = int(r)
            if r < 0 or r in picked:
                continue
            picked[r] = (source, i)
            added += 1
    rows_out = list(picked)
    return rows_out, [picked[r][0] for r in rows_out], [picked[r][1] for r in rows_out]


def history_order(weight: np.ndarray, last_ts: np.ndarray, limit: int) -> np.ndarray:
    """Positions of a user's items, strongest first: summed event weight, then the latest; equal
    ones keep their given order (the worker's profile order: first touched first)."""
    order = np.lexsort((-np.asarray(last_ts), -np.asarray(weight, dtype=np.float64)))
    return order[:limit]


def top_rows(scores: np.ndarray, k: int, positive: bool = True) -> np.ndarray:
    """Indices of the ``k`` highest ``scores`` (ties: lower index first), only scores > 0 when
    ``positive``."""
    scores = np.asarray(scores, dtype=np.float64)
    k = min(k, len(scores))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    top = top[np.lexsort((top, -scores[top]))]
    return top[scores[top] > 0] if positive else top


def assemble(scores: np.ndarray, new: np.ndarray | None, params: ListParams) -> list[int]:
    """Candidate positions of the list, best first: the ``size`` best by score, at least
    ``min_new`` of them new to the user (``new``; may be None when ``min_new`` is 0) where the
    candidates have them."""
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    size = min(params.size, len(order))
    top = order[:size]
    if params.min_new <= 0:
        return [int(j) for j in top]
    new = np.asarray(new, dtype=bool)
    want = min(params.min_new, size, int(new.sum()))
    have = int(new[top].sum())
    if have >= want:
        return [int(j) for j in top]
    new_rest = order[size:][new[order[size:]]][: want - have]  # best new ones left out
    own_top = top[~new[top]]
    keep_own = own_top[: size - have - len(new_rest)]  # the lowest own ones give way
    chosen = np.concatenate([top[new[top]], keep_own, new_rest])
    return [int(j) for j in chosen[np.argsort(-scores[chosen], kind="stable")]]


def order_with_search(
    scores: np.ndarray, query_sim: np.ndarray | None, order: list[int], size: int, search_slots: int
) -> tuple[list[int], np.ndarray]:
    """Search pins on top of an assembled ``order``; returns the final order and published scores.

    With an active search the ``search_slots`` candidates closest to the query (cosine of item
    and query vectors) take the top of the list, best match first, and the rest keep ``order``:
    the learned ranker never sees the query, so on its own it would bury the search. Their
    published score is ``best score of the rest + 2 + cosine``, so scores still fall down the list
    (a score is only comparable within one list)."""
    out_scores = np.asarray(scores, dtype=np.float64).copy()
    if search_slots <= 0 or query_sim is None or not len(order):
        return order[:size], out_scores
    pinned = [int(j) for j in np.argsort(-query_sim, kind="stable")[: min(search_slots, size)]]
    pinned_set = set(pinned)
    rest = [j for j in order if j not in pinned_set][: size - len(pinned)]
    base = float(out_scores[rest].max()) if rest else 0.0
    for j in pinned:
        out_scores[j] = base + 2.0 + float(query_sim[j])
    return pinned + rest, out_scores
