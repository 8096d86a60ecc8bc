"""List building: scored candidates → the published ``Recommendation``, with a reason per item.

Pure computation, no Redis or Kafka (``streamer.publish`` writes the lists). Every item carries a
short reason built from the evidence that found it ("often chosen with WHITE METAL LANTERN (12
times)", "matches your search 'lantern'", "you bought this 3 times, last on 2011-12-01",
"trending: bought 37 times in the last 7 days"). See ``reason_for``.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from functools import lru_cache

import numpy as np

from schemas import RecItem, Recommendation
from schemas.repeat import repeat_features, state_inputs
from schemas.serving import SOURCES, ListParams, assemble, discovery, list_scores, order_with_search
from streamer.candidates import (
    SEARCH,
    TRENDING,
    CandidateBatch,
    Candidates,
    count_before,
    evidence_of,
    rank_in_groups,
)
from streamer.items import ItemIndex
from streamer.state import UserState


def _title(index: ItemIndex, row: int) -> str:
    t = index.titles[row]
    return t if t else f"item {index.ids[row]}"


def _clip(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


_VERBS = {
    1: "you viewed this",
    2: "you clicked this",
    3: "you added this to your cart",
    4: "you saved this",
    5: "you bought this",
    6: "you cancelled this",
    7: "you rated this",
}


def _day(ts_ms: int) -> str:
    return _utc_date(int(ts_ms) // 86_400_000)


@lru_cache(maxsize=4096)
def _utc_date(day: int) -> str:
    return datetime.fromtimestamp(day * 86_400, tz=timezone.utc).strftime("%Y-%m-%d")


def _times(n: int) -> str:
    return "once" if n == 1 else "twice" if n == 2 else f"{n} times"


def reason_for(source: str, evidence, row: int, user: UserState, index: ItemIndex) -> str:
    """A short reason from the evidence that found the candidate (see ``candidates.evidence_of``):
    real counts, dates, titles and the user's own query, never a fixed slogan where evidence exists."""
    if source == "history":
        item_id = index.ids[row]
        prof = user.items.get(item_id)
        if prof and prof[2] > 0:
            return f"you bought this {_times(prof[2])}, last on {_day(prof[1])}"
        last = next((ty for i, ty, _ts in reversed(user.seq) if i == item_id), None)
        when = f" on {_day(prof[1])}" if prof else " recently"
        return _VERBS.get(last, "you looked at this") + when
    if source == "search" and evidence:
        return _clip(f"matches your search '{evidence}'", 200)
    if source == "covis" and evidence is not None:
        anchor, count = evidence if isinstance(evidence, tuple) else (evidence, 0)
        n = int(round(count))
        tail = f" ({_times(n)})" if n > 0 else ""
        return _clip(f"often chosen with {_title(index, int(anchor))}{tail}", 200)
    if source == "knn" and evidence is not None:
        return _clip(f"often chosen by the people who chose {_title(index, int(evidence))}", 200)
    if source == "ann" and evidence is not None:
        return _clip(f"similar to {_title(index, int(evidence))}", 200)
    if source == "ann":
        if user.last_query:
            return _clip(f"related to your search '{user.last_query}'", 200)
        return "close to what you looked at"
    if source == "trending" and isinstance(evidence, tuple):
        bought, other, days = evidence
        if bought:
            return f"trending: bought {_times(bought)} in the last {days} days"
        if other:
            return f"trending: viewed or picked {_times(other)} in the last {days} days"
    pop = float(index.popularity[row]) if row < len(index.popularity) else 0.0
    if pop > 0:
        return f"popular lately (recency-weighted count {pop:.1f})"
    return "new in the catalog"


def rebuy_inputs(
    user: UserState, cands: Candidates, scores: np.ndarray, index: ItemIndex, params: ListParams, now_ms: int
) -> np.ndarray:
    """``schemas.repeat.repeat_features`` of the candidates from the user's state (the rebuy score's
    input, ``ListParams.rebuy``); ``now_ms``: the time the candidates' features were computed at."""
    ids = [index.ids[int(r)] for r in cands.rows]
    inputs = state_inputs(user.items, user.seq, ids)
    rate = params.rebuy_rates.lookup(ids) if params.rebuy_rates is not None else None
    return repeat_features(scores, cands.feats, inputs, now_ms, rate)


