"""The served-list rows of EVALUATION.md for one trained version: each way of making the list,
its parameters tuned on validation (the job's rule), graded on test.

    python -m exporters.served_rows --dataset online_retail --version-dir var/models/<version>

Rows: the ranker's score over the candidates without the ``knn`` source (the lists before it);
with the ``knn`` source, the ranker's score (``knn_weight`` 0); with the validated ``knn_weight``;
the stacked score (``exporters.stacking``, refitted here with the version's ONNX ranker, the
job's procedure) — each with its own validated ``min_new``; then each rebuy score
(``exporters.repeat.REBUY_VARIANTS``, refitted the same way) on top of the last row's validated
parameters (the job's rule). Also the candidate recall of each candidate set. The ranker is the
version's fp32 ONNX file. ``--knn-k`` / ``--knn-power``: grade
other neighbour lists than the shipped ones (``--knn-k 50 --knn-power 1``: the lists before
``KNN_POWER``).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from exporters.dataset import load_interactions, make_split
from exporters.served import (
    KNN_WEIGHT_GRID,
    SERVED_FLOOR,
    SOURCES,
    _stage,
    dense_candidate_scorer,
    item_neighbours,
    list_grid,
    pick_params,
    served_points,
)
from schemas.serving import KNN_K, KNN_POWER, ListParams


def main(argv: list[str] | None = None) -> int:
    from exporters.job import cut_spacing_days
    from exporters.production import OnnxModel
    from exporters.repeat import fit_rebuy
    from exporters.stacking import fit_stacker

    ap = argparse.ArgumentParser(prog="python -m exporters.served_rows", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", required=True, choices=["online_retail", "taobao", "movielens"])
    ap.add_argument("--version-dir", type=Path, required=True)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--knn-k", type=int, default=KNN_K, help="neighbours per item of the knn source (default: the shipped)"
    )
    ap.add_argument(
        "--knn-power", type=float, default=KNN_POWER, help="similarity = cosine ** this (default: the shipped)"
    )
    ap.add_argument(
        "--ease-weight",
        type=float,
        default=0.0,
        help="blend the neighbours with EASE's at this weight (exporters.served.NEIGHBOUR_VARIANTS; default 0: cosine only)",
    )
    args = ap.parse_args(argv)

    def neighbours(inter, events):
        return item_neighbours(inter, events, k=args.knn_k, power=args.knn_power, ease_weight=args.ease_weight)

    t0 = time.perf_counter()
    inter = load_interactions(args.dataset)
    model = OnnxModel(args.version_dir, variant="fp32")
    vecs = model.catalog_vectors(inter)
    protocols = inter.protocols
    val = {p: make_split(inter, p, "validation") for p in protocols}
    test = {p: make_split(inter, p, "test") for p in protocols}
    main_val, main_test = val[protocols[0]], test[protocols[0]]
    pts = {
        "validation": served_points(inter, main_val, model.max_seq_len),
        "test": served_points(inter, main_test, model.max_seq_len),
    }
    nbs = {"validation": neighbours(inter, main_val.fit), "test": neighbours(inter, main_test.fit)}
    splits = {"validation": val, "test": test}

    def make_scorer(points):
        return dense_candidate_scorer(model.scorer(inter, points))

    report = json.loads((args.version_dir / "report.json").read_text())
    floor = SERVED_FLOOR * float(report["summary"]["validation_ndcg@10"])  # the job's rule
    step = cut_spacing_days(inter.ts[main_val.fit], int(main_val.case_time.max()))
    t1 = time.perf_counter()
    fit = fit_stacker(inter, main_val, vecs, model.max_seq_len, step, make_scorer, neighbours=neighbours)
    fit_s = time.perf_counter() - t1
    t1 = time.perf_counter()
    rebuy_fits = fit_rebuy(inter, main_val, vecs, model.max_seq_len, step, make_scorer)
    rebuy_s = time.perf_counter() - t1
    plain = list_grid(knn_weight=(0.0,))
    variants = {
        "ranker, no knn source": (False, plain),
        "ranker + knn source": (True, plain),
        "ranker + knn source, knn_weight validated": (True, list_grid(knn_weight=KNN_WEIGHT_GRID)),
    }
    if fit is not None:
        variants["stacked score + knn source, validated"] = (
            True,
            [ListParams(q.size, q.min_new, q.knn_weight, fit.weights) for q in list_grid(knn_weight=KNN_WEIGHT_GRID)],
        )
    out = {
        "stack_fit": None
        if fit is None
        else {
            "groups": fit.groups,
            "rows": fit.rows,
            "loss": fit.loss,
            "seconds": round(fit_s, 1),
            "weights": list(fit.weights),
        },
        "rows": {},
    }
    for name, f in rebuy_fits.items():
        variants[f"rebuy score: {name}"] = (True, f.weights)  # on top of the row before's choice
    out["rebuy_fit"] = {
        name: {"groups": f.groups, "loss": f.loss, "weights": list(f.weights)} for name, f in rebuy_fits.items()
    }
    base_row = None
    for name, (with_knn, grid) in variants.items():
        if name.startswith("rebuy score"):
            grid = [replace(base_row, rebuy=grid)]
        res = {}
        for stage in ("validation", "test"):
            sp = splits[stage]
            chosen = grid if stage == "validation" else [best]  # noqa: F821 (set on validation first)
            by, recall = _stage(
                inter,
                sp,
                pts[stage],
                vecs,
                make_scorer(pts[stage]),
                chosen,
                nbs[stage] if with_knn else None,
                sources=SOURCES if with_knn else tuple(s for s in SOURCES if s != "knn"),
            )
            if stage == "validation":
                best = pick_params(
                    grid, {q: {p: by[q][p][sp[p].modes[0]].ndcg for p in sp} for q in grid}, protocols[0], floor
                )
            res[stage] = {
                "params": {"min_new": best.min_new, "knn_weight": best.knn_weight},
                "metrics": {p: {m: x.as_dict() for m, x in pm.items()} for p, pm in by[best].items()},
                "recall": recall,
            }
            cells = "; ".join(
                f"{p} {m} HR@10 {x.hr:.4f} NDCG@10 {x.ndcg:.4f}" for p, pm in by[best].items() for m, x in pm.items()
            )
            print(
                f"{stage:10s} {name:44s} min_new={best.min_new:2d} knn_weight={best.knn_weight:g}: {cells}; "
                f"recall {', '.join(f'{p} {r:.3f}' for p, r in recall.items())}",
                flush=True,
            )
        out["rows"][name] = res
        if not name.startswith("rebuy score"):
            base_row = best
    print(f"total {time.perf_counter() - t0:.0f} s (stacked score fit {fit_s:.0f} s, rebuy fit {rebuy_s:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
