"""Offline scoring with a published model directory (the "production" model), through
onnxruntime exactly as the worker would run it, for the comparison in the retrain report.

The production model ranks the whole catalog of the evaluation data set: items it has a
vector for get it; items it has never seen (newer than the model) get a zero vector, so only
their features can rank them, as in a worker that has not encoded them yet.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from exporters.dataset import Interactions
from exporters.features import PointSet
from schemas.ranking import RANKER_OUTPUT


class OnnxModel:
    def __init__(self, version_dir: Path, providers: list[str] | None = None, variant: str = "fp32"):
        self.dir = Path(version_dir)
        self.manifest = json.loads((self.dir / "manifest.json").read_text())
        files = self.manifest.get("ranker_variant_files", {"fp32": "ranker.onnx"})
        self.session = session(self.dir / files[variant], providers)
        self.variant = variant
        self.item_ids: list[str] = json.loads((self.dir / "item_ids.json").read_text())
        self.item_vecs = np.load(self.dir / "item_vecs.npy").astype(np.float32)
        self.max_seq_len = int(self.manifest["max_seq_len"])
        self.version = str(self.manifest["version"])

    def catalog_vectors(self, inter: Interactions) -> np.ndarray:
        """Vectors for the data set's catalog in its row order (zeros for unknown items)."""
        pos = {i: r for r, i in enumerate(self.item_ids)}
        out = np.zeros((inter.n_items, self.item_vecs.shape[1]), dtype=np.float32)
        for r, item_id in enumerate(inter.item_ids):
            p = pos.get(item_id)
            if p is not None:
                out[r] = self.item_vecs[p]
        return out

    def scorer(self, inter: Interactions, points: PointSet):
        """Full-catalog scores for points built with this model's ``max_seq_len``."""
        return onnx_scorer(self.session, self.catalog_vectors(inter), points)


def session(path: Path, providers: list[str] | None = None) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=providers or ["CPUExecutionProvider"])


def onnx_scorer(sess: ort.InferenceSession, vecs: np.ndarray, points: PointSet, budget_floats: int = 20_000_000):
    """Scorer for ``exporters.evaluate``: an ONNX ranker over the whole catalog ``vecs`` [N, D]."""
    n, d = vecs.shape

    def score(cases: np.ndarray) -> np.ndarray:
        out = []
        step = max(1, budget_floats // (n * d))
        for s in range(0, len(cases), step):
            idx = cases[s : s + step]
            seq = points.seq_items[idx]
            mask = (seq >= 0).astype(np.int64)
            feeds = {
                "seq_vecs": vecs[np.maximum(seq, 0)] * mask[..., None].astype(np.float32),
                "seq_types": points.seq_types[idx],
                "seq_mask": mask,
                "cand_vecs": np.broadcast_to(vecs, (len(idx), n, d)).copy(),
                "cand_feats": points.features(idx, vecs),
            }
            out.append(sess.run([RANKER_OUTPUT], feeds)[0])
        return np.concatenate(out)

    return score
