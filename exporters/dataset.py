"""Interactions as integer arrays, and the evaluation protocol of any event log.

Everything downstream (baselines, features, training, evaluation) works on these arrays, so the
protocol's rules live in exactly one place, and they are the same for every log: the bundled
data sets and a deployment's own ``events`` topic (or its archive) go through this one path.

**What is an interaction.** Every contract event that names an item, except ``cancel`` (it takes
a purchase back), ``search`` and ``erase_user`` (no item). A user's ``erase_user`` also removes
that user's earlier events: the log may still hold them, the model must not learn them. Events
are taken in (timestamp, log position) order; the position breaks ties ("first line").

**Time split** (``SplitSpec(split="time")``, the default), by the log's own clock: the test
period is the last ``test_days`` of the log (cut = last event time + 1 ms - ``test_days``), the
validation period the ``val_days`` before it; or explicit ``test_cut``/``val_cut`` times. Two
targets, both for each user with events before the cut:

* ``next-item``: the user's first interaction at or after the cut (log order), — BASELINES.md's
  *next-line* (online_retail) and *next-any* (Taobao);
* ``next-new``: the first such interaction whose item the user had not interacted with before
  the cut.

Validation targets fall before the test cut; models fit on what precedes the cut.

**Leave-one-out** (``SplitSpec(split="loo")``, e.g. MovieLens): per user, the last interaction
(timestamp, then log order) is the test target, the one before it the validation target, the rest
train; models fit on train, the validation event is part of the test input.

**Bundled data sets.** ``BUNDLED`` holds the protocol parameters of BASELINES.md (its cut dates,
MovieLens' leave-one-out). They are data set *parameters*, not model tuning, and they are read
only by the ``--dataset`` convenience (``load_interactions``, ``streamrec-retrain ... --dataset``):
nothing inside the job branches on a data set's name.

A ``Split`` says which interactions the models may learn from (``fit``), which ones a user's
input may contain at prediction time (``visible``), and the test cases.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse

from schemas.ranking import DAY_MS, EVENT_TYPE_IDS

# Event types that are not interactions (see the module docstring).
NOT_INTERACTIONS = frozenset({"cancel", "search", "erase_user"})
TIME_PROTOCOLS: tuple[str, ...] = ("next-item", "next-new")
LOO_PROTOCOLS: tuple[str, ...] = ("loo",)
# BASELINES.md's names of the next-item target.
ALIASES = {"next-line": "next-item", "next-any": "next-item"}
# Ranking modes reported per protocol: "ex" removes the user's earlier items before the top 10.
MODES: dict[str, tuple[str, ...]] = {"next-item": ("in",), "next-new": ("ex", "in"), "loo": ("ex", "in")}
MODES.update({alias: MODES[name] for alias, name in ALIASES.items()})


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def parse_time(text: str) -> int:
    """``2011-10-01`` (UTC), ``2017-12-03T00:00+08:00`` or epoch ms -> epoch ms."""
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a date: {text!r} (use YYYY-MM-DD, an ISO time or epoch ms)") from None
    return _ms(dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc))


@dataclass(frozen=True)
class SplitSpec:
    """How a log is split into fit / validation / test (see the module docstring)."""

    split: str = "time"  # "time" (by the log's clock) or "loo" (leave-one-out)
    test_days: float = 28.0
    val_days: float = 28.0
    test_cut: int | None = None  # epoch ms; replaces test_days
    val_cut: int | None = None  # epoch ms; replaces val_days

    def __post_init__(self) -> None:
        if self.split not in ("time", "loo"):
            raise ValueError(f"split must be 'time' or 'loo', not {self.split!r}")
        if self.test_days <= 0 or self.val_days <= 0:
            raise ValueError("test_days and val_days must be > 0")
        if self.test_cut is not None and self.val_cut is not None and self.val_cut >= self.test_cut:
            raise ValueError("the validation cut must come before the test cut")

    @property
    def protocols(self) -> tuple[str, ...]:
        return LOO_PROTOCOLS if self.split == "loo" else TIME_PROTOCOLS

    def cuts(self, ts: np.ndarray) -> tuple[int, int]:
        """(test cut, validation cut) in epoch ms for a log with these event times."""
        end = int(ts.max()) + 1 if len(ts) else 0
        test_cut = self.test_cut if self.test_cut is not None else end - round(self.test_days * DAY_MS)
        val_cut = self.val_cut if self.val_cut is not None else test_cut - round(self.val_days * DAY_MS)
        if val_cut >= test_cut:
            raise ValueError("the validation cut must come before the test cut")
        return test_cut, val_cut

    def describe(self, ts: np.ndarray) -> dict[str, Any]:
        if self.split == "loo":
            return {"split": "loo"}
        test_cut, val_cut = self.cuts(ts)
        return {"split": "time", "test_cut": _iso(test_cut), "val_cut": _iso(val_cut)}


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


_UTC8 = timezone(timedelta(hours=8))
# The --dataset convenience only: BASELINES.md's protocol parameters of the bundled files.
BUNDLED: dict[str, SplitSpec] = {
    "online_retail": SplitSpec(
        test_cut=_ms(datetime(2011, 10, 1, tzinfo=timezone.utc)), val_cut=_ms(datetime(2011, 9, 1, tzinfo=timezone.utc))
    ),
    "taobao": SplitSpec(
        test_cut=_ms(datetime(2017, 12, 3, tzinfo=_UTC8)), val_cut=_ms(datetime(2017, 12, 2, tzinfo=_UTC8))
    ),
    "movielens": SplitSpec(split="loo"),
}


@dataclass
class Interactions:
    """A log's interactions sorted by (timestamp, log position); ids as dense indices."""

    name: str
    users: np.ndarray  # int64 [E] user index
    items: np.ndarray  # int64 [E] item index (into item_ids: the catalog of every ranking)
    ts: np.ndarray  # int64 [E] epoch ms
    types: np.ndarray  # int64 [E] schemas.ranking.EVENT_TYPE_IDS
    pos: np.ndarray  # int64 [E] position in the log (ties and "first line" rules)
    user_ids: list[str]
    item_ids: list[str]
    items_meta: dict[str, Any]  # item id -> schemas.models.Item (text, category), catalog items only
    spec: SplitSpec = field(default_factory=SplitSpec)  # the protocol make_split applies
    skipped: collections.Counter = field(default_factory=collections.Counter)  # events not taken, by reason

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def protocols(self) -> tuple[str, ...]:
        return self.spec.protocols

    def cuts(self) -> tuple[int, int]:
        return self.spec.cuts(self.ts)

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

    name: str  # e.g. "online_retail/next-item/test"
    protocol: str
    fit: np.ndarray  # bool [E]: what models learn from
    visible: np.ndarray  # bool [E]: what a user's input may contain at prediction time
    case_users: np.ndarray  # int64 [T]
    case_targets: np.ndarray  # int64 [T]
    case_time: np.ndarray  # int64 [T]: prediction time (ms); the input is visible events of the user
    modes: tuple[str, ...]
    cut: int | None = None  # time split: the cut (targets at or after it); None for leave-one-out
    end: int | None = None  # time split: targets before this time

    def __len__(self) -> int:
        return len(self.case_users)


