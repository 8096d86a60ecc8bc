"""The causal ranker and its next-item objective: no position sees the future, the newest
position is the exported user vector, targets skip padding, the loss learns a toy sequence task,
and the causal ranker exports with parity."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import pytest
import torch

from exporters import export
from exporters.bootstrap import build_models
from exporters.item_training import ItemTower
from exporters.train import RankerTrainConfig, TrainStep, _loss, batch_loss, next_item_loss, next_item_targets
from schemas.ranking import NUM_FEATURES, RANKER_INPUTS, RANKER_OUTPUT


def _causal_ranker(seed: int = 3):
    tok, encoder, ranker = build_models(tiny=True, n_layers=2, max_text_len=16, seed=seed)
    ranker.causal = True
    torch.manual_seed(7)
    with torch.no_grad():  # open the gate so that the transformer path matters
        for p in (ranker.gate.weight, ranker.type_emb.weight, ranker.feat_mlp[2].weight):
            p.normal_(0.0, 0.3)
    return tok, encoder, ranker.eval()


def _sequence(rng: np.random.Generator, b: int, length: int, dim: int):
    vecs = torch.from_numpy(rng.normal(size=(b, length, dim)).astype(np.float32))
    types = torch.from_numpy(rng.integers(1, 6, size=(b, length)))
    mask = torch.ones(b, length, dtype=torch.long)
    return vecs, types, mask


def test_no_position_sees_the_future() -> None:
    _, _, ranker = _causal_ranker()
    rng = np.random.default_rng(0)
    vecs, types, mask = _sequence(rng, 2, 6, ranker.item_dim)
    changed_vecs, changed_types = vecs.clone(), types.clone()
    changed_vecs[:, 4] = torch.from_numpy(rng.normal(size=(2, ranker.item_dim)).astype(np.float32))
    changed_types[:, 4] = 1 + (types[:, 4] % 5)
    with torch.no_grad():
        before = ranker.user_states(vecs, types, mask)
        after = ranker.user_states(changed_vecs, changed_types, mask)
    torch.testing.assert_close(after[:, :4], before[:, :4], rtol=0, atol=1e-6)
    assert not torch.allclose(after[:, 4:], before[:, 4:], atol=1e-3)


def test_prefix_state_equals_the_prefix_alone_and_padding_side_is_irrelevant() -> None:
    """The state at position t is the user vector the ranker gives the sequence cut after t,
    whichever side that shorter sequence is padded on: training on prefixes trains what serves."""
    _, _, ranker = _causal_ranker()
    rng = np.random.default_rng(1)
    vecs, types, mask = _sequence(rng, 1, 7, ranker.item_dim)
    with torch.no_grad():
        states = torch.nn.functional.normalize(ranker.user_states(vecs, types, mask), dim=-1)
        for t in (0, 3, 6):
            n = t + 1
            right = ranker.user_vector(
                torch.cat([vecs[:, :n], torch.zeros(1, 7 - n, ranker.item_dim)], 1),
                torch.cat([types[:, :n], torch.zeros(1, 7 - n, dtype=torch.long)], 1),
                torch.cat([mask[:, :n], torch.zeros(1, 7 - n, dtype=torch.long)], 1),
            )
            left = ranker.user_vector(
                torch.cat([torch.zeros(1, 7 - n, ranker.item_dim), vecs[:, :n]], 1),
                torch.cat([torch.zeros(1, 7 - n, dtype=torch.long), types[:, :n]], 1),
                torch.cat([torch.zeros(1, 7 - n, dtype=torch.long), mask[:, :n]], 1),
            )
            torch.testing.assert_close(right, states[:, t], rtol=0, atol=1e-5)
            torch.testing.assert_close(left, states[:, t], rtol=0, atol=1e-5)
        empty = ranker.user_vector(vecs * 0, types * 0, mask * 0)
    assert torch.equal(empty, torch.zeros_like(empty))


def test_closed_gate_scores_the_same_causal_or_not() -> None:
    """Checkpoint 0 (gate closed) does not depend on the attention: the content mean is the user vector."""
    _, _, ranker = build_models(tiny=True, n_layers=2, max_text_len=16, seed=3)
    ranker.reset_head()
    rng = np.random.default_rng(2)
    vecs, types, mask = _sequence(rng, 3, 5, ranker.item_dim)
    mask[0, :2] = 0
    with torch.no_grad():
        bidirectional = ranker.user_vector(vecs, types, mask)
        ranker.causal = True
        causal = ranker.user_vector(vecs, types, mask)
    torch.testing.assert_close(causal, bidirectional, rtol=0, atol=1e-6)


def test_next_item_targets_skip_padding_and_the_newest_position() -> None:
    seq = np.array([[-1, -1, 4, 9, 2], [7, 3, 3, 8, 1]])
    assert next_item_targets(seq, None).tolist() == [[-100, -100, 9, 2, -100], [3, 3, 8, 1, -100]]
    pos = {9: 0, 2: 1, 3: 2, 8: 3}  # sampled candidates: item 1 is not a column
    assert next_item_targets(seq, pos).tolist() == [[-100, -100, 0, 1, -100], [2, 2, 3, -100, -100]]


def test_next_item_loss_learns_a_toy_sequence_task() -> None:
    """Sequences walk a cycle (item i is followed by item i+1): training the causal objective on
    them lowers the loss well below its start and puts the true next item on top."""
    _, _, ranker = build_models(tiny=True, n_layers=1, max_text_len=8, seed=0)
    ranker.reset_head()
    ranker.causal = True
    n = 12
    rng = np.random.default_rng(0)
    tower = ItemTower(rng.normal(size=(n, ranker.item_dim)).astype(np.float32), [None] * n, [str(i) for i in range(n)])
    step = TrainStep(ranker, tower)
    opt = torch.optim.Adam(step.parameters(), lr=1e-2)
    starts = rng.integers(0, n, size=32)
    seq = (starts[:, None] + np.arange(6)[None, :]) % n
    seq[:8, :2] = -1  # some padded rows
    seq_t = torch.from_numpy(seq)
    types = torch.where(seq_t >= 0, 5, 0)
    feats = torch.zeros(len(seq), n, 5)
    targets = next_item_targets(seq, None)
    losses = []
    for _ in range(150):
        _, seq_logits = step(seq_t, types, feats, None, next_item=True)
        loss = next_item_loss(seq_logits, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    with torch.no_grad():
        _, seq_logits = step(seq_t, types, feats, None, next_item=True)
    real = targets >= 0
    hit = (seq_logits.argmax(-1).numpy() == targets)[real].mean()
    assert hit > 0.9


def test_bidirectional_ranker_refuses_prefix_states() -> None:
    _, _, ranker = build_models(tiny=True, n_layers=1, max_text_len=8, seed=0)
    vecs, types, mask = _sequence(np.random.default_rng(0), 1, 3, ranker.item_dim)
    with pytest.raises(AssertionError):
        ranker.user_states(vecs, types, mask)


def test_causal_ranker_exports_with_parity_on_either_padding_side(tmp_path: Path) -> None:
    tok, encoder, ranker = _causal_ranker()
    result = export.export_models(encoder, ranker, tok, tmp_path, max_seq_len=9)
    assert result.parity["ok"], result.parity
    sess = ort.InferenceSession(str(tmp_path / export.RANKER_FILE), providers=["CPUExecutionProvider"])
    for probe in export.ranker_probe_inputs(None, ranker.item_dim, [(1, 1, 1), (2, 3, 5), (3, 9, 40)], seed=11):
        got = sess.run([RANKER_OUTPUT], {k: probe[k] for k in RANKER_INPUTS})[0]
        with torch.no_grad():
            ref = ranker(*(torch.from_numpy(probe[k]) for k in RANKER_INPUTS)).numpy()
        np.testing.assert_allclose(got, ref, atol=export.FP32_ATOL_SCORES, rtol=0)
    probe = export.ranker_probe_inputs(None, ranker.item_dim, [(1, 4, 30)], seed=5)[0]
    right = {k: v.copy() for k, v in probe.items()}
    right["seq_mask"][:] = [[1, 1, 1, 0]]
    right["seq_vecs"][:, 3] = 0
    right["seq_types"][:] = [[5, 1, 3, 0]]
    left = {k: np.roll(v, 1, axis=1) if k.startswith("seq_") else v for k, v in right.items()}
    run = lambda feeds: sess.run([RANKER_OUTPUT], {k: feeds[k] for k in RANKER_INPUTS})[0]  # noqa: E731
    np.testing.assert_allclose(run(left), run(right), atol=1e-5)


def _toy_examples(n: int = 12, length: int = 6, seed: int = 0):
    """A ``trainset.Examples``-shaped stand-in: right-aligned cyclic sequences, zero features."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, n, size=8)
    seq = (starts[:, None] + np.arange(length)[None, :]) % n
    seq[:3, :2] = -1  # some padded (left) rows
    points = SimpleNamespace(
        seq_items=seq,
        seq_types=np.where(seq >= 0, 5, 0),
        features=lambda idx, vecs, items=None: np.zeros((len(idx), n, NUM_FEATURES), np.float32),
    )
    targets = [np.array([(s[-1] + 1) % n]) for s in seq]
    return SimpleNamespace(points=points, targets=targets)


