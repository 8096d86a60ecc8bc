"""Grade what the worker serves: its candidate set, its list assembly, its 20 items.

The job's full-ranking numbers (``exporters.evaluate``) rank the whole catalog; the worker ranks
only its ~200 candidates and publishes the ``size`` best (``schemas.serving``). This module
rebuilds, for every test case, the worker's candidates from the training events with the same
rules (``schemas.serving.merge_sources``):

* ``history``  — the user's items by summed event weight, then recency (``PointSet.personal`` /
  ``recency``), at most ``n // 2``;
* ``covis``    — co-visitation sums from the user's last ``COVIS_WINDOW`` events (``PointSet.covis``,
  pairs formed by fit events before "now"), at most ``n // 4``;
* ``ann``      — the ``n // 4`` items nearest to the user embedding (exact inner product here,
  HNSW in the worker);
* ``trending`` — decayed popularity at "now" (``PointSet.pop_table``), filling up to ``n``.

(No ``search``: the protocols' data sets have no search events.) The scorer scores only those
candidates, ``schemas.serving.assemble`` builds the list, and the grading reads the list as it
is: "in" = its first 10 items; "ex" = the list with the user's own (visible) items removed, its
first 10 of the rest. A target outside the list is a miss. Lists are per user, so the data set's
protocols that share a cut (online_retail next-line and next-new) are graded on the SAME lists.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import sparse
from tqdm import tqdm

from exporters.dataset import Interactions, Split, last_event_before
from exporters.evaluate import K, Metrics, history_matrix
from exporters.features import PointSet, build_points
from schemas import Event, Item, decode_recommendation, encode
from schemas.ranking import EVENT_TYPE_IDS
from schemas.serving import (
    KNN_K,
    KNN_POWER,
    NEIGHBOUR_FILES,
    NEIGHBOURS_KEY,
    SOURCES,
    CandidateQuota,
    ItemNeighbours,
    ListParams,
    assemble,
    history_order,
    list_scores,
    merge_sources,
    top_rows,
)

# (cases [B], candidate rows per case) -> candidate scores per case
CandidateScorer = Callable[[np.ndarray, list[np.ndarray]], list[np.ndarray]]
SOURCE_CODE = {s: i for i, s in enumerate(SOURCES)}
MIN_NEW_GRID = (0, 5, 10, 15)  # new items guaranteed in a list of LIST_SIZE, tuned on validation
KNN_WEIGHT_GRID = (0.0, 0.1, 0.3, 1.0, 3.0)  # weight of the item-kNN score in the list score, tuned with it
# The list may trade some of the first protocol's NDCG@10 for discovery, but its served validation
# NDCG@10 must stay at or above this share of the ranker's full-ranking validation NDCG@10 (the
# issue's served/offline floor, held on validation).
SERVED_FLOOR = 0.95
LIST_SIZE = 20  # the worker's default STREAMREC_LIST_SIZE


@dataclass
class CandidateSets:
    """Per case: candidate rows (the worker's order), source code per row (``SOURCES`` index), and
    each candidate's item-kNN score (``schemas.serving.ItemNeighbours``; zeros without neighbours)."""

    rows: list[np.ndarray]
    sources: list[np.ndarray]
    knn: list[np.ndarray] | None = None

    def recall(self, targets: np.ndarray) -> float:
        return float(np.mean([t in set(r.tolist()) for r, t in zip(self.rows, targets)])) if len(targets) else 0.0


def _row(m: sparse.csr_matrix, p: int) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = m.indptr[p], m.indptr[p + 1]
    return m.indices[lo:hi], m.data[lo:hi]


def candidate_sets(
    points: PointSet,
    item_vecs: np.ndarray | None,
    quota: CandidateQuota = CandidateQuota(),
    chunk: int = 256,
    neighbours: ItemNeighbours | None = None,
    sources: tuple[str, ...] = SOURCES,
) -> CandidateSets:
    """The worker's candidates for every point (see the module docstring). ``sources``: the
    priority order (default ``SOURCES``; another order or a subset only for experiments)."""
    rows_out, src_out, knn_out = [], [], []
    n_items = points.pop_table.shape[1]
    for start in tqdm(range(0, len(points), chunk), desc="candidates", leave=False, disable=len(points) < 4 * chunk):
        idx = np.arange(start, min(start + chunk, len(points)))
        sims = points.user_embedding_sim(idx, item_vecs) if item_vecs is not None else None
        for j, p in enumerate(idx):
            offers = {}
            cols, w = _row(points.personal, p)
            if len(cols):
                rcols, rec = _row(points.recency, p)
                last = np.zeros(len(cols))
                last[np.searchsorted(cols, rcols)] = rec  # same sparsity pattern, kept apart for safety
                offers["history"] = (cols[history_order(w, last, quota.history)], quota.n)
            agg = neighbours.aggregate(cols) if neighbours is not None else None
            if agg is not None and len(agg[0]):
                offers["knn"] = (neighbours.offer(cols, quota.per_source, agg)[0], quota.per_source)
            ccols, cvals = _row(points.covis, p)
            if len(ccols):
                offers["covis"] = (ccols[top_rows(cvals, quota.per_source)], quota.per_source)
            if sims is not None and len(cols) and np.any(sims[j] != 0):
                offers["ann"] = (top_rows(sims[j], quota.per_source, positive=False), quota.per_source)
            pop = np.expm1(points.pop_table[points.pop_row[p]])
            offers["trending"] = (top_rows(pop, quota.n), quota.n)
            rows, srcs, _ = merge_sources(quota.n, [(s, *offers[s]) for s in sources if s in offers])
            rows = np.asarray(rows, dtype=np.int64)
            rows_out.append(rows)
            src_out.append(np.asarray([SOURCE_CODE[s] for s in srcs], dtype=np.int64))
            knn_out.append(ItemNeighbours.score_at(agg, rows) if agg is not None else np.zeros(len(rows)))
    assert all(len(r) == 0 or r.max() < n_items for r in rows_out)
    return CandidateSets(rows_out, src_out, knn_out)


def served_points(inter: Interactions, split: Split, max_seq_len: int) -> PointSet:
    """The inputs the worker held when it published the list each case sees: right after the
    user's last visible event ("now" = that event's time; popularity and co-visitation from the
    fit events up to it in log order, ``build_points(upto_event=True)``)."""
    as_of = last_event_before(inter, split.case_users, split.visible)
    return build_points(inter, split.fit, split.visible, as_of, max_seq_len, upto_event=True)


def dense_candidate_scorer(scorer: Callable[[np.ndarray], np.ndarray], chunk: int = 256) -> CandidateScorer:
    """A full-catalog scorer (``exporters.evaluate.Scorer``) read at the candidates only."""

    def score(cases: np.ndarray, rows: list[np.ndarray]) -> list[np.ndarray]:
        out = []
        for s in range(0, len(cases), chunk):
            block = np.asarray(scorer(cases[s : s + chunk]), dtype=np.float64)
            out += [block[i, rows[s + i]] for i in range(len(block))]
        return out

    return score


def replay_subset(inter: Interactions, users: np.ndarray) -> Interactions:
    """The same data set restricted to the events of ``users`` (catalog and id lists unchanged)."""
    keep = np.isin(inter.users, users)
    return replace(
        inter,
        users=inter.users[keep],
        items=inter.items[keep],
        ts=inter.ts[keep],
        types=inter.types[keep],
        pos=inter.pos[keep],
    )


def write_replay_events(inter: Interactions, split: Split, path: Path) -> int:
    """The split's visible events (what the worker must have applied) as ``events`` messages in
    time order, one JSON line each; returns their number."""
    type_name = {v: k for k, v in EVENT_TYPE_IDS.items()}
    idx = np.flatnonzero(split.visible)
    with open(path, "wb") as f:
        for e in idx:
            ev = Event(
                event_id=f"e{int(inter.pos[e])}",
                user_id=inter.user_ids[inter.users[e]],
                type=type_name[int(inter.types[e])],
                ts=int(inter.ts[e]),
                item_id=inter.item_ids[inter.items[e]],
            )
            f.write(encode(ev) + b"\n")
    return len(idx)


def write_replay_items(inter: Interactions, path: Path) -> int:
    """The catalog records of the data set (titles for the reasons) as ``items`` messages."""
    items = [it for it in inter.items_meta.values() if isinstance(it, Item)]
    with open(path, "wb") as f:
        for it in items:
            f.write(encode(it) + b"\n")
    return len(items)


def read_served_lists(path: Path, inter: Interactions, size: int = LIST_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """(user index per list, lists [L, size] of item rows) from ``recommendations`` JSON lines;
    an item outside the catalog is -2 (it still takes its slot), an empty slot -1."""
    row_of = {item: r for r, item in enumerate(inter.item_ids)}
    user_of = {u: i for i, u in enumerate(inter.user_ids)}
    recs = [decode_recommendation(line) for line in Path(path).read_bytes().splitlines() if line.strip()]
    lists = np.full((len(recs), size), -1, dtype=np.int64)
    users = np.full(len(recs), -1, dtype=np.int64)
    for i, rec in enumerate(recs):
        users[i] = user_of.get(rec.user_id, -1)
        picked = [row_of.get(it.item_id, -2) for it in rec.items][:size]
        lists[i, : len(picked)] = picked
    return users, lists


def served_lists(
    cands: CandidateSets,
    scorer: CandidateScorer,
    own: sparse.csr_matrix,
    params: ListParams,
    scores: list[np.ndarray] | None = None,
    stack_x: list[np.ndarray] | None = None,
    rebuy_x: list[np.ndarray] | None = None,
) -> np.ndarray:
    """The published lists [cases, size] of item rows (-1 = empty slot). ``own`` [cases, items] is
    non-zero on the items the user touched (what the worker's profile holds). ``scores`` (per case,
    per candidate) skips the scorer when they are known (tuning ``min_new`` over one scoring).
    With ``params.stack``: ``stack_x`` (``exporters.stacking.stack_inputs`` of these candidates and
    scores) gives the stacked score (``schemas.stacking``, the same product the worker computes).
    With ``params.rebuy``: ``rebuy_x`` (``exporters.repeat.case_repeat_features``) orders the own items."""
    n = len(cands.rows)
    if scores is None:
        scores = scorer(np.arange(n), cands.rows)
    lists = np.full((n, params.size), -1, dtype=np.int64)
    for i in range(n):
        rows = cands.rows[i]
        if not len(rows):
            continue
        cols, _ = _row(own, i)
        new = ~np.isin(rows, cols)
        knn = cands.knn[i] if cands.knn is not None else None
        # with a stacked score: the same product as schemas.stacking, from the precomputed features
        stacked = stack_x[i] @ np.asarray(params.stack, dtype=np.float64) if params.stack else None
        rx = rebuy_x[i] if rebuy_x is not None and params.rebuy else None
        final = list_scores(scores[i], knn, params, new, stacked=stacked, rebuy_x=rx)
        picked = rows[assemble(final, new, params)]
        lists[i, : len(picked)] = picked
    return lists


def served_ranks(
    lists: np.ndarray, list_of_case: np.ndarray, split: Split, inter: Interactions, mode: str, k: int = K
) -> tuple[np.ndarray, np.ndarray]:
    """Per case, the rank of its target in the first ``k`` items of its list (inf: a miss), and
    which items the lists' first ``k`` cover (``grade``)."""
    history = history_matrix(inter, split) if mode == "ex" else None
    ranks = np.full(len(split), np.inf)
    covered = np.zeros(inter.n_items, dtype=bool)
    for c in range(len(split)):
        li = list_of_case[c]
        if li < 0:
            continue
        items = lists[li][lists[li] != -1]  # -2: an item outside the data set's catalog, still a slot
        if history is not None:
            items = items[~np.isin(items, _row(history, c)[0])]
        top = items[:k]
        covered[top[top >= 0]] = True
        hit = np.flatnonzero(top == split.case_targets[c])
        if len(hit):
            ranks[c] = hit[0] + 1
    return ranks, covered


def grade(
    lists: np.ndarray, list_of_case: np.ndarray, split: Split, inter: Interactions, mode: str, k: int = K
) -> Metrics:
    """Metrics of served lists for ``split``'s cases: ``list_of_case[c]`` is the row of ``lists``
    served to case c (-1: no list, a miss). "ex" drops the user's visible items first."""
    ranks, covered = served_ranks(lists, list_of_case, split, inter, mode, k)
    hit = ranks <= k
    n = max(len(ranks), 1)
    return Metrics(
        hr=float(hit.sum() / n),
        ndcg=float(np.where(hit, 1.0 / np.log2(ranks + 1), 0.0).sum() / n),
        mrr=float(np.where(hit, 1.0 / ranks, 0.0).sum() / n),
        cov=float(covered.sum() / inter.n_items),
        cases=len(ranks),
    )


def list_index(list_users: np.ndarray, list_time: np.ndarray, split: Split) -> np.ndarray:
    """Per case of ``split``, the row of the list served to its user at its prediction time (-1 when none)."""
    key = {(int(u), int(t)): i for i, (u, t) in enumerate(zip(list_users, list_time))}
    return np.asarray(
        [key.get((int(u), int(t)), -1) for u, t in zip(split.case_users, split.case_time)], dtype=np.int64
    )


def own_items(inter: Interactions, split: Split) -> sparse.csr_matrix:
    """Cases x items: the user's visible items (what the worker's profile holds for them)."""
    return history_matrix(inter, split).tocsr()


@dataclass
class ServedReport:
    """Served-list metrics of one model: the list parameters (``min_new``, ``knn_weight``, stacked
    score or not) chosen on validation (the mean over the data set's protocols of NDCG@10 in each
    protocol's first mode; ties to the plain score, then the smaller values), the validation grid, and the test metrics per protocol and
    mode of the lists with those parameters."""

    params: ListParams
    validation: dict[tuple[int, float, bool], dict[str, float]]  # (min_new, knn_weight, stacked) -> protocol -> NDCG@10
    test: dict[str, dict[str, Metrics]]
    recall: dict[str, float]  # test: share of each protocol's targets among the candidates
    val_recall: dict[str, float] | None = None
    rebuy_validation: dict[str, dict[str, float]] | None = None  # rebuy variant -> protocol -> NDCG@10
    rebuy: str | None = None  # the rebuy variant chosen (None: the ranker orders the own items)

    def objective(self) -> float:
        """The validation objective of the chosen list parameters (the mean over the protocols of
        their validation NDCG@10, the rebuy score aside: ``pick_params``' key)."""
        q = self.params
        return float(np.mean(list(self.validation[(q.min_new, q.knn_weight, bool(q.stack))].values())))

    def as_dict(self) -> dict:
        return {
            "list_params": self.params.as_dict(),
            "validation_ndcg@10": {
                f"min_new={k} knn_weight={w:g} stacked={int(st)}": v for (k, w, st), v in self.validation.items()
            },
            "test": {p: {m: x.as_dict() for m, x in per.items()} for p, per in self.test.items()},
            "candidate_recall": self.recall,
            "validation_candidate_recall": self.val_recall,
            "rebuy_validation_ndcg@10": self.rebuy_validation,
            "rebuy": self.rebuy,
        }


def list_grid(
    min_new: tuple[int, ...] = MIN_NEW_GRID, knn_weight: tuple[float, ...] = KNN_WEIGHT_GRID, size: int = LIST_SIZE
) -> list[ListParams]:
    return [ListParams(size, k, w) for k in min_new for w in knn_weight]


def _stage(
    inter: Interactions,
    splits: dict[str, Split],
    points: PointSet,
    item_vecs: np.ndarray | None,
    scorer: CandidateScorer,
    grid: list[ListParams],
    neighbours: ItemNeighbours | None = None,
    sources: tuple[str, ...] = SOURCES,
    rebuy_transform: Callable[[list[np.ndarray]], list[np.ndarray]] | None = None,
    case_ndcg: dict | None = None,
) -> tuple[dict[ListParams, dict[str, dict[str, Metrics]]], dict[str, float]]:
    from exporters.stacking import stack_inputs

    main = next(iter(splits.values()))
    cands = candidate_sets(points, item_vecs, neighbours=neighbours, sources=sources)
    scores = scorer(np.arange(len(cands.rows)), cands.rows)
    stack_x = stack_inputs(points, cands, scores, item_vecs) if any(q.stack for q in grid) else None
    rebuy_x = served_rebuy_inputs(inter, main, points, cands, scores, item_vecs) if any(q.rebuy for q in grid) else None
    if rebuy_x is not None and rebuy_transform is not None:  # an offline reference model (exporters.repeat)
        rebuy_x = rebuy_transform(rebuy_x)
    own = own_items(inter, main)
    index = {p: list_index(main.case_users, main.case_time, sp) for p, sp in splits.items()}
    out = {}
    for params in grid:
        lists = served_lists(cands, scorer, own, params, scores=scores, stack_x=stack_x, rebuy_x=rebuy_x)
        out[params] = {p: {m: grade(lists, index[p], sp, inter, m) for m in sp.modes} for p, sp in splits.items()}
        if case_ndcg is not None:  # per case NDCG@10 of each protocol's first mode (paired comparisons)
            case_ndcg[params] = {}
            for p, sp in splits.items():
                r, _ = served_ranks(lists, index[p], sp, inter, sp.modes[0])
                case_ndcg[params][p] = np.where(r <= K, 1.0 / np.log2(r + 1), 0.0)
    recall = {}
    for p, sp in splits.items():
        ok = index[p] >= 0
        recall[p] = (
            float(np.mean([sp.case_targets[c] in set(cands.rows[index[p][c]].tolist()) for c in np.flatnonzero(ok)]))
            if ok.any()
            else 0.0
        )
    return out, recall


def served_rebuy_inputs(
    inter: Interactions,
    split: Split,
    points: PointSet,
    cands: CandidateSets,
    scores: list[np.ndarray],
    item_vecs: np.ndarray | None,
    rates=None,
) -> list[np.ndarray]:
    """Per case of ``split`` (the points of ``served_points``): ``schemas.repeat.repeat_features`` of
    its candidates, as the worker computes them when it publishes the list. Item repeat rates:
    ``rates`` (a version's ``ListParams.rebuy_rates``), by default from the split's fit events
    (``exporters.repeat.repeat_rates``: what a version trained on them ships)."""
    from exporters.repeat import case_repeat_features, repeat_rates

    as_of = last_event_before(inter, split.case_users, split.visible)
    rates = rates if rates is not None else repeat_rates(inter, split.fit)
    return case_repeat_features(inter, split.visible, as_of, points, cands.rows, scores, item_vecs, rates)


REBUY_MIN_Z = 2.0  # a rebuy score ships only when its validation gain is this many standard errors


def paired_gain(new: dict[str, np.ndarray], old: dict[str, np.ndarray]) -> tuple[float, float]:
    """(z, mean) of the per-case NDCG@10 differences ``new - old``, pooled over the protocols'
    cases (z = mean / standard error; 0 when nothing differs)."""
    d = np.concatenate([new[p] - old[p] for p in old])
    if not len(d) or not d.any():
        return 0.0, 0.0
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0
    return (float(d.mean() / se) if se > 0 else 0.0), float(d.mean())


def pick_params(
    grid: list[ListParams], ndcg: dict[ListParams, dict[str, float]], first: str, floor: float
) -> ListParams:
    """The best list parameters by the mean over protocols of validation NDCG@10 (ties: the plain
    score, then the smaller ``min_new`` and ``knn_weight``), among those whose ``first`` protocol
    keeps ``floor`` (all of them when none does)."""
    allowed = [q for q in grid if ndcg[q][first] >= floor] or grid
    return max(
        allowed,
        key=lambda q: (round(float(np.mean(list(ndcg[q].values()))), 6), -bool(q.stack), -q.min_new, -q.knn_weight),
    )


def served_evaluation(
    inter: Interactions,
    val: dict[str, Split],
    test: dict[str, Split],
    max_seq_len: int,
    item_vecs: np.ndarray | None,
    make_scorer: Callable[[PointSet], CandidateScorer],
    grid: list[ListParams] | None = None,
    neighbours: tuple[ItemNeighbours, ItemNeighbours] | None = None,
    stack: tuple[float, ...] = (),
    offline_val_ndcg: float | None = None,
    rebuy: dict[str, tuple[float, ...]] | None = None,
) -> ServedReport:
    """Tune the list parameters (``grid``, default ``list_grid()``; the ``knn_weight`` part only
    with ``neighbours``) on the validation lists, grade the test lists with them. ``val`` /
    ``test``: the data set's protocols (the lists are made for the first one's cases,
    ``served_points``); protocols sharing a cut are graded on the same lists. ``neighbours``: the
    item neighbours of the validation and of the test lists, each built from that split's training
    events (``item_neighbours``; the test ones are what the version ships). ``stack``: the
    stacked score's weights (``exporters.stacking``); the grid is then tried with and without it.
    ``offline_val_ndcg``: the ranker's full-ranking validation NDCG@10 (first protocol, first
    mode); only parameters whose served lists keep ``SERVED_FLOOR`` of it compete (all of them
    when none does). ``rebuy``: rebuy scores to try (name -> weights, ``exporters.repeat``): each
    on top of the parameters chosen without; the one with the largest mean per-case gain in
    validation NDCG@10 (the protocols' cases pooled) ships where that gain is at least
    ``REBUY_MIN_Z`` standard errors (``paired_gain``; a single validation month is noisy) and the
    floor holds; the chosen one ships with the item repeat rates of the test split's fit events
    (``exporters.repeat.repeat_rates``, what the version ships)."""
    grid = grid or list_grid(knn_weight=KNN_WEIGHT_GRID if neighbours is not None else (0.0,))
    if stack:
        grid = grid + [replace(q, stack=tuple(stack)) for q in grid if not q.stack]
    val_points = served_points(inter, next(iter(val.values())), max_seq_len)
    test_points = served_points(inter, next(iter(test.values())), max_seq_len)
    nb_val, nb_test = neighbours or (None, None)
    by_params, val_recall = _stage(inter, val, val_points, item_vecs, make_scorer(val_points), grid, nb_val)
    objective = {
        (q.min_new, q.knn_weight, bool(q.stack)): {p: per[p][val[p].modes[0]].ndcg for p in per}
        for q, per in by_params.items()
    }
    best = pick_params(
        grid,
        {q: objective[(q.min_new, q.knn_weight, bool(q.stack))] for q in grid},
        next(iter(val)),
        SERVED_FLOOR * offline_val_ndcg if offline_val_ndcg else 0.0,
    )
    rebuy_val, chosen = None, None
    if rebuy:
        from exporters.repeat import repeat_rates

        tried = {name: replace(best, rebuy=tuple(w)) for name, w in rebuy.items()}
        per_case: dict = {}
        by_rebuy, _ = _stage(
            inter,
            val,
            val_points,
            item_vecs,
            make_scorer(val_points),
            [best, *tried.values()],
            nb_val,
            case_ndcg=per_case,
        )
        rebuy_val = {name: {p: by_rebuy[q][p][val[p].modes[0]].ndcg for p in val} for name, q in tried.items()}
        floor = SERVED_FLOOR * offline_val_ndcg if offline_val_ndcg else 0.0
        first = next(iter(val))
        gain = 0.0
        for name, q in tried.items():
            z, d = paired_gain(per_case[q], per_case[best])
            rebuy_val[name]["paired_z"] = z
            if z >= REBUY_MIN_Z and d > gain and rebuy_val[name][first] >= floor:
                chosen, gain = name, d
        if chosen is not None:
            best = replace(tried[chosen], rebuy_rates=repeat_rates(inter, next(iter(test.values())).fit))
    tested, recall = _stage(inter, test, test_points, item_vecs, make_scorer(test_points), [best], nb_test)
    return ServedReport(best, objective, tested[best], recall, val_recall, rebuy_val, chosen)


@dataclass
class ReplayResult:
    """Served (a real worker's published lists) and offline (this module's lists) metrics of one
    version on the same cases, and how many of the lists were identical."""

    version: str
    served: dict[str, dict[str, Metrics]]
    offline: dict[str, dict[str, Metrics]]
    identical_lists: float
    cases: int
    events: int
    seconds: float

    def as_dict(self) -> dict:
        tables = {
            k: {p: {m: x.as_dict() for m, x in per.items()} for p, per in v.items()}
            for k, v in (("served", self.served), ("offline", self.offline))
        }
        return {
            "version": self.version,
            **tables,
            "identical_lists": self.identical_lists,
            "cases": self.cases,
            "events": self.events,
            "seconds": round(self.seconds, 1),
        }


def evaluate_served_replay(
    inter: Interactions,
    protocols: tuple[str, ...],
    version_dir: Path,
    *,
    users: int | None = None,
    exact: bool = True,
    timeout: float = 600.0,
    work_dir: Path | None = None,
    replay: Callable[..., dict] | None = None,
    ranker_variant: str | None = None,
) -> ReplayResult:
    """Replay the test period's input (the visible events of the first protocol's test users, or
    of its first ``users`` of them) through a real worker serving ``version_dir`` on the embedded
    stack (``python -m devtools.served_replay``, a subprocess: the packages never import each
    other), grade the lists it published, and grade this module's offline lists of the same
    version on the same cases beside them. ``replay(events_file, model_root, out_file, exact=,
    timeout=, ranker_variant=)`` replaces the subprocess (tests pass ``devtools.served_replay.run`` on their stack)."""
    import json
    import os
    import subprocess
    import sys
    import tempfile

    from exporters.dataset import make_split
    from exporters.production import OnnxModel

    full = make_split(inter, protocols[0], "test")
    chosen = full.case_users if users is None else full.case_users[:users]
    sub = replay_subset(inter, chosen)
    test = {p: make_split(sub, p, "test") for p in protocols}
    main = test[protocols[0]]
    work = Path(work_dir or tempfile.mkdtemp(prefix="evaluate-served-"))
    work.mkdir(parents=True, exist_ok=True)
    events_file, lists_file, root = work / "events.jsonl", work / "lists.jsonl", work / "models"
    n_events = write_replay_events(sub, main, events_file)
    items_file = work / "items.jsonl"
    has_items = write_replay_items(sub, items_file) > 0
    root.mkdir(parents=True, exist_ok=True)
    version_dir = Path(version_dir).resolve()
    link = root / version_dir.name
    if not link.exists():
        link.symlink_to(version_dir, target_is_directory=True)
    (root / "LATEST").write_text(version_dir.name + "\n")
    # the ranker file a CPU worker runs (int8 when the version ships it), here and in the worker.
    # int8 is quantised dynamically (activation scales per call), so its scores depend a little on
    # what else is in the call: lists then match up to near-ties; fp32 lists match exactly.
    files = json.loads((version_dir / "manifest.json").read_text()).get("ranker_variant_files", {})
    variant = ranker_variant or ("int8" if "int8" in files else "fp32")
    if replay is None:
        cmd = [
            sys.executable,
            "-m",
            "devtools.served_replay",
            "--events",
            str(events_file),
            "--model-root",
            str(root),
            "--out",
            str(lists_file),
            "--timeout",
            str(timeout),
            "--ranker-variant",
            variant,
        ] + ([] if exact else ["--batched"])
        cmd += ["--items", str(items_file)] if has_items else []
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
        if proc.returncode != 0:
            raise RuntimeError(f"served replay failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
        replayed = json.loads(proc.stdout.strip().splitlines()[-1])
    else:
        replayed = replay(
            events_file,
            root,
            lists_file,
            exact=exact,
            timeout=timeout,
            ranker_variant=variant,
            items_file=items_file if has_items else None,
        )

    model = OnnxModel(version_dir, variant=variant)
    params = ListParams.from_manifest(model.manifest, LIST_SIZE)
    list_users, lists = read_served_lists(lists_file, sub, params.size)
    case_of_user = {int(u): c for c, u in enumerate(main.case_users)}
    served_index = np.full(len(main), -1, dtype=np.int64)
    for i, u in enumerate(list_users):
        if int(u) in case_of_user:
            served_index[case_of_user[int(u)]] = i

    points = served_points(sub, main, model.max_seq_len)
    vecs = model.catalog_vectors(sub)
    cands = candidate_sets(points, vecs, neighbours=load_neighbours(version_dir, model.manifest))
    scorer = dense_candidate_scorer(model.scorer(sub, points))
    scores = scorer(np.arange(len(cands.rows)), cands.rows)
    stack_x = None
    if params.stack:
        from exporters.stacking import stack_inputs

        stack_x = stack_inputs(points, cands, scores, vecs)
    rebuy_x = served_rebuy_inputs(sub, main, points, cands, scores, vecs, params.rebuy_rates) if params.rebuy else None
    offline_lists = served_lists(
        cands, scorer, own_items(sub, main), params, scores=scores, stack_x=stack_x, rebuy_x=rebuy_x
    )

    def by_user(list_idx: np.ndarray, split: Split) -> np.ndarray:
        row_of_user = {int(u): int(list_idx[c]) for c, u in enumerate(main.case_users)}
        return np.asarray([row_of_user.get(int(u), -1) for u in split.case_users], dtype=np.int64)

    served = {p: {m: grade(lists, by_user(served_index, sp), sp, sub, m) for m in sp.modes} for p, sp in test.items()}
    offline = {
        p: {m: grade(offline_lists, by_user(np.arange(len(main)), sp), sp, sub, m) for m in sp.modes}
        for p, sp in test.items()
    }
    same = [
        bool(np.array_equal(lists[served_index[c]], offline_lists[c])) for c in range(len(main)) if served_index[c] >= 0
    ]
    return ReplayResult(
        model.version,
        served,
        offline,
        float(np.mean(same)) if same else 0.0,
        len(main),
        n_events,
        float(replayed["seconds"]),
    )


# The knn source's similarity variants the job tries (name -> EASE weight in the blend, 0: cosine
# only); validation decides which one the version ships (``exporters.job``).
NEIGHBOUR_VARIANTS: dict[str, float] = {f"cosine ** {KNN_POWER:g}": 0.0, f"cosine ** {KNN_POWER:g} + EASE": 1.0}
EASE_LAMBDA = 100.0  # EASE's L2 penalty (item x item ridge regression)
EASE_TOP_N = 8000  # EASE is solved for the items with the most users only (a dense top_n x top_n inverse)


def item_neighbours(
    inter: Interactions, fit: np.ndarray, k: int = KNN_K, power: float = KNN_POWER, ease_weight: float = 0.0
) -> ItemNeighbours:
    """The ``knn`` source's neighbour lists from the ``fit`` events: the item-kNN baseline's
    neighbours (cosine on the binary user x item matrix, its tie rule), ``k`` per item, with
    similarity cosine ** ``power``; with ``ease_weight`` > 0, blended with each item's ``k`` EASE
    neighbours (``ease_neighbours``): up to 2 ``k`` per item, similarity = cosine ** ``power`` +
    ``ease_weight`` x EASE weight (``blend_neighbours``)."""
    from exporters.baselines import KnnSimilarity

    sim = KnnSimilarity(inter, fit).top_k(k)
    sim.data = sim.data**power
    cosine = ItemNeighbours.from_sparse(sim, k)
    if ease_weight <= 0:
        return cosine
    return blend_neighbours(cosine, ease_neighbours(inter, fit, k), ease_weight)


def ease_neighbours(
    inter: Interactions, fit: np.ndarray, k: int = KNN_K, lam: float = EASE_LAMBDA, top_n: int = EASE_TOP_N
) -> ItemNeighbours:
    """EASE (Steck 2019: B = I - P / diag(P), P = (X'X + lam I)^-1, diag(B) = 0) on the binary user x
    item matrix X of the ``fit`` events, solved for the ``top_n`` items with the most users (the
    others get no neighbours and are no neighbour): each item's ``k`` largest positive weights
    (ties: the lower row), largest first."""
    x = inter.user_item_matrix(fit, binary=True).tocsc()
    users = np.asarray((x > 0).sum(axis=0)).ravel()
    keep = np.sort(np.argsort(-users, kind="stable")[:top_n])
    keep = keep[users[keep] > 0]
    rows = np.full((inter.n_items, k), -1, dtype=np.int32)
    sims = np.zeros((inter.n_items, k), dtype=np.float32)
    if len(keep) < 2:
        return ItemNeighbours(rows, sims)
    xs = x[:, keep].astype(np.float64)
    gram = (xs.T @ xs).toarray()
    gram[np.diag_indices_from(gram)] += lam
    prec = np.linalg.inv(gram)
    b = prec / -np.diag(prec)[None, :]
    np.fill_diagonal(b, 0.0)
    kk = min(k, len(keep) - 1)
    top = np.argsort(-b, axis=1, kind="stable")[:, :kk]
    w = np.take_along_axis(b, top, axis=1)
    pos = w > 0
    rows[keep, :kk] = np.where(pos, keep[top], -1)
    sims[keep, :kk] = np.where(pos, w, 0.0)
    return ItemNeighbours(rows, sims)


def blend_neighbours(a: ItemNeighbours, b: ItemNeighbours, weight: float) -> ItemNeighbours:
    """Per item, the union of its neighbours in ``a`` and ``b``, similarity = a's + ``weight`` x b's
    (0 where a list lacks it), most similar first (ties: the lower row); as many columns as both."""
    n = len(a.rows)
    cols = a.rows.shape[1] + b.rows.shape[1]
    r = np.concatenate([a.rows, b.rows], axis=1).astype(np.int64)
    s = np.concatenate([a.sims, weight * b.sims], axis=1).astype(np.float64)
    item = np.repeat(np.arange(n), cols)
    r, s = r.ravel(), s.ravel()
    ok = r >= 0
    item, r, s = item[ok], r[ok], s[ok]
    key = item * n + r
    uniq, inv = np.unique(key, return_inverse=True)
    total = np.bincount(inv, weights=s)
    u_item, u_row = uniq // n, uniq % n
    order = np.lexsort((u_row, -total, u_item))
    u_item, u_row, total = u_item[order], u_row[order], total[order]
    pos = np.arange(len(u_item)) - np.searchsorted(u_item, u_item)
    rows = np.full((n, cols), -1, dtype=np.int32)
    sims = np.zeros((n, cols), dtype=np.float32)
    rows[u_item, pos] = u_row
    sims[u_item, pos] = total
    return ItemNeighbours(rows, sims)


def load_neighbours(version_dir: Path, manifest: dict) -> ItemNeighbours | None:
    """The neighbour lists a version ships (None when it ships none), as the worker loads them."""
    entry = manifest.get(NEIGHBOURS_KEY)
    if not entry:
        return None
    names = entry.get("files", list(NEIGHBOUR_FILES))
    return ItemNeighbours(np.load(Path(version_dir) / names[0]), np.load(Path(version_dir) / names[1]))
