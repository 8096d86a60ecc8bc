"""``streamrec-retrain``: the retrain job and its tools.

    streamrec-retrain train --source kafka://HOST:PORT --model-root var/models [--kafka HOST:PORT]
    streamrec-retrain train --source var/archive --model-root var/models --every 6h --window-days 180
    streamrec-retrain train --dataset online_retail --model-root var/models [--force]
    streamrec-retrain baselines --source kafka://HOST:PORT | --dataset online_retail [--protocol next-new]
    streamrec-retrain announce --model-root var/models [--version V] --kafka localhost:9092
    streamrec-retrain evaluate-served --dataset online_retail --model-root var/models [--users 200]

Data: ``--source`` reads a deployment's own events (``kafka://`` topics, or the folder that
``streamrec-archive`` writes); ``--dataset`` loads a bundled file as contract events with the
BASELINES.md protocol parameters (``exporters.dataset.BUNDLED``) and goes through the same path.
Protocol for any log: ``--split time`` (default: test = the last ``--test-days``, validation the
``--val-days`` before, by the log's own clock; or ``--test-cut``/``--val-cut`` dates) or
``--split loo`` (leave-one-out).

Exit status: 0 done (published or kept unpublished by the gate), 3 refused (log too small or
too stale: no version written, the refusal recorded in ``<model-root>/runs.jsonl``).

``train`` with several GPUs: ``torchrun --nproc_per_node=G -m exporters.cli train ...``; on CPU the same
with gloo (``--nproc_per_node=2`` on 2 cores). ``--batch-size`` is the global batch.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from pathlib import Path

from exporters.logs import setup_logging

log = logging.getLogger("exporters.cli")
EXIT_REFUSED = 3
DATASETS = ["online_retail", "taobao", "movielens"]


def parse_duration(text: str) -> float:
    """``6h``, ``30m``, ``1d``, ``90s`` or plain seconds -> seconds (> 0)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not m or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 6h, 30m, 1d, 90s)")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def _time(text: str) -> int:
    from exporters.dataset import parse_time

    try:
        return parse_time(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _source(text: str) -> str:
    if text.startswith("kafka://"):
        if not text[len("kafka://") :].strip():
            raise argparse.ArgumentTypeError("kafka:// needs HOST:PORT")
        return text
    if "://" in text:
        raise argparse.ArgumentTypeError(f"{text!r}: use kafka://HOST:PORT[,HOST:PORT] or an archive folder")
    return text


def _add_data_args(p: argparse.ArgumentParser) -> None:
    """Where the events come from and how they are split: the same for train and baselines."""
    g = p.add_argument_group("data (one of --source or --dataset)")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--source",
        type=_source,
        default=None,
        help="kafka://HOST:PORT[,HOST:PORT] (topics and security from the worker's settings) or an archive folder",
    )
    src.add_argument(
        "--dataset", default=None, choices=DATASETS, help="a bundled data set, with BASELINES.md's protocol parameters"
    )
    g.add_argument("--data-dir", type=Path, default=None, help="(--dataset) the shared data folder")
    g.add_argument(
        "--since", type=_time, default=None, help="(--source) events at or after this time (date, ISO time or epoch ms)"
    )
    g.add_argument("--until", type=_time, default=None, help="(--source) events before this time")
    g.add_argument(
        "--window-days",
        type=float,
        default=None,
        help="keep only the last N days of the log, by its own clock (default: all)",
    )
    g.add_argument(
        "--split",
        choices=["time", "loo"],
        default=None,
        help="time split by the log's clock (default) or leave-one-out",
    )
    g.add_argument(
        "--test-days",
        type=float,
        default=None,
        help="time split: the test period is the log's last N days (default 28)",
    )
    g.add_argument(
        "--val-days",
        type=float,
        default=None,
        help="time split: validation is the N days before the test period (default 28)",
    )
    g.add_argument("--test-cut", type=_time, default=None, help="time split: explicit test cut (replaces --test-days)")
    g.add_argument(
        "--val-cut", type=_time, default=None, help="time split: explicit validation cut (replaces --val-days)"
    )
    g.add_argument("--protocol", default=None, help="next-item (default), next-new, or loo (with --split loo)")


