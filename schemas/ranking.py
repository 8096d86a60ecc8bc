"""The ranking contract shared by the worker (``streamer``) and the job (``exporters``).

The two packages never import each other; they meet here, in the model directory and on the
``model-updates`` topic. This module fixes:

* the event-type vocabulary fed to the ranker and the weights used for the user embedding;
* the names, order and reference computation of the per-candidate features;
* the ONNX input/output names and the model-directory layout (see ``MODEL_DIR_LAYOUT``).

Everything here is numpy only, so a worker image needs no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

MODEL_FORMAT = 1

# Event types as ids for the ranker's type embedding. 0 is padding.
EVENT_TYPE_IDS: dict[str, int] = {
    "view": 1,
    "click": 2,
    "add_to_cart": 3,
    "favorite": 4,
    "purchase": 5,
    "cancel": 6,
    "rating": 7,
    "search": 8,
}
NUM_EVENT_TYPES = max(EVENT_TYPE_IDS.values()) + 1

# Weight of one event of each type in the user's interest profile (embedding and personal
# counts). A cancellation takes back part of a purchase.
EVENT_WEIGHTS: dict[str, float] = {
    "view": 0.2,
    "click": 0.3,
    "search": 0.3,
    "favorite": 0.5,
    "rating": 0.5,
    "add_to_cart": 0.6,
    "purchase": 1.0,
    "cancel": -0.5,
}

# Per-candidate features, in this order, as float32 [B, C, F].
FEATURE_NAMES: tuple[str, ...] = (
    "log_personal_weight",  # log1p(sum of event weights of this user on this item, floored at 0)
    "personal_recency",  # exp(-days since the user's last interaction with it / RECENCY_DAYS); 0 if never
    "log_covis",  # log1p(sum of co-visitation counts from the user's recent items to it)
    "log_popularity",  # log1p(decayed global interaction count of the item)
    "embedding_sim",  # cosine(user embedding, item vector)
)
NUM_FEATURES = len(FEATURE_NAMES)
RECENCY_DAYS = 30.0
DAY_MS = 86_400_000
# Co-visitation: each positive event pairs with the user's previous COVIS_WINDOW items (both
# directions); the candidate feature sums the pair counts from the user's last COVIS_WINDOW items.
COVIS_WINDOW = 5
# Default event-time half-life of the user embedding and of trending popularity (the worker's
# STREAMREC_HALF_LIFE_DAYS; the job writes the value it trained with to the manifest).
DEFAULT_HALF_LIFE_DAYS = 14.0


def feature_params(half_life_days: float = DEFAULT_HALF_LIFE_DAYS) -> dict[str, float]:
    """The parameters behind FEATURE_NAMES, as written to a manifest's ``feature_params``."""
    return {"covis_window": COVIS_WINDOW, "half_life_days": half_life_days, "recency_days": RECENCY_DAYS}


# ONNX signatures (dynamic axes: B batch, L sequence, C candidates, T tokens, N items).
ITEM_ENCODER_INPUTS = ("input_ids", "attention_mask")  # int64 [N, T], int64 [N, T]
ITEM_ENCODER_OUTPUT = "item_vec"  # float32 [N, D], L2-normalised
RANKER_INPUTS = ("seq_vecs", "seq_types", "seq_mask", "cand_vecs", "cand_feats")
# seq_vecs float32 [B, L, D]; seq_types int64 [B, L]; seq_mask int64 [B, L] (1 = real);
# cand_vecs float32 [B, C, D]; cand_feats float32 [B, C, F]
# The sequence is in time order, oldest first, newest last (at most manifest max_seq_len); padding
# rows (seq_mask 0, type 0, zero vector) may sit on either side. An all-padding row is a new user.
RANKER_OUTPUT = "scores"  # float32 [B, C], higher is better

