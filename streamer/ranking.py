"""Stage 5 — ranking: score every user's candidates in one batched ONNX Runtime call.

Knows nothing of Kafka or Redis: it takes users' sequences and candidates, returns scores.
Batches across users (the caller collects a micro-batch and coalesces a burst of one user's
events into one request), pads sequences to the batch's longest (bucketed to a multiple of 8 so
ONNX Runtime sees few distinct shapes, never past the model's ``max_seq_len``) and candidates to
the batch's largest set. ``score_rows`` takes item rows and gathers their vectors from the item
index with one indexing operation per input (the hot path); ``score`` takes ready vectors.

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


def pad_width(counts) -> int:
    """The candidate width a batch is padded to: its largest candidate count, bucketed."""
    return _bucket(int(max(counts, default=0)))


class CandidateScorer:
    """The no-ranker scores: a fixed blend of features (control arm, ranking disabled)."""

    def score(self, requests: list[RankRequest]) -> list[np.ndarray]:
        return [r.cand_feats @ CONTROL_WEIGHTS for r in requests]

    def score_feats(self, feats: np.ndarray) -> np.ndarray:
        """Scores of a flat [N, F] feature array (all users of a batch at once)."""
        return feats @ CONTROL_WEIGHTS


class OnnxRanker:
    """Batches requests into the padded tensors of ``schemas.ranking.RANKER_INPUTS``."""

    def __init__(self, bundle) -> None:  # streamer.model.ModelBundle
        self.bundle = bundle
        self.dim = bundle.dim
        self.max_seq_len = bundle.max_seq_len

    def _seq_len(self, lens: list[int]) -> int:
        return max(min(_bucket(max(max(lens), 1)), self.max_seq_len), max(lens), 1)

    def score_rows(
        self,
        vecs: np.ndarray,
        seq_rows: list[np.ndarray],
        seq_types: list[np.ndarray],
        cand_vecs: list[np.ndarray],
        cand_feats: list[np.ndarray],
    ) -> list[np.ndarray]:
        """Scores per user: each user's sequence as item rows of ``vecs`` (the item index) and
        type ids, oldest first, and its candidates' vectors [C, D] and features [C, F]."""
        if not cand_vecs:
            return []
        b = len(cand_vecs)
        counts = [len(r) for r in cand_vecs]
        c = pad_width(counts)
        c_vecs = np.zeros((b, c, self.dim), dtype=np.float32)
        feats = np.zeros((b, c, NUM_FEATURES), dtype=np.float32)
        for i, k in enumerate(counts):
            c_vecs[i, :k] = cand_vecs[i]
            feats[i, :k] = cand_feats[i]
        return self.score_padded(vecs, seq_rows, seq_types, c_vecs, feats, counts)

    def score_padded(
        self,
        vecs: np.ndarray,
        seq_rows: list[np.ndarray],
        seq_types: list[np.ndarray],
        c_vecs: np.ndarray,
        feats: np.ndarray,
        counts,
    ) -> list[np.ndarray]:
        """``score_rows`` with the candidates already in the padded layout: user i's vectors and
        features in ``c_vecs[i, :counts[i]]`` [B, W, D] and ``feats[i, :counts[i]]`` [B, W, F],
        zeros after, W = ``pad_width(counts)`` (``candidates.gather_batch(pad_vectors=True)``
        gathers them so: no second copy)."""
        if not len(counts):
            return []
        if c_vecs.shape[:2] != (len(counts), pad_width(counts)) or feats.shape[:2] != c_vecs.shape[:2]:
            raise ValueError(f"padded candidates {c_vecs.shape} / {feats.shape} for counts {list(counts)}")
        b = len(counts)
        lens = [min(len(t), self.max_seq_len) for t in seq_types]
        l = self._seq_len(lens)
        s_rows = np.zeros((b, l), dtype=np.int64)
        s_types = np.zeros((b, l), dtype=np.int64)
        s_mask = np.zeros((b, l), dtype=np.int64)
        for i, n in enumerate(lens):
            if n:
                s_rows[i, :n] = seq_rows[i][-n:]
                s_types[i, :n] = seq_types[i][-n:]
                s_mask[i, :n] = 1
        seq_vecs = vecs[s_rows]
        seq_vecs[s_mask == 0] = 0.0
        scores = self.bundle.score(seq_vecs, s_types, s_mask, c_vecs, feats)
        return [scores[i, :k] for i, k in enumerate(counts)]

    def score(self, requests: list[RankRequest]) -> list[np.ndarray]:
        if not requests:
            return []
        b = len(requests)
        lens = [min(len(r.seq_types), self.max_seq_len) for r in requests]
        l = self._seq_len(lens)
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