def _index(values: list[str]) -> tuple[np.ndarray, list[str]]:
    """Dense indices in first-seen order."""
    lookup: dict[str, int] = {}
    idx = np.fromiter((lookup.setdefault(v, len(lookup)) for v in values), dtype=np.int64, count=len(values))
    return idx, list(lookup)


def interaction_events(events: list[Any], skipped: collections.Counter | None = None) -> list[Any]:
    """The events that are interactions, in log order (see the module docstring)."""
    skipped = skipped if skipped is not None else collections.Counter()
    erased_at: dict[str, int] = {}
    for i, e in enumerate(events):
        if e.type == "erase_user":
            erased_at[e.user_id] = i
    out = []
    for i, e in enumerate(events):
        if e.type in NOT_INTERACTIONS or e.item_id is None:
            skipped[f"not_interaction_{e.type}"] += 1
        elif erased_at.get(e.user_id, -1) > i:
            skipped["erased_user"] += 1
        else:
            out.append(e)
    return out


def build_interactions(dataset: Any, spec: SplitSpec | None = None) -> Interactions:
    """``schemas.sources.Dataset`` (contract events in log order) -> interactions."""
    skipped: collections.Counter = collections.Counter()
    events = interaction_events(dataset.events, skipped)
    ts = np.fromiter((e.ts for e in events), dtype=np.int64, count=len(events))
    pos = np.arange(len(events), dtype=np.int64)
    order = np.lexsort((pos, ts))
    users, user_ids = _index([events[i].user_id for i in order])
    items, item_ids = _index([events[i].item_id for i in order])
    types = np.fromiter((EVENT_TYPE_IDS[events[i].type] for i in order), dtype=np.int64, count=len(events))
    meta = {i: dataset.items[i] for i in item_ids if i in dataset.items}
    return Interactions(
        dataset.name,
        users,
        items,
        ts[order],
        types,
        pos[order],
        user_ids,
        item_ids,
        meta,
        spec=spec or SplitSpec(),
        skipped=skipped,
    )


