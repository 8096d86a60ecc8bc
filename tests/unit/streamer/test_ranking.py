"""Stage 5, ranking (streamer/ranking.py): the ONNX ranker's padded batches on the tiny model, and
the no-ranker blend of the control arm."""

from __future__ import annotations

import numpy as np

from schemas.ranking import NUM_FEATURES
from streamer.model import ModelBundle, latest_version_dir
from streamer.ranking import CONTROL_WEIGHTS, CandidateScorer, OnnxRanker, RankRequest


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
