"""Stage 4 — candidates: a few hundred items worth scoring for one user, with their evidence.

Sources, in priority order (an item keeps the first source that found it):

* ``history``  — the user's own items (wholesale customers rebuy: repeats must stay rankable);
* ``search``   — nearest items to the user's last search query (same text encoder as items);
* ``covis``    — co-visitation neighbours of the user's recent items (counts kept incrementally);
* ``ann``      — nearest items to the user embedding (HNSW);
* ``trending`` — decayed global counts, so a brand-new user still gets a list.

Then filters (unavailable; purchased and the just-viewed item when configured) and the
per-candidate features of ``schemas.ranking.FEATURE_NAMES``.

Co-visitation and trending counts are kept per worker from the events of its own partitions:
users are hash-partitioned, so each worker's counts are a uniform sample of the global ones.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from schemas.ranking import candidate_features
from streamer.items import ItemIndex
from streamer.state import UserState

COVIS_WINDOW = 5  # recent items paired with each new interaction
COVIS_MAX_NEIGHBOURS = 200


class CoVisitation:
    """Symmetric item-item co-occurrence counts over each user's recent window."""

    def __init__(self) -> None:
        self.counts: dict[int, dict[int, float]] = defaultdict(dict)

    def update(self, recent_rows: list[int], row: int) -> None:
        for other in set(recent_rows):
            if other == row:
                continue
            for a, b in ((other, row), (row, other)):
                nb = self.counts[a]
                nb[b] = nb.get(b, 0.0) + 1.0
                if len(nb) > COVIS_MAX_NEIGHBOURS:
                    self._prune(nb)

    @staticmethod
    def _prune(nb: dict[int, float]) -> None:
        keep = sorted(nb.items(), key=lambda kv: -kv[1])[: COVIS_MAX_NEIGHBOURS // 2]
        nb.clear()
        nb.update(keep)

    def neighbours(self, rows: list[int]) -> dict[int, tuple[float, int]]:
        """Candidate row -> (summed count, the anchor row that contributed most)."""
        out: dict[int, tuple[float, int]] = {}
        best: dict[int, float] = {}
        for anchor in rows:
            for cand, cnt in self.counts.get(anchor, {}).items():
                total, _a = out.get(cand, (0.0, anchor))
                if cnt > best.get(cand, 0.0):
                    best[cand] = cnt
                    _a = anchor
                out[cand] = (total + cnt, _a)
        return out


@dataclass
class Candidates:
    rows: np.ndarray  # int64 [C] item rows
    sources: list[str]  # per candidate
    evidence: list[int | str | None]  # anchor item row, query text, or None
    feats: np.ndarray  # float32 [C, F]


@dataclass(frozen=True)
class CandidateConfig:
    n: int = 200
    filter_purchased: bool = False
    filter_last_viewed: bool = False


def gather(
    user: UserState,
    index: ItemIndex,
    covis: CoVisitation,
    cfg: CandidateConfig,
    *,
    now_ms: int,
    trigger_item: str | None = None,
    trigger_type: str | None = None,
    query_vec: np.ndarray | None = None,
    trending_rows: np.ndarray | None = None,
) -> Candidates:
    picked: dict[int, tuple[str, int | str | None]] = {}
    quota = max(cfg.n // 4, 1)

    def take(rows, source: str, evidence=None, limit: int = cfg.n) -> None:
        added = 0
        for i, r in enumerate(rows):
            r = int(r)
            if r < 0 or r in picked:
                continue
            picked[r] = (source, evidence[i] if isinstance(evidence, list) else evidence)
            added += 1
            if added >= limit or len(picked) >= cfg.n:
                return

    # history: the user's own items, strongest first (weight x recency)
    if user.items:
        hist = sorted(user.items.items(), key=lambda kv: (-kv[1][0], -kv[1][1]))[: cfg.n // 2]
        take([index.pos[k] for k, _ in hist if k in index.pos], "history")
    if query_vec is not None and len(index):
        labels, _ = index.nearest(query_vec[None, :], quota)
        take(labels[0], "search", user.last_query, quota)
    recent_rows = [index.pos[i] for i, _t, _ts in list(user.seq)[-COVIS_WINDOW:] if i in index.pos]
    covis_scores = covis.neighbours(recent_rows)
    if covis_scores:
        ranked = sorted(covis_scores.items(), key=lambda kv: -kv[1][0])[:quota]
        take([r for r, _ in ranked], "covis", [a for _, (_s, a) in ranked], quota)
    uvec = user.user_vector()
    if uvec is not None and len(index):
        labels, _ = index.nearest(uvec[None, :], quota)
        anchor = recent_rows[-1] if recent_rows else None
        take(labels[0], "ann", anchor, quota)
    if len(picked) < cfg.n:
        take(trending_rows if trending_rows is not None else index.trending(cfg.n), "trending")

    # filters
    drop: set[int] = set()
    n_items = len(index)
    for r in picked:
        if r >= n_items or not index.available[r]:
            drop.add(r)
    if cfg.filter_purchased:
        drop.update(index.pos[i] for i, p in user.items.items() if p[2] > 0 and i in index.pos)
    if cfg.filter_last_viewed and trigger_item is not None and trigger_type in ("view", "click"):
        row = index.pos.get(trigger_item)
        if row is not None:
            drop.add(row)
    keep = [r for r in picked if r not in drop]
    rows = np.asarray(keep, dtype=np.int64)

    # features (schemas.ranking.FEATURE_NAMES)
    c = len(rows)
    personal = np.zeros(c, dtype=np.float64)
    last = np.full(c, -1, dtype=np.int64)
    cov = np.zeros(c, dtype=np.float64)
    for j, r in enumerate(keep):
        prof = user.items.get(index.ids[r])
        if prof is not None:
            personal[j] = prof[0]
            last[j] = prof[1]
        cs = covis_scores.get(r)
        if cs is not None:
            cov[j] = cs[0]
    sim = index.vecs[rows] @ uvec if (uvec is not None and c) else np.zeros(c, dtype=np.float32)
    feats = candidate_features(personal, last, now_ms, cov, index.popularity[rows], sim)
    return Candidates(rows=rows, sources=[picked[r][0] for r in keep], evidence=[picked[r][1] for r in keep], feats=feats)
