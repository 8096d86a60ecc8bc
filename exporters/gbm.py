"""A candidate-aware LightGBM lambdarank ranker: the reference the learned (ONNX) ranker must match.

Trained the way the worker ranks: at training cuts (the job's spacing, ``cut_spacing_days``),
every user with history gets the worker's candidates (``exporters.served.candidate_sets``) as one
query group, labelled 2 for the protocol's target after the cut, 1 for the rest of its basket,
0 otherwise; lambdarank optimises NDCG@10 over the group. Graded on the served lists
(``exporters.served``), with the same ``min_new`` grid as the job.

Features per candidate (``GBM_FEATURES``): the worker's five (``schemas.ranking.FEATURE_NAMES``)
plus repeat-aware ones — TIFU-style time-decayed personal frequency, purchases of the item,
days since the user's last event on it over the user's mean gap between baskets, the item's
share of repeat purchases, its training count, the user's history size and repeat share —
and the item-kNN score (the shipped ``knn`` source's: ``schemas.serving.KNN_K``, ``KNN_POWER``; the
candidates include that source), the
candidate's source and its position in that source. The worker does not compute the extra ones:
this is an offline reference, not a served model.

    python -m exporters.gbm --dataset online_retail [--version-dir V]  # ~3 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import sparse

from exporters.baselines import KnnSimilarity
from exporters.dataset import Interactions, Split, cut_targets, last_event_before, load_interactions, make_split
from exporters.features import build_points
from exporters.served import (
    MIN_NEW_GRID,
    CandidateSets,
    candidate_sets,
    grade,
    item_neighbours,
    list_index,
    own_items,
    served_lists,
    served_points,
)
from exporters.trainset import baskets_of
from schemas.ranking import DAY_MS, FEATURE_NAMES
from schemas.serving import KNN_K, KNN_POWER, ListParams

GBM_FEATURES = (
    *FEATURE_NAMES,
    "log_decayed_personal",
    "purchases",
    "gap_ratio",
    "item_repeat_share",
    "log_item_count",
    "log_user_items",
    "user_repeat_share",
    "knn",
    "source",
    "source_pos",
)


@dataclass
class UserStats:
    """Per user and per item statistics of the events before a cut."""

    last: sparse.csr_matrix  # users x items: ts of the last event (ms, offset by 1 so 0 = never)
    count: sparse.csr_matrix  # users x items: events
    gap_days: np.ndarray  # per user: mean days between distinct event times (0 when one)
    n_items: np.ndarray
    repeat_share: np.ndarray  # per user: events on items bought before / events
    item_repeat: np.ndarray  # per item: share of its events that are repeats by the same user
    item_count: np.ndarray
    t0: int  # ``last`` holds ts - t0 + 1


def user_stats(inter: Interactions, mask: np.ndarray) -> UserStats:
    idx = np.flatnonzero(mask)
    u, i, t = inter.users[idx], inter.items[idx], inter.ts[idx]
    shape = (inter.n_users, inter.n_items)
    count = sparse.csr_matrix((np.ones(len(idx)), (u, i)), shape=shape)
    key = u * inter.n_items + i
    order = np.lexsort((t, key))
    ku, kt = key[order], t[order]
    is_last = np.ones(len(order), dtype=bool)
    is_last[:-1] = ku[:-1] != ku[1:]
    last = sparse.csr_matrix(
        (kt[is_last] - (t.min() if len(t) else 0) + 1.0, (ku[is_last] // inter.n_items, ku[is_last] % inter.n_items)),
        shape=shape,
    )
    first = np.ones(len(order), dtype=bool)
    first[1:] = ku[1:] != ku[:-1]
    repeat = np.empty(len(order), dtype=bool)
    repeat[order] = ~first
    item_repeat = np.bincount(i, weights=repeat, minlength=inter.n_items) / np.maximum(
        np.bincount(i, minlength=inter.n_items), 1
    )
    user_events = np.bincount(u, minlength=inter.n_users)
    repeat_share = np.bincount(u, weights=repeat, minlength=inter.n_users) / np.maximum(user_events, 1)
    ut = np.unique(u * (1 << 42) + t)
    uu, tt = ut >> 42, ut & ((1 << 42) - 1)
    n_times = np.bincount(uu, minlength=inter.n_users)
    span = np.zeros(inter.n_users)
    if len(uu):
        np.maximum.at(span, uu, tt.astype(np.float64))
        lo = np.full(inter.n_users, np.inf)
        np.minimum.at(lo, uu, tt.astype(np.float64))
        span = np.where(n_times > 1, span - np.where(np.isfinite(lo), lo, 0), 0)
    gap = np.where(n_times > 1, span / np.maximum(n_times - 1, 1) / DAY_MS, 0.0)
    return UserStats(
        last,
        count,
        gap,
        np.diff(count.indptr) * 1.0,
        repeat_share,
        item_repeat,
        np.bincount(i, minlength=inter.n_items) * 1.0,
        int(t.min()) if len(t) else 0,
    )


def candidate_table(
    inter: Interactions,
    points,
    cands: CandidateSets,
    vecs: np.ndarray,
    stats: UserStats,
    knn: sparse.csr_matrix,
    chunk_floats: int = 4_000_000,
) -> tuple[np.ndarray, np.ndarray]:
    """Features [sum of candidates, len(GBM_FEATURES)] and group sizes, in ``cands`` order."""
    n = inter.n_items
    chunk = max(1, chunk_floats // (n * len(FEATURE_NAMES)))
    hist = (stats.count[points.users] > 0).astype(np.float64)
    rows_out = []
    for s in range(0, len(points), chunk):
        idx = np.arange(s, min(s + chunk, len(points)))
        base = points.features(idx, vecs)
        dec = points.decayed[idx].toarray()
        knn_s = (hist[idx] @ knn).toarray()
        for j, p in enumerate(idx):
            r = cands.rows[p]
            u = points.users[p]
            cnt = stats.count[u].toarray()[0, r]
            last = stats.last[u].toarray()[0, r]
            days = np.where(last > 0, (points.now[p] - (last - 1 + stats.t0)) / DAY_MS, -1.0)
            gap = stats.gap_days[u]
            pos = np.zeros(len(r))
            src = cands.sources[p]
            for code in np.unique(src):
                m = src == code
                pos[m] = np.arange(m.sum())
            rows_out.append(
                np.column_stack(
                    [
                        base[j, r],
                        np.log1p(np.maximum(dec[j, r], 0)),
                        cnt,
                        np.where(days >= 0, days / max(gap, 1.0), -1.0),
                        stats.item_repeat[r],
                        np.log1p(stats.item_count[r]),
                        np.full(len(r), np.log1p(stats.n_items[u])),
                        np.full(len(r), stats.repeat_share[u]),
                        knn_s[j, r],
                        src,
                        pos,
                    ]
                ).astype(np.float32)
            )
    groups = np.asarray([len(r) for r in cands.rows])
    return (np.concatenate(rows_out) if rows_out else np.zeros((0, len(GBM_FEATURES)), np.float32)), groups


def knn_matrix(inter: Interactions, mask: np.ndarray) -> sparse.csr_matrix:
    """The shipped ``knn`` source's similarity (``schemas.serving.KNN_K``, ``KNN_POWER``)."""
    sim = KnnSimilarity(inter, mask).top_k(KNN_K)
    sim.data = sim.data**KNN_POWER
    return sim


