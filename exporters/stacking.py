"""Fit the stacked discovery score (``schemas.stacking``) on the candidates the worker generates.

The stacked score orders the items new to the user (``schemas.serving.list_scores``: the user's
own items keep the ranker's order). At the last ``STACK_CUTS`` training cuts before the validation
cut (the job's cut spacing), every user with history and a new item after the cut gets the
worker's candidates (``exporters.served.candidate_sets``, with item neighbours built from the
events before that cut) and the trained ranker's scores of them; the query group is the
candidates new to the user, the positive the user's first new item after the cut (when it is
among them). A linear score is fitted by a
listwise softmax (cross-entropy of the positive's softmax probability within its group, L2) on
standardised features, and returned in raw feature units (the worker's one dot product).

Leakage: everything at a cut reads events before it; the targets are in [cut, validation cut).
The job ships the stacked score only where it beats the plain one on the validation lists
(``exporters.served.served_evaluation``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
from scipy.optimize import minimize

from exporters.dataset import Interactions, Split, cut_targets, last_event_before
from exporters.features import PointSet, build_points
from exporters.served import CandidateScorer, CandidateSets, candidate_sets, item_neighbours
from schemas.ranking import DAY_MS, FEATURE_NAMES
from schemas.serving import ItemNeighbours
from schemas.stacking import STACK_FEATURES, stack_features

log = logging.getLogger(__name__)
STACK_CUTS = 3
L2 = 1e-2
_RECENCY = FEATURE_NAMES.index("personal_recency")


def case_features(
    points: PointSet, cands: CandidateSets, item_vecs: np.ndarray | None
) -> tuple[list[np.ndarray], np.ndarray]:
    """Per case: the candidates' ``FEATURE_NAMES`` [C, F] (as the worker computes them), and the
    number of items in the user's profile."""
    vecs = item_vecs if item_vecs is not None else np.zeros((points.pop_table.shape[1], 1), np.float32)
    feats = [
        points.features(np.array([p]), vecs, rows)[0] if len(rows) else np.zeros((0, len(FEATURE_NAMES)), np.float32)
        for p, rows in enumerate(cands.rows)
    ]
    return feats, np.diff(points.personal.indptr)


def stack_inputs(
    points: PointSet, cands: CandidateSets, ranker: list[np.ndarray], item_vecs: np.ndarray | None
) -> list[np.ndarray]:
    """Per case: ``schemas.stacking.stack_features`` of its candidates."""
    feats, profile = case_features(points, cands, item_vecs)
    knn = cands.knn if cands.knn is not None else [None] * len(cands.rows)
    return [
        stack_features(ranker[i], feats[i], knn[i], cands.sources[i], int(profile[i])) for i in range(len(cands.rows))
    ]


@dataclass
class StackFit:
    weights: tuple[float, ...]  # raw feature units, STACK_FEATURES order
    groups: int
    rows: int
    loss: float


def fit_listwise(groups: list[tuple[np.ndarray, int]], l2: float = L2) -> StackFit:
    """Linear weights maximising the mean log softmax probability of each group's positive
    (``(x [C, F], index of the positive)``)."""
    x = np.concatenate([g for g, _ in groups])
    sizes = np.asarray([len(g) for g, _ in groups])
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    pos = starts + np.asarray([p for _, p in groups])
    mean, std = x.mean(axis=0), x.std(axis=0)
    std = np.where(std > 1e-9, std, np.inf)  # a constant column gets weight 0
    z = (x - mean) / std
    group_of = np.repeat(np.arange(len(groups)), sizes)

    def loss_grad(w: np.ndarray) -> tuple[float, np.ndarray]:
        s = z @ w
        m = np.maximum.reduceat(s, starts)
        e = np.exp(s - m[group_of])
        denom = np.add.reduceat(e, starts)
        lse = m + np.log(denom)
        loss = float(np.mean(lse - s[pos])) + l2 * float(w @ w)
        p = e / denom[group_of]
        grad = (z.T @ p - z[pos].sum(axis=0)) / len(groups) + 2 * l2 * w
        return loss, grad

    w0 = np.zeros(z.shape[1])
    w0[0] = 1.0  # start from the ranker's score
    res = minimize(loss_grad, w0, jac=True, method="L-BFGS-B", options={"maxiter": 300})
    return StackFit(tuple(float(v) for v in res.x / std), len(groups), len(x), float(res.fun))


