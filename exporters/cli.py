"""``streamrec-retrain``: the retrain job and its tools.

    streamrec-retrain baselines --dataset online_retail [--protocol next-new]
    streamrec-retrain train --dataset online_retail --model-root var/models [--kafka localhost:9092] [--force]
    streamrec-retrain announce --model-root var/models [--version V] --kafka localhost:9092
    streamrec-retrain evaluate-served --dataset online_retail --model-root var/models [--users 200]

``train`` with several GPUs: ``torchrun --nproc_per_node=G -m exporters.cli train ...``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from exporters.logs import setup_logging

log = logging.getLogger("exporters.cli")


def _baselines(args: argparse.Namespace) -> int:
    from exporters.baselines import run_baselines
    from exporters.dataset import PROTOCOLS, load_interactions, make_split
    from exporters.evaluate import format_table

    t0 = time.perf_counter()
    inter = load_interactions(args.dataset, args.data_dir)
    protocols = [args.protocol] if args.protocol else list(PROTOCOLS[args.dataset])
    out = {}
    for protocol in protocols:
        report = run_baselines(inter, protocol)
        test = make_split(inter, protocol, "test")
        print(format_table(f"{args.dataset}, {protocol} ({len(test)} test cases, {inter.n_items} items)", report.test, test.modes))
        print(f"(tuned on validation: item-kNN K={report.knn_k}, blend a={report.blend_a:g})\n")
        out[protocol] = {name: {m: x.as_dict() for m, x in per.items()} for name, per in report.test.items()}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    log.info("baselines done in %.0fs", time.perf_counter() - t0)
    return 0


def _train(args: argparse.Namespace) -> int:
    from exporters.item_training import ItemTrainConfig
    from exporters.job import JobConfig, run
    from exporters.train import RankerTrainConfig

    cfg = JobConfig(
        dataset=args.dataset,
        model_root=args.model_root,
        protocol=args.protocol,
        data_dir=args.data_dir,
        tiny=args.tiny,
        n_layers=args.layers,
        max_seq_len=args.max_seq_len,
        cut_step_days=args.cut_step_days,
        item=ItemTrainConfig(text_layers=args.text_layers, steps=args.item_steps, seed=args.seed),
        ranker=RankerTrainConfig(
            epochs=args.epochs, patience=args.patience, batch_size=args.batch_size, seed=args.seed,
            **{k: v for k, v in (("lr_bert", args.lr_bert), ("lr_head", args.lr_head), ("lr_items", args.lr_items),
                                 ("aux_target_weight", args.aux_weight), ("val_every", args.val_every), ("head_k", args.head_k)) if v is not None},
        ),
        tolerance=args.tolerance,
        force=args.force,
        publish=not args.no_publish,
        kafka_bootstrap=args.kafka,
        kafka_topic=args.topic,
        location=args.location,
        version=args.version,
        seed=args.seed,
    )
    result = run(cfg)
    if not result.table:  # a non-zero rank of a distributed run
        return 0
    print(result.table)
    print(f"\nversion: {result.version_dir}\npublished: {result.published} ({result.gate_reason})")
    return 0


def _announce(args: argparse.Namespace) -> int:
    from exporters.publish import publish_model_update
    from exporters.registry import read_latest, verify_version

    version = args.version or read_latest(args.model_root)
    if version is None:
        print("nothing published yet", file=sys.stderr)
        return 1
    folder = args.model_root / version
    problems = verify_version(folder)
    if problems:
        print(f"refusing to announce {version}: {problems}", file=sys.stderr)
        return 1
    update = publish_model_update(args.kafka, folder, args.topic, location=args.location)
    print(json.dumps(update.to_dict()))
    return 0


# ---- evaluate-served (issue 14): grade what a real worker publishes -----------------------------
def _evaluate_served(args: argparse.Namespace) -> int:
    from exporters import registry
    from exporters.dataset import PROTOCOLS, load_interactions
    from exporters.evaluate import format_table
    from exporters.served import evaluate_served_replay

    version = args.version or registry.read_latest(args.model_root)
    if not version:
        print(f"streamrec-retrain evaluate-served: no version in {args.model_root} (no LATEST): pass --version", file=sys.stderr)
        return 2
    inter = load_interactions(args.dataset, args.data_dir)
    protocols = tuple(PROTOCOLS[args.dataset])
    res = evaluate_served_replay(inter, protocols, args.model_root / version, users=args.users, exact=not args.batched,
                                 timeout=args.timeout, ranker_variant=args.ranker_variant)
    for p in protocols:
        rows = {"served by the worker": res.served[p], "offline, same lists rule": res.offline[p]}
        print(format_table(f"{args.dataset} {p}: {res.served[p][next(iter(res.served[p]))].cases} cases, version {res.version}", rows,
                           tuple(res.served[p])))
    print(f"identical lists: {res.identical_lists:.3f}; {res.events} events replayed in {res.seconds:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(res.as_dict(), indent=2))
    return 0


def _add_evaluate_served(sub) -> None:
    e = sub.add_parser("evaluate-served", help="replay the test period through a real worker (embedded stack) and grade its published lists")
    e.add_argument("--dataset", required=True, choices=["online_retail", "taobao", "movielens"])
    e.add_argument("--model-root", type=Path, required=True)
    e.add_argument("--version", default=None, help="default: LATEST")
    e.add_argument("--data-dir", type=Path, default=None)
    e.add_argument("--users", type=int, default=None, help="replay only the first N test users' events (default: all)")
    e.add_argument("--batched", action="store_true", help="the worker's usual micro-batches (default: one event per batch, exact)")
    e.add_argument("--ranker-variant", default=None, choices=("fp32", "int8"), help="default: what a CPU worker runs")
    e.add_argument("--timeout", type=float, default=1800.0)
    e.add_argument("--json", default=None, help="also write the result as JSON here")
    e.set_defaults(func=_evaluate_served)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="streamrec-retrain", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="also the libraries' INFO logs")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("baselines", help="classical baselines, full ranking (BASELINES.md protocols)")
    b.add_argument("--dataset", required=True, choices=["online_retail", "taobao", "movielens"])
    b.add_argument("--protocol", default=None)
    b.add_argument("--data-dir", type=Path, default=None)
    b.add_argument("--json", default=None, help="also write the tables as JSON here")
    b.set_defaults(func=_baselines)

    t = sub.add_parser("train", help="fine-tune, evaluate, export, gate and publish a new version")
    t.add_argument("--dataset", default="online_retail", choices=["online_retail", "taobao", "movielens"])
    t.add_argument("--model-root", type=Path, default=Path("var/models"))
    t.add_argument("--protocol", default=None)
    t.add_argument("--data-dir", type=Path, default=None)
    t.add_argument("--tiny", action="store_true", help="tiny random BERTs (smoke tests)")
    t.add_argument("--layers", type=int, default=2, help="pretrained layers in the ranker")
    t.add_argument("--max-seq-len", type=int, default=20)
    t.add_argument("--text-layers", type=int, default=1, help="top item-encoder layers fine-tuned")
    t.add_argument("--item-steps", type=int, default=60)
    t.add_argument("--cut-step-days", type=float, default=None, help="spacing of the training cuts (default per data set)")
    t.add_argument("--epochs", type=int, default=3)
    t.add_argument("--patience", type=int, default=1)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--lr-bert", type=float, default=None, help="(default: RankerTrainConfig) learning rate of the ranker's BERT layers")
    t.add_argument("--lr-head", type=float, default=None, help="(default: RankerTrainConfig) learning rate of the scoring head")
    t.add_argument("--lr-items", type=float, default=None, help="(default: RankerTrainConfig) learning rate of item vectors (0 freezes them)")
    t.add_argument("--head-k", type=int, default=None,
                   help="softmax over each example's current top K items plus its targets (default 0: the whole catalog)")
    t.add_argument("--val-every", type=int, default=None, help="also validate every N steps inside an epoch (default: epoch ends)")
    t.add_argument("--aux-weight", type=float, default=None,
                   help="loss weight of the target's basket mates (the target has 1; 0 trains on the target alone)")
    t.add_argument("--tolerance", type=float, default=0.002, help="allowed NDCG@10 drop vs production")
    t.add_argument("--force", action="store_true", help="publish even if worse than production")
    t.add_argument("--no-publish", action="store_true", help="write the version, leave LATEST alone")
    t.add_argument("--kafka", default=None, help="bootstrap servers: announce on the model-updates topic")
    t.add_argument("--topic", default="model-updates")
    t.add_argument("--location", default=None, help="version location as workers see it (default: local path)")
    t.add_argument("--version", default=None)
    t.set_defaults(func=_train)

    a = sub.add_parser("announce", help="send the model-updates message for a published version")
    a.add_argument("--model-root", type=Path, required=True)
    a.add_argument("--version", default=None, help="default: LATEST")
    a.add_argument("--kafka", required=True)
    a.add_argument("--topic", default="model-updates")
    a.add_argument("--location", default=None)
    a.set_defaults(func=_announce)

    _add_evaluate_served(sub)

    args = p.parse_args(argv)
    setup_logging(args.verbose)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
