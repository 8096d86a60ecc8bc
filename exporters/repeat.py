"""Fit the rebuy score (``schemas.repeat``): the order of the user's own items in a served list.

Offline, each case's own-item inputs are what the worker's state holds right after the user's
last visible event: the user's events up to it replayed in log order through
``schemas.repeat.update_profile`` (the worker's own rule) and their last ``SEQ_WINDOW`` events
as the sequence (``own_inputs``).

The fit: at the last ``REPEAT_CUTS`` training cuts before the validation cut (the job's cut
spacing), every user with history whose first event after the cut (before the validation cut)
is one of their own items among the worker's ``history`` candidates gets a query group: those
candidates, with ``schemas.repeat.repeat_features`` (the trained ranker's scores and features at
the cut), the positive = that item. A linear score is fitted by the listwise softmax of
``exporters.stacking.fit_listwise``. Users whose next item is new add no group: the rebuy score
only orders own items.

Leakage: everything at a cut reads events before it; the targets are in [cut, validation cut).
The job ships the rebuy score only where its validation lists are better
(``exporters.served.served_evaluation`` tries the list grid with and without it).
"""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np

from exporters.dataset import Interactions, Split
from exporters.features import _WEIGHT_OF_TYPE, PointSet, build_points
from exporters.served import CandidateScorer
from exporters.stacking import StackFit, fit_listwise, training_cuts
from schemas.ranking import EVENT_TYPE_IDS, FEATURE_NAMES
from schemas.repeat import (
    REPEAT_FEATURES,
    SEQ_WINDOW,
    RepeatRates,
    new_profile,
    repeat_features,
    state_inputs,
    update_profile,
)
from schemas.serving import CandidateQuota, history_order

log = logging.getLogger(__name__)
REPEAT_CUTS = 6
RATE_SHRINK = 2.0  # pseudo-users at the overall rate added to each item's repeat rate
# The rebuy scores fitted (nested feature sets); validation decides which one ships, if any.
REBUY_VARIANTS: dict[str, tuple[str, ...]] = {
    "ranker + item repeat rate": ("ranker", "log_item_repeat_rate"),
    "all repeat features": REPEAT_FEATURES,
}
MAX_RATES = 50_000  # items listed in the shipped repeat rates (the most touched; the rest get the prior)
_TYPE_NAME = {v: k for k, v in EVENT_TYPE_IDS.items()}


def own_inputs(inter: Interactions, visible: np.ndarray, as_of: np.ndarray, rows: list[np.ndarray]) -> list[np.ndarray]:
    """Per point (the user's last input event ``as_of``): ``schemas.repeat.own_item_inputs`` [C, 6]
    of the candidate ``rows`` of that point, from the user's ``visible`` events up to ``as_of``
    (the sequence: their last ``schemas.repeat.SEQ_WINDOW``)."""
    vis = np.flatnonzero(visible)
    vis = vis[np.lexsort((vis, inter.users[vis]))]
    bounds = np.searchsorted(inter.users[vis], np.arange(inter.n_users + 1))
    out = []
    for p, e in enumerate(as_of):
        r = np.asarray(rows[p], dtype=np.int64)
        if e < 0:
            out.append(np.zeros((len(r), 6)))
            continue
        u = inter.users[e]
        ev = vis[bounds[u] : bounds[u + 1]]
        ev = ev[: np.searchsorted(ev, e, side="right")]
        profiles: dict[int, list] = {}
        items, types, ts = inter.items[ev].tolist(), inter.types[ev].tolist(), inter.ts[ev].tolist()
        for item, t, when in zip(items, types, ts):
            prof = profiles.get(item)
            if prof is None:
                prof = profiles[item] = new_profile(when)
            update_profile(prof, _TYPE_NAME[t], float(_WEIGHT_OF_TYPE[t]), when)
        tail = max(len(items) - SEQ_WINDOW, 0)
        out.append(state_inputs(profiles, zip(items[tail:], types[tail:], ts[tail:]), r.tolist()))
    return out


def repeat_rates(inter: Interactions, fit: np.ndarray, max_items: int = MAX_RATES) -> RepeatRates:
    """Per item, from the ``fit`` events of positive weight: the share of the users who touched it
    that touched it again at another time, shrunk to the overall share by ``RATE_SHRINK``
    pseudo-users; the ``max_items`` most touched items are listed."""
    idx = np.flatnonzero(fit)
    idx = idx[_WEIGHT_OF_TYPE[inter.types[idx]] > 0]
    key = inter.users[idx].astype(np.int64) * inter.n_items + inter.items[idx]
    pairs = np.unique(np.stack([key, inter.ts[idx]]), axis=1)  # distinct (user, item, time)
    ui, moments = np.unique(pairs[0], return_counts=True)
    item = ui % inter.n_items
    users = np.bincount(item, minlength=inter.n_items).astype(np.float64)
    back = np.bincount(item[moments >= 2], minlength=inter.n_items).astype(np.float64)
    prior = float(back.sum() / users.sum()) if users.sum() else 0.0
    rate = (back + RATE_SHRINK * prior) / (users + RATE_SHRINK)
    listed = np.argsort(-users, kind="stable")[:max_items]
    listed = listed[users[listed] > 0]
    return RepeatRates(prior, {inter.item_ids[i]: round(float(rate[i]), 6) for i in listed.tolist()})


