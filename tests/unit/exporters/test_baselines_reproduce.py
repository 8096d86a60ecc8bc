"""The evaluator reproduces every row of ../shared/data/BASELINES.md (slow: ~2 minutes).

Tolerance: 0.003 on HR/NDCG/MRR/coverage ("within a few thousandths"); in practice Taobao and
MovieLens match exactly and Online Retail differs by at most one test case in two rows.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from exporters.baselines import run_baselines
from exporters.dataset import load_interactions

pytestmark = pytest.mark.slow

TOL = 0.003
SECTIONS = {
    ("online_retail", "next-line"): "## online_retail, next-line",
    ("online_retail", "next-new"): "## online_retail, next-new",
    ("taobao", "next-any"): "## Taobao sample, next-any",
    ("movielens", "loo"): "## MovieLens-100K, leave-one-out",
}


def published_rows(text: str, heading: str) -> tuple[int, dict[str, list[float]]]:
    """(test cases, {baseline name: numbers}) of one BASELINES.md table."""
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    cases = int(
        re.search(r"\(([\d,]+) (?:test cases|users)", heading + section.split("\n", 1)[0]).group(1).replace(",", "")
    )
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > 1 and re.fullmatch(r"[\d.]+", cells[1]):
            rows[cells[0]] = [float(c) for c in cells[1:]]
    return cases, rows


@pytest.fixture(scope="module")
def baselines_md(data_dir: Path) -> str:
    return (data_dir / "BASELINES.md").read_text()


@pytest.mark.parametrize("dataset", ["online_retail", "taobao", "movielens"])
def test_reproduces_published_baselines(dataset: str, baselines_md: str, data_dir: Path) -> None:
    inter = load_interactions(dataset, data_dir)
    for (name, protocol), heading in SECTIONS.items():
        if name != dataset:
            continue
        cases, expected = published_rows(baselines_md, heading)
        report = run_baselines(inter, protocol)
        got = {}
        for model, per_mode in report.test.items():
            got[model] = [
                v
                for mode in per_mode
                for v in (per_mode[mode].hr, per_mode[mode].ndcg, per_mode[mode].mrr, per_mode[mode].cov)
            ]
        assert next(iter(next(iter(report.test.values())).values())).cases == cases
        for model, numbers in expected.items():
            assert model in got, f"{dataset}/{protocol}: no row {model!r} (have {list(got)})"
            for e, g in zip(numbers, got[model], strict=True):
                assert abs(e - g) <= TOL, f"{dataset}/{protocol} {model}: {got[model]} vs {numbers}"


def test_cli_prints_the_tables(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from exporters.cli import main

    assert main(["baselines", "--dataset", "movielens", "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert "| Markov chain (last item) | 0.1453 | 0.0769 | 0.0563 | 0.512 |" in out
    assert "tuned on validation: item-kNN K=50" in out
