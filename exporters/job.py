"""The retrain job, end to end: data -> item vectors -> ranker -> evaluation against the
baselines and the production model -> ONNX export with parity -> versioned folder -> gate ->
``LATEST`` and the ``model-updates`` message.

Gate: the new version is published (``LATEST`` moved, message sent) only when its parity
check holds and its test NDCG@10 (protocol's first mode) is not below the production model's
by more than ``tolerance`` — or with ``force``. A version that fails the gate is still written
(for inspection: report, pictures, ONNX files) but not published.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from exporters import registry
from exporters.baselines import run_baselines
from exporters.bootstrap import DEFAULT_MAX_SEQ_LEN, TOKENIZER_FILE, build_models
from exporters.dataset import CUTS, PROTOCOLS, Interactions, build_interactions, make_split
from exporters.evaluate import Metrics, evaluate
from exporters.export import export_models
from exporters.features import covis_pairs
from exporters.item_index import ItemIndex, item_fields
from exporters.item_training import ItemTrainConfig, train_item_vectors
from exporters.modeling import BASE_MODEL_NAME, TRAINING_INIT_FEATURE_WEIGHTS, TRAINING_INIT_TASTE, base_model_info, pick_device
from exporters.production import OnnxModel, onnx_scorer, session
from exporters.publish import publish_model_update
from exporters.report import CURVES_FILE, METRICS_FILE, metrics_json, plot_curves, plot_metrics, write_report
from exporters.served import dense_candidate_scorer, served_evaluation
from exporters.train import RankerTrainConfig, TrainStep, config_dict, distributed_context, fit_ranker, model_scorer, seed_everything
from exporters.trainset import cut_examples, eval_points, event_examples
from schemas.ranking import EVENT_TYPE_IDS, FEATURE_NAMES, MODEL_FORMAT, compose_item_vector, feature_params
from schemas.serving import LIST_PARAMS_KEY

log = logging.getLogger(__name__)
MODEL_NAME = "ranker (this run)"
# Training cuts: TRAINING_CUTS cuts spread evenly over the training log's own span before the
# validation cut (at least a day apart), the first one a spacing after the log starts. One rule for
# every data set (a year of invoices gives ~27 days, nine days of clicks 1 day).
TRAINING_CUTS = 10


def cut_spacing_days(fit_ts: np.ndarray, val_cut: int) -> float:
    """Spacing of the training cuts, in whole days, from the span of the training log."""
    span_days = (val_cut - int(fit_ts.min())) / 86_400_000 if len(fit_ts) else 1.0
    return float(max(1, int(span_days / TRAINING_CUTS)))


@dataclass
class JobConfig:
    dataset: str = "online_retail"
    model_root: Path = Path("var/models")
    protocol: str | None = None  # default: the data set's first protocol
    data_dir: Path | None = None
    limit_rows: int | None = None
    tiny: bool = False
    n_layers: int = 2
    max_seq_len: int = DEFAULT_MAX_SEQ_LEN
    max_text_len: int = 32
    cut_step_days: float | None = None  # default: cut_spacing_days (the log's span / TRAINING_CUTS)
    warmup_days: float | None = None
    max_examples_per_user: int = 20
    item: ItemTrainConfig = field(default_factory=ItemTrainConfig)
    ranker: RankerTrainConfig = field(default_factory=RankerTrainConfig)
    tolerance: float = 0.002  # allowed test NDCG@10 drop vs production
    int8_tolerance: float = 0.002  # allowed validation NDCG@10 drop of the int8 ranker vs fp32
    force: bool = False
    publish: bool = True
    kafka_bootstrap: str | None = None
    kafka_topic: str = "model-updates"
    location: str | None = None
    version: str | None = None
    seed: int = 0


@dataclass
class JobResult:
    version_dir: Path
    published: bool
    gate_reason: str
    table: str
    report: dict[str, Any]


def _catalog_texts(inter: Interactions) -> tuple[list[str], list[str | None]]:
    texts, cats = [], []
    for item_id in inter.item_ids:
        meta = inter.items_meta.get(item_id)
        _, text, cat = item_fields(meta) if meta is not None else (item_id, "", None)
        texts.append(text)
        cats.append(cat)
    return texts, cats


def _best(rows: dict[str, dict[str, Metrics]], mode: str, exclude: tuple[str, ...]) -> tuple[str, Metrics]:
    name = max((n for n in rows if n not in exclude), key=lambda n: rows[n][mode].ndcg)
    return name, rows[name][mode]


def run(cfg: JobConfig, dataset: Any | None = None) -> JobResult:
    """Run the job; ``dataset`` (a ``schemas.sources.Dataset``) skips loading, for tests."""
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    rank, world = distributed_context()
    seed_everything(cfg.seed)
    device = pick_device()
    if dataset is None:
        from schemas.sources import load_dataset

        dataset = load_dataset(cfg.dataset, data_dir=cfg.data_dir, limit_rows=cfg.limit_rows)
    inter = build_interactions(dataset)
    protocol = cfg.protocol or PROTOCOLS[inter.name][0]
    val, test = make_split(inter, protocol, "validation"), make_split(inter, protocol, "test")
    mode = val.modes[0]
    timings["data"] = time.perf_counter() - t_start
    log.info("%s/%s: %d interactions, %d items; %d validation and %d test cases", inter.name, protocol, len(inter.users), inter.n_items, len(val), len(test))

    # Stage 1: item vectors.
    t0 = time.perf_counter()
    tok, encoder, ranker = build_models(cfg.tiny, cfg.n_layers, cfg.max_text_len, seed=cfg.seed)
    ranker.reset_head(TRAINING_INIT_FEATURE_WEIGHTS, TRAINING_INIT_TASTE)
    encoder.to(device)
    ranker.to(device)
    texts, cats = _catalog_texts(inter)
    src, dst, _ = covis_pairs(inter, val.fit)
    tower, item_losses = train_item_vectors(encoder, tok, texts, cats, inter.item_ids, (src, dst), cfg.item, device)
    timings["item_vectors"] = time.perf_counter() - t0

    # Stage 2: ranker.
    t0 = time.perf_counter()
    if protocol == "loo":
        train_ex = event_examples(inter, val, cfg.max_seq_len, cfg.max_examples_per_user)
    else:
        step_days = cfg.cut_step_days or cut_spacing_days(inter.ts[val.fit], int(val.case_time.max()))
        train_ex = cut_examples(inter, val, cfg.max_seq_len, step_days, cfg.warmup_days or step_days)
    val_points, test_points = eval_points(inter, val, cfg.max_seq_len), eval_points(inter, test, cfg.max_seq_len)
    timings["examples"] = time.perf_counter() - t0
    log.info("ranker examples: %d training, %d validation, %d test", len(train_ex.points), len(val_points), len(test_points))
    step = TrainStep(ranker, tower).to(device)
    root = Path(cfg.model_root)
    ckpt_dir = root / ".checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    fit = fit_ranker(step, train_ex, inter, val, val_points, cfg.ranker, device, ckpt_dir / f"{inter.name}-{protocol}.pt")
    timings["ranker"] = time.perf_counter() - t0
    if rank != 0:
        return JobResult(Path(), False, "not rank 0", "", {})

    # Evaluation on test: this model, the baselines, the production model.
    t0 = time.perf_counter()
    rows: dict[str, dict[str, Metrics]] = {}
    base = run_baselines(inter, protocol)
    rows.update(base.test)
    production = registry.read_latest(root)
    prod_name = None
    if production:
        prod = OnnxModel(root / production)
        prod_name = f"production ({production})"
        rows[prod_name] = evaluate(prod.scorer(inter, eval_points(inter, test, prod.max_seq_len)), inter, test)
    rows[MODEL_NAME] = evaluate(model_scorer(step, test_points, device), inter, test)
    # The data set's other protocols (online_retail: next-new) read out with the same model: it
    # is trained for the first protocol, but the other question matters to the product too.
    other: dict[str, tuple[Any, dict[str, dict[str, Metrics]]]] = {}
    for extra in PROTOCOLS[inter.name]:
        if extra == protocol:
            continue
        extra_test = make_split(inter, extra, "test")
        extra_rows = dict(run_baselines(inter, extra).test)
        extra_rows[MODEL_NAME] = evaluate(model_scorer(step, eval_points(inter, extra_test, cfg.max_seq_len), device), inter, extra_test)
        other[extra] = (extra_test, extra_rows)
    timings["evaluation"] = time.perf_counter() - t0

    # The lists the worker will serve (its candidates, the validated share of new items), graded as
    # served; the data set's protocols that share a cut are graded on the same lists.
    t0 = time.perf_counter()
    protocols = (protocol, *[p for p in PROTOCOLS[inter.name] if p != protocol])
    val_splits = {p: val if p == protocol else make_split(inter, p, "validation") for p in protocols}
    test_splits = {p: test if p == protocol else make_split(inter, p, "test") for p in protocols}
    step.eval()
    with torch.no_grad():
        served_vecs = step.tower().float().cpu().numpy()
    served = served_evaluation(inter, val_splits, test_splits, cfg.max_seq_len, served_vecs,
                               lambda pts: dense_candidate_scorer(model_scorer(step, pts, device)))
    served_ratio = served.test[protocol][mode].ndcg / ours_offline if (ours_offline := rows[MODEL_NAME][mode].ndcg) > 0 else 0.0
    log.info("served lists (min_new=%d): %s; served/offline NDCG@10 %.3f", served.params.min_new,
             ", ".join(f"{p} {m} {x.ndcg:.4f}" for p, per in served.test.items() for m, x in per.items()), served_ratio)
    timings["served"] = time.perf_counter() - t0

    ours = rows[MODEL_NAME][mode]
    best_name, best = _best(rows, mode, (MODEL_NAME, prod_name or ""))
    if prod_name is None:
        gate_ok, reason = True, "no production model yet"
    elif ours.ndcg >= rows[prod_name][mode].ndcg - cfg.tolerance:
        gate_ok, reason = True, f"NDCG@10 {ours.ndcg:.4f} >= production {rows[prod_name][mode].ndcg:.4f} - {cfg.tolerance}"
    else:
        gate_ok, reason = False, f"NDCG@10 {ours.ndcg:.4f} < production {rows[prod_name][mode].ndcg:.4f} - {cfg.tolerance}"
    if cfg.force and not gate_ok:
        gate_ok, reason = True, f"forced ({reason})"

    # Export and register.
    t0 = time.perf_counter()
    step.eval()
    with torch.no_grad():
        vecs = step.tower().float().cpu().numpy()
    index = _item_index(inter, dataset, vecs, step, encoder, tok, texts)
    version = cfg.version or registry.new_version_name("trained-" + inter.name.replace("_", "-"))
    title = f"{inter.name} {protocol} ({len(test)} test cases, {inter.n_items} items)"
    with registry.StagedVersion(root, version) as staged:
        result = export_models(encoder, ranker, tok, staged.path, max_seq_len=cfg.max_seq_len, item_vecs=index.vecs)
        if not result.parity["ok"]:
            gate_ok, reason = False, "parity check failed"
        if "int8" in result.variant_files:
            _check_int8(result, staged.path, inter, val, val_points, vecs, fit.best_val_ndcg, cfg.int8_tolerance)
        tok.save(str(staged.path / TOKENIZER_FILE))
        index.write(staged.path)
        epochs = [{"epoch": 0, "loss": None, "val_ndcg": fit.initial_val_ndcg, "seconds": 0.0}]
        epochs += [{"epoch": e.epoch, "loss": e.loss, "val_ndcg": e.val_ndcg, "seconds": e.seconds} for e in fit.history]
        references = {
            f"item-kNN K={base.knn_k}": base.validation[f"item-kNN K={base.knn_k}"],
            f"blend a={base.blend_a:g}": base.validation[f"blend a={base.blend_a:g}"],
            **{n: base.validation[n] for n in ("personal frequency", "Markov chain") if n in base.validation},
        }
        plot_curves(staged.path / CURVES_FILE, item_losses, epochs, references)
        plot_metrics(staged.path / METRICS_FILE, title, rows, mode)
        timings["export"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - t_start
        summary = {
            "protocol": protocol,
            "mode": mode,
            "ndcg@10": ours.ndcg,
            "hr@10": ours.hr,
            "mrr@10": ours.mrr,
            "cov": ours.cov,
            "best_baseline": {"name": best_name, "ndcg@10": best.ndcg},
            "production": None if prod_name is None else {"version": production, "ndcg@10": rows[prod_name][mode].ndcg},
            "validation_ndcg@10": fit.best_val_ndcg,
        }
        report = {
            "dataset": inter.name,
            "protocol": protocol,
            "cases": {"validation": len(val), "test": len(test)},
            "test": metrics_json(rows),
            "summary": summary,
            "training": {"epochs": epochs, "best_epoch": fit.best_epoch, "item_losses": item_losses},
            "baseline_tuning": {"knn_k": base.knn_k, "blend_a": base.blend_a, "validation_ndcg@10": base.validation},
            "gate": {"publish": gate_ok and cfg.publish, "reason": reason, "tolerance": cfg.tolerance},
            "config": config_dict(cfg.item, cfg.ranker) | {"job": _job_dict(cfg)},
            "timings_s": {k: round(v, 1) for k, v in timings.items()},
            "device": str(device),
            "world_size": world,
        }
        report["served"] = served.as_dict() | {"offline_ndcg@10": ours_offline, "served_over_offline": served_ratio}
        report["other_protocols"] = {name: {"cases": len(sp), "test": metrics_json(r)} for name, (sp, r) in other.items()}
        extra_titles = {name: f"{inter.name} {name} ({len(sp)} test cases, same model)" for name, (sp, _) in other.items()}
        served_tables = [(f"{inter.name} {p}: the served list ({served.params.size} items, at least {served.params.min_new} new; "
                          f"candidate recall {served.recall[p]:.3f})", {"served list (this run)": served.test[p]}, test_splits[p].modes)
                         for p in protocols]
        table = write_report(staged.path, report, title, rows, test.modes,
                             extra=[(extra_titles[n], r, sp.modes) for n, (sp, r) in other.items()] + served_tables)
        _, val_cut = CUTS.get(inter.name, (0, 0))
        fit_ts = inter.ts[val.fit]
        manifest = {
            "format": MODEL_FORMAT,
            "kind": "trained",
            "created_at": registry.utc_now_iso(),
            "base_model": BASE_MODEL_NAME,
            "base_model_source": base_model_info() | {"tiny_random": cfg.tiny},
            "dim": encoder.dim,
            "max_seq_len": cfg.max_seq_len,
            "max_text_len": cfg.max_text_len,
            "features": list(FEATURE_NAMES),
            "feature_params": feature_params(),
            "event_type_ids": dict(EVENT_TYPE_IDS),
            "ranker_variants": result.ranker_variants,
            "ranker_variant_files": result.variant_files,
            "fused_ops": result.fused_ops,
            "metrics": {protocol: summary},
            "parity": result.parity,
            "dataset": {"name": inter.name, "interactions": int(len(inter.users)), "items": inter.n_items, "users": inter.n_users},
            "training_window": {"start": int(fit_ts.min()), "end": int(val_cut or fit_ts.max())},
            "ranker": {"n_layers": cfg.n_layers, "best_epoch": fit.best_epoch},
            "item_index": {"items": len(index.item_ids), "with_text": index.with_text},
            "tokenizer": {"file": TOKENIZER_FILE, "truncation": cfg.max_text_len, "padding": "batch_longest"},
            "gate": report["gate"],
            LIST_PARAMS_KEY: {"size": served.params.size, "min_new": served.params.min_new},
        }
        final = staged.commit(manifest, publish=gate_ok and cfg.publish)
    published = gate_ok and cfg.publish
    if gate_ok and not cfg.publish:
        reason += "; publishing disabled"
    log.info("version %s written (%s); %s", final, "published" if published else "NOT published", reason)
    if published and cfg.kafka_bootstrap:
        update = publish_model_update(cfg.kafka_bootstrap, final, cfg.kafka_topic, location=cfg.location)
        log.info("announced %s on %s", update.version, cfg.kafka_topic)
    return JobResult(final, published, reason, table, report)


def _check_int8(result, folder: Path, inter: Interactions, val, val_points, vecs: np.ndarray, fp32_ndcg: float, tolerance: float) -> None:
    """Ship the int8 ranker only if its validation NDCG@10 holds (workers prefer it on CPU)."""
    scorer = onnx_scorer(session(folder / result.variant_files["int8"]), vecs, val_points)
    ndcg = evaluate(scorer, inter, val)[val.modes[0]].ndcg
    ok = ndcg >= fp32_ndcg - tolerance
    result.parity["ranker_int8"].update({"validation_ndcg@10": ndcg, "fp32_validation_ndcg@10": fp32_ndcg, "metric_tolerance": tolerance, "ok": ok})
    if not ok:
        (folder / result.variant_files.pop("int8")).unlink()
        result.ranker_variants.remove("int8")
    log.info("int8 ranker: validation NDCG@10 %.4f vs fp32 %.4f -> %s", ndcg, fp32_ndcg, "shipped" if ok else "dropped")


def _job_dict(cfg: JobConfig) -> dict[str, Any]:
    skip = {"item", "ranker"}
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(cfg).items() if k not in skip}


def _item_index(inter: Interactions, dataset: Any, vecs: np.ndarray, step: TrainStep, encoder, tok, texts: list[str]) -> ItemIndex:
    """Catalog index: the trained vectors of every interacted item, plus the data set's other
    catalog items (never interacted) composed from text and category as a worker would."""
    from exporters.text import encode_texts

    cat_vecs = step.tower.category_vectors()
    extra = [it for item_id, it in sorted(dataset.items.items()) if item_id not in set(inter.item_ids)]
    ids, rows = list(inter.item_ids), [vecs]
    with_text = sum(1 for t in texts if t)
    if extra:
        fields = [item_fields(it) for it in extra]
        extra_texts = [t for _, t, _ in fields if t]
        enc = iter(encode_texts(encoder, tok, extra_texts)) if extra_texts else iter(())
        extra_vecs = []
        for item_id, text, cat in fields:
            v = compose_item_vector(next(enc) if text else None, cat_vecs.get(cat) if cat else None)
            if v is not None:
                ids.append(item_id)
                extra_vecs.append(v)
                with_text += bool(text)
        if extra_vecs:
            rows.append(np.stack(extra_vecs))
    return ItemIndex(ids, np.concatenate(rows).astype(np.float32), cat_vecs, with_text=with_text)