def own_rows(points: PointSet, limit: int) -> list[np.ndarray]:
    """Per point: the worker's ``history`` candidates (``schemas.serving.history_order``)."""
    out = []
    for p in range(len(points)):
        lo, hi = points.personal.indptr[p], points.personal.indptr[p + 1]
        cols, w = points.personal.indices[lo:hi], points.personal.data[lo:hi]
        rlo, rhi = points.recency.indptr[p], points.recency.indptr[p + 1]
        last = np.zeros(len(cols))
        last[np.searchsorted(cols, points.recency.indices[rlo:rhi])] = points.recency.data[rlo:rhi]
        out.append(cols[history_order(w, last, limit)].astype(np.int64))
    return out


def case_repeat_features(
    inter: Interactions,
    visible: np.ndarray,
    as_of: np.ndarray,
    points: PointSet,
    rows: list[np.ndarray],
    ranker: list[np.ndarray],
    item_vecs: np.ndarray | None,
    rates: RepeatRates | None,
) -> list[np.ndarray]:
    """Per case: ``schemas.repeat.repeat_features`` of its candidate ``rows`` (what the worker
    computes), the items' repeat rates from ``rates``."""
    vecs = item_vecs if item_vecs is not None else np.zeros((points.pop_table.shape[1], 1), np.float32)
    inputs = own_inputs(inter, visible, as_of, rows)
    out = []
    for p, r in enumerate(rows):
        feats = points.features(np.array([p]), vecs, r)[0] if len(r) else np.zeros((0, len(FEATURE_NAMES)))
        rate = rates.lookup(inter.item_ids[i] for i in r.tolist()) if rates is not None else None
        out.append(repeat_features(ranker[p], feats, inputs[p], int(points.now[p]), rate))
    return out


def training_groups(
    inter: Interactions,
    val: Split,
    item_vecs: np.ndarray | None,
    max_seq_len: int,
    step_days: float,
    make_scorer: Callable[[PointSet], CandidateScorer],
    cuts: int = REPEAT_CUTS,
    quota: CandidateQuota = CandidateQuota(),
) -> list[tuple[np.ndarray, int]]:
    """The labelled own-item groups at the last ``cuts`` training cuts (module docstring)."""
    groups: list[tuple[np.ndarray, int]] = []
    for before, tgt, _users, as_of in training_cuts(inter, val, step_days, cuts, "next-item"):
        pts = build_points(inter, before, before, as_of, max_seq_len, upto_event=True)
        rows = own_rows(pts, quota.history)
        target = inter.items[tgt]
        keep = np.flatnonzero([target[k] in set(r.tolist()) for k, r in enumerate(rows)])
        if not len(keep):
            continue
        sub = pts.take(keep)
        sub_rows = [rows[k] for k in keep]
        ranker = make_scorer(sub)(np.arange(len(keep)), sub_rows)
        xs = case_repeat_features(
            inter, before, as_of[keep], sub, sub_rows, ranker, item_vecs, repeat_rates(inter, before)
        )
        for j, k in enumerate(keep):
            groups.append((xs[j], int(np.flatnonzero(sub_rows[j] == target[k])[0])))
    return groups


def fit_subset(groups: list[tuple[np.ndarray, int]], features: tuple[str, ...]) -> StackFit:
    """``fit_listwise`` on the ``features`` columns only; weights in ``REPEAT_FEATURES`` order (0
    for the others)."""
    cols = [REPEAT_FEATURES.index(f) for f in features]
    fit = fit_listwise([(x[:, cols], p) for x, p in groups])
    w = np.zeros(len(REPEAT_FEATURES))
    w[cols] = fit.weights
    return StackFit(tuple(float(v) for v in w), fit.groups, fit.rows, fit.loss)


