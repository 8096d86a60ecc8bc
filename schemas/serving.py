"""How a served list is made, shared by the worker (``streamer``) and the job's offline evaluator
(``exporters``), so the job grades exactly what the worker publishes.

Two steps, numpy only, no state of their own:

* ``merge_sources`` — the candidate set: each source (``history``, ``search``, ``covis``,
  ``ann``, ``trending``, in that priority order) offers its rows best first; an item keeps the
  first source that found it; a source may add at most its quota, the set at most ``n`` items.
  The worker feeds it from its live state (profile, HNSW, incremental co-visitation and
  trending counts); the offline evaluator from arrays built from training events
  (``history_order``, ``top_rows``: exact neighbours instead of HNSW).
* ``assemble`` — the published list: the ``size`` best candidates by score, of which at least
  ``min_new`` are items the user never touched (when that many exist among the candidates), then
  the search pins (``order_with_search``). Items keep score order, so a forced new item sits
  below the rebuys that outscored it. ``min_new`` is the job's validated mix: it is written to
  the manifest (``LIST_PARAMS_KEY``) and the worker reads it from there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

SOURCES: tuple[str, ...] = ("history", "search", "covis", "ann", "trending")
LIST_PARAMS_KEY = "list_params"  # manifest entry: {"size": .., "min_new": ..}


@dataclass(frozen=True)
class CandidateQuota:
    """How many items each source may add (``CandidateConfig.n`` in the worker)."""

    n: int = 200

    @property
    def history(self) -> int:
        return self.n // 2

    @property
    def per_source(self) -> int:  # search, covis, ann
        return max(self.n // 4, 1)


@dataclass(frozen=True)
class ListParams:
    size: int = 20
    min_new: int = 0

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, object], size: int) -> "ListParams":
        params = manifest.get(LIST_PARAMS_KEY) or {}
        return cls(size=size, min_new=min(int(params.get("min_new", 0)), size))  # type: ignore[union-attr]


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


def order_with_search(scores: np.ndarray, query_sim: np.ndarray | None, order: list[int], size: int,
                      search_slots: int) -> tuple[list[int], np.ndarray]:
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
