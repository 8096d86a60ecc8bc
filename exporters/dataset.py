"""Interactions as integer arrays, and the time splits of ``BASELINES.md`` (one per protocol).

Everything downstream (baselines, features, training, evaluation) works on these arrays, so a
protocol's rules live in exactly one place:

* **online_retail** — purchases only (cancellations are not interactions); *next-line*: a
  test case is a user with lines before the cut, the target the user's first line at or after
  it in file order; *next-new*: the first such line whose item the user never bought before
  the cut. Test cut 2011-10-01; validation cut 2011-09-01 with targets before 2011-10-01.
* **taobao** — every behaviour is an interaction; *next-any*: the user's first event on
  2017-12-03 (UTC+8). The file's last user is cut off mid-history (the file is a byte prefix)
  and is dropped: with it the catalog has 55,344 items and 801 test cases, without it the
  55,209 items and 800 cases of ``BASELINES.md``. Validation: the same one day earlier.
* **movielens** — leave-one-out in (timestamp, file order): last event test, the one before it
  validation, the rest train; models fit on train, the validation event is part of the test
  input.

A ``Split`` says which interactions the models may learn from (``fit``), which ones a user's
input may contain at prediction time (``visible``), and the test cases.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse

from schemas.ranking import EVENT_TYPE_IDS

PROTOCOLS: dict[str, tuple[str, ...]] = {
    "online_retail": ("next-line", "next-new"),
    "taobao": ("next-any",),
    "movielens": ("loo",),
}
# Ranking modes reported per protocol: "ex" removes the user's earlier items before the top 10.
MODES: dict[str, tuple[str, ...]] = {"next-line": ("in",), "next-new": ("ex", "in"), "next-any": ("in",), "loo": ("ex", "in")}

_UTC8 = timezone(timedelta(hours=8))


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


# (test cut, validation cut) per cut-based data set; validation targets fall before the test cut.
CUTS: dict[str, tuple[int, int]] = {
    "online_retail": (_ms(datetime(2011, 10, 1, tzinfo=timezone.utc)), _ms(datetime(2011, 9, 1, tzinfo=timezone.utc))),
    "taobao": (_ms(datetime(2017, 12, 3, tzinfo=_UTC8)), _ms(datetime(2017, 12, 2, tzinfo=_UTC8))),
}


@dataclass
class Interactions:
    """A data set's interactions sorted by (timestamp, file position); ids as dense indices."""

    name: str
    users: np.ndarray  # int64 [E] user index
    items: np.ndarray  # int64 [E] item index (into item_ids: the catalog of every ranking)
    ts: np.ndarray  # int64 [E] epoch ms
    types: np.ndarray  # int64 [E] schemas.ranking.EVENT_TYPE_IDS
    pos: np.ndarray  # int64 [E] position in the source file (ties and "first line" rules)
    user_ids: list[str]
    item_ids: list[str]
    items_meta: dict[str, Any]  # item id -> schemas.models.Item (text, category), catalog items only

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    def user_item_matrix(self, mask: np.ndarray, binary: bool = False) -> sparse.csr_matrix:
        """Counts (or 0/1) of the masked interactions, users x items."""
        m = sparse.csr_matrix(
            (np.ones(int(mask.sum()), dtype=np.float64), (self.users[mask], self.items[mask])),
            shape=(self.n_users, self.n_items),
        )
        m.sum_duplicates()
        if binary:
            m.data[:] = 1.0
        return m


@dataclass
class Split:
    """One evaluation (or tuning) run of a protocol."""

    name: str  # e.g. "online_retail/next-line/test"
    protocol: str
    fit: np.ndarray  # bool [E]: what models learn from
    visible: np.ndarray  # bool [E]: what a user's input may contain at prediction time
    case_users: np.ndarray  # int64 [T]
    case_targets: np.ndarray  # int64 [T]
    case_time: np.ndarray  # int64 [T]: prediction time (ms); the input is visible events of the user
    modes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.case_users)


def _index(values: list[str]) -> tuple[np.ndarray, list[str]]:
    """Dense indices in first-seen order."""
    lookup: dict[str, int] = {}
    idx = np.fromiter((lookup.setdefault(v, len(lookup)) for v in values), dtype=np.int64, count=len(values))
    return idx, list(lookup)


def build_interactions(dataset: Any) -> Interactions:
    """``schemas.sources.Dataset`` -> protocol interactions (see the module docstring)."""
    events = dataset.events
    if dataset.name == "online_retail":
        events = [e for e in events if e.type == "purchase"]
    elif dataset.name == "taobao" and events:
        last_user = events[-1].user_id  # partial history: the file is a byte prefix
        events = [e for e in events if e.user_id != last_user]
    events = [e for e in events if e.item_id is not None]
    ts = np.fromiter((e.ts for e in events), dtype=np.int64, count=len(events))
    pos = np.arange(len(events), dtype=np.int64)
    order = np.lexsort((pos, ts))
    users, user_ids = _index([events[i].user_id for i in order])
    items, item_ids = _index([events[i].item_id for i in order])
    types = np.fromiter((EVENT_TYPE_IDS[events[i].type] for i in order), dtype=np.int64, count=len(events))
    meta = {i: dataset.items[i] for i in item_ids if i in dataset.items}
    return Interactions(dataset.name, users, items, ts[order], types, pos[order], user_ids, item_ids, meta)


