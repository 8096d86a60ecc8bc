"""exporters.knn_variants: the neighbour-list variants graded like the item-kNN baseline, and the
shipped variant scored as the worker's ``ItemNeighbours`` scores it."""

from __future__ import annotations

import numpy as np

from exporters.baselines import KnnSimilarity, fit_item_knn, personal_counts
from exporters.evaluate import evaluate
from exporters.knn_variants import knn_variant_metrics, main
from exporters.served import item_neighbours
from schemas.serving import KNN_K, KNN_POWER
from tests.unit.exporters.test_served import setup


def test_power_one_is_the_item_knn_baseline():
    inter, line, new, _points = setup()
    for split in (line, new):
        base = evaluate(fit_item_knn(inter, split, 3), inter, split)
        ours = knn_variant_metrics(inter, split, 3, 1.0)
        assert {m: x.as_dict() for m, x in ours.items()} == {m: x.as_dict() for m, x in base.items()}


def test_the_shipped_variant_is_what_the_worker_sums():
    inter, line, _new, _points = setup()
    nb = item_neighbours(inter, line.fit)  # the version's arrays: KNN_K per item, cosine ** KNN_POWER
    sim = KnnSimilarity(inter, line.fit).top_k(KNN_K)
    sim.data = sim.data**KNN_POWER
    hist = personal_counts(inter, line).tocsr()
    for c in range(len(line)):
        own = hist[c].indices
        rows, score, _anchor = nb.aggregate(own)
        full = np.asarray((hist[c].sign() @ sim).todense()).ravel()
        assert np.allclose(full[rows], score) and np.allclose(np.delete(full, rows), 0.0)
    # a higher power changes the scores, not which items are neighbours
    flat = item_neighbours(inter, line.fit, power=1.0)
    assert np.array_equal(flat.rows, nb.rows) and np.allclose(flat.sims**KNN_POWER, nb.sims)


def test_command_prints_one_row_per_variant(monkeypatch, capsys):
    inter, *_ = setup()
    monkeypatch.setattr("exporters.knn_variants.load_interactions", lambda name: inter)
    assert main(["--dataset", "online_retail", "--ks", "2,3", "--powers", "1,2"]) == 0
    rows = [
        line
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("| validation") or line.startswith("| test")
    ]
    assert len(rows) == 2 * len(inter.protocols) * 2 * 2
