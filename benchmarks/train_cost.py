"""Cost of the retrain job against the size of the log (issue 18): stage times, examples/s and
validation NDCG@10 of the default job on real logs, a fitted cost curve and its value at 1M events.

Runs (default settings, ``--no-publish``-like: nothing is published, versions go to a temp folder):

* online_retail, the first 25 % / 50 % / 100 % of its events by time (real events only; the
  default split by the log's own clock: the last 28 days test, the 28 before validation);
* the shared data sets with their BASELINES.md protocols (``--shared``: online_retail,
  movielens, taobao).

Each finished run is appended to ``--out`` (JSON lines) at once, so a partial run keeps its
rows; ``--fit-only`` refits and replots from that file. The fit: every stage linear in
interactions (least squares), except the ranker, whose work is examples x epochs (capped by
``RankerTrainConfig.examples_per_epoch``): its seconds per example-epoch times the examples a
1M-event log gets under the cap.

Run: ``PYTHONPATH=$PWD nice -n 5 python -m benchmarks.train_cost [--fractions 0.25 0.5 1] [--shared]``
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import re
import tempfile
import time
from pathlib import Path

import numpy as np

from exporters import registry
from exporters.dataset import SplitSpec
from exporters.job import JobConfig, load_log, run
from exporters.train import RankerTrainConfig

TARGET_EVENTS = 1_000_000
STAGES = ("data", "item_vectors", "examples", "ranker", "evaluation", "served", "export")


class _EpochLines(logging.Handler):
    """Collects the ranker's per-epoch lines (examples, examples/s)."""

    PATTERN = re.compile(r"^epoch ([\d.]+): .*\((\d+) examples, ([\d.]+) examples/s training")

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.epochs: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        m = self.PATTERN.match(record.getMessage())
        if m:
            self.epochs.append({"epoch": float(m[1]), "examples": int(m[2]), "examples_per_s": float(m[3])})


def run_one(label: str, cfg: JobConfig, dataset=None) -> dict:
    handler = _EpochLines()
    logging.getLogger("exporters.train").addHandler(handler)
    logging.getLogger("exporters.train").setLevel(logging.INFO)
    load0, t0 = os.getloadavg()[0], time.perf_counter()
    try:
        result = run(cfg, dataset=dataset)
    finally:
        logging.getLogger("exporters.train").removeHandler(handler)
    wall = time.perf_counter() - t0
    rep = result.report
    epochs = rep["training"]["epochs"]
    return {
        "run": label,
        "interactions": rep["events"]["interactions"],
        "items": registry.load_manifest(result.version_dir)["dataset"]["items"],
        "cases": rep["cases"],
        "wall_s": round(wall, 1),
        "timings_s": rep["timings_s"],
        "epochs": handler.epochs,
        "val_ndcg_initial": epochs[0]["val_ndcg"],
        "val_ndcg_best": max(e["val_ndcg"] for e in epochs),
        "best_epoch": rep["training"]["best_epoch"],
        "test_ndcg": rep["summary"]["ndcg@10"],
        "load_start": round(load0, 2),
        "load_end": round(os.getloadavg()[0], 2),
    }


def fit(rows: list[dict], cap: int | None, epochs: int) -> dict:
    """Per-stage linear fits in interactions over the size runs; the ranker by example-epochs."""
    sizes = [r for r in rows if r["run"].startswith("online_retail first")]
    if len(sizes) < 2:
        return {}
    x = np.array([r["interactions"] for r in sizes], dtype=float)
    out: dict = {"points": len(sizes), "stages": {}}
    total = 0.0
    for stage in STAGES:
        if stage == "ranker":
            continue
        y = np.array([r["timings_s"].get(stage, 0.0) for r in sizes])
        b, a = np.polyfit(x, y, 1)
        pred = float(max(a + b * TARGET_EVENTS, y.max()))
        out["stages"][stage] = {
            "intercept_s": round(a, 1),
            "s_per_1k_events": round(b * 1000, 3),
            "at_1M_s": round(pred, 0),
        }
        total += pred
    # Ranker: seconds per example-epoch (incl. validation) and examples per interaction.
    ex = np.array([max((e["examples"] for e in r["epochs"]), default=0) for r in sizes], dtype=float)
    passes = np.array([sum(e["examples"] for e in r["epochs"]) for r in sizes], dtype=float)
    rk = np.array([r["timings_s"]["ranker"] for r in sizes])
    s_per_pass = float(np.sum(rk) / max(np.sum(passes), 1))
    b, a = np.polyfit(x, ex, 1)
    examples_1m = a + b * TARGET_EVENTS
    capped = min(examples_1m, cap) if cap else examples_1m
    ranker_1m = s_per_pass * capped * epochs
    out["stages"]["ranker"] = {
        "s_per_example_epoch": round(s_per_pass, 4),
        "examples_at_1M": round(examples_1m),
        "examples_per_epoch_at_1M": round(capped),
        "epochs_max": epochs,
        "at_1M_s": round(ranker_1m, 0),
    }
    total += ranker_1m
    y = np.array([r["wall_s"] for r in sizes])
    b, a = np.polyfit(x, y, 1)
    out["wall_linear_at_1M_s"] = round(float(a + b * TARGET_EVENTS), 0)
    out["wall_by_stage_at_1M_s"] = round(total, 0)
    return out


