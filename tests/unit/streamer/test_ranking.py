"""Stage 5, ranking (streamer/ranking.py): the ONNX ranker's padded batches on the tiny model, and
the no-ranker blend of the control arm."""

from __future__ import annotations

import numpy as np
import pytest

from schemas.ranking import NUM_FEATURES
from streamer.model import ModelBundle, latest_version_dir
from streamer.ranking import CONTROL_WEIGHTS, CandidateScorer, OnnxRanker, RankRequest, pad_width


def users(bundle, rng, sizes):
    """(sequence rows, types, candidate vectors, candidate features) per user: (sequence, candidates) sizes."""
    out = []
    for n_seq, n_cand in sizes:
        out.append(
            (
                rng.integers(0, 8, n_seq),
                rng.integers(1, 8, n_seq),
                rng.standard_normal((n_cand, bundle.dim)).astype(np.float32),
                rng.standard_normal((n_cand, NUM_FEATURES)).astype(np.float32),
            )
        )
    return out


def test_a_user_s_scores_do_not_depend_on_the_batch_padding(tiny_model_root):
    """Each user is padded to the batch's longest sequence and candidate list: the padding is masked,
    so a user's scores alone equal their scores in any batch, on both request paths."""
    bundle = ModelBundle.load(latest_version_dir(tiny_model_root))
    ranker = OnnxRanker(bundle)
    rng = np.random.default_rng(5)
    vecs = rng.standard_normal((8, bundle.dim)).astype(np.float32)
    batch = users(bundle, rng, [(3, 5), (bundle.max_seq_len + 4, 17), (0, 2), (1, 9)])
    together = ranker.score_rows(vecs, *map(list, zip(*batch)))
    assert [len(s) for s in together] == [5, 17, 2, 9]
    for user, scores in zip(batch, together):
        alone = ranker.score_rows(vecs, *([x] for x in user))[0]
        np.testing.assert_allclose(scores, alone, rtol=1e-5, atol=1e-6)
    requests = [RankRequest(vecs[rows], types, cv, cf) for rows, types, cv, cf in batch]
    for a, b in zip(ranker.score(requests), together):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert ranker.score_rows(vecs, [], [], [], []) == [] and ranker.score([]) == []


def test_padded_candidates_score_bit_for_bit_like_per_user_arrays(tiny_model_root):
    """``score_padded`` (the layout ``gather_batch(pad_vectors=True)`` gathers) gives exactly the
    scores of ``score_rows`` over the same users, and refuses a layout of the wrong width."""
    bundle = ModelBundle.load(latest_version_dir(tiny_model_root))
    ranker = OnnxRanker(bundle)
    rng = np.random.default_rng(3)
    vecs = rng.standard_normal((8, bundle.dim)).astype(np.float32)
    rows, types, cand_vecs, cand_feats = map(list, zip(*users(bundle, rng, [(3, 5), (9, 17), (1, 0), (2, 9)])))
    counts = [len(c) for c in cand_vecs]
    width = pad_width(counts)
    padded_vecs = np.zeros((len(counts), width, bundle.dim), np.float32)
    padded_feats = np.zeros((len(counts), width, NUM_FEATURES), np.float32)
    for i, k in enumerate(counts):
        padded_vecs[i, :k], padded_feats[i, :k] = cand_vecs[i], cand_feats[i]
    padded = ranker.score_padded(vecs, rows, types, padded_vecs, padded_feats, counts)
    for a, b in zip(padded, ranker.score_rows(vecs, rows, types, cand_vecs, cand_feats)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError):
        ranker.score_padded(vecs, rows, types, padded_vecs[:, :-8], padded_feats[:, :-8], counts)


def test_control_arm_scores_are_the_fixed_feature_blend():
    rng = np.random.default_rng(1)
    feats = rng.standard_normal((6, NUM_FEATURES)).astype(np.float32)
    (scores,) = CandidateScorer().score([RankRequest(None, None, None, feats)])
    np.testing.assert_allclose(scores, feats @ CONTROL_WEIGHTS)
    np.testing.assert_allclose(CandidateScorer().score_feats(feats), scores)


def test_io_binding_path_scores_like_run(tiny_model_root):
    """``ModelBundle.score_bound`` (the path taken on the CUDA provider) gives ``run``'s scores;
    checked on CPU, where this machine has no GPU."""
    import numpy as np

    bundle = ModelBundle.load(latest_version_dir(tiny_model_root), variant="fp32")
    rng = np.random.default_rng(3)
    b, l, c = 5, 20, 40
    feeds = {
        "seq_vecs": rng.standard_normal((b, l, bundle.dim)).astype(np.float32),
        "seq_types": rng.integers(1, 8, (b, l)),
        "seq_mask": (rng.random((b, l)) < 0.8).astype(np.int64),
        "cand_vecs": rng.standard_normal((b, c, bundle.dim)).astype(np.float32),
        "cand_feats": rng.standard_normal((b, c, 5)).astype(np.float32),
    }
    (plain,) = bundle.ranker.run(["scores"], feeds)
    np.testing.assert_allclose(bundle.score_bound(feeds), plain, rtol=1e-6, atol=1e-6)
