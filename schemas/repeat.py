"""The rebuy score: how the user's own items are ordered in a served list, shared by the worker
(``streamer.lists``) and the job (``exporters.repeat`` fits it, ``exporters.served`` grades it).

A linear score over repeat-aware features of each (user, own item) that the worker computes from
the state it holds for the user (``streamer.state.UserState``): the profile entry of the item
(``PROFILE`` layout: summed event weights, last time, purchases, first time) and the recent event
sequence, plus the ranker's score and its inputs (``schemas.ranking.FEATURE_NAMES``). The
features (``REPEAT_FEATURES``):

* ``ranker`` and the ranker's five inputs (the ranker still scores every candidate);
* ``log_days_since``: log1p(days since the user last touched the item);
* ``log_purchases``: log1p(purchases of the item, cancellations taken back);
* ``repeat``: bought at least twice;
* ``log_interval``: for repeats, log1p(mean days between purchases) = (last - first) / (n - 1);
* ``log_due`` / ``abs_log_due``: for repeats, log1p(days since) - log1p(interval) and its absolute
  value (a rebuy is due when the elapsed time reaches the user's own interval for the item);
* ``log_span``: log1p(days between the first and the last touch);
* ``log_seq_count``: log1p(times the item occurs in the last ``SEQ_WINDOW`` events);
* ``last_basket``: the item is among the events at the time of the newest event of the sequence
  (the user's last basket / session moment);
* ``log_item_repeat_rate``: log of the item's repeat rate over all users (``RepeatRates``: the
  share of the users who touched it that came back to it at another time, shrunk to the overall
  rate), shipped with the weights (an item it does not list gets the overall rate).

Fitted by the job (listwise softmax over the user's own items at training cuts before the
validation cut, ``exporters.repeat``), shipped in the manifest's ``list_params.rebuy`` in raw
feature units (``ListParams.rebuy``); ``schemas.serving.list_scores`` orders the own items by it.
An empty ``rebuy`` = the ranker's order. Rows of items new to the user get zeros (they are ordered
by the discovery score).

``update_profile`` is the one rule that folds an event into a profile entry: the worker's state
applies it per event, the offline evaluator replays the user's events through it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np

from schemas.ranking import DAY_MS, FEATURE_NAMES

REPEAT_FEATURES: tuple[str, ...] = (
    "ranker",
    *FEATURE_NAMES,
    "log_days_since",
    "log_purchases",
    "repeat",
    "log_interval",
    "log_due",
    "abs_log_due",
    "log_span",
    "log_seq_count",
    "last_basket",
    "log_item_repeat_rate",
)
# Profile entry layout (UserState.items values): [weight sum, last ts, purchases, first ts]. Values
# written before the first ts existed have three fields: ``upgrade_profiles`` fills it as they load.
WEIGHT, LAST, PURCHASES, FIRST = range(4)
PROFILE_FIELDS = 4
# The sequence features read the user's last SEQ_WINDOW events: a constant, not the worker's
# STREAMREC_MAX_SEQ_LEN (default 50; a worker keeping fewer events computes them from fewer) nor the
# ranker's max_seq_len, so a version's weights mean the same on every worker.
SEQ_WINDOW = 20


@dataclass(frozen=True)
class RepeatRates:
    """Per item id, the share of its users who came back to it (``exporters.repeat.repeat_rates``);
    ``prior`` for an item it does not list."""

    prior: float
    rates: Mapping[str, float] = field(default_factory=dict, compare=False, hash=False)

    def lookup(self, item_ids: Iterable[str]) -> np.ndarray:
        get = self.rates.get
        return np.asarray([get(i, self.prior) for i in item_ids], dtype=np.float64)

    @classmethod
    def from_dict(cls, d: Mapping[str, object] | None) -> "RepeatRates | None":
        if not d:
            return None
        return cls(float(d["prior"]), {str(k): float(v) for k, v in dict(d.get("rates") or {}).items()})  # type: ignore[arg-type]

    def as_dict(self) -> dict[str, object]:
        return {"prior": self.prior, "rates": dict(self.rates)}


def new_profile(ts: int) -> list:
    return [0.0, int(ts), 0, int(ts)]


def update_profile(prof: list, etype: str, weight: float, ts: int) -> None:
    """Fold one event of the user on the item into its profile entry (in place). Runs per event in
    the worker: comparisons rather than ``max``/``min`` calls (the same values: an equal ``ts``
    leaves the entry's own)."""
    prof[WEIGHT] += weight
    if ts > prof[LAST]:
        prof[LAST] = ts
    if etype == "purchase":
        prof[PURCHASES] += 1
    elif etype == "cancel":
        prof[PURCHASES] = max(prof[PURCHASES] - 1, 0)
    if ts < prof[FIRST]:
        prof[FIRST] = ts


def upgrade_profiles(items: dict[str, list]) -> dict[str, list]:
    """``items`` as loaded, every entry with four fields (``streamer.state.UserState.from_bytes``).
    A value is written whole, so its entries share one layout: one look at the first tells. Entries
    written before the first time was kept have three: their last time stands in for the first
    (in place)."""
    first = next(iter(items.values()), None)
    if first is not None and len(first) < PROFILE_FIELDS:
        for prof in items.values():
            prof.append(prof[LAST])
    return items


def first_ts(prof: Sequence) -> int:
    return int(prof[FIRST])


def sequence_stats(seq: Iterable[tuple]) -> tuple[dict, set]:
    """From the recent sequence ``(item, type, ts)`` (oldest first), its last ``SEQ_WINDOW`` events:
    occurrences per item, and the items of the newest moment (the events at the newest event's time)."""
    seq = list(seq)[-SEQ_WINDOW:]
    counts: dict = {}
    for item, _t, _ts in seq:
        counts[item] = counts.get(item, 0) + 1
    if not seq:
        return counts, set()
    newest = max(ts for _i, _t, ts in seq)
    return counts, {item for item, _t, ts in seq if ts == newest}


def own_item_inputs(
    profiles: Sequence[Sequence | None], seq_counts: Sequence[int], last_basket: Sequence[bool]
) -> np.ndarray:
    """float64 [C, 6] raw inputs (weight, last ts, purchases, first ts, seq count, last basket) of C
    candidates from their profile entries (None: new to the user, all zeros)."""
    out = np.zeros((len(profiles), 6))
    for j, prof in enumerate(profiles):
        if prof is None:
            continue
        out[j] = (prof[WEIGHT], prof[LAST], prof[PURCHASES], first_ts(prof), seq_counts[j], last_basket[j])
    return out


def state_inputs(items: Mapping, seq: Iterable[tuple], keys: Sequence) -> np.ndarray:
    """``own_item_inputs`` of the candidates ``keys`` from a user's state: ``items`` (key ->
    profile entry, ``UserState.items``) and the recent sequence ``seq`` of ``(key, type, ts)``.
    The worker calls it with item ids, the offline evaluator with item rows."""
    counts, basket = sequence_stats(seq)
    return own_item_inputs([items.get(k) for k in keys], [counts.get(k, 0) for k in keys], [k in basket for k in keys])


def repeat_features(
    ranker: np.ndarray, feats: np.ndarray, inputs: np.ndarray, now_ms: int, rate: np.ndarray | None = None
) -> np.ndarray:
    """float64 [C, len(REPEAT_FEATURES)]: the ranker's scores [C], its features [C, F], the
    ``own_item_inputs`` [C, 6] of C candidates at ``now_ms`` and their items' repeat rates [C]
    (``RepeatRates.lookup``; None: 1). Rows of new items (weight, last and first all 0 in
    ``inputs``) are zeros but for the ranker part."""
    ranker = np.asarray(ranker, dtype=np.float64)
    c = len(ranker)
    feats = np.asarray(feats, dtype=np.float64).reshape(c, len(FEATURE_NAMES))
    inputs = np.asarray(inputs, dtype=np.float64).reshape(c, 6)
    _w, last, n, first, seq_count, basket = inputs.T
    own = last > 0
    days = np.where(own, np.maximum(now_ms - last, 0) / DAY_MS, 0.0)
    span = np.where(own, np.maximum(last - first, 0) / DAY_MS, 0.0)
    rep = own & (n >= 2)
    interval = np.where(rep, span / np.maximum(n - 1, 1), 0.0)
    log_days = np.log1p(days)
    due = np.where(rep, log_days - np.log1p(interval), 0.0)
    return np.column_stack(
        [
            ranker,
            feats,
            log_days,
            np.log1p(np.maximum(n, 0)),
            rep.astype(np.float64),
            np.log1p(interval),
            due,
            np.abs(due),
            np.log1p(span),
            np.log1p(np.maximum(seq_count, 0)),
            (basket > 0).astype(np.float64),
            np.where(own, np.log(np.maximum(np.ones(c) if rate is None else np.asarray(rate, np.float64), 1e-6)), 0.0),
        ]
    )


def rebuy_scores(weights: Sequence[float], x: np.ndarray) -> np.ndarray:
    """The rebuy score of C candidates (``weights`` in ``REPEAT_FEATURES`` order, ``x`` from
    ``repeat_features``)."""
    return np.asarray(x, dtype=np.float64) @ np.asarray(weights, dtype=np.float64)