def training_cuts(
    inter: Interactions, val: Split, step_days: float, cuts: int, question: str
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """The last ``cuts`` training cuts before the validation cut, ``step_days`` apart, oldest
    first: per cut with events before it and ``question`` targets after it, (the mask of the
    events before the cut, the target events up to the validation cut, their users, each user's
    last event before the cut). Shared by the stacked score and the rebuy score."""
    val_cut = int(val.case_time.max())
    step = int(step_days * DAY_MS)
    for c in [val_cut - step * i for i in range(cuts, 0, -1)]:
        before = inter.ts < c
        if not before.any():
            continue
        tgt = cut_targets(inter, question, int(c), val_cut)
        if not len(tgt):
            continue
        users = inter.users[tgt]
        yield before, tgt, users, last_event_before(inter, users, before)


def training_groups(
    inter: Interactions,
    val: Split,
    item_vecs: np.ndarray | None,
    max_seq_len: int,
    step_days: float,
    make_scorer: Callable[[PointSet], CandidateScorer],
    cuts: int = STACK_CUTS,
    neighbours: Callable[[Interactions, np.ndarray], ItemNeighbours] = item_neighbours,
) -> list[tuple[np.ndarray, int]]:
    """The labelled candidate groups at the last ``cuts`` training cuts (module docstring);
    ``neighbours(inter, events)``: the knn source's lists from the events before a cut."""
    groups: list[tuple[np.ndarray, int]] = []
    for before, tgt, users, as_of in training_cuts(inter, val, step_days, cuts, "next-new"):
        pts = build_points(inter, before, before, as_of, max_seq_len, upto_event=True)
        cands = candidate_sets(pts, item_vecs, neighbours=neighbours(inter, before))
        ranker = make_scorer(pts)(np.arange(len(pts)), cands.rows)
        xs = stack_inputs(pts, cands, ranker, item_vecs)
        first_new = dict(zip(users.tolist(), inter.items[tgt].tolist()))
        for k, rows in enumerate(cands.rows):
            target = first_new.get(int(users[k]))
            new = xs[k][:, STACK_FEATURES.index("new")] > 0
            hit = np.flatnonzero(new & (rows == target)) if target is not None else []
            if len(hit):
                sub = np.flatnonzero(new)
                groups.append((xs[k][sub], int(np.searchsorted(sub, hit[0]))))
    return groups


def fit_stacker(
    inter: Interactions,
    val: Split,
    item_vecs: np.ndarray | None,
    max_seq_len: int,
    step_days: float,
    make_scorer: Callable[[PointSet], CandidateScorer],
    neighbours: Callable[[Interactions, np.ndarray], ItemNeighbours] = item_neighbours,
) -> StackFit | None:
    """The stacked score's weights, or None where there is nothing to fit (no training cut with
    targets among the candidates, or a leave-one-out split: no cuts)."""
    if val.protocol == "loo" or val.cut is None:
        return None
    groups = training_groups(inter, val, item_vecs, max_seq_len, step_days, make_scorer, neighbours=neighbours)
    if len(groups) < 10:
        return None
    fit = fit_listwise(groups)
    log.info(
        "stacked score: %d groups, %d candidate rows, loss %.4f; weights %s",
        fit.groups,
        fit.rows,
        fit.loss,
        ", ".join(f"{n} {w:+.3g}" for n, w in zip(STACK_FEATURES, fit.weights)),
    )
    return fit