def _order(
    user: UserState,
    cands: Candidates,
    scores: np.ndarray,
    index: ItemIndex,
    params: ListParams,
    event_ts: int,
    search_slots: int,
) -> tuple[list[int], np.ndarray]:
    """One user's list as candidate positions, best first, and the published scores by position:
    ``schemas.serving.list_scores``, ``assemble`` and ``order_with_search``."""
    new = None  # which candidates the user never touched: only needed when slots are reserved for them
    if params.min_new > 0 or discovery(params):
        new = (
            ~cands.own
            if cands.own is not None
            else np.fromiter(
                (index.ids[int(r)] not in user.items for r in cands.rows), dtype=bool, count=len(cands.rows)
            )
        )
    rebuy_x = rebuy_inputs(user, cands, scores, index, params, max(event_ts, user.emb_ts)) if params.rebuy else None
    scores = list_scores(scores, cands.knn, params, new, cands.feats, cands.src, len(user.items), rebuy_x=rebuy_x)
    assembled = assemble(scores, new, params)
    return order_with_search(scores, cands.query_sim, assembled, params.size, search_slots)


def _items(
    user: UserState,
    index: ItemIndex,
    rows: list,
    src: list,
    ev_row: list,
    ev_count: list,
    scores: list,
    query: str | None,
    trending_evidence: list | None,
    shared: dict | None = None,
) -> tuple[RecItem, ...]:
    """The list's items from the picked candidates' fields, best first (Python lists, one entry per
    item): the evidence (``candidates.evidence_of``) turned into a reason by ``reason_for``.
    ``shared``: reasons that depend on the evidence alone (co-visitation, a kNN or ann anchor, a
    trending count), kept by evidence across the lists of a batch, where they recur."""
    ids, titles = index.ids, index.titles
    shared = {} if shared is None else shared
    items = []
    for row, s, ev_r, ev_c, score in zip(rows, src, ev_row, ev_count, scores):
        source = SOURCES[s]
        if s == TRENDING:  # no counts in the evidence: the reason reads the item's popularity
            key = (s, ev_r, row) if trending_evidence is not None else None
        else:
            key = (s, ev_r, ev_c) if s > SEARCH and ev_r >= 0 else None
        reason = shared.get(key) if key is not None else None
        if reason is None:
            evidence = evidence_of(s, ev_r, ev_c, query, trending_evidence)
            reason = reason_for(source, evidence, row, user, index)
            if key is not None:
                shared[key] = reason
        items.append(RecItem(item_id=ids[row], score=round(score, 6), reason=reason, title=titles[row], source=source))
    return tuple(items)


