"""The ranker's training loss: the head-only softmax (``--head-k``)."""

from __future__ import annotations

import numpy as np
import torch

from exporters.train import _loss, head_mask


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
