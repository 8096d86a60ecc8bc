"""The retrain job's report: terminal tables, ``report.json`` and pictures in the version folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: the job runs headless
import matplotlib.pyplot as plt  # noqa: E402

from exporters.evaluate import Metrics, format_table  # noqa: E402

CURVES_FILE = "training_curves.png"
METRICS_FILE = "metrics.png"
REPORT_FILE = "report.json"
TABLE_FILE = "report.md"


def metrics_json(rows: dict[str, dict[str, Metrics]]) -> dict[str, dict[str, dict[str, float]]]:
    return {name: {mode: m.as_dict() for mode, m in per_mode.items()} for name, per_mode in rows.items()}


def plot_curves(
    path: Path, item_losses: list[float], epochs: list[dict[str, float]], baseline_ndcg: dict[str, float]
) -> None:
    """Item-vector loss per step, ranker loss per epoch and validation NDCG@10 per epoch (epoch
    0: before ranker training), with the validation NDCG of tuned baselines as dashed lines."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot(item_losses, color="tab:purple")
    axes[0].set(title="item vectors: contrastive loss", xlabel="step", ylabel="loss")
    xs = [e["epoch"] for e in epochs]
    trained = [e for e in epochs if e["loss"] is not None]
    axes[1].plot([e["epoch"] for e in trained], [e["loss"] for e in trained], marker="o")
    axes[1].set(title="ranker: training loss", xlabel="epoch", ylabel="cross-entropy")
    axes[2].plot(xs, [e["val_ndcg"] for e in epochs], marker="o", label="ranker")
    best = max(epochs, key=lambda e: e["val_ndcg"])
    axes[2].plot(
        [best["epoch"]],
        [best["val_ndcg"]],
        marker="*",
        markersize=14,
        color="tab:red",
        linestyle="none",
        label=f"kept: epoch {best['epoch']}",
    )
    for i, (name, value) in enumerate(sorted(baseline_ndcg.items(), key=lambda kv: -kv[1])[:3]):
        axes[2].axhline(value, linestyle="--", color=f"C{i + 1}", label=name)
    axes[2].set(title="validation NDCG@10 (full ranking)", xlabel="epoch")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_metrics(path: Path, title: str, rows: dict[str, dict[str, Metrics]], mode: str) -> None:
    """HR@10, NDCG@10 and MRR@10 of every model on the test split, one bar group per model."""
    names = list(rows)
    fig, ax = plt.subplots(figsize=(max(8, 1.4 * len(names)), 4.5))
    width = 0.27
    for j, (label, key) in enumerate((("HR@10", "hr"), ("NDCG@10", "ndcg"), ("MRR@10", "mrr"))):
        ax.bar(
            [i + (j - 1) * width for i in range(len(names))],
            [getattr(rows[n][mode], key) for n in names],
            width,
            label=label,
        )
    ax.set_xticks(range(len(names)), [n.replace(": ", ":\n").replace(" (", "\n(") for n in names], fontsize=8)
    ax.set_title(f"{title} — test, full ranking ({mode})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_report(
    folder: Path,
    report: dict[str, Any],
    title: str,
    rows: dict[str, dict[str, Metrics]],
    modes: tuple[str, ...],
    extra: list[tuple[str, dict[str, dict[str, Metrics]], tuple[str, ...]]] = (),  # type: ignore[assignment]
) -> str:
    """report.json + report.md; returns the markdown tables (also printed by the CLI): the
    trained protocol first, then ``extra`` (title, rows, modes) tables of other protocols."""
    table = "\n\n".join([format_table(title, rows, modes), *(format_table(t, r, m) for t, r, m in extra)])
    (folder / REPORT_FILE).write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    (folder / TABLE_FILE).write_text(table + "\n")
    return table
