"""Which neighbour lists the ``knn`` source should ship: item-kNN variants graded by full ranking.

For each K (neighbours kept per item, the item-kNN baseline's neighbours and tie rule) and power
(similarity = cosine ** power, ``schemas.serving.KNN_POWER``), the user's score of an item is the
sum of its similarities to the user's distinct items (what ``schemas.serving.ItemNeighbours``
computes in the worker), over the whole catalog, graded with the protocols' evaluator on
validation and test. Choose by the validation columns.

    python -m exporters.knn_variants --dataset online_retail [--ks 20,50] [--powers 1,2]
"""

from __future__ import annotations

import argparse

import numpy as np

from exporters.baselines import KnnSimilarity, personal_counts
from exporters.dataset import Interactions, Split, load_interactions, make_split
from exporters.evaluate import Metrics, evaluate


def knn_variant_metrics(inter: Interactions, split: Split, k: int, power: float, sim=None) -> dict[str, Metrics]:
    """Full-ranking metrics per mode of the item-kNN score with ``k`` neighbours per item and
    similarity cosine ** ``power`` (``sim``: a ``KnnSimilarity`` of ``split.fit`` to reuse)."""
    s = (sim or KnnSimilarity(inter, split.fit)).top_k(k)
    s.data = s.data**power
    hist = personal_counts(inter, split).tocsr()
    hist.data[:] = 1.0
    return evaluate(lambda cases: np.asarray((hist[cases] @ s).todense(), dtype=np.float64), inter, split)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m exporters.knn_variants", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", required=True, choices=["online_retail", "taobao", "movielens"])
    ap.add_argument("--ks", default="20,50")
    ap.add_argument("--powers", default="1,2")
    args = ap.parse_args(argv)
    inter = load_interactions(args.dataset)
    ks = [int(x) for x in args.ks.split(",")]
    powers = [float(x) for x in args.powers.split(",")]
    print("| stage | protocol | K | power | " + " | ".join(["mode HR@10 / NDCG@10"]) + " |")
    print("|---|---|---|---|---|")
    for stage in ("validation", "test"):
        for protocol in inter.protocols:
            split = make_split(inter, protocol, stage)
            sim = KnnSimilarity(inter, split.fit)
            for k in ks:
                for power in powers:
                    per = knn_variant_metrics(inter, split, k, power, sim)
                    cells = "; ".join(f"{m} {x.hr:.4f} / {x.ndcg:.4f}" for m, x in per.items())
                    print(f"| {stage} | {protocol} | {k} | {power:g} | {cells} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
