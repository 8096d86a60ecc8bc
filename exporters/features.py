"""The ranker's inputs at "prediction points", computed offline the way the worker computes them.

A prediction point is a user right after one of their events (``as_of``): the moment the
worker recomputes the user's list. Its inputs are

* the sequence: the user's last ``max_seq_len`` events (item, type), oldest first;
* per item, ``schemas.ranking.FEATURE_NAMES`` as the worker's ``streamer.candidates.gather``
  builds them: the user's summed event weights and last time per item, co-visitation counts
  from the user's last ``COVIS_WINDOW`` events (pairs formed when a positive-weight event
  meets the set of the same user's previous ``COVIS_WINDOW`` items, both directions), decayed
  popularity, and the cosine to the decayed, type-weighted user embedding. "now" is the time
  of the ``as_of`` event.

Leakage: the user part reads only the user's events up to ``as_of``; global counts
(co-visitation, popularity) read only ``fit`` events at or before "now" (popularity: before
the start of that hour, so one table row serves many points). Targets are always later.

Features for all items of a batch of points are assembled on the fly (``PointSet.features``)
from sparse per-point rows, so full-catalog training and evaluation never hold a
[points, items, features] array.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse

from exporters.dataset import Interactions, user_baskets
from schemas.ranking import COVIS_WINDOW, DAY_MS, EVENT_TYPE_IDS, EVENT_WEIGHTS, NUM_FEATURES, RECENCY_DAYS
from schemas.ranking import DEFAULT_HALF_LIFE_DAYS as HALF_LIFE_DAYS

HOUR_MS = 3_600_000

_WEIGHT_OF_TYPE = np.zeros(max(EVENT_TYPE_IDS.values()) + 1)
for _name, _tid in EVENT_TYPE_IDS.items():
    _WEIGHT_OF_TYPE[_tid] = EVENT_WEIGHTS.get(_name, 0.0)


@dataclass
class PointSet:
    """Prediction points and everything needed to build their ranker inputs."""

    users: np.ndarray  # int64 [P]
    now: np.ndarray  # int64 [P] ms
    seq_items: np.ndarray  # int64 [P, L], -1 = padding (right-aligned: newest last)
    seq_types: np.ndarray  # int64 [P, L], 0 = padding
    personal: sparse.csr_matrix  # [P, N] summed event weights (may be <= 0)
    recency: sparse.csr_matrix  # [P, N] exp(-days since last interaction / RECENCY_DAYS)
    decayed: sparse.csr_matrix  # [P, N] decayed event weights: user embedding = decayed @ item_vecs
    covis: sparse.csr_matrix  # [P, N] co-visitation sums from the user's last COVIS_WINDOW events
    pop_row: np.ndarray  # int64 [P] row of pop_table
    pop_table: np.ndarray  # float32 [S, N] log1p(decayed popularity) at hour starts

    def __len__(self) -> int:
        return len(self.users)

    def take(self, idx: np.ndarray) -> "PointSet":
        return PointSet(
            self.users[idx],
            self.now[idx],
            self.seq_items[idx],
            self.seq_types[idx],
            self.personal[idx],
            self.recency[idx],
            self.decayed[idx],
            self.covis[idx],
            self.pop_row[idx],
            self.pop_table,
        )

    def user_embedding_sim(self, idx: np.ndarray, item_vecs: np.ndarray, items: np.ndarray | None = None) -> np.ndarray:
        """cos(user embedding, every item or ``items``) [len(idx), N or len(items)] (0 where the user
        has no embedding); with ``items`` the cost does not grow with the catalog."""
        emb = np.asarray(self.decayed[idx] @ item_vecs, dtype=np.float32)
        norm = np.linalg.norm(emb, axis=1, keepdims=True)
        emb = np.divide(emb, norm, out=np.zeros_like(emb), where=norm > 0)
        return emb @ (item_vecs if items is None else item_vecs[items]).T

    def features(self, idx: np.ndarray, item_vecs: np.ndarray, items: np.ndarray | None = None) -> np.ndarray:
        """float32 [len(idx), N or len(items), F] in FEATURE_NAMES order."""
        cols = slice(None) if items is None else items
        n = item_vecs.shape[0] if items is None else len(items)
        out = np.empty((len(idx), n, NUM_FEATURES), dtype=np.float32)
        out[..., 0] = np.log1p(np.maximum(self.personal[idx][:, cols].toarray(), 0.0))
        out[..., 1] = self.recency[idx][:, cols].toarray()
        out[..., 2] = np.log1p(self.covis[idx][:, cols].toarray())
        out[..., 3] = self.pop_table[self.pop_row[idx]][:, cols]
        out[..., 4] = self.user_embedding_sim(idx, item_vecs, items)
        return out


def covis_pairs(
    inter: Interactions, fit: np.ndarray, by_event: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Directed co-visitation pairs (src, dst, ts) from fit events, sorted by (src, ts); with
    ``by_event`` the third array is the index of the event that formed the pair instead of its time."""
    idx = np.flatnonzero(fit)
    idx = idx[np.lexsort((idx, inter.users[idx]))]
    src, dst, ts = [], [], []
    users, items, times, types = inter.users[idx], inter.items[idx], inter.ts[idx], inter.types[idx]
    positive = _WEIGHT_OF_TYPE[types] > 0
    for lag in range(1, COVIS_WINDOW + 1):
        same = np.zeros(len(idx), dtype=bool)
        same[lag:] = users[lag:] == users[:-lag]
        cur = np.flatnonzero(same & positive)
        prev_items = items[cur - lag]
        keep = prev_items != items[cur]
        # A previous item counts once per event even if it occurs several times in the window.
        for earlier in range(1, lag):
            keep &= items[cur - earlier] != prev_items
        cur, prev_items = cur[keep], prev_items[keep]
        src += [prev_items, items[cur]]
        dst += [items[cur], prev_items]
        when = idx[cur] if by_event else times[cur]
        ts += [when, when]
    src_a, dst_a, ts_a = np.concatenate(src), np.concatenate(dst), np.concatenate(ts)
    order = np.lexsort((ts_a, src_a))
    return src_a[order], dst_a[order], ts_a[order]