def _split_spec(args: argparse.Namespace):
    """The SplitSpec the options ask for, or None (the source's default / the data set's BUNDLED)."""
    from exporters.dataset import SplitSpec

    given = {
        k: getattr(args, k)
        for k in ("split", "test_days", "val_days", "test_cut", "val_cut")
        if getattr(args, k) is not None
    }
    return SplitSpec(**given) if given else None


def _log_and_split(args: argparse.Namespace):
    """(Interactions, their split) through the job's one data path."""
    from exporters.dataset import build_interactions
    from exporters.job import JobConfig, _window, load_log

    cfg = JobConfig(
        dataset=args.dataset or "online_retail",
        source=args.source,
        data_dir=args.data_dir,
        since_ms=args.since,
        until_ms=args.until,
        split=_split_spec(args),
    )
    dataset, spec = load_log(cfg)
    dataset, _ = _window(dataset, args.window_days)
    return build_interactions(dataset, spec)


def _baselines(args: argparse.Namespace) -> int:
    from exporters.baselines import run_baselines
    from exporters.dataset import make_split
    from exporters.evaluate import format_table

    t0 = time.perf_counter()
    inter = _log_and_split(args)
    protocols = [args.protocol] if args.protocol else list(inter.protocols)
    out = {}
    for protocol in protocols:
        report = run_baselines(inter, protocol)
        test = make_split(inter, protocol, "test")
        print(
            format_table(
                f"{inter.name}, {test.protocol} ({len(test)} test cases, {inter.n_items} items)",
                report.test,
                test.modes,
            )
        )
        print(f"(tuned on validation: item-kNN K={report.knn_k}, blend a={report.blend_a:g})\n")
        out[protocol] = {name: {m: x.as_dict() for m, x in per.items()} for name, per in report.test.items()}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    log.info("baselines done in %.0fs", time.perf_counter() - t0)
    return 0


def _share(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"a share of users between 0 and 1, e.g. 0.1, got {text!r}")
    return v


def _train(args: argparse.Namespace) -> int:
    from exporters.item_training import ItemTrainConfig
    from exporters.job import JobConfig
    from exporters.train import RankerTrainConfig

    cfg = JobConfig(
        dataset=args.dataset or "online_retail",
        source=args.source,
        since_ms=args.since,
        until_ms=args.until,
        window_days=args.window_days,
        split=_split_spec(args),
        min_test_cases=args.min_test_cases,
        allow_stale=args.allow_stale,
        warmup_days=args.warmup_days,
        model_root=args.model_root,
        protocol=args.protocol,
        data_dir=args.data_dir,
        tiny=args.tiny,
        n_layers=args.layers,
        max_seq_len=args.max_seq_len,
        cut_step_days=args.cut_step_days,
        try_ease=args.try_ease,
        item=ItemTrainConfig(text_layers=args.text_layers, steps=args.item_steps, seed=args.seed),
        ranker=RankerTrainConfig(
            epochs=args.epochs,
            patience=args.patience,
            batch_size=args.batch_size,
            seed=args.seed,
            **{
                k: v
                for k, v in (
                    ("lr_bert", args.lr_bert),
                    ("lr_head", args.lr_head),
                    ("lr_items", args.lr_items),
                    ("aux_target_weight", args.aux_weight),
                    ("val_every", args.val_every),
                    ("head_k", args.head_k),
                    ("next_item_weight", 0.0 if args.bidirectional else args.next_item_weight),
                    ("next_item_positions", args.next_item_positions),
                    ("examples_per_epoch", args.examples_per_epoch),
                    ("time_budget_s", args.ranker_budget),
                    ("causal", False if args.bidirectional else None),
                )
                if v is not None
            },
        ),
        tolerance=args.tolerance,
        force=args.force,
        publish=not args.no_publish,
        canary=args.canary,
        redis_url=args.redis_url,
        redis_meta_prefix=args.redis_prefix,
        kafka_bootstrap=args.kafka,
        kafka_topic=args.topic,
        location=args.location,
        version=args.version,
        seed=args.seed,
    )
    if args.every is None:
        return _train_once(cfg)
    return _train_every(cfg, args.every, args.runs)


