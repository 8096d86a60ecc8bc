"""``streamrec-retrain train`` options reach the job's configuration."""

from __future__ import annotations

import exporters.cli as cli
from exporters.train import RankerTrainConfig


def _config(monkeypatch, *extra: str):
    seen = []
    monkeypatch.setattr(cli, "_train_once", lambda cfg: seen.append(cfg) or 0)
    assert cli.main(["train", "--dataset", "movielens", "--model-root", "/nonexistent", *extra]) == 0
    return seen[0].ranker


def test_cost_options_reach_the_ranker_config(monkeypatch) -> None:
    ranker = _config(
        monkeypatch, "--examples-per-epoch", "5000", "--next-item-positions", "4", "--ranker-budget", "20m"
    )
    assert (ranker.examples_per_epoch, ranker.next_item_positions, ranker.time_budget_s) == (5000, 4, 1200.0)


def test_without_the_options_the_ranker_keeps_its_defaults(monkeypatch) -> None:
    ranker, default = _config(monkeypatch), RankerTrainConfig()
    assert (ranker.examples_per_epoch, ranker.next_item_positions, ranker.time_budget_s) == (
        default.examples_per_epoch,
        default.next_item_positions,
        default.time_budget_s,
    )