def _picks_plain(
    batch: CandidateBatch, scores: list[np.ndarray], params: ListParams, search_slots: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """``assemble`` then ``order_with_search`` for every user of the batch when the list score is
    the score itself (no discovery order): the picked candidates' positions in the batch, user by
    user, each user's best first, and their published scores.

    One sort ranks every user's candidates (score descending, ties in candidate order); the
    ``size`` first are a user's list. With ``min_new``, a user whose top has fewer new items than
    ``assemble`` wants (``want``: ``min_new``, at most the list's size and the user's new
    candidates) swaps the lowest own items of the top for the best new ones below it, and the
    chosen are ordered by score, ties in ``assemble``'s order: the top's new items, the kept own
    ones, the added new ones, each in rank order (``assemble``'s stable sort of that
    concatenation). Users with search slots and a query then go through ``order_with_search``."""
    offsets, counts = batch.offsets, batch.counts
    n_users, size = len(counts), params.size
    flat = np.concatenate([np.asarray(s, dtype=np.float64) for s in scores] + [np.zeros(0)])
    user_of = np.repeat(np.arange(n_users), counts)
    first = offsets[:-1]
    # candidate i's place in its user; ``ranked[i]`` is that user's ``pos[i]``-th best
    pos = np.arange(len(flat)) - first[user_of]
    ranked = rank_in_groups(user_of, flat)
    in_top = pos < size
    every = ranked[in_top]
    if params.min_new > 0 and len(flat):
        new = ~batch.own[ranked]

        def per_user(mask: np.ndarray) -> np.ndarray:
            return np.bincount(user_of, weights=mask, minlength=n_users).astype(np.int64)

        have = per_user(new & in_top)
        want = np.minimum(np.minimum(params.min_new, np.minimum(size, counts)), per_user(new))
        short = have < want
        if short.any():
            lack = np.maximum(want - have, 0)[user_of]
            own_top = ~new & in_top
            add = new & ~in_top & (count_before(new & ~in_top, user_of, offsets) < lack)
            keep_own = own_top & (
                count_before(own_top, user_of, offsets) < np.minimum(size, counts)[user_of] - have[user_of] - lack
            )
            s_u = short[user_of]
            chosen = np.where(s_u, (new & in_top) | keep_own | add, in_top)
            tier = np.where(s_u & ~new & in_top, 1, 0) + np.where(s_u & add, 2, 0)  # assemble's concatenation
            c = np.flatnonzero(chosen)
            every = ranked[c][rank_in_groups(user_of[c], flat[ranked[c]], tier[c] * len(flat) + pos[c])]
    published = flat[every]
    at = np.concatenate(([0], np.cumsum(np.minimum(counts, size))))  # user k's picks: every[at[k] : at[k + 1]]
    for k in np.flatnonzero((np.asarray(search_slots) > 0) & batch.has_query):
        a, b = int(first[k]), int(offsets[k + 1])
        lo, hi = int(at[k]), int(at[k + 1])
        order, final = order_with_search(
            flat[a:b], batch.query_sim[a:b], (every[lo:hi] - a).tolist(), size, search_slots[k]
        )
        every[lo:hi] = np.asarray(order, dtype=np.int64) + a
        published[lo:hi] = final[order]
    return every, published


def build_list(
    user_id: str,
    user: UserState,
    cands: Candidates,
    scores: np.ndarray,
    index: ItemIndex,
    *,
    params: ListParams,
    model_version: str,
    variant: str,
    event_id: str,
    event_ts: int,
    search_slots: int = 0,
) -> Recommendation:
    """The published list: ``schemas.serving.assemble`` (the ``params.size`` best candidates by
    the list score of ``schemas.serving.list_scores``, at least ``params.min_new`` of them items
    the user never touched; with ``knn_weight`` or ``stack`` the own items keep the ranker's order
    and the new ones follow in the order of their discovery score), then the search pins.
    ``params`` is the serving version's validated mix (``ListParams.from_manifest``), built once
    per version, not per list. ``build_lists`` does the same for every user of a batch."""
    order, final = _order(user, cands, scores, index, params, event_ts, search_slots)
    items = _items(
        user,
        index,
        cands.rows[order].tolist(),
        cands.src[order].tolist(),
        cands.ev_row[order].tolist(),
        cands.ev_count[order].tolist(),
        final[order].tolist(),
        cands.query,
        cands.trending_evidence,
    )
    return Recommendation(
        user_id=user_id,
        items=items,
        model_version=model_version,
        variant=variant,
        event_id=event_id,
        event_ts=event_ts,
        published_ts=int(time.time() * 1000),
    )


def build_lists(
    user_ids: list[str],
    users: list[UserState],
    batch: CandidateBatch,
    scores: list[np.ndarray],
    index: ItemIndex,
    *,
    params: ListParams,
    model_versions: list[str],
    variants: list[str],
    event_ids: list[str],
    event_ts: list[int],
    search_slots: list[int],
) -> list[Recommendation]:
    """``build_list`` for every user of a ``CandidateBatch`` (user ``k``: ``scores[k]`` over its
    candidates, and the ``k``-th entry of each list argument), the same lists.

    Without a discovery order (``list_scores`` is the score itself) every user's ``assemble``,
    ``min_new`` included, is done for the whole batch at once (``_picks_plain``); with one each
    user goes through ``schemas.serving`` as in ``build_list``. Then the picked candidates' fields
    are read out of the batch arrays at once, and only the items themselves (reasons) are built
    one by one."""
    n_users = len(batch)
    offsets = batch.offsets
    counts = batch.counts
    if not discovery(params) and (params.min_new <= 0 or batch.own is not None):
        every, published = _picks_plain(batch, scores, params, search_slots)
        sizes = [int(c) for c in np.minimum(counts, params.size)]
    else:
        picks, finals = [], []
        for k in range(n_users):
            order, final = _order(users[k], batch.user(k), scores[k], index, params, event_ts[k], search_slots[k])
            picks.append(np.asarray(order, dtype=np.int64) + int(offsets[k]))
            finals.append(final[order])
        every = np.concatenate(picks + [np.zeros(0, np.int64)])
        published = np.concatenate(finals + [np.zeros(0)])
        sizes = [len(p) for p in picks]
    rows, src = batch.rows[every].tolist(), batch.src[every].tolist()
    ev_row, ev_count = batch.ev_row[every].tolist(), batch.ev_count[every].tolist()
    final_scores = published.tolist()
    shared: dict = {}
    published_ts = int(time.time() * 1000)
    out = []
    at = 0
    for k in range(n_users):
        b = at + sizes[k]
        out.append(
            Recommendation(
                user_id=user_ids[k],
                items=_items(
                    users[k],
                    index,
                    rows[at:b],
                    src[at:b],
                    ev_row[at:b],
                    ev_count[at:b],
                    final_scores[at:b],
                    batch.queries[k],
                    batch.trending_evidence,
                    shared,
                ),
                model_version=model_versions[k],
                variant=variants[k],
                event_id=event_ids[k],
                event_ts=event_ts[k],
                published_ts=published_ts,
            )
        )
        at = b
    return out
