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
from schemas.serving import ListParams, assemble, discovery, list_scores, order_with_search
from streamer.candidates import Candidates
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
    """A short reason from the evidence that found the candidate (see ``Candidates.evidence``):
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
    per version, not per list."""
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
    order, final = order_with_search(scores, cands.query_sim, assembled, params.size, search_slots)
    items = []
    # Python ints and floats of the picked candidates at once (not a numpy scalar per field)
    for j, row, score in zip(order, cands.rows[order].tolist(), final[order].tolist()):
        source = cands.source(j)
        items.append(
            RecItem(
                item_id=index.ids[row],
                score=round(score, 6),
                reason=reason_for(source, cands.evidence(j), row, user, index),
                title=index.titles[row],
                source=source,
            )
        )
    return Recommendation(
        user_id=user_id,
        items=tuple(items),
        model_version=model_version,
        variant=variant,
        event_id=event_id,
        event_ts=event_ts,
        published_ts=int(time.time() * 1000),
    )