def _train_once(cfg) -> int:
    from exporters.job import Refusal, run
    from exporters.logsource import LogSourceError
    from schemas.archive import ArchiveError
    from schemas.kafka_settings import SettingsError

    try:
        result = run(cfg)
    except Refusal as e:
        print(f"streamrec-retrain: refused: {e}", file=sys.stderr, flush=True)
        return EXIT_REFUSED
    except (LogSourceError, ArchiveError, SettingsError) as e:
        print(f"streamrec-retrain: cannot read {cfg.source}: {e}", file=sys.stderr, flush=True)
        return 2
    if not result.table:  # a non-zero rank of a distributed run
        return 0
    print(result.table)
    print(f"\nversion: {result.version_dir}\npublished: {result.published} ({result.gate_reason})", flush=True)
    return 0


def _train_every(cfg, every_s: float, runs: int | None) -> int:
    """Continuous retraining: a run every ``every_s`` seconds (start to start), each on a fresh
    read of the source; a refusal is logged and recorded and the loop goes on. ``runs`` bounds
    the number of runs (default: until stopped)."""
    n, code = 0, 0
    while True:
        t0 = time.monotonic()
        code = _train_once(cfg)
        n += 1
        if runs is not None and n >= runs:
            return code
        wait = max(0.0, every_s - (time.monotonic() - t0))
        log.info("run %d done (exit %d); next run in %.0fs", n, code, wait)
        time.sleep(wait)


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
    from exporters.dataset import load_interactions
    from exporters.evaluate import format_table
    from exporters.served import evaluate_served_replay

    version = args.version or registry.read_latest(args.model_root)
    if not version:
        print(
            f"streamrec-retrain evaluate-served: no version in {args.model_root} (no LATEST): pass --version",
            file=sys.stderr,
        )
        return 2
    inter = load_interactions(args.dataset, args.data_dir)
    protocols = tuple(inter.protocols)
    res = evaluate_served_replay(
        inter,
        protocols,
        args.model_root / version,
        users=args.users,
        exact=not args.batched,
        timeout=args.timeout,
        ranker_variant=args.ranker_variant,
    )
    for p in protocols:
        rows = {"served by the worker": res.served[p], "offline, same lists rule": res.offline[p]}
        print(
            format_table(
                f"{args.dataset} {p}: {res.served[p][next(iter(res.served[p]))].cases} cases, version {res.version}",
                rows,
                tuple(res.served[p]),
            )
        )
    print(f"identical lists: {res.identical_lists:.3f}; {res.events} events replayed in {res.seconds:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(res.as_dict(), indent=2))
    return 0


def _add_evaluate_served(sub) -> None:
    e = sub.add_parser(
        "evaluate-served",
        help="replay the test period through a real worker (embedded stack) and grade its published lists",
    )
    e.add_argument("--dataset", required=True, choices=["online_retail", "taobao", "movielens"])
    e.add_argument("--model-root", type=Path, required=True)
    e.add_argument("--version", default=None, help="default: LATEST")
    e.add_argument("--data-dir", type=Path, default=None)
    e.add_argument("--users", type=int, default=None, help="replay only the first N test users' events (default: all)")
    e.add_argument(
        "--batched", action="store_true", help="the worker's usual micro-batches (default: one event per batch, exact)"
    )
    e.add_argument("--ranker-variant", default=None, choices=("fp32", "int8"), help="default: what a CPU worker runs")
    e.add_argument("--timeout", type=float, default=1800.0)
    e.add_argument("--json", default=None, help="also write the result as JSON here")
    e.set_defaults(func=_evaluate_served)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="streamrec-retrain", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("-v", "--verbose", action="store_true", help="also the libraries' INFO logs")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("baselines", help="classical baselines, full ranking (the job's protocol)")
    _add_data_args(b)
    b.add_argument("--json", default=None, help="also write the tables as JSON here")
    b.set_defaults(func=_baselines)

    t = sub.add_parser("train", help="fine-tune, evaluate, export, gate and publish a new version")
    _add_data_args(t)
    t.add_argument("--model-root", type=Path, default=Path("var/models"))
    t.add_argument("--min-test-cases", type=int, default=50, help="refuse a log with fewer validation or test cases")
    t.add_argument(
        "--allow-stale", action="store_true", help="train even if the log has nothing newer than the last run's window"
    )
    t.add_argument(
        "--every",
        type=parse_duration,
        default=None,
        help="continuous retraining: run every 6h / 30m / 1d (start to start)",
    )
    t.add_argument("--runs", type=int, default=None, help="with --every: stop after N runs (default: never)")
    t.add_argument("--tiny", action="store_true", help="tiny random BERTs (smoke tests)")
    t.add_argument("--layers", type=int, default=2, help="pretrained layers in the ranker")
    t.add_argument("--max-seq-len", type=int, default=20)
    t.add_argument("--text-layers", type=int, default=1, help="top item-encoder layers fine-tuned")
    t.add_argument("--item-steps", type=int, default=60)
    t.add_argument(
        "--try-ease",
        action="store_true",
        help="also try cosine² + EASE neighbours for the knn source; validation picks (2x the served-list stages)",
    )
    t.add_argument(
        "--cut-step-days",
        type=float,
        default=None,
        help="spacing of the training cuts (default: the validation period's length)",
    )
    t.add_argument(
        "--warmup-days",
        type=float,
        default=None,
        help="history before the first training cut (default: the cut spacing)",
    )
    t.add_argument("--epochs", type=int, default=3)
    t.add_argument("--patience", type=int, default=1)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument(
        "--lr-bert",
        type=float,
        default=None,
        help="(default: RankerTrainConfig) learning rate of the ranker's BERT layers",
    )
    t.add_argument(
        "--lr-head", type=float, default=None, help="(default: RankerTrainConfig) learning rate of the scoring head"
    )
    t.add_argument(
        "--lr-items",
        type=float,
        default=None,
        help="(default: RankerTrainConfig) learning rate of item vectors (0 freezes them)",
    )
    t.add_argument(
        "--head-k",
        type=int,
        default=None,
        help="softmax over each example's current top K items plus its targets (default 0: the whole catalog)",
    )
    t.add_argument(
        "--val-every", type=int, default=None, help="also validate every N steps inside an epoch (default: epoch ends)"
    )
    t.add_argument(
        "--aux-weight",
        type=float,
        default=None,
        help="loss weight of the target's basket mates (the target has 1; 0 trains on the target alone)",
    )
    t.add_argument(
        "--next-item-weight",
        type=float,
        default=None,
        help="(default: RankerTrainConfig) weight of the causal next-item loss over every prefix of the sequence; 0: off",
    )
    t.add_argument(
        "--next-item-positions",
        type=int,
        default=None,
        help="(default: RankerTrainConfig) next-item loss on the newest N prefixes of each sequence only",
    )
    t.add_argument(
        "--examples-per-epoch",
        type=int,
        default=None,
        help="(default: RankerTrainConfig) at most N training examples per epoch (a fresh seeded sample each epoch)",
    )
    t.add_argument(
        "--ranker-budget",
        type=parse_duration,
        default=None,
        metavar="DURATION",
        help="hard bound on the ranker's training wall time (e.g. 20m): it stops after the step that crosses it, "
        "validates that point and keeps the best checkpoint (default: none; the work is bounded by "
        "epochs x examples per epoch)",
    )
    t.add_argument(
        "--bidirectional",
        action="store_true",
        help="bidirectional attention in the ranker (the ranker before issue 14's causal one); turns the next-item loss off",
    )
    t.add_argument("--tolerance", type=float, default=0.002, help="allowed NDCG@10 drop vs production")
    t.add_argument("--force", action="store_true", help="publish even if worse than production")
    t.add_argument("--no-publish", action="store_true", help="write the version, leave LATEST alone")
    t.add_argument(
        "--canary",
        type=_share,
        default=None,
        metavar="SHARE",
        help="instead of publishing: serve the new version to this share of users (streamrec-rollout canary); "
        "promote or roll back with streamrec-rollout",
    )
    t.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0",
        help="(--canary) the workers' Redis",
    )
    t.add_argument(
        "--redis-prefix",
        default=os.environ.get("STREAMREC_REDIS_META_PREFIX", "streamrec:"),
        help="(--canary) the workers' STREAMREC_REDIS_META_PREFIX",
    )
    t.add_argument("--kafka", default=None, help="bootstrap servers: announce on the model-updates topic")
    t.add_argument(
        "--topic",
        default=os.environ.get("STREAMREC_MODEL_UPDATES_TOPIC", "model-updates"),
        help="model-updates topic (default: $STREAMREC_MODEL_UPDATES_TOPIC or model-updates)",
    )
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