def fit_rebuy(
    inter: Interactions,
    val: Split,
    item_vecs: np.ndarray | None,
    max_seq_len: int,
    step_days: float,
    make_scorer: Callable[[PointSet], CandidateScorer],
    cuts: int = REPEAT_CUTS,
) -> dict[str, StackFit]:
    """The rebuy score of each of ``REBUY_VARIANTS`` (weights in ``REPEAT_FEATURES`` order, raw
    units), all fitted on the same groups; empty where there is nothing to fit (a leave-one-out
    split: no cuts; fewer than 10 groups: no repeats). Which one ships (if any) is decided on the
    validation lists (``exporters.served.served_evaluation``)."""
    if val.protocol == "loo" or val.cut is None:
        return {}
    groups = training_groups(inter, val, item_vecs, max_seq_len, step_days, make_scorer, cuts)
    if len(groups) < 10:
        return {}
    fits = {name: fit_subset(groups, feats) for name, feats in REBUY_VARIANTS.items()}
    for name, fit in fits.items():
        log.info(
            "rebuy score %s: %d groups, %d own-item rows, loss %.4f; weights %s",
            name,
            fit.groups,
            fit.rows,
            fit.loss,
            ", ".join(f"{n} {w:+.3g}" for n, w in zip(REPEAT_FEATURES, fit.weights) if w),
        )
    return fits


def main(argv: list[str] | None = None) -> int:
    """The rebuy rows of EVALUATION.md for one trained version: each rebuy score of
    ``REBUY_VARIANTS`` and a LightGBM lambdarank reference on the same groups and features
    (``exporters.gbm.fit``), each on top of the version's shipped ``list_params`` (its ``min_new``,
    ``knn_weight``, stacked discovery score), graded on the validation and the test lists.

        python -m exporters.repeat --dataset online_retail --version-dir <version>
    """
    import argparse
    import json
    import time
    from dataclasses import replace
    from pathlib import Path

    from exporters.dataset import load_interactions, make_split
    from exporters.gbm import fit as gbm_fit
    from exporters.job import cut_spacing_days
    from exporters.production import OnnxModel
    from exporters.served import _stage, dense_candidate_scorer, item_neighbours, served_points
    from schemas.serving import ListParams

    ap = argparse.ArgumentParser(prog="python -m exporters.repeat", description=main.__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", required=True, choices=["online_retail", "taobao", "movielens"])
    ap.add_argument("--version-dir", type=Path, required=True)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    inter = load_interactions(args.dataset)
    model = OnnxModel(args.version_dir, variant="fp32")
    vecs = model.catalog_vectors(inter)
    base = ListParams.from_manifest(model.manifest, 20)
    base = replace(base, rebuy=(), rebuy_rates=None)
    val = {p: make_split(inter, p, "validation") for p in inter.protocols}
    test = {p: make_split(inter, p, "test") for p in inter.protocols}
    main_val = val[inter.protocols[0]]

    def make_scorer(points):
        return dense_candidate_scorer(model.scorer(inter, points))

    step = cut_spacing_days(inter.ts[main_val.fit], int(main_val.case_time.max()))
    groups = training_groups(inter, main_val, vecs, model.max_seq_len, step, make_scorer)
    print(f"{len(groups)} groups, {sum(len(x) for x, _ in groups)} own-item rows ({time.perf_counter() - t0:.0f} s)")
    fits = {name: fit_subset(groups, feats).weights for name, feats in REBUY_VARIANTS.items()} if groups else {}
    x = np.concatenate([g for g, _ in groups])
    y = np.concatenate([np.eye(len(g))[p] for g, p in groups])
    gbm = gbm_fit(x, y, np.asarray([len(g) for g, _ in groups]))
    out: dict = {"groups": len(groups), "rows": {}}
    for stage, splits in (("validation", val), ("test", test)):
        main_split = splits[inter.protocols[0]]
        pts = served_points(inter, main_split, model.max_seq_len)
        grid = {"before (ranker order)": base} | {n: replace(base, rebuy=w) for n, w in fits.items()}
        grid["LightGBM lambdarank reference"] = replace(base, rebuy=(1.0,))
        by_q = {}
        for name, q in grid.items():
            # the LightGBM reference: its prediction is the one rebuy feature of weight 1
            transform = (
                (lambda xs: [gbm.predict(v)[:, None] if len(v) else v[:, :1] for v in xs])
                if q.rebuy == (1.0,)
                else None
            )
            by, _ = _stage(
                inter,
                splits,
                pts,
                vecs,
                make_scorer(pts),
                [q],
                item_neighbours(inter, main_split.fit),
                rebuy_transform=transform,
            )
            by_q[name] = by[q]
            cells = "; ".join(
                f"{p} {m} HR@10 {v.hr:.4f} NDCG@10 {v.ndcg:.4f}" for p, pm in by[q].items() for m, v in pm.items()
            )
            print(f"{stage:10s} {name:32s} {cells}", flush=True)
        out["rows"][stage] = {
            n: {p: {m: v.as_dict() for m, v in pm.items()} for p, pm in r.items()} for n, r in by_q.items()
        }
    out["weights"] = {n: list(w) for n, w in fits.items()}
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