def test_next_item_loss_on_the_newest_prefixes_only() -> None:
    """``next_item_positions`` = N scores only the newest N prefixes that have a next item: their
    logits are those columns of the full computation, every prefix when N >= L - 1, and the loss
    is the feature loss plus the mean next-item cross-entropy over those columns alone."""
    _, _, ranker = build_models(tiny=True, n_layers=1, max_text_len=8, seed=0)
    ranker.reset_head()
    ranker.causal = True
    n, length = 12, 6
    tower = ItemTower(
        np.random.default_rng(1).normal(size=(n, ranker.item_dim)).astype(np.float32), [None] * n, list("abcdefghijkl")
    )
    step = TrainStep(ranker, tower).eval()  # no dropout: the variants compare exactly
    train = _toy_examples(n, length)
    idx = np.arange(len(train.targets))
    seq_t, types = torch.from_numpy(train.points.seq_items), torch.from_numpy(train.points.seq_types)
    feats = torch.zeros(len(idx), n, NUM_FEATURES)
    with torch.no_grad():
        vecs = step.tower().numpy()
        logits, every = step(seq_t, types, feats, None, next_item=True)
        _, newest = step(seq_t, types, feats, None, next_item=True, next_positions=2)
        cfg = RankerTrainConfig()
        default = batch_loss(step, train, idx, vecs, cfg, None, np.random.default_rng(0), torch.device("cpu"))
        all_prefixes = batch_loss(
            step, train, idx, vecs, replace(cfg, next_item_positions=length - 1), None, None, torch.device("cpu")
        )
        two = batch_loss(step, train, idx, vecs, replace(cfg, next_item_positions=2), None, None, torch.device("cpu"))
    torch.testing.assert_close(newest, every[:, length - 3 : length - 1], rtol=0, atol=0)
    # the same columns, reduced in another shape: equal up to float32 rounding (a few ULP on some
    # CPUs, e.g. 11.107443 vs 11.107445 on an AMD EPYC VM); a wrong prefix set differs by far more
    torch.testing.assert_close(all_prefixes, default, rtol=1e-6, atol=0)
    nxt = next_item_targets(train.points.seq_items, None)
    own = _loss(logits, train.targets, None, cfg.aux_target_weight, torch.device("cpu"))
    expected = own + next_item_loss(
        every[:, length - 3 : length - 1], np.ascontiguousarray(nxt[:, length - 3 : length - 1])
    )
    torch.testing.assert_close(two, expected, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(two, default)
