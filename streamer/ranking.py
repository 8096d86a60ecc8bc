"""Stage 5 — ranking: score every user's candidates in one batched ONNX Runtime call.

Knows nothing of Kafka or Redis: it takes users' sequences and candidates, returns scores.
Batches across users (the caller collects a micro-batch and coalesces a burst of one user's
events into one request), pads sequences to the batch's longest (bucketed to a multiple of 8 so
ONNX Runtime sees few distinct shapes) and candidates to the batch's largest set.

The ``control`` variant (A/B) and ``STREAMREC_RANKING=false`` use ``CandidateScorer``: a fixed
linear blend of the candidate features, the same blend the bootstrap model's feature head starts
from, so the control arm is the "no learned ranker" baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from schemas.ranking import NUM_FEATURES

# Weights of FEATURE_NAMES in the no-ranker blend.
CONTROL_WEIGHTS = np.asarray([1.0, 0.5, 0.2, 0.1, 1.0], dtype=np.float32)
assert CONTROL_WEIGHTS.shape == (NUM_FEATURES,)


@dataclass
class RankRequest:
    seq_vecs: np.ndarray  # float32 [L, D]
    seq_types: np.ndarray  # int64 [L]
    cand_vecs: np.ndarray  # float32 [C, D]
    cand_feats: np.ndarray  # float32 [C, F]


def _bucket(n: int, step: int = 8) -> int:
    return max(step, -(-n // step) * step)


class CandidateScorer:
    """The no-ranker scores: a fixed blend of features (control arm, ranking disabled)."""

    def score(self, requests: list[RankRequest]) -> list[np.ndarray]:
        return [r.cand_feats @ CONTROL_WEIGHTS for r in requests]


class OnnxRanker:
    """Batches requests into the padded tensors of ``schemas.ranking.RANKER_INPUTS``."""

    def __init__(self, bundle) -> None:  # streamer.model.ModelBundle
        self.bundle = bundle
        self.dim = bundle.dim
        self.max_seq_len = bundle.max_seq_len

    def score(self, requests: list[RankRequest]) -> list[np.ndarray]:
        if not requests:
            return []
        b = len(requests)
        lens = [min(len(r.seq_types), self.max_seq_len) for r in requests]
        l = _bucket(max(max(lens), 1))
        c = _bucket(max(len(r.cand_feats) for r in requests))
        seq_vecs = np.zeros((b, l, self.dim), dtype=np.float32)
        seq_types = np.zeros((b, l), dtype=np.int64)
        seq_mask = np.zeros((b, l), dtype=np.int64)
        cand_vecs = np.zeros((b, c, self.dim), dtype=np.float32)
        cand_feats = np.zeros((b, c, NUM_FEATURES), dtype=np.float32)
        for i, (r, n) in enumerate(zip(requests, lens)):
            if n:
                seq_vecs[i, :n] = r.seq_vecs[-n:]
                seq_types[i, :n] = r.seq_types[-n:]
                seq_mask[i, :n] = 1
            k = len(r.cand_feats)
            cand_vecs[i, :k] = r.cand_vecs
            cand_feats[i, :k] = r.cand_feats
        scores = self.bundle.score(seq_vecs, seq_types, seq_mask, cand_vecs, cand_feats)
        return [scores[i, : len(r.cand_feats)] for i, r in enumerate(requests)]
