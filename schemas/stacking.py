"""The stacked list score, shared by the worker (``streamer.publish``) and the job
(``exporters.stacking`` trains it, ``exporters.served`` grades it).

A linear score over per-candidate features the worker already holds when it builds a list: the
ranker's score (the BERT ranker still scores every candidate; its score is one input), the
ranker's own inputs (``schemas.ranking.FEATURE_NAMES``), the candidate's item-kNN score
(``schemas.serving.ItemNeighbours``), whether the item is new to the user and that flag crossed
with the signals that order new items (item-kNN, popularity, taste, ranker), the size of the
user's profile, and the source that found the candidate (one flag per ``SOURCES`` entry). The
weights are fitted by the job (listwise softmax over the worker's candidates, ``exporters.stacking``)
and shipped in the manifest's ``list_params`` (``ListParams.stack``), in raw feature units, so the
worker computes one matrix-vector product per list. An empty ``stack`` = no stacking (the ranker's
score as it is).
"""

from __future__ import annotations

import numpy as np

from schemas.ranking import FEATURE_NAMES
from schemas.serving import SOURCES

STACK_FEATURES: tuple[str, ...] = (
    "ranker",
    *FEATURE_NAMES,
    "log_knn",
    "new",
    "new_x_log_knn",
    "new_x_log_popularity",
    "new_x_embedding_sim",
    "new_x_ranker",
    "log_profile_items",
    *(f"source_{s}" for s in SOURCES),
)
_RECENCY = FEATURE_NAMES.index("personal_recency")
_POP = FEATURE_NAMES.index("log_popularity")
_SIM = FEATURE_NAMES.index("embedding_sim")


def stack_features(
    ranker: np.ndarray, feats: np.ndarray, knn: np.ndarray | None, src: np.ndarray, profile_items: int
) -> np.ndarray:
    """float64 [C, len(STACK_FEATURES)] for one user's C candidates: ranker scores [C], ranker
    features [C, F] (``FEATURE_NAMES``), item-kNN scores [C] (None: zeros), source index [C]
    (into ``SOURCES``), the number of items in the user's profile."""
    c = len(ranker)
    ranker = np.asarray(ranker, dtype=np.float64)
    feats = np.asarray(feats, dtype=np.float64).reshape(c, len(FEATURE_NAMES))
    log_knn = np.log1p(np.maximum(np.asarray(knn, dtype=np.float64), 0.0)) if knn is not None else np.zeros(c)
    new = (feats[:, _RECENCY] <= 0).astype(np.float64)
    src_flags = np.zeros((c, len(SOURCES)))
    src_flags[np.arange(c), np.asarray(src, dtype=np.int64)] = 1.0
    return np.column_stack(
        [
            ranker,
            feats,
            log_knn,
            new,
            new * log_knn,
            new * feats[:, _POP],
            new * feats[:, _SIM],
            new * ranker,
            np.full(c, np.log1p(max(profile_items, 0))),
            src_flags,
        ]
    )


def stacked_scores(
    weights: tuple[float, ...],
    ranker: np.ndarray,
    feats: np.ndarray,
    knn: np.ndarray | None,
    src: np.ndarray,
    profile_items: int,
) -> np.ndarray:
    """The stacked score of one user's candidates (``weights`` in ``STACK_FEATURES`` order)."""
    return stack_features(ranker, feats, knn, src, profile_items) @ np.asarray(weights, dtype=np.float64)
