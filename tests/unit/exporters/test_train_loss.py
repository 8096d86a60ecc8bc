"""The ranker's training loss: the head-only softmax (``--head-k``), the sampled softmax with logQ correction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from exporters.train import NegativeSampler, _loss, head_mask


def test_head_mask_keeps_top_k_and_targets_only() -> None:
    logits = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0], [0.0, 1.0, 2.0, 3.0, 4.0]])
    mask = head_mask(logits, [np.array([4]), np.array([3, 0])], None, k=2)
    kept = torch.isfinite(mask)
    assert kept.tolist() == [[True, True, False, False, True], [True, False, False, True, True]]
    assert (mask[kept] == 0).all()


def test_head_mask_maps_sampled_candidates() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0]])
    mask = head_mask(logits, [np.array([70])], {50: 0, 60: 1, 70: 2}, k=1)
    assert torch.isfinite(mask).tolist() == [[False, True, True]]


def test_head_loss_ignores_the_tail() -> None:
    """Raising a tail item's score changes the full softmax loss but not the head loss."""
    base = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]])
    tail = base.clone()
    tail[0, 4] = 0.5  # still outside the top 2, not a target
    targets = [np.array([1])]
    full = [_loss(x, targets, None, 0.25, "cpu").item() for x in (base, tail)]
    head = [_loss(x, targets, None, 0.25, "cpu", head_k=2).item() for x in (base, tail)]
    assert full[0] != full[1]
    assert head[0] == head[1]
    assert head[0] < full[0]  # fewer competitors


def test_negative_sampler_forces_rows_and_corrects_the_sampled_ones() -> None:
    pop = np.arange(1, 1001, dtype=np.float64)  # item i drawn ~ i (plus the uniform share)
    sampler = NegativeSampler(pop, k=200, share=0.5)
    forced = np.array([3, 500])
    cands, corr = sampler.sample(np.random.default_rng(0), forced)
    assert set(forced) <= set(cands) and cands.max() < 1000 and (np.diff(cands) > 0).all()
    assert (corr[np.isin(cands, forced)] == 0).all()
    sampled = ~np.isin(cands, forced)
    assert (corr[sampled] > 0).all()  # -log P(in the set), P < 1
    # The rarer the item, the larger its correction.
    rare, common = cands[sampled].argmin(), cands[sampled].argmax()
    assert corr[sampled][rare] > corr[sampled][common]


def test_logq_corrected_sampled_loss_estimates_the_full_softmax() -> None:
    """Averaged over draws, the corrected sampled loss is closer to the full-catalog loss than the
    uncorrected one (which, seeing a fraction of the catalog, underestimates the partition function)."""
    rng = np.random.default_rng(1)
    n = 5000
    pop = rng.pareto(1.2, n) + 1e-3
    logits = torch.from_numpy(np.log(pop / pop.sum()) + rng.normal(0, 1, n)).float()[None, :]
    target = np.array([int(np.argmax(pop))])
    full = _loss(logits, [target], None, 0.25, "cpu").item()
    sampler = NegativeSampler(pop, k=256, share=0.5)
    with_corr, without = [], []
    for _ in range(50):
        cands, corr = sampler.sample(rng, target)
        sub = logits[:, cands]
        pos = {int(c): i for i, c in enumerate(cands)}
        with_corr.append(_loss(sub + torch.from_numpy(corr), [target], pos, 0.25, "cpu").item())
        without.append(_loss(sub, [target], pos, 0.25, "cpu").item())
    assert abs(np.mean(with_corr) - full) < abs(np.mean(without) - full)


@pytest.mark.parametrize("causal", [False, True])
def test_train_step_on_sampled_rows_scores_like_the_full_catalog(causal: bool) -> None:
    """The sampled path computes only the rows it reads; its scores (and, causal, its next-item
    logits of every prefix) equal the full path's columns."""
    from exporters.bootstrap import build_models
    from exporters.item_training import ItemTower
    from exporters.train import TrainStep

    _, _, ranker = build_models(True, 1, 8)
    ranker.reset_head()
    ranker.causal = causal
    with torch.no_grad():  # open the gate: the transformer path is part of what is compared
        ranker.gate.weight.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(0))
    n, dim = 30, ranker.item_dim
    rng = np.random.default_rng(0)
    tower = ItemTower(rng.normal(size=(n, dim)).astype(np.float32), [None] * n, [f"i{i}" for i in range(n)])
    step = TrainStep(ranker, tower).eval()
    seq = torch.tensor([[-1, 3, 7, 7], [2, 29, 0, 5]])
    types = torch.where(seq >= 0, 1, 0)
    feats = torch.from_numpy(rng.normal(size=(2, n, 5)).astype(np.float32))
    cands = torch.tensor([1, 7, 12, 28])
    with torch.no_grad():
        full = step(seq, types, feats, None)
        part = step(seq, types, feats[:, cands], cands)
    torch.testing.assert_close(part, full[:, cands], rtol=1e-5, atol=1e-5)
    if causal:
        with torch.no_grad():
            _, full_next = step(seq, types, feats, None, next_item=True)
            part_scores, part_next = step(seq, types, feats[:, cands], cands, next_item=True)
        torch.testing.assert_close(part_scores, part, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(part_next, full_next[..., cands], rtol=1e-5, atol=1e-5)
