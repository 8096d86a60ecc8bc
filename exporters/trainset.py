"""Training examples for the ranker, built the way the protocol tests ("train as you test").

* Time splits: a series of training cuts every ``step_days`` before
  the validation cut. At each cut, every user with history gets one example: input = events
  before the cut, prediction time = the cut, target = the protocol's target after the cut
  (before the validation cut, so validation and test periods never leak into training), with
  the rest of the target's basket as auxiliary targets.
* Leave-one-out: every training event after a user's first is an example, its
  input the events before it (at most ``max_per_user`` latest examples per user).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from exporters.dataset import Interactions, Split, cut_targets, last_event_before
from exporters.features import PointSet, basket_points, build_points
from schemas.ranking import DAY_MS


@dataclass
class Examples:
    points: PointSet
    targets: list[np.ndarray]  # per point: targets[0] the protocol's target, then its basket


def baskets_of(inter: Interactions, events: np.ndarray) -> list[np.ndarray]:
    """Per event, the distinct items of its basket (same user, same timestamp), the event's
    own item first, the others in file order."""
    key = inter.users * (1 << 42) + inter.ts
    order = np.lexsort((inter.pos, key))
    ks = key[order]
    out = []
    for e in events:
        lo, hi = np.searchsorted(ks, key[e], "left"), np.searchsorted(ks, key[e], "right")
        items = inter.items[order[lo:hi]]
        _, first = np.unique(items, return_index=True)
        items = items[np.sort(first)]
        out.append(np.concatenate([[inter.items[e]], items[items != inter.items[e]]]))
    return out


def cut_examples(inter: Interactions, val: Split, max_seq_len: int, step_days: float, warmup_days: float) -> Examples:
    val_cut = val.cut  # the validation split's cut: training targets stay before it
    step, start = int(step_days * DAY_MS), int(inter.ts[val.fit].min() + warmup_days * DAY_MS)
    cuts = np.arange(val_cut - step, start, -step)[::-1]
    as_of, now, target_events = [], [], []
    for c in cuts:
        tgt = cut_targets(inter, val.protocol, int(c), val_cut)
        as_of.append(last_event_before(inter, inter.users[tgt], inter.ts < c))
        now.append(np.full(len(tgt), c - 1, dtype=np.int64))  # strictly before the cut
        target_events.append(tgt)
    as_of_a, now_a, tgt_a = (np.concatenate(x) if x else np.zeros(0, np.int64) for x in (as_of, now, target_events))
    points = build_points(inter, val.fit, val.fit, as_of_a, max_seq_len, now=now_a)
    return Examples(points, baskets_of(inter, tgt_a))


def event_examples(inter: Interactions, val: Split, max_seq_len: int, max_per_user: int) -> Examples:
    as_of, targets = basket_points(inter, val.fit, np.iinfo(np.int64).max)
    users = inter.users[as_of]
    # Keep each user's latest examples: closest to the held-out events, and bounded per user.
    order = np.lexsort((-as_of, users))
    rank = np.arange(len(order)) - np.searchsorted(users[order], users[order])
    keep = np.sort(order[rank < max_per_user])
    points = build_points(inter, val.fit, val.fit, as_of[keep], max_seq_len)
    return Examples(points, [targets[i] for i in keep])


def eval_points(inter: Interactions, split: Split, max_seq_len: int) -> PointSet:
    """Ranker inputs for the test cases of a split: the user's visible history, at prediction time."""
    as_of = last_event_before(inter, split.case_users, split.visible)
    if split.protocol == "loo":
        # The user's last visible event is the prediction moment (the held-out event is next).
        return build_points(inter, split.fit, split.visible, as_of, max_seq_len)
    return build_points(inter, split.fit, split.visible, as_of, max_seq_len, now=split.case_time - 1)
