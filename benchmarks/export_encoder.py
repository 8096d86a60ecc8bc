"""Export stage with and without the item encoder (real, non-tiny models), side by side in one process.

Run: PYTHONPATH=$PWD python -m benchmarks.export_encoder (issue 18; BENCHMARKS.md "Training / export stage").
"""

import tempfile
import time
from pathlib import Path

import numpy as np

from exporters.bootstrap import build_models
from exporters.export import export_models
from exporters.job import JobConfig

cfg = JobConfig(model_root=Path(tempfile.gettempdir()))
tok, enc, rk = build_models(False, cfg.n_layers, cfg.max_text_len, seed=0)
vecs = np.random.default_rng(0).standard_normal((5000, rk.item_dim)).astype(np.float32)
vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
for name, e in (("with encoder", enc), ("no encoder", None)):
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        r = export_models(e, rk, tok, Path(d), max_seq_len=cfg.max_seq_len, item_vecs=vecs)
        print(f"{name}: {time.perf_counter() - t:.1f} s, files {r.sizes}", flush=True)
