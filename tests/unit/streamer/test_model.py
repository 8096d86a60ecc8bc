"""A version's item neighbours (the ``knn`` source) as the worker loads them."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from streamer.model import ModelBundle, ModelRefused, latest_version_dir, sha256_file


def _with_neighbours(src, dst, rows: np.ndarray, list_params: dict | None = None):
    shutil.copytree(src, dst)
    np.save(dst / "knn_rows.npy", rows.astype(np.int32))
    np.save(dst / "knn_sims.npy", np.linspace(1, 0.1, rows.size, dtype=np.float32).reshape(rows.shape))
    manifest = json.loads((dst / "manifest.json").read_text())
    for name in ("knn_rows.npy", "knn_sims.npy"):
        manifest["files"][name] = {"sha256": sha256_file(dst / name), "bytes": (dst / name).stat().st_size}
    manifest["item_neighbours"] = {"k": rows.shape[1], "files": ["knn_rows.npy", "knn_sims.npy"]}
    if list_params is not None:
        manifest["list_params"] = list_params
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def test_bundle_loads_the_neighbour_lists_and_refuses_bad_ones(tiny_model_root, tmp_path):
    src = latest_version_dir(tiny_model_root)
    n = len(json.loads((src / "item_ids.json").read_text()))
    rows = np.tile(np.arange(2), (n, 1))
    rows[:, 1] = -1
    bundle = ModelBundle.load(_with_neighbours(src, tmp_path / "ok", rows), variant="fp32")
    assert bundle.neighbours is not None and bundle.neighbours.rows.shape == (n, 2)
    assert ModelBundle.load(src, variant="fp32").neighbours is None  # a version without them: no knn source
    bad = rows.copy()
    bad[0, 0] = n  # outside the catalog
    with pytest.raises(ModelRefused, match="neighbours"):
        ModelBundle.load(_with_neighbours(src, tmp_path / "bad", bad), variant="fp32")
    with pytest.raises(ModelRefused, match="stack"):  # a stacked score over features this code does not compute
        ModelBundle.load(
            _with_neighbours(
                src, tmp_path / "stack", rows, {"min_new": 5, "stack": {"features": ["x"], "weights": [1]}}
            ),
            variant="fp32",
        )