def training_table(
    inter: Interactions,
    val: Split,
    vecs: np.ndarray,
    max_seq_len: int,
    step_days: float,
    basket_label: float = 1.0,
    new_groups: bool = False,
):
    """Candidates at every training cut before the validation cut, labelled (see the module
    docstring). ``new_groups`` adds, per point, a second group of its candidates new to the user
    labelled with the user's first new item after the cut (the next-new question), so one model
    also learns to order the list's new slots."""
    val_cut = int(val.case_time.max())
    step = int(step_days * DAY_MS)
    cuts = np.arange(val_cut - step, int(inter.ts[val.fit].min()) + step, -step)[::-1]
    xs, ys, gs = [], [], []
    for c in cuts:
        tgt = cut_targets(inter, val.protocol, int(c), val_cut)
        before = inter.ts < c
        as_of = last_event_before(inter, inter.users[tgt], before)
        pts = build_points(inter, before, before, as_of, max_seq_len, upto_event=True)
        cands = candidate_sets(pts, vecs, neighbours=item_neighbours(inter, before))
        x, g = candidate_table(inter, pts, cands, vecs, user_stats(inter, before), knn_matrix(inter, before))
        baskets = baskets_of(inter, tgt)
        for k, rows in enumerate(cands.rows):
            y = np.zeros(len(rows), dtype=np.float32)
            y[np.isin(rows, baskets[k][1:])] = basket_label
            y[rows == baskets[k][0]] = 2
            ys.append(y)
        xs.append(x)
        gs.append(g)
        if new_groups:
            first_new = dict(
                zip(
                    inter.users[cut_targets(inter, "next-new", int(c), val_cut)].tolist(),
                    inter.items[cut_targets(inter, "next-new", int(c), val_cut)].tolist(),
                )
            )
            own = x[:, FEATURE_NAMES.index("personal_recency")] > 0
            bounds = np.r_[0, np.cumsum(g)]
            for k, rows in enumerate(cands.rows):
                target = first_new.get(int(pts.users[k]))
                sel = ~own[bounds[k] : bounds[k + 1]]
                if target is None or not sel.any():
                    continue
                xs.append(x[bounds[k] : bounds[k + 1]][sel])
                ys.append((rows[sel] == target).astype(np.float32) * 2)
                gs.append(np.asarray([sel.sum()]))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(gs)


def fit(x: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int = 0):
    import lightgbm as lgb

    has_pos = np.add.reduceat(y, np.r_[0, np.cumsum(groups)[:-1]]) > 0 if len(groups) else np.zeros(0, bool)
    sel = np.repeat(has_pos, groups)  # groups without a positive teach lambdarank nothing
    model = lgb.LGBMRanker(
        objective="lambdarank",
        n_estimators=300,
        learning_rate=0.05,
        num_leaves=31,
        min_child_samples=50,
        subsample=0.8,
        subsample_freq=1,
        colsample_bytree=0.8,
        lambdarank_truncation_level=20,
        random_state=seed,
        verbose=-1,
        n_jobs=2,
    )
    model.fit(x[sel], y[sel], group=groups[has_pos])  # columns: GBM_FEATURES
    return model