def load_interactions(name: str, data_dir: Path | None = None, limit_rows: int | None = None) -> Interactions:
    """The ``--dataset`` convenience: a bundled file as contract events, with its ``BUNDLED`` protocol."""
    from schemas.sources import load_dataset

    return build_interactions(load_dataset(name, data_dir=data_dir, limit_rows=limit_rows), BUNDLED[name])


def _first_per_user(inter: Interactions, candidates: np.ndarray) -> np.ndarray:
    """Indices (into inter arrays) of each user's first candidate event in log order."""
    idx = np.flatnonzero(candidates)
    idx = idx[np.lexsort((inter.pos[idx], inter.users[idx]))]
    first = np.ones(len(idx), dtype=bool)
    first[1:] = inter.users[idx][1:] != inter.users[idx][:-1]
    return idx[first]


def canonical_protocol(protocol: str) -> str:
    return ALIASES.get(protocol, protocol)


def cut_targets(inter: Interactions, protocol: str, cut: int, end: int) -> np.ndarray:
    """Indices of the target events of a time split: per user with events before ``cut``, the
    first qualifying event in [cut, end) in log order."""
    fit = inter.ts < cut
    known_users = np.zeros(inter.n_users, dtype=bool)
    known_users[inter.users[fit]] = True
    after = (inter.ts >= cut) & (inter.ts < end) & known_users[inter.users]
    if canonical_protocol(protocol) == "next-new":
        seen = inter.user_item_matrix(fit, binary=True)
        repeat = np.asarray(seen[inter.users, inter.items]).ravel() > 0
        after &= ~repeat
    return _first_per_user(inter, after)


def _cut_split(inter: Interactions, protocol: str, stage: str, spec: SplitSpec) -> Split:
    test_cut, val_cut = spec.cuts(inter.ts)
    cut, end = (test_cut, np.iinfo(np.int64).max) if stage == "test" else (val_cut, test_cut)
    return cut_split(inter, protocol, stage, int(cut), int(end))


def cut_split(inter: Interactions, protocol: str, stage: str, cut: int, end: int) -> Split:
    """The time split of ``protocol`` at ``cut``: models learn from everything before it, the
    cases are each user's first qualifying event in [cut, end)."""
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
        cut=cut,
        end=end,
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


def make_split(inter: Interactions, protocol: str, stage: str = "test", spec: SplitSpec | None = None) -> Split:
    """The ``test`` or ``validation`` split of one of ``spec.protocols`` (default: ``inter.spec``).
    BASELINES.md's names ``next-line`` and ``next-any`` stand for ``next-item``."""
    spec = spec or inter.spec
    protocol = canonical_protocol(protocol)
    if protocol not in spec.protocols:
        raise ValueError(f"a {spec.split} split has no protocol {protocol!r}; choose from {spec.protocols}")
    if stage not in ("test", "validation"):
        raise ValueError("stage must be 'test' or 'validation'")
    if protocol == "loo":
        return _loo_split(inter, stage)
    return _cut_split(inter, protocol, stage, spec)


def user_baskets(inter: Interactions, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ``mask`` events grouped into baskets (a user's events at one timestamp, e.g. an
    invoice): their indices ordered by user, then log order, and a flag on each basket's first."""
    idx = np.flatnonzero(mask)
    idx = idx[np.lexsort((idx, inter.users[idx]))]
    users, ts = inter.users[idx], inter.ts[idx]
    first = np.ones(len(idx), dtype=bool)
    first[1:] = (users[1:] != users[:-1]) | (ts[1:] != ts[:-1])
    return idx, first


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