MODEL_DIR_LAYOUT = """
<model_root>/
  LATEST                 text file: the newest published version name (replaced atomically)
  <version>/             written to <version>.tmp-*, then renamed
    manifest.json        ModelManifest (see schemas/json/model_manifest.v1.json)
    item_encoder.onnx    text -> vector (ITEM_ENCODER_INPUTS -> ITEM_ENCODER_OUTPUT); absent when
                         no catalog item had text (manifest "item_encoder": null: new items get
                         their category vector or id hash, a search query has no vector)
    ranker.onnx          FP32 ranker (RANKER_INPUTS -> RANKER_OUTPUT)
    ranker.fp16.onnx     optional, for the CUDA provider
    ranker.int8.onnx     optional, for CPU, only if its metrics held
    tokenizer.json       `tokenizers` tokenizer for item and query text
    item_ids.json        list of item ids, row order of item_vecs.npy
    item_vecs.npy        float32 [N, D] item vectors (text + learned id/category part)
    category_vecs.json   optional {category: [D floats]} for new items without text
    knn_rows.npy         optional int32 [N, K]: each item's K nearest items (rows of item_ids.json,
                         -1: none), the ``knn`` candidate source (schemas.serving.ItemNeighbours;
                         manifest "item_neighbours")
    knn_sims.npy         optional float32 [N, K]: their similarities (cosine ** schemas.serving.KNN_POWER)
    training_curves.png  optional
"""


def item_text(title: str | None, description: str | None = None) -> str:
    """The text the item encoder sees: title and description joined by a space ('' when the
    item has none; a description equal to the title counts once). The job builds the catalog
    vectors with it, so a worker encoding a new item must use it too."""
    parts = [p.strip() for p in (title, description) if p and p.strip()]
    if len(parts) == 2 and parts[0].lower() == parts[1].lower():
        parts = parts[:1]
    return " ".join(parts)


def compose_item_vector(text_vec: np.ndarray | None, category_vec: np.ndarray | None) -> np.ndarray | None:
    """Vector of an item that is not in the model's item index (a new item).

    ``text_vec`` is the item encoder's output for the item's text (None when it has none),
    ``category_vec`` the manifest's ``category_vecs.json`` entry for its category (None when
    absent). The parts are summed and L2-normalised; None when there is no part (such an item is
    reachable through its features only, e.g. trending).
    """
    parts = [np.asarray(v, dtype=np.float32) for v in (text_vec, category_vec) if v is not None]
    if not parts:
        return None
    v = np.sum(parts, axis=0)
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else None


def log_weight(total_weight: float) -> float:
    return math.log1p(max(total_weight, 0.0))


def recency(now_ms: int, last_ms: int | None) -> float:
    if last_ms is None:
        return 0.0
    days = max(now_ms - last_ms, 0) / DAY_MS
    return math.exp(-days / RECENCY_DAYS)


def candidate_features(
    personal_weight: np.ndarray,
    last_ms: np.ndarray,
    now_ms: int,
    covis: np.ndarray,
    popularity: np.ndarray,
    sim: np.ndarray,
) -> np.ndarray:
    """Vectorised reference computation of FEATURE_NAMES for C candidates of one user.

    ``last_ms`` holds -1 where the user never touched the item. Returns float32 [C, F].
    """
    c = personal_weight.shape[0]
    out = np.empty((c, NUM_FEATURES), dtype=np.float32)
    out[:, 0] = np.log1p(np.maximum(personal_weight, 0.0))
    days = np.maximum(now_ms - last_ms, 0) / DAY_MS
    out[:, 1] = np.where(last_ms >= 0, np.exp(-days / RECENCY_DAYS), 0.0)
    out[:, 2] = np.log1p(np.maximum(covis, 0.0))
    out[:, 3] = np.log1p(np.maximum(popularity, 0.0))
    out[:, 4] = sim
    return out


@dataclass(frozen=True)
class RankerShape:
    dim: int
    max_seq_len: int
    max_text_len: int


def check_manifest_features(manifest: Mapping[str, object]) -> str | None:
    """Return a reason when a manifest's ranker expects other features than this code computes."""
    names: Sequence[str] = manifest.get("features", ())  # type: ignore[assignment]
    if tuple(names) != FEATURE_NAMES:
        return f"features mismatch: model expects {list(names)}, worker computes {list(FEATURE_NAMES)}"
    params = manifest.get("feature_params") or {}
    for key, ours in (("covis_window", COVIS_WINDOW), ("recency_days", RECENCY_DAYS)):
        if key in params and float(params[key]) != float(ours):  # type: ignore[index]
            return f"feature_params mismatch: model was trained with {key}={params[key]}, worker computes {ours}"  # type: ignore[index]
    types = manifest.get("event_type_ids", {})
    if dict(types) != EVENT_TYPE_IDS:  # type: ignore[arg-type]
        return "event_type_ids mismatch between model and worker"
    return None