def stage_lists(
    inter: Interactions,
    splits: dict[str, Split],
    vecs: np.ndarray,
    max_seq_len: int,
    scorers: dict,
    min_new_grid=MIN_NEW_GRID,
):
    """Served-list metrics of each scorer (name -> f(x table) -> scores) for each min_new."""
    main = next(iter(splits.values()))
    pts = served_points(inter, main, max_seq_len)
    before = inter.ts < int(main.case_time.max()) if main.protocol != "loo" else main.fit
    cands = candidate_sets(pts, vecs, neighbours=item_neighbours(inter, before))
    x, groups = candidate_table(inter, pts, cands, vecs, user_stats(inter, main.visible), knn_matrix(inter, before))
    bounds = np.r_[0, np.cumsum(groups)]
    own = own_items(inter, main)
    index = {p: list_index(main.case_users, main.case_time, sp) for p, sp in splits.items()}
    out = {}
    for name, score_fn in scorers.items():
        s = score_fn(x)
        per_case = [s[bounds[i] : bounds[i + 1]] for i in range(len(groups))]
        for k in min_new_grid:
            lists = served_lists(cands, None, own, ListParams(20, k), scores=per_case)
            out[(name, k)] = {
                p: {m: grade(lists, index[p], sp, inter, m) for m in sp.modes} for p, sp in splits.items()
            }
    return out


def main(argv: list[str] | None = None) -> int:
    from exporters.job import cut_spacing_days
    from exporters.production import OnnxModel

    ap = argparse.ArgumentParser(prog="python -m exporters.gbm", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", required=True, choices=["online_retail", "taobao", "movielens"])
    ap.add_argument(
        "--version-dir",
        type=Path,
        default=None,
        help="item vectors of a trained version (default: none; the ann source and taste feature are then off)",
    )
    ap.add_argument("--vecs", type=Path, default=None, help="item vectors as .npy in the data set's item order")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--basket-label", type=float, default=1.0, help="label of the target's basket mates (target: 2)")
    ap.add_argument("--new-groups", action="store_true", help="also train on next-new groups (new candidates only)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    inter = load_interactions(args.dataset)
    protocols = inter.protocols
    val = {p: make_split(inter, p, "validation") for p in protocols}
    test = {p: make_split(inter, p, "test") for p in protocols}
    if args.version_dir:
        vecs = OnnxModel(args.version_dir).catalog_vectors(inter)
    elif args.vecs:
        vecs = np.load(args.vecs).astype(np.float32)
    else:
        vecs = np.zeros((inter.n_items, 8), np.float32)
    main_val = val[protocols[0]]
    if main_val.protocol == "loo":
        raise SystemExit("leave-one-out training examples are not built here yet")
    t1 = time.perf_counter()
    x, y, g = training_table(
        inter,
        main_val,
        vecs,
        20,
        cut_spacing_days(inter.ts[main_val.fit], int(main_val.case_time.max())),
        args.basket_label,
        args.new_groups,
    )
    t2 = time.perf_counter()
    model = fit(x, y, g)
    t3 = time.perf_counter()
    print(
        f"training table {x.shape} ({g.size} groups) in {t2 - t1:.0f} s; lambdarank fit {t3 - t2:.0f} s "
        f"({x.shape[0] / max(t3 - t2, 1e-9):,.0f} rows/s)",
        flush=True,
    )
    names = list(GBM_FEATURES)
    col = {n: i for i, n in enumerate(names)}
    scorers = {
        "personal frequency": lambda x: x[:, col["log_personal_weight"]] + 1e-3 * x[:, col["log_popularity"]],
        "checkpoint-0 formula": lambda x: (
            x[:, col["log_personal_weight"]] + 0.05 * x[:, col["log_popularity"]] + 0.05 * x[:, col["embedding_sim"]]
        ),
        "item-kNN (candidates)": lambda x: x[:, col["knn"]] + 1e-3 * x[:, col["log_popularity"]],
        "LightGBM lambdarank": lambda x: model.predict(x, validate_features=False),
    }
    result = {}
    for stage, splits in (("validation", val), ("test", test)):
        res = stage_lists(inter, splits, vecs, 20, scorers)
        for (name, k), per in res.items():
            cells = "; ".join(
                f"{p} {m} NDCG@10 {x.ndcg:.4f} HR@10 {x.hr:.4f}" for p, pm in per.items() for m, x in pm.items()
            )
            print(f"{stage:10s} {name:24s} min_new={k:2d}: {cells}", flush=True)
            result[f"{stage}/{name}/min_new={k}"] = {
                p: {m: x.as_dict() for m, x in pm.items()} for p, pm in per.items()
            }
    imp = dict(zip(names, model.booster_.feature_importance("gain").round(1).tolist()))
    print("gain:", json.dumps(imp))
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"results": result, "importance": imp}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