def load_interactions(name: str, data_dir: Path | None = None) -> Interactions:
    from schemas.sources import load_dataset

    return build_interactions(load_dataset(name, data_dir=data_dir))


def _first_per_user(inter: Interactions, candidates: np.ndarray) -> np.ndarray:
    """Indices (into inter arrays) of each user's first candidate event in file order."""
    idx = np.flatnonzero(candidates)
    idx = idx[np.lexsort((inter.pos[idx], inter.users[idx]))]
    first = np.ones(len(idx), dtype=bool)
    first[1:] = inter.users[idx][1:] != inter.users[idx][:-1]
    return idx[first]


def cut_targets(inter: Interactions, protocol: str, cut: int, end: int) -> np.ndarray:
    """Indices of the target events of a cut protocol: per user with events before ``cut``, the
    first qualifying event in [cut, end) in file order."""
    fit = inter.ts < cut
    known_users = np.zeros(inter.n_users, dtype=bool)
    known_users[inter.users[fit]] = True
    after = (inter.ts >= cut) & (inter.ts < end) & known_users[inter.users]
    if protocol == "next-new":
        seen = inter.user_item_matrix(fit, binary=True)
        repeat = np.asarray(seen[inter.users, inter.items]).ravel() > 0
        after &= ~repeat
    return _first_per_user(inter, after)


def _cut_split(inter: Interactions, protocol: str, stage: str) -> Split:
    test_cut, val_cut = CUTS[inter.name]
    cut, end = (test_cut, np.iinfo(np.int64).max) if stage == "test" else (val_cut, test_cut)
    fit = inter.ts < cut
    first = cut_targets(inter, protocol, cut, end)
    return Split(
        name=f"{inter.name}/{protocol}/{stage}",
        protocol=protocol,
        fit=fit,
        visible=fit,
        case_users=inter.users[first],
        case_targets=inter.items[first],
        case_time=np.full(len(first), cut, dtype=np.int64),
        modes=MODES[protocol],
    )


def _loo_split(inter: Interactions, stage: str) -> Split:
    # Interactions are already in (ts, file position) order: a user's last event is the test.
    order = np.lexsort((np.arange(len(inter.users)), inter.users))
    users = inter.users[order]
    last = np.ones(len(order), dtype=bool)
    last[:-1] = users[:-1] != users[1:]
    second = np.zeros(len(order), dtype=bool)
    second[:-1] = last[1:] & (users[:-1] == users[1:])
    test_ev, val_ev = order[last], order[second]
    fit = np.ones(len(order), dtype=bool)
    fit[test_ev] = False
    fit[val_ev] = False
    if stage == "test":
        visible = fit.copy()
        visible[val_ev] = True
        cases = test_ev[np.isin(inter.users[test_ev], inter.users[val_ev])]
    else:
        visible = fit
        cases = val_ev
    return Split(
        name=f"{inter.name}/loo/{stage}",
        protocol="loo",
        fit=fit,
        visible=visible,
        case_users=inter.users[cases],
        case_targets=inter.items[cases],
        case_time=inter.ts[cases],
        modes=MODES["loo"],
    )


def make_split(inter: Interactions, protocol: str, stage: str = "test") -> Split:
    """The ``test`` or ``validation`` split of a protocol of ``PROTOCOLS[inter.name]``."""
    if protocol not in PROTOCOLS.get(inter.name, ()):
        raise ValueError(f"{inter.name} has no protocol {protocol!r}; choose from {PROTOCOLS.get(inter.name)}")
    if stage not in ("test", "validation"):
        raise ValueError("stage must be 'test' or 'validation'")
    if protocol == "loo":
        return _loo_split(inter, stage)
    return _cut_split(inter, protocol, stage)


def last_event_before(inter: Interactions, users: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per user, the index of their last ``mask`` event (-1 when none)."""
    idx = np.flatnonzero(mask)
    last = np.full(inter.n_users, -1, dtype=np.int64)
    np.maximum.at(last, inter.users[idx], idx)  # interactions are in time order
    return last[users]


def case_histories(inter: Interactions, split: Split) -> list[np.ndarray]:
    """Per test case, the indices of the user's visible events in time order."""
    vis = np.flatnonzero(split.visible)
    vis = vis[np.lexsort((np.arange(len(vis)), inter.users[vis]))]
    bounds = np.searchsorted(inter.users[vis], np.arange(inter.n_users + 1))
    return [vis[bounds[u] : bounds[u + 1]] for u in split.case_users]