def _popularity_upto(inter: Interactions, fit: np.ndarray, as_of: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log1p(decayed popularity) right after each distinct event ``as_of`` (fit events up to it in
    log order, decayed to its time), and each point's row."""
    uniq, rows = np.unique(as_of, return_inverse=True)
    idx = np.flatnonzero(fit)
    w = _WEIGHT_OF_TYPE[inter.types[idx]]
    idx, w = idx[w > 0], w[w > 0]
    half = HALF_LIFE_DAYS * DAY_MS
    t0 = inter.ts[idx].max() if len(idx) else 0
    g = w * np.exp2((inter.ts[idx] - t0) / half)
    table = np.zeros((len(uniq), inter.n_items), dtype=np.float32)
    running = np.zeros(inter.n_items)
    pos = 0
    for r, e in enumerate(uniq):
        end = np.searchsorted(idx, e, side="right")
        if end > pos:
            np.add.at(running, inter.items[idx[pos:end]], g[pos:end])
            pos = end
        table[r] = np.log1p(running * np.exp2((t0 - inter.ts[e]) / half))
    return table, rows


def _popularity_table(inter: Interactions, fit: np.ndarray, now: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log1p(decayed popularity) at the start of every hour some point falls in, and each point's row."""
    hours = now // HOUR_MS
    uniq, rows = np.unique(hours, return_inverse=True)
    idx = np.flatnonzero(fit)
    w = _WEIGHT_OF_TYPE[inter.types[idx]]
    idx, w = idx[w > 0], w[w > 0]
    ts = inter.ts[idx]
    half = HALF_LIFE_DAYS * DAY_MS
    t0 = ts.max() if len(ts) else 0
    # Decayed counts in units of "value at t0": one cumulative sum, rescaled per hour.
    g = w * np.exp2((ts - t0) / half)
    order = np.argsort(ts, kind="stable")
    ts_sorted, items_sorted, g_sorted = ts[order], inter.items[idx][order], g[order]
    table = np.zeros((len(uniq), inter.n_items), dtype=np.float32)
    running = np.zeros(inter.n_items)
    pos = 0
    for r, hour in enumerate(uniq):
        start = hour * HOUR_MS
        end = np.searchsorted(ts_sorted, start, side="left")
        if end > pos:
            np.add.at(running, items_sorted[pos:end], g_sorted[pos:end])
            pos = end
        table[r] = np.log1p(running * np.exp2((t0 - start) / half))
    return table, rows


def build_points(
    inter: Interactions,
    fit: np.ndarray,
    visible: np.ndarray,
    as_of: np.ndarray,
    max_seq_len: int,
    now: np.ndarray | None = None,
    upto_event: bool = False,
) -> PointSet:
    """Ranker inputs for points at interaction indices ``as_of`` (the user's last input event,
    -1 for a user without one; then ``now`` must be given).

    The user's input is their ``visible`` events up to and including ``as_of``. Global counts
    read the fit events before "now" (popularity: before the start of now's hour, so one table row
    serves many points); with ``upto_event`` the fit events up to and including ``as_of`` in log
    order, popularity decayed to "now": exactly what a worker replaying the log in order holds
    right after applying ``as_of`` (events of other users at the same time but later in the log
    are not counted yet).
    """
    n_points = len(as_of)
    users = inter.users[np.maximum(as_of, 0)]
    point_now = inter.ts[np.maximum(as_of, 0)].copy() if now is None else now.astype(np.int64).copy()
    if now is None and (as_of < 0).any():
        raise ValueError("points without an input event need an explicit `now`")
    half = HALF_LIFE_DAYS * DAY_MS
    seq_items = np.full((n_points, max_seq_len), -1, dtype=np.int64)
    seq_types = np.zeros((n_points, max_seq_len), dtype=np.int64)
    recent = np.full((n_points, COVIS_WINDOW), -1, dtype=np.int64)
    p_rows, p_cols, p_w, p_last, p_dec = [], [], [], [], []

    vis = np.flatnonzero(visible)
    vis = vis[np.lexsort((vis, inter.users[vis]))]
    bounds = np.searchsorted(inter.users[vis], np.arange(inter.n_users + 1))
    by_user = np.argsort(users, kind="stable")
    for p in by_user:
        if as_of[p] < 0:
            continue
        u = users[p]
        ev = vis[bounds[u] : bounds[u + 1]]
        ev = ev[: np.searchsorted(ev, as_of[p], side="right")]
        if len(ev) == 0:
            continue
        items, types, ts = inter.items[ev], inter.types[ev], inter.ts[ev]
        tail = slice(max(len(ev) - max_seq_len, 0), None)
        seq_items[p, -len(items[tail]) :] = items[tail]
        seq_types[p, -len(types[tail]) :] = types[tail]
        last_k = items[-COVIS_WINDOW:]
        recent[p, -len(last_k) :] = last_k
        w = _WEIGHT_OF_TYPE[types]
        uniq, inv = np.unique(items, return_inverse=True)
        p_rows.append(np.full(len(uniq), p))
        p_cols.append(uniq)
        p_w.append(np.bincount(inv, weights=w, minlength=len(uniq)))
        last = np.full(len(uniq), np.iinfo(np.int64).min)
        np.maximum.at(last, inv, ts)
        p_last.append(np.exp(-np.maximum(point_now[p] - last, 0) / DAY_MS / RECENCY_DAYS))
        p_dec.append(
            np.bincount(inv, weights=w * np.exp2(-np.maximum(point_now[p] - ts, 0) / half), minlength=len(uniq))
        )

    def csr(values: list[np.ndarray]) -> sparse.csr_matrix:
        if not p_rows:
            return sparse.csr_matrix((n_points, inter.n_items), dtype=np.float32)
        m = sparse.csr_matrix(
            (np.concatenate(values).astype(np.float32), (np.concatenate(p_rows), np.concatenate(p_cols))),
            shape=(n_points, inter.n_items),
        )
        return m

    if upto_event:
        if (as_of < 0).any():
            raise ValueError("upto_event needs an input event for every point")
        covis = _covis_features(inter, fit, recent, as_of, by_event=True)
        pop_table, pop_row = _popularity_upto(inter, fit, as_of)
    else:
        covis = _covis_features(inter, fit, recent, point_now)
        pop_table, pop_row = _popularity_table(inter, fit, point_now)
    return PointSet(
        users, point_now, seq_items, seq_types, csr(p_w), csr(p_last), csr(p_dec), covis, pop_row, pop_table
    )


def _covis_features(
    inter: Interactions, fit: np.ndarray, recent: np.ndarray, now: np.ndarray, by_event: bool = False
) -> sparse.csr_matrix:
    """Per point: sum over its recent items r (repeats count again, as in the worker) of the
    pair counts (r -> j) formed at or before "now" (``by_event``: by the event index ``now`` or
    an earlier one)."""
    src, dst, ts = covis_pairs(inter, fit, by_event)
    starts = np.searchsorted(src, np.arange(inter.n_items + 1))
    rows, cols, vals = [], [], []
    for p in range(len(recent)):
        chunks = []
        for r in recent[p]:
            if r < 0:
                continue
            lo, hi = starts[r], starts[r + 1]
            end = lo + np.searchsorted(ts[lo:hi], now[p], side="right")
            chunks.append(dst[lo:end])
        if not chunks:
            continue
        uniq, counts = np.unique(np.concatenate(chunks), return_counts=True)
        rows.append(np.full(len(uniq), p))
        cols.append(uniq)
        vals.append(counts)
    if not rows:
        return sparse.csr_matrix((len(recent), inter.n_items), dtype=np.float32)
    return sparse.csr_matrix(
        (np.concatenate(vals).astype(np.float32), (np.concatenate(rows), np.concatenate(cols))),
        shape=(len(recent), inter.n_items),
    )


def basket_points(inter: Interactions, fit: np.ndarray, target_end: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Training points from ``fit`` events: for every user basket (events of one user at one
    timestamp, e.g. an invoice) after the first, the point is the last event of the previous
    basket and the targets are the basket's distinct items in file order. Only baskets before
    ``target_end``."""
    idx, new_basket = user_baskets(inter, fit)
    users, ts = inter.users[idx], inter.ts[idx]
    starts = np.flatnonzero(new_basket)
    ends = np.append(starts[1:], len(idx))
    as_of, targets = [], []
    for b in range(1, len(starts)):
        s, e = starts[b], ends[b]
        if users[s] != users[s - 1] or ts[s] >= target_end:
            continue
        as_of.append(idx[s - 1])
        items = inter.items[idx[s:e]]
        _, first = np.unique(items, return_index=True)
        targets.append(items[np.sort(first)])  # file order kept: targets[0] is the basket's first line
    return np.asarray(as_of, dtype=np.int64), targets
