"""Stage 4 — candidates: a few hundred items worth scoring for one user, with their evidence.

Sources, in priority order (an item keeps the first source that found it):

* ``history``  — the user's own items (wholesale customers rebuy: repeats must stay rankable);
* ``search``   — nearest items to the user's last search query (same text encoder as items), on
  the search event and for a few events after it while the intent is fresh (the caller decides,
  ``UserState.search_intent``, and passes the query vector);
* ``knn``      — item-kNN over the user's whole profile: the version's precomputed neighbour lists
  (``schemas.serving.ItemNeighbours``, ``ItemIndex.neighbours``) summed over the user's items, the
  best-scored items the user never touched (absent when the version ships no neighbours);
* ``covis``    — co-visitation neighbours of the user's recent items (counts kept incrementally);
* ``ann``      — nearest items to the user embedding (HNSW);
* ``trending`` — decayed global counts, so a brand-new user still gets a list.

Each candidate keeps the evidence that found it, for the reason shown to the user: the query
(search), the user's item it is most often chosen with (knn), the recent item it co-occurred with
and how often (covis), the recent item it is most similar to (ann), the item's exact event counts over the last days (trending, ``RecentCounts``).

Then filters (unavailable; purchased and the just-viewed item when configured) and the
per-candidate features of ``schemas.ranking.FEATURE_NAMES``, and each candidate's item-kNN score
(``knn``: the list score adds ``ListParams.knn_weight`` x it, ``schemas.serving.list_scores``).

*What* and *how* are kept apart: ``SOURCES`` (priority order), ``source_plan`` (how many each
source proposes and may add) and the merge rule in its docstring, the filters and
``schemas.ranking.candidate_features`` say what a user's candidates are; ``gather_batch`` computes
them for every user of a micro-batch at once with array operations (one HNSW call per source,
one feature computation for all candidates, no per-candidate Python objects), ``gather`` is the
same for one user. ``tests/unit/streamer/reference_lists.py`` keeps the former per-user loop as
the plain statement of the semantics; ``test_batched_lists.py`` proves both give the same lists.

Co-visitation and trending counts are kept per worker from the events of its own partitions:
users are hash-partitioned, so each worker's counts are a uniform sample of the global ones.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from itertools import chain, repeat
from operator import itemgetter
from typing import Callable

import numpy as np

from schemas.ranking import COVIS_WINDOW, candidate_features
from schemas.repeat import PROFILE_FIELDS
from schemas.serving import SOURCES, CandidateQuota
from streamer.items import ItemIndex
from streamer.ranking import pad_width
from streamer.state import UserState

COVIS_MAX_NEIGHBOURS = 200


class CoVisitation:
    """Symmetric item-item co-occurrence counts over each user's recent window."""

    def __init__(self) -> None:
        self.counts: dict[int, dict[int, float]] = defaultdict(dict)

    def update(self, recent_rows: list[int], row: int) -> None:
        """Count ``row`` with each distinct recent row: (other, row), then (row, other). Runs per
        event: the count step is written out here rather than called per pair."""
        counts, cap, prune = self.counts, COVIS_MAX_NEIGHBOURS, self._prune
        mine = None
        for other in set(recent_rows):
            if other == row:
                continue
            nb = counts[other]
            if row in nb:
                nb[row] += 1.0
            else:  # only a new key can take a dict past the cap
                nb[row] = 1.0
                if len(nb) > cap:
                    prune(nb)
            if mine is None:
                mine = counts[row]
            if other in mine:
                mine[other] += 1.0
            else:
                mine[other] = 1.0
                if len(mine) > cap:
                    prune(mine)

    @staticmethod
    def _prune(nb: dict[int, float]) -> None:
        """Keep the ``COVIS_MAX_NEIGHBOURS // 2`` largest counts (ties: the earlier inserted), in that order."""
        keep = sorted(nb.items(), key=itemgetter(1), reverse=True)[: COVIS_MAX_NEIGHBOURS // 2]  # stable
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
    (its partitions' users), like the trending and co-visitation counts themselves.

    ``add`` runs per event: it counts in plain dicts (``_pending``, keyed by ``row * days + slot``)
    and the arrays take them in one step when read (``counts``, ``remap``) or before a bucket is
    reused; integer counts, so the totals are the same as adding one by one."""

    def __init__(self, days: int = 7, capacity: int = 1024) -> None:
        self.days = days
        self.bought = np.zeros((capacity, days), dtype=np.int32)
        self.other = np.zeros((capacity, days), dtype=np.int32)
        self.slot_day = [-1] * days  # the day each bucket holds
        self.newest_day = -1
        self._pending: tuple[dict[int, int], dict[int, int]] = ({}, {})  # (bought, other)

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
        days = self.days
        if day <= self.newest_day - days:
            return  # older than the window
        slot = day % days
        if self.slot_day[slot] != day:  # the slot holds a day at least ``days`` older: reuse it
            self._flush()
            self.bought[:, slot] = 0
            self.other[:, slot] = 0
            self.slot_day[slot] = day
        if day > self.newest_day:
            self.newest_day = day
        pending = self._pending[etype != "purchase"]
        key = row * days + slot
        pending[key] = pending.get(key, 0) + 1

    def _flush(self) -> None:
        """Add the pending counts to the arrays."""
        for k, pending in enumerate(self._pending):
            if not pending:
                continue
            keys = np.fromiter(pending, dtype=np.int64, count=len(pending))
            n = np.fromiter(pending.values(), dtype=np.int32, count=len(pending))
            pending.clear()
            rows, slots = np.divmod(keys, self.days)
            self._grow(int(rows.max()))
            (self.other if k else self.bought)[rows, slots] += n  # keys are distinct

    def counts(self, rows) -> list[tuple[int, int, int]]:
        """(purchases, other interactions, days) of each row over the last ``days`` days up to the
        newest event seen (the trending candidates' evidence, computed once per batch)."""
        self._flush()
        rows = np.asarray(rows, dtype=np.int64)
        ok = rows < len(self.bought)
        live = np.asarray(self.slot_day) > self.newest_day - self.days
        safe = np.where(ok, rows, 0)
        b = np.where(ok, self.bought[safe][:, live].sum(axis=1), 0)
        o = np.where(ok, self.other[safe][:, live].sum(axis=1), 0)
        return [(int(x), int(y), self.days) for x, y in zip(b, o)]

    def remap(self, mapping: dict[int, int]) -> None:
        self._flush()
        bought, other = self.bought, self.other
        n = max(mapping.values(), default=-1) + 1
        self.bought = np.zeros((max(n, len(bought)), self.days), np.int32)
        self.other = np.zeros_like(self.bought)
        src = np.fromiter((o for o in mapping if o < len(bought)), dtype=np.int64)
        dst = np.fromiter((mapping[o] for o in mapping if o < len(bought)), dtype=np.int64)
        self.bought[dst] = bought[src]
        self.other[dst] = other[src]


# ---- what: sources, their order and quotas -------------------------------------------------------
# Priority order (an item keeps the first source that found it) and quotas are declared once, in
# schemas.serving (SOURCES, CandidateQuota, merge_sources), which the offline evaluator uses too.
HISTORY, SEARCH, KNN, COVIS, ANN, TRENDING = range(len(SOURCES))


def source_plan(n: int) -> dict[str, tuple[int, int]]:
    """Per source: (how many items it proposes, how many new items it may add), for lists of
    ``n`` candidates. Merging (``_merge``, the array form of ``schemas.serving.merge_sources``): in
    ``SOURCES`` order each source adds its proposals that are not picked yet, in its own order, up
    to its limit, until ``n`` are picked."""
    q = CandidateQuota(n)
    return {
        "history": (q.history, n),
        "search": (q.per_source, q.per_source),
        "knn": (q.per_source, q.per_source),
        "covis": (q.per_source, q.per_source),
        "ann": (q.per_source, q.per_source),
        "trending": (n, n),
    }


@dataclass(frozen=True)
class CandidateConfig:
    n: int = 200
    filter_purchased: bool = False
    filter_last_viewed: bool = False


def evidence_of(source: int, ev_row: int, ev_count: float, query, trending_evidence):
    """The evidence that found a candidate, from its ``Candidates`` fields: the query (search), the
    anchor row (knn), (anchor row, pair count) (covis), the anchor row or None (ann), (purchases,
    interactions, days) (trending), None (history). ``streamer.lists.reason_for`` turns it into words."""
    if source == SEARCH:
        return query
    if source == COVIS:
        return ev_row, ev_count
    if source == ANN or source == KNN:
        return ev_row if ev_row >= 0 else None
    if source == TRENDING:
        return trending_evidence[ev_row] if trending_evidence is not None else None
    return None


@dataclass
class Candidates:
    """One user's candidates, as arrays (a view into a ``CandidateBatch``)."""

    rows: np.ndarray  # int64 [C] item rows
    src: np.ndarray  # int8 [C] index into SOURCES
    ev_row: np.ndarray  # int64 [C] evidence row: knn / covis / ann anchor (-1: none), trending position
    ev_count: np.ndarray  # float64 [C] covis pair count
    feats: np.ndarray  # float32 [C, F]
    knn: np.ndarray | None = None  # float64 [C] item-kNN score (``ItemNeighbours.aggregate``), None without neighbours
    query: str | None = None  # the search query (evidence of the ``search`` source)
    trending_evidence: list | None = None  # (purchases, interactions, days) per trending position
    query_sim: np.ndarray | None = None  # float32 [C]: cosine to the active search query, if any
    own: np.ndarray | None = None  # bool [C]: the item is in the user's profile (``UserState.items``)

    def source(self, j: int) -> str:
        return SOURCES[self.src[j]]

    @property
    def sources(self) -> list[str]:
        return [SOURCES[s] for s in self.src]


@dataclass
class UserRequest:
    """What candidate gathering needs to know about one user of the batch."""

    state: UserState
    now_ms: int
    trigger_item: str | None = None
    trigger_type: str | None = None
    query_vec: np.ndarray | None = None  # the active search query's vector, if any


@dataclass
class CandidateBatch:
    """The candidates of every user of a micro-batch, flat: user ``u`` owns
    ``[offsets[u], offsets[u + 1])`` of each per-candidate array."""

    offsets: np.ndarray  # int64 [U + 1]
    rows: np.ndarray  # int64 [N]
    src: np.ndarray  # int8 [N]
    ev_row: np.ndarray  # int64 [N]
    ev_count: np.ndarray  # float64 [N]
    feats: np.ndarray  # float32 [N, F]
    knn: np.ndarray | None  # float64 [N] item-kNN score, None when the index has no neighbours
    query_sim: np.ndarray  # float32 [N] (0 where the user has no active query)
    queries: list  # [U] the search query behind the ``search`` source, or None
    has_query: np.ndarray  # bool [U]
    trending_evidence: list | None
    own: np.ndarray | None = None  # bool [N]: the item is in its user's profile
    # float32 [U, W, D]: user u's candidate vectors in [u, :count], zeros after, W = ``pad_width`` of
    # the largest count: the ranker's input layout, gathered once (``gather_batch(pad_vectors=True)``)
    padded_vecs: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    def padded(self, values: np.ndarray, width: int | None = None) -> np.ndarray:
        """Per-candidate ``values`` [N, ...] as [U, width, ...], zeros after each user's count."""
        counts = self.counts
        width = pad_width(counts) if width is None else width
        user = np.repeat(np.arange(len(counts)), counts)
        out = np.zeros((len(counts), width) + values.shape[1:], dtype=values.dtype)
        out[user, np.arange(len(user)) - self.offsets[user]] = values
        return out

    def user(self, u: int) -> Candidates:
        a, b = int(self.offsets[u]), int(self.offsets[u + 1])
        return Candidates(
            rows=self.rows[a:b],
            src=self.src[a:b],
            ev_row=self.ev_row[a:b],
            ev_count=self.ev_count[a:b],
            feats=self.feats[a:b],
            knn=self.knn[a:b] if self.knn is not None else None,
            query=self.queries[u],
            trending_evidence=self.trending_evidence,
            query_sim=self.query_sim[a:b] if self.has_query[u] else None,
            own=self.own[a:b] if self.own is not None else None,
        )


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
    """Candidates for one user (``gather_batch`` of one)."""
    req = UserRequest(user, now_ms, trigger_item, trigger_type, query_vec)
    return gather_batch(
        [req],
        index,
        covis,
        cfg,
        trending_rows=trending_rows,
        trending_evidence=trending_evidence,
        meaningful=meaningful,
    ).user(0)


# ---- how: every user of the batch at once ----------------------------------------------------------
def gather_batch(
    users: list[UserRequest],
    index: ItemIndex,
    covis: CoVisitation,
    cfg: CandidateConfig,
    *,
    trending_rows: np.ndarray | None = None,
    trending_evidence: list | None = None,
    meaningful: Callable[[int], bool] | None = None,
    pad_vectors: bool = False,
) -> CandidateBatch:
    """Candidates for every user of a micro-batch: each source proposes for all users at once (one
    HNSW call per source), ``_merge`` picks per ``source_plan`` with array operations over the
    whole batch, then filters and ``schemas.ranking.candidate_features`` run once over all
    candidates. ``meaningful(row)`` says whether an item's vector carries meaning (model catalog,
    text or category) rather than being an id-hash placeholder; the ``ann`` source is skipped for a
    user none of whose recent items has one (the neighbours of a random vector are noise: a cold
    user then gets trending instead), and its "similar to" anchor is always such an item.
    ``pad_vectors``: gather the candidates' vectors into the ranker's padded layout
    (``CandidateBatch.padded_vecs``); without it each user's vectors are gathered only for its
    similarity features and not kept."""
    n_users, n = len(users), cfg.n
    plan = source_plan(n)
    n_items = len(index)
    key_base = max(n_items, 1)  # flat key of (user, row): user * key_base + row
    pos = index.pos

    # every user's profile, flat (user by user, in profile order): item row (-1: unknown to the
    # index), weight, last ts, purchases; each user's recent rows and user vector
    profiles = [r.state.items for r in users]
    p_len = np.fromiter(map(len, profiles), np.int64, n_users)
    p_start = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(p_len, out=p_start[1:])
    n_prof = int(p_start[-1])
    p_user = np.repeat(np.arange(n_users, dtype=np.int64), p_len)
    p_row = np.fromiter(map(pos.get, chain.from_iterable(profiles), repeat(-1)), np.int64, n_prof)
    p_val = np.fromiter(
        chain.from_iterable(chain.from_iterable(map(dict.values, profiles))), np.float64, PROFILE_FIELDS * n_prof
    ).reshape(-1, PROFILE_FIELDS)[:, :3]
    recent = [[pos[i] for i, _t, _ts in list(r.state.seq)[-COVIS_WINDOW:] if i in pos] for r in users]
    uvecs = [r.state.user_vector() for r in users]

    # history: the user's own items, strongest first (weight x recency), the first ``k_hist`` of
    # them that the index knows
    k_hist = plan["history"][0]
    hist = np.full((n_users, k_hist), -1, dtype=np.int64)
    by_strength = np.lexsort((-p_val[:, 1], -p_val[:, 0], p_user))  # stable: ties in profile order
    h_row = p_row[by_strength]
    h_ok = (np.arange(n_prof) - p_start[p_user] < k_hist) & (h_row >= 0)
    hist[p_user[h_ok], count_before(h_ok, p_user, p_start)[h_ok]] = h_row[h_ok]

    # knn: item-kNN over the whole profile (precomputed neighbour lists), items the user never touched
    k_n = plan["knn"][0]
    knn = np.full((n_users, k_n), -1, dtype=np.int64)
    knn_anchor = np.full((n_users, k_n), -1, dtype=np.int64)
    neighbours = getattr(index, "neighbours", None)
    known = [p_row[a:b][p_row[a:b] >= 0] for a, b in zip(p_start[:-1], p_start[1:])] if neighbours is not None else None
    aggs = [neighbours.aggregate(rows) for rows in known] if neighbours is not None else None
    if aggs is not None:
        for u, (rows, agg) in enumerate(zip(known, aggs)):
            top, anchor = neighbours.offer(rows, k_n, agg)
            knn[u, : len(top)] = top
            knn_anchor[u, : len(top)] = anchor

    # search: nearest items to the active query
    k_q = plan["search"][0]
    search = np.full((n_users, k_q), -1, dtype=np.int64)
    with_q = [u for u, r in enumerate(users) if r.query_vec is not None]
    if with_q and n_items:
        labels, _ = index.nearest(np.stack([users[u].query_vec for u in with_q]).astype(np.float32), k_q)
        search[with_q, : labels.shape[1]] = labels

    # covis: co-visitation neighbours of the recent items, by summed count
    k_c = plan["covis"][0]
    cov_rows, cov_anchor, cov_count, cov_keys, cov_totals = _covis_batch(covis, recent, k_c, key_base)

    # ann: nearest items to the user embedding; the evidence is the closest recent item with meaning
    k_a = plan["ann"][0]
    ann = np.full((n_users, k_a), -1, dtype=np.int64)
    ann_anchor = np.full((n_users, k_a), -1, dtype=np.int64)
    anchors = [[r for r in rec if meaningful(r)] if meaningful is not None else rec for rec in recent]
    with_ann = [
        u
        for u in range(n_users)
        if uvecs[u] is not None and n_items and (bool(anchors[u]) or meaningful is None or not recent[u])
    ]
    if with_ann:
        labels, _ = index.nearest(np.stack([uvecs[u] for u in with_ann]), k_a)
        k = labels.shape[1]
        ann[with_ann, :k] = labels
        anchored = [(i, u) for i, u in enumerate(with_ann) if anchors[u] and k]
        if anchored:
            width = max(len(anchors[u]) for _i, u in anchored)
            a_rows = np.zeros((len(anchored), width), dtype=np.int64)
            a_valid = np.zeros((len(anchored), width), dtype=bool)
            for j, (_i, u) in enumerate(anchored):
                a_rows[j, : len(anchors[u])] = anchors[u]
                a_valid[j, : len(anchors[u])] = True
            cand = labels[[i for i, _u in anchored]]
            sims = np.matmul(index.vecs[cand], index.vecs[a_rows].transpose(0, 2, 1))
            sims[~np.broadcast_to(a_valid[:, None, :], sims.shape)] = -np.inf
            best = np.take_along_axis(a_rows, np.argmax(sims, axis=2), axis=1)
            ann_anchor[[u for _i, u in anchored], :k] = best

    # trending: the batch's shared list
    if trending_rows is None:
        trending_rows, trending_evidence = index.trending(n), None
    trending_rows = np.asarray(trending_rows, dtype=np.int64)[: plan["trending"][0]]
    trend = np.broadcast_to(trending_rows, (n_users, len(trending_rows)))
    trend_pos = np.broadcast_to(np.arange(len(trending_rows), dtype=np.int64), trend.shape)

    blocks = [  # (source, proposals [U, k], evidence row, evidence count), in SOURCES order
        (HISTORY, hist, None, None),
        (SEARCH, search, None, None),
        (KNN, knn, knn_anchor, None),
        (COVIS, cov_rows, cov_anchor, cov_count),
        (ANN, ann, ann_anchor, None),
        (TRENDING, trend, trend_pos, None),
    ]
    limits = [plan[SOURCES[s]][1] for s, *_ in blocks]
    u_idx, col_src, col_pos, keep = _merge(blocks, limits, n, key_base)
    # flat picks in (user, source, position) order = the order each user's items were picked
    sel_u = u_idx[keep]
    sel_s = col_src[keep]
    rows = np.concatenate([b[1] for b in blocks], axis=1)[keep]
    ev_row = np.concatenate([b[2] if b[2] is not None else np.full(b[1].shape, -1, np.int64) for b in blocks], axis=1)[
        keep
    ]
    ev_count = np.concatenate([b[3] if b[3] is not None else np.zeros(b[1].shape) for b in blocks], axis=1)[keep]

    # filters
    ok = (rows < n_items) & index.available[np.minimum(rows, len(index.available) - 1)]
    drop_keys = []
    if cfg.filter_purchased:
        bought = (p_val[:, 2] > 0) & (p_row >= 0)
        drop_keys.append(p_user[bought] * key_base + p_row[bought])
    if cfg.filter_last_viewed:
        for u, r in enumerate(users):
            if r.trigger_item is not None and r.trigger_type in ("view", "click") and r.trigger_item in pos:
                drop_keys.append(np.asarray([u * key_base + pos[r.trigger_item]], dtype=np.int64))
    if drop_keys:
        ok &= ~np.isin(sel_u * key_base + rows, np.concatenate(drop_keys))
    sel_u, sel_s, rows, ev_row, ev_count = sel_u[ok], sel_s[ok], rows[ok], ev_row[ok], ev_count[ok]
    offsets = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(sel_u, minlength=n_users), out=offsets[1:])

    # features (schemas.ranking.FEATURE_NAMES), once for the whole batch
    keys = sel_u * key_base + rows
    personal = np.zeros(len(rows), dtype=np.float64)
    last = np.full(len(rows), -1, dtype=np.int64)
    own = np.zeros(len(rows), dtype=bool)
    p_known = p_row >= 0
    p_keys = p_user[p_known] * key_base + p_row[p_known]
    if len(p_keys):
        p_vals = p_val[p_known]
        hit, at = _lookup(p_keys, keys)
        own = hit
        personal[hit] = p_vals[at, 0]
        last[hit] = p_vals[at, 1].astype(np.int64)
    cov = np.zeros(len(rows), dtype=np.float64)
    if len(cov_keys):
        hit, at = _lookup(cov_keys, keys)
        cov[hit] = cov_totals[at]
    counts = np.diff(offsets)
    padded_vecs = None
    if pad_vectors:  # the ranker's layout: user u's vectors in [u, :count], zeros after
        width = pad_width(counts)
        slot = np.zeros((n_users, width), dtype=np.int64)  # item row per slot (padding: row 0, zeroed below)
        slot[sel_u, np.arange(len(rows)) - offsets[sel_u]] = rows
        padded_vecs = index.vecs[slot]
        padded_vecs[np.arange(width) >= counts[:, None]] = 0.0
    sim = np.zeros(len(rows), dtype=np.float32)
    qsim = np.zeros(len(rows), dtype=np.float32)
    vecs = index.vecs
    for u, r in enumerate(users):  # one matrix-vector product per user (BLAS)
        a, b = offsets[u], offsets[u + 1]
        if a == b or (uvecs[u] is None and r.query_vec is None):
            continue
        # the ranker's padded copy, or else this user's vectors alone: one block at a time, used
        # while it is in cache (no flat copy of the whole batch's vectors)
        block = padded_vecs[u, : b - a] if padded_vecs is not None else vecs[rows[a:b]]
        if uvecs[u] is not None:
            sim[a:b] = block @ uvecs[u]
        if r.query_vec is not None:
            qsim[a:b] = block @ r.query_vec
    now = np.asarray([r.now_ms for r in users], dtype=np.int64)[sel_u]
    feats = candidate_features(personal, last, now, cov, index.popularity[rows], sim)
    knn_score = None
    if aggs is not None:
        knn_score = np.zeros(len(rows))
        for u, agg in enumerate(aggs):
            a, b = offsets[u], offsets[u + 1]
            knn_score[a:b] = neighbours.score_at(agg, rows[a:b])
    has_q = np.asarray([r.query_vec is not None for r in users], dtype=bool)
    return CandidateBatch(
        offsets=offsets,
        rows=rows,
        src=sel_s.astype(np.int8),
        ev_row=ev_row,
        ev_count=ev_count,
        feats=feats,
        knn=knn_score,
        query_sim=qsim,
        queries=[r.state.last_query for r in users],
        has_query=has_q,
        trending_evidence=trending_evidence,
        own=own,
        padded_vecs=padded_vecs,
    )


def stable_argsort(keys: np.ndarray) -> np.ndarray:
    """``np.argsort(keys, kind="stable")`` of non-negative int64 keys, as one sort of unique keys
    (each key times ``len(keys)`` plus its position) where that cannot overflow: a plain sort of
    the values (numpy's SIMD sort, ~2x faster than an argsort of them, ~5x than the stable
    argsort) whose remainders by ``len(keys)`` are the positions."""
    n = len(keys)
    if n < 2 or int(keys.max()) >= (1 << 62) // n or int(keys.min()) < 0:
        return np.argsort(keys, kind="stable")
    return np.sort(keys * n + np.arange(n, dtype=np.int64)) % n


def rank_in_groups(groups: np.ndarray, score: np.ndarray, tie: np.ndarray | None = None) -> np.ndarray:
    """``np.lexsort((tie, -score, groups))``: by group (non-negative ints), then score descending,
    then ``tie`` (distinct non-negative ints; None: the entries' order) ascending. Without ``tie``
    two stable sorts, each cheaper than lexsort's: the scores, then the groups (a radix sort for
    groups that fit 16 bits); with it one sort of a composite int key."""
    n = len(groups)
    if tie is None:
        order = np.argsort(-np.asarray(score), kind="stable")
        g = groups[order]
        return order[np.argsort(g.astype(np.uint16) if n and int(g.max()) < 1 << 16 else g, kind="stable")]
    if n < 2:
        return np.lexsort((tie, -score, groups))
    levels, dense = np.unique(-score, return_inverse=True)  # equal scores share a level
    tie_base = int(tie.max()) + 1
    if int(groups.max()) + 1 >= (1 << 62) // (len(levels) * tie_base) or int(tie.min()) < 0:
        return np.lexsort((tie, -score, groups))
    return np.argsort((groups * len(levels) + dense) * tie_base + tie)


def count_before(mask: np.ndarray, groups: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per entry of contiguous groups (entry ``i`` in group ``groups[i]``, which begins at
    ``starts[groups[i]]``): how many earlier entries of its group are in ``mask``."""
    before = np.zeros(len(mask) + 1, dtype=np.int64)
    np.cumsum(mask, out=before[1:])
    return before[:-1] - before[starts[groups]]


def _lookup(sorted_or_not: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``keys`` found in ``sorted_or_not`` (unique keys): (mask over keys, index)."""
    order = stable_argsort(sorted_or_not)
    ref = sorted_or_not[order]
    i = np.minimum(np.searchsorted(ref, keys), len(ref) - 1)
    hit = ref[i] == keys
    return hit, order[i[hit]]


def _covis_batch(covis: CoVisitation, recent: list[list[int]], k: int, key_base: int):
    """Per user: the ``k`` co-visitation neighbours of its recent rows with the largest summed
    count (ties: first seen), each with the anchor that contributed most (ties: first anchor)
    and that pair's count; plus every neighbour's summed count (the ``log_covis`` feature), as
    flat (user, row) keys and totals."""
    n_users = len(recent)
    out_rows = np.full((n_users, k), -1, dtype=np.int64)
    out_anchor = np.full((n_users, k), -1, dtype=np.int64)
    out_count = np.zeros((n_users, k), dtype=np.float64)
    get = covis.counts.get
    owners, anchors_used, nbs = [], [], []  # one entry per (user, recent row) with neighbours
    for u, anchors in enumerate(recent):
        for a in anchors:
            nb = get(a)
            if nb:
                owners.append(u)
                anchors_used.append(a)
                nbs.append(nb)
    if not nbs:
        return out_rows, out_anchor, out_count, np.zeros(0, np.int64), np.zeros(0)
    # all neighbour dicts flattened at once (two ``fromiter`` calls, not two per anchor)
    lens = np.fromiter(map(len, nbs), np.int64, len(nbs))
    size = int(lens.sum())
    keys = np.repeat(np.asarray(owners, np.int64) * key_base, lens)
    keys += np.fromiter(chain.from_iterable(nbs), np.int64, size)
    vals = np.fromiter(chain.from_iterable(map(dict.values, nbs)), np.float64, size)
    anc = np.repeat(np.asarray(anchors_used, np.int64), lens)
    # position in ``keys`` = global appearance order (users in order, anchors in order): a stable
    # sort by key keeps it as the tie-break
    order = stable_argsort(keys)
    ks = keys[order]
    vs = vals[order]
    head = np.empty(size, dtype=bool)  # first entry of each key
    head[0] = True
    np.not_equal(ks[1:], ks[:-1], out=head[1:])
    starts = np.flatnonzero(head)
    ukeys = ks[starts]
    totals = np.add.reduceat(vs, starts)
    first = order[starts]
    # per key: the entry with the largest count, the first seen among equal ones (entries of a key
    # are in appearance order within ``order``)
    seg = np.cumsum(head) - 1
    top = np.flatnonzero(vs == np.maximum.reduceat(vs, starts)[seg])
    best = order[top[np.r_[True, seg[top[1:]] != seg[top[:-1]]]]]
    users = ukeys // key_base
    # rank within each user by total, ties by first appearance: the keys taken in appearance
    # order (a scatter, not a sort), whose entry order is then the tie-break
    key_at = np.full(size, -1, dtype=np.int64)
    key_at[first] = np.arange(len(starts))
    by_appearance = key_at[key_at >= 0]
    rank = by_appearance[rank_in_groups(users[by_appearance], totals[by_appearance])]
    u_sorted = users[rank]
    ustart = np.searchsorted(u_sorted, np.arange(n_users))
    pos_in_user = np.arange(len(rank)) - ustart[u_sorted]
    take = pos_in_user < k
    r, uu, pp = rank[take], u_sorted[take], pos_in_user[take]
    out_rows[uu, pp] = ukeys[r] % key_base
    out_anchor[uu, pp] = anc[best[r]]
    out_count[uu, pp] = vals[best[r]]
    return out_rows, out_anchor, out_count, ukeys, totals


def _merge(blocks, limits: list[int], n: int, key_base: int):
    """Pick per ``source_plan`` for all users at once. Returns, over the concatenated proposal
    columns [U, K]: the user of each entry, its source, its position, and whether it is picked.

    One sort of every entry's (user, row) key up front: each entry's group (its user's item) and
    whether an earlier entry of its own source proposes the same item; then, source by source, an
    entry is new when it is valid, first in its source, and no earlier source took its group."""
    n_users = blocks[0][1].shape[0]
    widths = [b[1].shape[1] for b in blocks]
    col_src = np.repeat(np.asarray([b[0] for b in blocks]), widths)
    u_idx = np.repeat(np.arange(n_users, dtype=np.int64)[:, None], sum(widths), axis=1)
    keep = np.zeros((n_users, sum(widths)), dtype=bool)
    props = np.concatenate([b[1] for b in blocks], axis=1)
    valid = props >= 0
    keys = np.where(valid, u_idx * key_base + props, -1).ravel()
    order = stable_argsort(keys + 1)  # by key, then entry order: (user, source, position)
    sorted_keys = keys[order]
    head = np.empty(len(keys), dtype=bool)
    head[:1] = True
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=head[1:])
    group = np.empty(len(keys), dtype=np.int64)
    group[order] = np.cumsum(head) - 1
    src_of = np.broadcast_to(col_src, props.shape).ravel()
    repeated = np.zeros(len(keys), dtype=bool)  # an earlier entry of the same source has the item
    repeated[order[1:]] = ~head[1:] & (src_of[order[1:]] == src_of[order[:-1]])
    first_valid = (valid.ravel() & ~repeated).reshape(props.shape)
    group = group.reshape(props.shape)
    taken = np.zeros(int(group.max(initial=-1)) + 1, dtype=bool)  # per group: picked by an earlier source
    total = np.zeros(n_users, dtype=np.int64)
    col = 0
    for limit, w in zip(limits, widths):
        if w == 0:
            continue
        g = group[:, col : col + w]
        new = first_valid[:, col : col + w] & ~taken[g]
        allowed = np.minimum(limit, np.maximum(n - total, 0))
        take = new & (np.cumsum(new, axis=1) <= allowed[:, None])
        keep[:, col : col + w] = take
        total += take.sum(axis=1)
        taken[g[take]] = True
        col += w
    return u_idx, np.broadcast_to(col_src, keep.shape), None, keep