def plot(rows: list[dict], summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted((r for r in rows if r["run"].startswith("online_retail first")), key=lambda r: r["interactions"])
    fig, ax = plt.subplots(figsize=(7, 4.2))
    x = np.array([r["interactions"] for r in sizes])
    bottom = np.zeros(len(sizes))
    for stage in STAGES:
        y = np.array([r["timings_s"].get(stage, 0.0) for r in sizes]) / 60
        ax.bar(x / 1000, y, bottom=bottom, width=25, label=stage)
        bottom += y
    others = [r for r in rows if not r["run"].startswith("online_retail first")]
    for r in others:
        ax.scatter(r["interactions"] / 1000, r["wall_s"] / 60, marker="x", color="k")
        ax.annotate(r["run"], (r["interactions"] / 1000, r["wall_s"] / 60), fontsize=7)
    if summary:
        xs = np.array([0, TARGET_EVENTS])
        ax.scatter(
            [TARGET_EVENTS / 1000],
            [summary["wall_by_stage_at_1M_s"] / 60],
            color="r",
            zorder=3,
            label=f"1M events, stage fits, 3 epochs (loaded VM): {summary['wall_by_stage_at_1M_s'] / 60:.1f} min",
        )
        ax.axhline(30, color="r", ls=":", lw=1, label="goal 30 min")
        ax.set_xlim(0, xs[-1] / 1000 * 1.05)
    ax.set_xlabel("interactions (thousands)")
    ax.set_ylabel("wall time (min)")
    ax.set_title("retrain job cost vs log size (online_retail prefixes; x = shared data sets)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=Path(os.environ.get("STREAMREC_DATA", "../shared/data")))
    p.add_argument("--fractions", type=float, nargs="*", default=[0.25, 0.5, 1.0])
    p.add_argument("--shared", nargs="*", default=[], help="shared data sets with their BASELINES.md protocols")
    p.add_argument("--out", type=Path, default=Path("benchmarks/profiles/train_cost.jsonl"))
    p.add_argument("--plot", type=Path, default=Path("benchmarks/profiles/train_cost.png"))
    p.add_argument("--fit-only", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not args.fit_only:
        full, _ = load_log(JobConfig(dataset="online_retail", data_dir=args.data_dir))
        events = sorted(full.events, key=lambda e: e.ts)
        jobs = []
        for frac in args.fractions:
            sub = copy.copy(full)
            sub.events = events[: int(round(frac * len(events)))]
            jobs.append((f"online_retail first {frac:.0%}", {"dataset": "online_retail", "split": SplitSpec()}, sub))
        jobs += [(f"{name} (BASELINES protocol)", {"dataset": name}, None) for name in args.shared]
        for label, kw, ds in jobs:
            with tempfile.TemporaryDirectory() as root:
                cfg = JobConfig(model_root=Path(root), data_dir=args.data_dir, allow_stale=True, publish=False, **kw)
                row = run_one(label, cfg, ds)
            print(json.dumps(row), flush=True)
            with args.out.open("a") as f:
                f.write(json.dumps(row) + "\n")
    rows = [json.loads(line) for line in args.out.read_text().splitlines() if line.strip()]
    cfg = RankerTrainConfig()
    summary = fit(rows, cfg.examples_per_epoch, cfg.epochs)
    print(json.dumps(summary, indent=1))
    plot(rows, summary, args.plot)
    print(f"picture: {args.plot}")


if __name__ == "__main__":
    main()
