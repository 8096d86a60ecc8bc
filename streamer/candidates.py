"""Stage 4 — candidates: a few hundred items worth scoring for one user, with their evidence.

Sources, in priority order (an item keeps the first source that found it):

* ``history``  — the user's own items (wholesale customers rebuy: repeats must stay rankable);
* ``search``   — nearest items to the user's last search query (same text encoder as items), on
  the search event and for a few events after it while the intent is fresh (the caller decides,
  ``UserState.search_intent``, and passes the query vector);
* ``covis``    — co-visitation neighbours of the user's recent items (counts kept incrementally);
* ``ann``      — nearest items to the user embedding (HNSW);
* ``trending`` — decayed global counts, so a brand-new user still gets a list.

Each candidate keeps the evidence that found it, for the reason shown to the user: the query
(search), the recent item it co-occurred with and how often (covis), the recent item it is most
similar to (ann), the item's exact event counts over the last days (trending, ``RecentCounts``).

Then filters (unavailable; purchased and the just-viewed item when configured) and the
per-candidate features of ``schemas.ranking.FEATURE_NAMES``.

Co-visitation and trending counts are kept per worker from the events of its own partitions:
users are hash-partitioned, so each worker's counts are a uniform sample of the global ones.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

import numpy as np

from schemas.ranking import COVIS_WINDOW, candidate_features
from schemas.serving import CandidateQuota, history_order, merge_sources
from streamer.items import ItemIndex
from streamer.state import UserState

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

    def pair_count(self, a: int, b: int) -> float:
        return self.counts.get(a, {}).get(b, 0.0)

    def remap(self, mapping: dict[int, int]) -> None:
        """Follow items to their rows in a rebuilt index (after a model swap); drop the rest."""
        old, self.counts = self.counts, defaultdict(dict)
        for a, nb in old.items():
            na = mapping.get(a)
            if na is None:
                continue
            self.counts[na] = {mapping[b]: c for b, c in nb.items() if b in mapping}

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


DAY_MS = 86_400_000
COUNTED_TYPES = ("view", "click", "add_to_cart", "favorite", "rating")  # "interactions" besides purchases


class RecentCounts:
    """Exact per-item event counts over the last ``days`` days of event time, in a ring of daily
    buckets (rows of the item index): purchases, and other positive interactions. The trending
    reason quotes them ("bought 37 times in the last 7 days"). Counted from this worker's events
    (its partitions' users), like the trending and co-visitation counts themselves."""

    def __init__(self, days: int = 7, capacity: int = 1024) -> None:
        self.days = days
        self.bought = np.zeros((capacity, days), dtype=np.int32)
        self.other = np.zeros((capacity, days), dtype=np.int32)
        self.slot_day = np.full(days, -1, dtype=np.int64)
        self.newest_day = -1

    def _grow(self, row: int) -> None:
        cap = len(self.bought)
        if row < cap:
            return
        new = max(row + 1, 2 * cap)
        self.bought = np.concatenate([self.bought, np.zeros((new - cap, self.days), np.int32)])
        self.other = np.concatenate([self.other, np.zeros((new - cap, self.days), np.int32)])

    def add(self, row: int, etype: str, ts: int) -> None:
        if etype != "purchase" and etype not in COUNTED_TYPES:
            return
        day = ts // DAY_MS
        if day <= self.newest_day - self.days:
            return  # older than the window
        slot = day % self.days
        if self.slot_day[slot] != day:  # the slot holds a day at least ``days`` older: reuse it
            self.bought[:, slot] = 0
            self.other[:, slot] = 0
            self.slot_day[slot] = day
        self.newest_day = max(self.newest_day, day)
        self._grow(row)
        (self.bought if etype == "purchase" else self.other)[row, slot] += 1

    def counts(self, rows) -> list[tuple[int, int, int]]:
        """(purchases, other interactions, days) of each row over the last ``days`` days up to the
        newest event seen (the trending candidates' evidence, computed once per batch)."""
        rows = np.asarray(rows, dtype=np.int64)
        ok = rows < len(self.bought)
        live = self.slot_day > self.newest_day - self.days
        safe = np.where(ok, rows, 0)
        b = np.where(ok, self.bought[safe][:, live].sum(axis=1), 0)
        o = np.where(ok, self.other[safe][:, live].sum(axis=1), 0)
        return [(int(x), int(y), self.days) for x, y in zip(b, o)]

    def remap(self, mapping: dict[int, int]) -> None:
        bought, other = self.bought, self.other
        n = max(mapping.values(), default=-1) + 1
        self.bought = np.zeros((max(n, len(bought)), self.days), np.int32)
        self.other = np.zeros_like(self.bought)
        src = np.fromiter((o for o in mapping if o < len(bought)), dtype=np.int64)
        dst = np.fromiter((mapping[o] for o in mapping if o < len(bought)), dtype=np.int64)
        self.bought[dst] = bought[src]
        self.other[dst] = other[src]


@dataclass
class Candidates:
    rows: np.ndarray  # int64 [C] item rows
    sources: list[str]  # per candidate
    # per candidate: query text (search), (anchor row, pair count) (covis), anchor row or None
    # (ann), (purchases, interactions, days) (trending), None (history)
    evidence: list
    feats: np.ndarray  # float32 [C, F]
    query_sim: np.ndarray | None = None  # float32 [C]: cosine to the active search query, if any


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
    trending_evidence: list | None = None,
    meaningful: Callable[[int], bool] | None = None,
) -> Candidates:
    """Candidates for one user. ``meaningful(row)`` says whether an item's vector carries meaning
    (model catalog, text or category) rather than being an id-hash placeholder; the ``ann`` source
    is skipped when none of the user's recent items has one (the neighbours of a random vector are
    noise: a cold user then gets trending instead), and its "similar to" anchor is always such an item."""
    quota = CandidateQuota(cfg.n)
    offers: list[tuple[str, list[int], int]] = []  # (source, rows best first, quota): schemas.serving
    evidence_of: dict[str, object] = {}  # source -> evidence list (by offer position) or one value

    # history: the user's own items, strongest first (weight x recency)
    if user.items:
        profile = [(k, p) for k, p in user.items.items() if k in index.pos]
        order = history_order(np.asarray([p[0] for _k, p in profile]), np.asarray([p[1] for _k, p in profile]), quota.history)
        offers.append(("history", [index.pos[profile[i][0]] for i in order], cfg.n))
    if query_vec is not None and len(index):
        labels, _ = index.nearest(query_vec[None, :], quota.per_source)
        offers.append(("search", list(labels[0]), quota.per_source))
        evidence_of["search"] = user.last_query
    recent_rows = [index.pos[i] for i, _t, _ts in list(user.seq)[-COVIS_WINDOW:] if i in index.pos]
    covis_scores = covis.neighbours(recent_rows)
    if covis_scores:
        ranked = sorted(covis_scores.items(), key=lambda kv: -kv[1][0])[: quota.per_source]
        offers.append(("covis", [r for r, _ in ranked], quota.per_source))
        evidence_of["covis"] = [(a, covis.pair_count(a, r)) for r, (_s, a) in ranked]
    uvec = user.user_vector()
    anchor_rows = [r for r in recent_rows if meaningful(r)] if meaningful is not None else recent_rows
    use_ann = bool(anchor_rows) or (meaningful is None) or (not recent_rows)  # no items: emb from searches
    if uvec is not None and len(index) and use_ann:
        labels, _ = index.nearest(uvec[None, :], quota.per_source)
        cand = labels[0]
        offers.append(("ann", list(cand), quota.per_source))
        if anchor_rows and len(cand):
            # the recent item each neighbour is closest to: "similar to <that item>"
            anchors = np.asarray(anchor_rows)[np.argmax(index.vecs[cand] @ index.vecs[anchor_rows].T, axis=1)]
            evidence_of["ann"] = [int(a) for a in anchors]
    if trending_rows is None:
        trending_rows, trending_evidence = index.trending(cfg.n), None
    offers.append(("trending", list(trending_rows), cfg.n))
    evidence_of["trending"] = trending_evidence
    cand_rows, cand_sources, offer_pos = merge_sources(cfg.n, offers)
    picked: dict[int, tuple[str, object]] = {}
    for r, src, i in zip(cand_rows, cand_sources, offer_pos):
        ev = evidence_of.get(src)
        picked[r] = (src, ev[i] if isinstance(ev, list) else ev)

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
    qsim = (index.vecs[rows] @ query_vec).astype(np.float32) if (query_vec is not None and c) else None
    return Candidates(rows=rows, sources=[picked[r][0] for r in keep], evidence=[picked[r][1] for r in keep], feats=feats,
                      query_sim=qsim)
