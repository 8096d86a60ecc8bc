"""Cost per training step of ranker objectives, side by side in one process (issue 18).

Builds a data set's training examples as the retrain job does (protocol split, examples, item
tower from the encoder's text vectors without the co-visitation fine-tuning: the tower's values do
not change a step's cost), then trains one copy of the same ranker per variant on the **same
batches**, interleaved batch by batch (variant A step 1, variant B step 1, ..., A step 2, ...), so
that the load of a shared machine falls on every variant alike. Prints milliseconds per step per
variant and their ratio to the first.

Variants (``RankerTrainConfig`` overrides):

* ``bidirectional``: the ranker before the causal objective (``causal=False``, no next-item loss);
* ``causal``: causal attention, no next-item loss;
* ``causal+next``: today's default (next-item loss over every prefix);
* ``causal+next@K``: the next-item loss on the newest ``K`` prefixes only (``next_item_positions``);
* ``causal+next, 1 thread``: today's default with ``torch.set_num_threads(1)`` during its steps
  (what each process of ``torchrun --nproc_per_node=2`` runs with), against the process's default.

Run: ``PYTHONPATH=$PWD nice -n 10 python -m benchmarks.next_item_cost --dataset movielens --steps 30``
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from exporters.bootstrap import DEFAULT_MAX_SEQ_LEN, build_models
from exporters.dataset import BUNDLED, build_interactions, make_split
from exporters.item_training import ItemTrainConfig, train_item_vectors
from exporters.job import JobConfig, _catalog_texts, cut_spacing_days, load_log
from exporters.modeling import TRAINING_INIT_FEATURE_WEIGHTS, TRAINING_INIT_TASTE
from exporters.train import NegativeSampler, RankerTrainConfig, TrainStep, train_batch
from exporters.trainset import cut_examples, event_examples

VARIANTS = {
    "bidirectional": {"causal": False, "next_item_weight": 0.0},
    "causal": {"next_item_weight": 0.0},
    "causal+next": {},
    "causal+next@4": {"next_item_positions": 4},
    "causal+next, 1 thread": {"threads": 1},
}


def build(dataset: str, data_dir: Path | None, max_seq_len: int = DEFAULT_MAX_SEQ_LEN):
    """(interactions, validation split, training examples, tower, ranker) as the job builds them."""
    ds, spec = load_log(JobConfig(dataset=dataset, data_dir=data_dir))
    inter = build_interactions(ds, spec or BUNDLED[dataset])
    protocol = inter.protocols[0]
    val = make_split(inter, protocol, "validation")
    if val.protocol == "loo":
        train = event_examples(inter, val, max_seq_len, JobConfig().max_examples_per_user)
    else:
        step_days = cut_spacing_days(inter.ts[val.fit], int(val.case_time.max()))
        train = cut_examples(inter, val, max_seq_len, step_days, step_days)
    tok, encoder, ranker = build_models(False, 2, 32, seed=0)
    ranker.reset_head(TRAINING_INIT_FEATURE_WEIGHTS, TRAINING_INIT_TASTE)
    texts, cats = _catalog_texts(inter)
    no_pairs = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    tower, _ = train_item_vectors(
        encoder, tok, texts, cats, inter.item_ids, no_pairs, ItemTrainConfig(steps=0), torch.device("cpu")
    )
    return inter, val, train, tower, ranker


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="movielens")
    p.add_argument("--data-dir", type=Path, default=Path(os.environ.get("STREAMREC_DATA", "../shared/data")))
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    args = p.parse_args()
    torch.manual_seed(0)
    inter, val, train, tower, ranker = build(args.dataset, args.data_dir)
    device = torch.device("cpu")
    base = RankerTrainConfig()
    full = inter.n_items <= base.full_softmax_max_items
    popularity = np.bincount(inter.items[val.fit], minlength=inter.n_items).astype(np.float64)
    runs = {}
    threads: dict[str, int] = {}
    for name in args.variants:
        overrides = dict(VARIANTS[name])
        threads[name] = overrides.pop("threads", torch.get_num_threads())
        cfg = dataclasses.replace(base, **overrides)
        step = TrainStep(copy.deepcopy(ranker), copy.deepcopy(tower))
        step.ranker.causal = cfg.causal
        opt = torch.optim.AdamW(step.parameters(), lr=cfg.lr_bert, fused=True)
        sampler = None if full else NegativeSampler(popularity, cfg.sampled_negatives, cfg.popularity_share)
        runs[name] = (cfg, step, opt, sampler, np.random.default_rng(0), [])
    order = np.random.default_rng(0).permutation(len(train.points))
    load0 = os.getloadavg()[0]
    vecs: dict[str, np.ndarray] = {}
    for b in range(args.steps + 1):  # batch 0 warms every variant up and is not timed
        idx = order[b * base.batch_size : (b + 1) * base.batch_size]
        for name, (cfg, step, opt, sampler, rng, times) in runs.items():
            torch.set_num_threads(threads[name])
            t0 = time.perf_counter()
            step.train()
            if full or b % cfg.tower_refresh_steps == 0:  # as fit_ranker refreshes the feature table
                with torch.no_grad():
                    vecs[name] = step.tower().float().cpu().numpy()
            train_batch(step, opt, train, idx, vecs[name], cfg, sampler, rng, device)
            if b:
                times.append(time.perf_counter() - t0)
    first = None
    out = {
        "dataset": args.dataset,
        "items": inter.n_items,
        "softmax": "full" if full else "sampled",
        "steps": args.steps,
        "batch": base.batch_size,
        "load": [round(load0, 2), round(os.getloadavg()[0], 2)],
        "torch_threads_default": max(threads.values()),
        "variants": {},
    }
    for name, (*_, times) in runs.items():
        ms = 1000 * float(np.median(times))
        first = first or ms
        out["variants"][name] = {
            "threads": threads[name],
            "ms_per_step_median": round(ms, 1),
            "ms_per_step_mean": round(1000 * float(np.mean(times)), 1),
            "examples_per_s": round(base.batch_size / (ms / 1000), 1),
            "ratio_to_first": round(ms / first, 3),
        }
    print(json.dumps(out, indent=1), flush=True)


if __name__ == "__main__":
    main()
