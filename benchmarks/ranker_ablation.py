"""What else could rank online_retail's next line? The heuristic and linear attempts of EVALUATION.md.

Prints validation and test NDCG@10 (full ranking, BASELINES.md rules, our evaluator) of:

* personal frequency and hand-made alternatives: count of invoices with the item, times it was
  the first line of an invoice, per-invoice recency decay, item repeat rate x frequency,
  user-kNN alone and blended with frequency;
* a grid over the ranker's five linear feature weights (``schemas.ranking.FEATURE_NAMES``, the
  features as the job computes them, with the item vectors of a trained version), best 8 on
  validation and their test score.

    .venv/bin/python -m benchmarks.ranker_ablation --version-dir var/models/<version>

About 3 minutes on the 2-core VM. Nothing is asserted: this is evidence for the closing note.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
from scipy import sparse

from exporters.dataset import case_histories, load_interactions, make_split
from exporters.evaluate import evaluate
from exporters.trainset import eval_points


def _ndcg(inter, split, scores: np.ndarray) -> float:
    return evaluate(lambda cases: scores[cases], inter, split)[split.modes[0]].ndcg


def heuristics(inter, split) -> dict[str, np.ndarray]:
    n, t = inter.n_items, len(split)
    out = {k: np.zeros((t, n), np.float32) for k in ("frequency", "invoices", "first line", "invoice recency 0.7")}
    for c, ev in enumerate(case_histories(inter, split)):
        if len(ev) == 0:
            continue
        items, ts, pos = inter.items[ev], inter.ts[ev], inter.pos[ev]
        np.add.at(out["frequency"][c], items, 1)
        basket = np.cumsum(np.r_[True, ts[1:] != ts[:-1]]) - 1
        nb = basket[-1] + 1
        for b in range(nb):
            m = basket == b
            uniq = np.unique(items[m])
            out["invoices"][c, uniq] += 1
            out["first line"][c, items[m][np.argmin(pos[m])]] += 1
            out["invoice recency 0.7"][c, uniq] += 0.7 ** (nb - 1 - b)
    cnt = out["frequency"]
    out["frequency + 2 x first line"] = cnt + 2 * out["first line"]
    # item repeat rate: share of the item's buyers who bought it on more than one invoice
    fit = split.fit
    key = np.unique(np.stack([inter.users[fit], inter.items[fit], inter.ts[fit]]), axis=1)
    inv = sparse.csr_matrix((np.ones(key.shape[1]), (key[0], key[1])), shape=(inter.n_users, n))
    buyers, repeaters = np.asarray((inv > 0).sum(0)).ravel(), np.asarray((inv > 1).sum(0)).ravel()
    out["frequency x repeat rate"] = cnt * ((repeaters + 1) / (buyers + 5)).astype(np.float32)
    ub = (inter.user_item_matrix(fit) > 0).astype(np.float32)
    norms = np.sqrt(np.asarray(ub.multiply(ub).sum(1)).ravel())
    un = sparse.diags(np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)) @ ub
    sims = (un[split.case_users] @ un.T).toarray()
    sims[np.arange(t), split.case_users] = 0
    k = 50
    top = np.argpartition(-sims, k, axis=1)[:, :k]
    keep = np.zeros_like(sims)
    rows = np.arange(t)[:, None]
    keep[rows, top] = sims[rows, top]
    uknn = (sparse.csr_matrix(keep) @ ub).toarray().astype(np.float32)
    out["user-kNN (50)"] = uknn
    out["frequency + 0.3 x user-kNN"] = cnt / cnt.max(1, keepdims=True).clip(1) + 0.3 * uknn / uknn.max(
        1, keepdims=True
    ).clip(1e-9)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--version-dir", type=Path, required=True, help="a trained online_retail version (its item_vecs.npy)"
    )
    ap.add_argument("--max-seq-len", type=int, default=20)
    args = ap.parse_args(argv)
    inter = load_interactions("online_retail")
    vecs = np.load(args.version_dir / "item_vecs.npy")[: inter.n_items]  # catalog rows first, in inter.item_ids order
    splits = {s: make_split(inter, "next-line", s) for s in ("validation", "test")}

    print("| scorer | validation NDCG@10 | test NDCG@10 |\n|---|---|---|")
    per_split = {s: heuristics(inter, sp) for s, sp in splits.items()}
    for name in per_split["validation"]:
        v, t = (_ndcg(inter, splits[s], per_split[s][name]) for s in ("validation", "test"))
        print(f"| {name} | {v:.4f} | {t:.4f} |", flush=True)
    del per_split

    feats = {s: eval_points(inter, sp, args.max_seq_len).features(np.arange(len(sp)), vecs) for s, sp in splits.items()}
    grid = []
    for a, b, c, d in itertools.product(
        [0, 0.1, 0.3, 1], [0, 0.05, 0.1, 0.3], [0, 0.05, 0.1, 0.3], [0, 0.05, 0.1, 0.3]
    ):
        w = np.asarray([1.0, a, b, c, d], np.float32)
        grid.append((_ndcg(inter, splits["validation"], feats["validation"] @ w), w))
    grid.sort(key=lambda x: -x[0])
    print(
        "\n| linear weights (personal, recency, covis, popularity, similarity) | validation NDCG@10 | test NDCG@10 |\n|---|---|---|"
    )
    for v, w in grid[:8]:
        print(
            f"| {', '.join(f'{x:g}' for x in w)} | {v:.4f} | {_ndcg(inter, splits['test'], feats['test'] @ w):.4f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
